"""Failures part-way through a run, and the rerun that repairs them.

(a) The whole job (Python driver, its JVM, the Python workers) is SIGKILLed while it is
writing the commodity library: the run leaves no manifest, the date's previous complete
run stays readable and complete, and a rerun of the same date replaces it exactly.
(b) A Python worker crashes in the middle of a task: Spark retries the task and the output
has neither duplicates nor gaps.

Both jobs run as ``prodclf tag`` processes of their own (see ``jobproc``): (a) so it can
be killed, reaching S3 through ``FaultProxy`` so that it can be held mid-run
deterministically; (b) so that it gets a master that allows a task retry
(``local[2,2]``) and the crashing daemon module, which the tests' shared session has not.
"""

from __future__ import annotations

import re
import time
from datetime import date
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pandas as pd
import pytest
from catalog import tree_digest
from conftest import ROOT, run_tag_job
from crashing_daemon import AT_ENV, MARKER_ENV
from faultproxy import FaultProxy
from jobproc import (
    JobProcess,
    color_products,
    complete_runs,
    current_rows,
    job_env,
    make_bucket,
    manifests,
    outcome,
    read_partition,
    running_job,
    staging_debris,
    tag_argv,
    uncommitted_parts,
    write_base,
    write_config,
)
from pyspark.sql import SparkSession

from prodclf.config import InferenceConfig, StorageConfig, TagConfig
from prodclf.library.lock import LockedError
from prodclf.library.table import CommodityLibrary

pytestmark = [pytest.mark.slow, pytest.mark.spark4]

DAY1, DAY2 = "2026-11-20", "2026-11-21"
PRODUCTS = 40
TAG_COLUMNS = ("category", "category_id", "confidence", "top_k", "model_version")


def s3_catalog(tmp: Path, prefix: str) -> tuple[Path, dict[str, tuple[Any, ...]]]:
    """PRODUCTS red/blue products on S3 and their base library; returns (base, expected)."""
    s3 = boto3.client("s3")
    bucket = make_bucket(s3, prefix)
    colors = color_products(s3, bucket, PRODUCTS)
    rows = [{"product_id": p, "image_uri": f"s3://{bucket}/img/{p}.png"} for p in colors]
    base = write_base(tmp / "base", rows)
    return base, {p: ("ok", None, c) for p, c in colors.items()}


def base_uri_path(base: Path, product_id: str) -> str:
    """The request path of a product's image (``/bucket/key``), from the base library."""
    frame = pd.read_parquet(base)
    uri = frame.set_index("product_id").loc[product_id, "image_uri"]
    return "/" + str(uri).removeprefix("s3://")


def in_process_run(
    spark: SparkSession, base: Path, out: Path, bundle: Path, day: str, run_id: str, **more: Any
) -> dict[str, Any]:
    cfg = TagConfig(
        base_library=str(base),
        commodity_library=str(out),
        model=str(bundle),
        run_date=date.fromisoformat(day),
        run_id=run_id,
        storage=StorageConfig(allowed_schemes=("s3",)),
        inference=InferenceConfig(model_batch_size=8, use_gpu=False),
        **more,
    )
    return run_tag_job(cfg, spark)


def tags(out: Path, day: str, run_id: str) -> dict[str, tuple[Any, ...]]:
    """What a run decided per product (everything but run_id and tagged_at)."""
    table = outcome(read_partition(out, day, run_id), *TAG_COLUMNS)
    return {pid: tuple(plain(v) for v in row) for pid, row in table.items()}


def plain(value: Any) -> Any:
    """Arrow's nested values (numpy arrays of dicts) as lists and dicts, comparable with ==."""
    if isinstance(value, (np.ndarray, list)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


def wait_for(job: JobProcess, what: str, check: Any, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if not job.alive():
            pytest.fail(f"the job exited ({job.proc.returncode}) before {what}\n{job.tail()}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} within {timeout_s}s\n{job.tail()}")
        time.sleep(0.25)


def test_a_run_killed_mid_run_leaves_no_manifest_and_its_rerun_completes_it(
    spark: SparkSession, s3_endpoint: str, color_bundle: Path, tmp_path: Path
) -> None:
    base, expected = s3_catalog(tmp_path, "rerun")
    out = tmp_path / "commodity"
    in_process_run(spark, base, out, color_bundle, DAY1, "day1")
    in_process_run(spark, base, out, color_bundle, DAY2, "day2-first")
    history = out / "tags_history"
    before = {
        "base": tree_digest(base),
        "day1": tree_digest(history / f"run_date={DAY1}"),
        "day2": tree_digest(history / f"run_date={DAY2}"),
        "current": tree_digest(out / "tags_current"),
    }
    first_tags = tags(out, DAY2, "day2-first")
    assert complete_runs(out, DAY2) == ["day2-first"]

    # The killed run reaches S3 through a proxy that holds the request for one image
    # unanswered: the task with that product cannot finish, while the others tag their
    # products. The rows are checked (error rates) before anything is written, so nothing
    # of this run is in the library yet. It is killed in that state.
    config = write_config(
        tmp_path / "slow.yaml",
        storage={"allowed_schemes": ["s3"], "read_timeout_s": 300, "fetch_concurrency": 2},
        inference={"arrow_batch_size": 4, "model_batch_size": 4, "rows_per_partition": 10},
    )
    argv = tag_argv(base, out, color_bundle, DAY2, "killed", config)
    held = base_uri_path(base, "p017")
    with FaultProxy(s3_endpoint) as proxy:
        proxy.hold([held])
        with running_job(argv, job_env(proxy.endpoint), tmp_path / "logs") as job:

            def mid_run() -> bool:
                return proxy.waiting > 0 and proxy.forwarded() >= PRODUCTS - 10

            wait_for(job, "the other products fetched by the killed run", mid_run)
            job.kill_hard()
            assert not job.pids()

    # What the kill left: nothing of the killed run's rows (they are judged before any
    # is written), no manifest, its dead lock; the other runs and tags_current untouched.
    assert not staging_debris(out) and not uncommitted_parts(out)
    assert "killed" not in manifests(out)
    assert tree_digest(history / f"run_date={DAY2}") == before["day2"]
    assert tree_digest(out / "tags_current") == before["current"]
    assert complete_runs(out, DAY2) == ["day2-first"]
    assert "killed" in (out / "_lock.json").read_text()

    # The rerun of the same run id takes over the dead run's lock and completes it.
    manifest = in_process_run(spark, base, out, color_bundle, DAY2, "killed")

    rows = read_partition(out, DAY2, "killed")
    assert outcome(rows, "category") == expected  # every product exactly once
    assert manifest["rows_written"] == manifest["products_in"] == PRODUCTS
    assert complete_runs(out, DAY2) == ["day2-first", "killed"]
    assert sorted(manifests(out)) == ["day1", "day2-first", "killed"]
    assert tags(out, DAY2, "killed") == first_tags  # same input, model and date: same tags
    # Other runs and the base library are byte for byte what they were.
    assert tree_digest(history / f"run_date={DAY1}") == before["day1"]
    assert tree_digest(history / f"run_date={DAY2}" / "run_id=day2-first") == {
        k.removeprefix("run_id=day2-first/"): v for k, v in before["day2"].items()
    }
    assert tree_digest(base) == before["base"]
    assert not (out / "_lock.json").exists()
    # Readers do not see the dead run's staging files: Spark reads the run's rows only.
    day2 = date.fromisoformat(DAY2)
    assert CommodityLibrary(str(out)).read_history(spark, day2, run_id="killed").count() == PRODUCTS


def test_a_second_run_is_refused_while_one_runs_and_a_killed_incremental_run_is_repaired(
    spark: SparkSession, s3_endpoint: str, color_bundle: Path, tmp_path: Path
) -> None:
    base, expected = s3_catalog(tmp_path, "incr")
    out = tmp_path / "commodity"
    in_process_run(spark, base, out, color_bundle, DAY1, "full-1")
    # Ten new products arrive in the catalog.
    s3 = boto3.client("s3")
    bucket = pd.read_parquet(base)["image_uri"].iloc[0].split("/")[2]
    new = color_products(s3, bucket, 10, prefix="n")
    rows = [
        *pd.read_parquet(base).to_dict("records"),
        *[{"product_id": p, "image_uri": f"s3://{bucket}/img/{p}.png"} for p in new],
    ]
    base2 = write_base(tmp_path / "base2", rows)
    current_before = tree_digest(out / "tags_current")

    config = write_config(
        tmp_path / "slow.yaml",
        storage={"allowed_schemes": ["s3"], "read_timeout_s": 300, "fetch_concurrency": 2},
        inference={"arrow_batch_size": 2, "model_batch_size": 2, "rows_per_partition": 5},
    )
    argv = [*tag_argv(base2, out, color_bundle, DAY2, "inc", config), "--mode", "incremental"]
    with FaultProxy(s3_endpoint) as proxy:
        proxy.hold([base_uri_path(base2, "n005")])
        with running_job(argv, job_env(proxy.endpoint), tmp_path / "logs") as job:
            wait_for(
                job,
                "the incremental run holding its lock mid-fetch",
                lambda: proxy.waiting > 0 and (out / "_lock.json").exists(),
            )
            # A second run on the library meanwhile: refused, with the owner; nothing written.
            with pytest.raises(LockedError) as refused:
                in_process_run(spark, base2, out, color_bundle, DAY2, "second")
            assert "is locked by prodclf tag incremental run inc (host" in str(refused.value)
            job.kill_hard()

    assert sorted(manifests(out)) == ["full-1"]
    assert tree_digest(out / "tags_current") == current_before

    manifest = in_process_run(spark, base2, out, color_bundle, DAY2, "inc", mode="incremental")

    assert manifest["reasons"] == {"new": 10}
    assert outcome(read_partition(out, DAY2, "inc"), "category") == {
        p: ("ok", None, c) for p, c in new.items()
    }
    current = current_rows(out)
    assert outcome(current, "category", "run_id") == {
        **{p: (*v, "full-1") for p, v in expected.items()},
        **{p: ("ok", None, c, "inc") for p, c in new.items()},
    }
    assert complete_runs(out, DAY2) == ["inc"]
    assert sorted(manifests(out)) == ["full-1", "inc"]


def test_a_crashed_python_worker_is_retried_without_duplicates_or_gaps(
    s3_endpoint: str, color_bundle: Path, tmp_path: Path
) -> None:
    base, expected = s3_catalog(tmp_path, "crash")
    out = tmp_path / "commodity"
    marker = tmp_path / "crashed-once"
    config = write_config(
        tmp_path / "crash.yaml",
        storage={"allowed_schemes": ["s3"], "fetch_concurrency": 2},
        inference={"arrow_batch_size": 4, "model_batch_size": 4},
        spark_conf={"spark.python.daemon.module": "crashing_daemon"},
    )
    # local[2,2]: two cores, and a failed task is tried twice in all (local[2] gives up).
    argv = tag_argv(base, out, color_bundle, DAY1, "crash-run", config, master="local[2,2]")
    env = job_env(
        s3_endpoint,
        PYTHONPATH=str(ROOT / "tests"),
        PRODCLF_SPARK_LOG_LEVEL="WARN",  # Spark's "Lost task" lines are warnings
        **{MARKER_ENV: str(marker), AT_ENV: "9"},
    )
    with running_job(argv, env, tmp_path / "logs") as job:
        rc = job.wait()
    log = job.output()
    assert rc == 0, job.tail()

    # The crash happened, once, mid-task (at the worker's 9th fetch, after its first batch
    # had gone to the writer), and Spark retried the task: one lost attempt, a first one.
    assert marker.is_file(), log[-4000:]
    assert "Python worker exited unexpectedly (crashed)" in log
    assert log.count("Lost task") == 1, log[-4000:]
    assert re.search(r"Lost task \d+\.0 in stage", log)

    rows = read_partition(out, DAY1)
    assert outcome(rows, "category") == expected  # no duplicates, no gaps
    assert len(rows) == PRODUCTS
    manifest = manifests(out)["crash-run"]
    assert manifest["rows_written"] == manifest["products_in"] == manifest["ok"] == PRODUCTS
    assert complete_runs(out, DAY1) == ["crash-run"]
    assert not staging_debris(out)
