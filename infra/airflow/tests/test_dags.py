"""The prodclf DAGs, loaded by Airflow's own DagBag (run with `make test-airflow`).

Checks: no import errors, the task graphs, and exactly what each task hands to
spark-submit (application, arguments after templating, conf).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import pytest
from airflow.models.dagbag import DagBag

AIRFLOW = Path(__file__).resolve().parents[1]
ROOT = AIRFLOW.parents[1]
DAGS = AIRFLOW / "dags"
sys.path.insert(0, str(DAGS))  # as Airflow does for its dags folder

from prodclf_backfill import selection_args  # noqa: E402
from prodclf_common import SPARK_CONF  # noqa: E402

BASE = "s3://example-catalog/base/products"
COMMODITY = "s3://example-catalog/commodity/tags"
MODEL = "s3://example-models/prodclf/current"


@pytest.fixture(scope="module")
def dagbag() -> DagBag:
    return DagBag(dag_folder=str(DAGS), include_examples=False)


def test_no_import_errors(dagbag: DagBag) -> None:
    assert dagbag.import_errors == {}
    assert sorted(dagbag.dag_ids) == ["prodclf_backfill", "prodclf_nightly"]


def edges(dag: Any) -> set[tuple[str, str]]:
    return {(t.task_id, d) for t in dag.tasks for d in t.downstream_task_ids}


def test_nightly_graph_and_schedule(dagbag: DagBag) -> None:
    dag = dagbag.dags["prodclf_nightly"]
    assert sorted(dag.task_ids) == ["report", "tag", "vacuum"]
    assert edges(dag) == {("tag", "report"), ("report", "vacuum")}
    assert dag.max_active_runs == 1
    assert dag.catchup is False
    assert "30 2 * * *" in str(dag.timetable.summary)


def test_nightly_spark_submit_arguments(dagbag: DagBag) -> None:
    dag = dagbag.dags["prodclf_nightly"]
    tag, report, vacuum = (dag.get_task(t) for t in ("tag", "report", "vacuum"))
    assert tag.application == "/opt/prodclf/jobs/tag_catalog.py"
    assert tag.application_args == [
        "--mode", "incremental",
        "--base-library", BASE,
        "--commodity-library", COMMODITY,
        "--model", MODEL,
        "--run-date", "{{ ds }}",
        "--run-id", "nightly-{{ ts_nodash }}",
    ]  # fmt: skip
    assert report.application == "/opt/prodclf/jobs/build_report.py"
    assert report.application_args == [
        "nightly-{{ ts_nodash }}", "--commodity-library", COMMODITY,
    ]  # fmt: skip
    assert vacuum.application == "/opt/prodclf/jobs/vacuum_library.py"
    assert vacuum.application_args == [
        "--commodity-library", COMMODITY, "--keep-days", "90", "--apply",
    ]  # fmt: skip
    for task in (tag, report, vacuum):
        assert task.conf == SPARK_CONF
        assert task._conn_id == "spark_default"
        assert task._archives == "s3a://example-artifacts/prodclf-env.tar.gz#environment"
        assert task._deploy_mode == "cluster"


def test_nightly_templates_render(dagbag: DagBag) -> None:
    """The templated arguments with a run's context: the date and the shared run id."""
    import jinja2

    dag = dagbag.dags["prodclf_nightly"]
    env = jinja2.Environment(undefined=jinja2.StrictUndefined)
    context = {"ds": "2026-11-21", "ts_nodash": "20261121T023000"}
    rendered = {
        t: [env.from_string(a).render(context) for a in dag.get_task(t).application_args]
        for t in ("tag", "report")
    }
    run_id = "nightly-20261121T023000"
    assert rendered["tag"][-4:] == ["--run-date", "2026-11-21", "--run-id", run_id]
    assert rendered["report"][0] == "nightly-20261121T023000"


def test_spark_conf_agrees_with_spark_defaults() -> None:
    props = {}
    for line in (ROOT / "infra" / "spark" / "spark-defaults.conf").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, value = re.split(r"\s+", line.strip(), maxsplit=1)
            props[key] = value
    assert props["spark.executor.memoryOverhead"] == "6g"
    assert {k: v for k, v in SPARK_CONF.items() if k != "spark.pyspark.python"} == props


def test_backfill_graph_and_params(dagbag: DagBag) -> None:
    dag = dagbag.dags["prodclf_backfill"]
    assert sorted(dag.task_ids) == ["report", "selection", "tag"]
    assert edges(dag) == {("selection", "tag"), ("selection", "report"), ("tag", "report")}
    assert dag.timetable.summary in ("None", "Never")  # triggered by hand only
    assert set(dag.params.keys()) == {"run_date", "model", "products", "where", "retry_errors"}
    assert dag.params.get_param("retry_errors").value is False
    tag = dag.get_task("tag")
    assert tag.application == "/opt/prodclf/jobs/tag_catalog.py"
    assert tag.conf == SPARK_CONF


def test_backfill_arguments_for_each_selection() -> None:
    params = {"run_date": "2026-11-21", "model": None, "products": None, "where": None}
    head = ["--mode", "backfill", "--base-library", BASE, "--commodity-library", COMMODITY]
    run = "manual__2026-11-21T10:00:00+00:00"
    run_id = "backfill-manual__2026-11-21T10-00-00-00-00"
    tail = ["--run-date", "2026-11-21", "--run-id", run_id]

    out = selection_args({**params, "where": "brand = 'acme'"}, run)
    assert out == {
        "args": [*head, "--model", MODEL, *tail, "--where", "brand = 'acme'"],
        "run_id": run_id,
    }
    out = selection_args(
        {**params, "products": "s3://x/ids.txt", "retry_errors": True, "model": "s3://m/v4"}, run
    )
    assert out["args"] == [
        *head, "--model", "s3://m/v4", *tail,
        "--products", "s3://x/ids.txt", "--retry-errors",
    ]  # fmt: skip
    with pytest.raises(ValueError, match="needs products, where or retry_errors"):
        selection_args(params, run)
    with pytest.raises(ValueError):
        selection_args({**params, "where": "x", "run_date": "21/11/2026"}, run)
