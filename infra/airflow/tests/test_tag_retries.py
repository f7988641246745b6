"""The tag tasks' retry policy (docs/runbook.md): retry what may be transient, never a refusal.

A failed spark-submit in cluster mode does not carry prodclf's exit code; the tag task
judges the attempt by what it left in the commodity library (``prodclf_outcome``). Here a
temporary library holds each state a run can leave, and the nightly DAG's own tag task
runs (templates rendered, ``execute``) against it with a stand-in ``spark-submit`` on PATH
that exits as a failed driver's spark-submit does: the exception it raises decides whether
Airflow retries (``AirflowException``, up to the task's ``retries``) or not
(``AirflowFailException``).
"""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from airflow.exceptions import AirflowException, AirflowFailException
from airflow.models.dagbag import DagBag

AIRFLOW = Path(__file__).resolve().parents[1]
DAGS = AIRFLOW / "dags"
sys.path.insert(0, str(DAGS))  # as Airflow does for its dags folder

import prodclf_common  # noqa: E402
from prodclf_outcome import classify, run_of  # noqa: E402

RUN_ID = "nightly-20261121T023000"
DAY = "2026-11-21"
CONTEXT = {"ds": DAY, "ts_nodash": "20261121T023000"}


# --- library states, as prodclf leaves them (docs/library.md: the layout) --------------------


def manifest(lib: Path, run_id: str = RUN_ID) -> None:
    (lib / "_runs").mkdir(parents=True, exist_ok=True)
    (lib / "_runs" / f"{run_id}.json").write_text(json.dumps({"run_id": run_id}))


def pending(lib: Path, run_id: str = RUN_ID) -> None:
    (lib / "_runs").mkdir(parents=True, exist_ok=True)
    (lib / "_runs" / f"{run_id}.json.pending").write_text(json.dumps({"run_id": run_id}))


def lock(lib: Path, run_id: str | None = RUN_ID, owner: str = "prodclf tag incremental") -> None:
    lib.mkdir(parents=True, exist_ok=True)
    body = {"owner": f"{owner} run {run_id}", "run_id": run_id, "host": "driver-7", "pid": 1}
    (lib / "_lock.json").write_text(json.dumps(body))


def history(lib: Path, run_id: str = RUN_ID) -> None:
    part = lib / "tags_history" / f"run_date={DAY}" / f"run_id={run_id}"
    part.mkdir(parents=True)
    (part / "part-00000.parquet").write_bytes(b"PAR1")


def layout(lib: Path) -> None:
    """A library with an earlier complete run: the state of a night that changed nothing."""
    lib.mkdir(parents=True, exist_ok=True)
    (lib / "_prodclf_layout.json").write_text('{"layout": 2, "format": "parquet"}\n')
    manifest(lib, "nightly-20261120T023000")
    history(lib, "nightly-20261120T023000")


def failure(lib: Path, retryable: bool) -> None:
    """The record prodclf leaves when a run fails as a whole (exit 3)."""
    (lib / "_runs").mkdir(parents=True, exist_ok=True)
    record = {
        "run_id": RUN_ID,
        "exit_code": 3,
        "error": "RunFailed",
        "retryable": retryable,
        "message": f"run {RUN_ID} failed, nothing published: ...",
    }
    (lib / "_runs" / f"{RUN_ID}.failure").write_text(json.dumps(record))


def released_lock(lib: Path) -> None:
    lib.mkdir(parents=True, exist_ok=True)
    (lib / "_lock.json").write_text('{"state": "released"}')


def unreadable_lock(lib: Path) -> None:
    lib.mkdir(parents=True, exist_ok=True)
    (lib / "_lock.json").write_text("{torn")


#: state -> (what the failed attempt left, the verdict, retried?)
STATES: dict[str, tuple[list[Any], str, bool | None]] = {
    "complete manifest": ([layout, manifest], "complete", None),
    "complete, lock still held": ([layout, manifest, lock], "complete", None),
    "lock held by the run": ([layout, lock], "died", True),
    "lock and pending": ([layout, history, pending, lock], "died", True),
    "pending only": ([layout, history, pending], "commit_cut_short", True),
    "rows without manifest": ([layout, history], "failed_after_writing", True),
    "lock held by another run": (
        [layout, lambda lib: lock(lib, "backfill-manual", "prodclf tag backfill")],
        "library_busy",
        True,
    ),
    "unreadable lock": ([layout, unreadable_lock], "library_busy", True),
    "failed, retryable (store outage, commit conflict)": (
        [layout, lambda lib: failure(lib, True)],
        "failed",
        True,
    ),
    "failed, not retryable (version skew, GPU unavailable)": (
        [layout, lambda lib: failure(lib, False)],
        "failed",
        False,
    ),
    "nothing": ([layout], "nothing", False),
    "nothing, lock released": ([layout, released_lock], "nothing", False),
    "nothing, empty library": ([], "nothing", False),
}


def leave(lib: Path, steps: list[Any]) -> Path:
    for step in steps:
        step(lib)
    return lib


@pytest.mark.parametrize("state", list(STATES))
def test_classify_each_state_a_run_leaves(state: str, tmp_path: Path) -> None:
    steps, verdict, retry = STATES[state]
    lib = leave(tmp_path / "lib", steps)
    outcome = classify(str(lib), RUN_ID, DAY)
    assert outcome.state == verdict
    assert outcome.complete is (verdict == "complete")
    if retry is not None:
        assert outcome.retry is retry
    assert "\n" not in outcome.reason and RUN_ID in outcome.reason
    # A file:// location reads the same files.
    assert classify(lib.as_uri(), RUN_ID, DAY).state == verdict


def test_other_runs_do_not_count(tmp_path: Path) -> None:
    """Another run's manifest, pending manifest or rows say nothing about this run."""
    lib = tmp_path / "lib"
    for step in (manifest, pending, history):
        step(lib, "backfill-other")
    assert classify(str(lib), RUN_ID, DAY).state == "nothing"


def test_the_run_is_read_from_the_tag_jobs_arguments() -> None:
    args = ["--mode", "incremental", "--commodity-library", "s3://c/tags", "--model", "s3://m"]
    assert run_of([*args, "--run-date", DAY, "--run-id", RUN_ID]) == ("s3://c/tags", RUN_ID, DAY)
    assert run_of(args) is None  # no run id: the task cannot be judged, Airflow's default


# --- the DAGs' tag tasks --------------------------------------------------------------------


@pytest.fixture
def nightly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The nightly DAG deployed with a local commodity library, and a ``spark-submit``
    stand-in on PATH that exits with ``$FAKE_SPARK_SUBMIT_EXIT`` (as spark-submit does in
    cluster mode when the driver failed: 1, whatever prodclf's exit code was)."""
    lib = tmp_path / "lib"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "spark-submit"
    fake.write_text('#!/bin/sh\necho "spark-submit $*"\nexit "${FAKE_SPARK_SUBMIT_EXIT:-1}"\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{Path(sys.executable).parent}:/usr/bin:/bin")
    monkeypatch.setenv("AIRFLOW_CONN_SPARK_DEFAULT", '{"conn_type": "spark", "host": "yarn"}')
    monkeypatch.setenv("PRODCLF_COMMODITY_LIBRARY", str(lib))
    importlib.reload(prodclf_common)  # the DAG files read the environment when parsed
    try:
        bag = DagBag(dag_folder=str(DAGS), include_examples=False)
        assert bag.import_errors == {}
        yield bag.dags["prodclf_nightly"], lib
    finally:
        monkeypatch.undo()
        importlib.reload(prodclf_common)


def run_tag_task(dag: Any) -> Any:
    """The DAG's tag task as a worker runs it: templates rendered, then ``execute``."""
    task = dag.get_task("tag")
    task.render_template_fields(dict(CONTEXT))
    assert task.application_args[-4:] == ["--run-date", DAY, "--run-id", RUN_ID]
    return task.execute(dict(CONTEXT))


@pytest.mark.parametrize("state", list(STATES))
def test_a_failed_tag_task_is_retried_only_when_a_retry_can_help(
    state: str, nightly: tuple[Any, Path]
) -> None:
    dag, lib = nightly
    steps, verdict, retry = STATES[state]
    leave(lib, steps)
    tag = dag.get_task("tag")
    assert tag.retries == 1 and tag.retry_delay == timedelta(minutes=20)

    if verdict == "complete":
        assert run_tag_task(dag) is None  # the run is complete: the task succeeds
        return
    with pytest.raises(AirflowException) as failed:
        run_tag_task(dag)
    # AirflowFailException: failed without retrying; a plain AirflowException: retried.
    assert isinstance(failed.value, AirflowFailException) is (not retry)
    assert (type(failed.value) is AirflowException) is retry
    assert RUN_ID in str(failed.value)
    assert "Error code is: 1" in str(failed.value.__cause__)  # spark-submit's own failure


def test_a_tag_task_whose_spark_submit_succeeds_reads_nothing(
    nightly: tuple[Any, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    dag, lib = nightly
    monkeypatch.setenv("FAKE_SPARK_SUBMIT_EXIT", "0")
    assert run_tag_task(dag) is None
    assert not lib.exists()


def test_every_tag_task_follows_the_policy_and_the_others_keep_theirs() -> None:
    bag = DagBag(dag_folder=str(DAGS), include_examples=False)
    for dag_id in ("prodclf_nightly", "prodclf_backfill"):
        dag = bag.dags[dag_id]
        tag = dag.get_task("tag")
        assert type(tag).__name__ == "TagSubmitOperator", dag_id
        assert tag.retries == 1 and tag.retry_delay == timedelta(minutes=20), dag_id
        assert tag.application.endswith("/jobs/tag_catalog.py")
        report = dag.get_task("report")
        assert type(report).__name__ == "SparkSubmitOperator", dag_id
    nightly = bag.dags["prodclf_nightly"]
    for task_id in ("report", "vacuum"):  # the DAG's defaults
        assert nightly.get_task(task_id).retries == 1
        assert nightly.get_task(task_id).retry_delay == timedelta(minutes=15)
