"""Failures of the whole run, through ``prodclf tag`` as its own process.

A store that is down or rejects the credentials is found by the preflight probe before
any Spark work (exit 3, one line, nothing written); a store that breaks down mid-run
fails the run at the error-rate check, before the write: no manifest, and the date's
previous complete run is left exactly as it was. A healthy run loads the model once per
Python worker, however many tasks each worker runs.
"""

from __future__ import annotations

import json
import socket
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from catalog import tree_digest
from conftest import COLORS, ROOT, png_bytes
from counting_daemon import LOADS_ENV
from faultproxy import BAD_KEY, BAD_SIGNATURE, EXPIRED, FaultProxy
from jobproc import (
    color_products,
    complete_runs,
    job_env,
    make_bucket,
    manifests,
    outcome,
    read_partition,
    running_job,
    staging_debris,
    tag_argv,
    write_base,
    write_config,
)

from prodclf.library.table import CommodityLibrary

pytestmark = [pytest.mark.slow, pytest.mark.spark4]

RUN_DATE = "2026-11-23"
EXIT_RUN_FAILED = 3


def s3_catalog(tmp: Path, s3: Any, n: int) -> Path:
    bucket = make_bucket(s3, "outage")
    colors = color_products(s3, bucket, n)
    rows = [{"product_id": p, "image_uri": f"s3://{bucket}/img/{p}.png"} for p in colors]
    return write_base(tmp / "base", rows)


def config(tmp: Path, **storage: Any) -> Path:
    return write_config(
        tmp / "job.yaml",
        storage={
            "allowed_schemes": ["s3"],
            "connect_timeout_s": 1.0,
            "read_timeout_s": 2.0,
            "max_attempts": 2,
            "fetch_concurrency": 2,
            **storage,
        },
        inference={"arrow_batch_size": 4, "model_batch_size": 4},
    )


def one_line_failure(output: str) -> str:
    lines = [ln for ln in output.splitlines() if ln.startswith("prodclf: error:")]
    assert len(lines) == 1, output[-4000:]
    assert "Traceback" not in output, output[-4000:]
    return lines[0]


def closed_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def test_a_store_that_is_down_fails_the_run_before_any_spark_work(
    s3_endpoint: str, s3: Any, color_bundle: Path, tmp_path: Path
) -> None:
    base = s3_catalog(tmp_path, s3, 12)
    out = tmp_path / "commodity"
    argv = tag_argv(base, out, color_bundle, RUN_DATE, "down", config(tmp_path))
    with running_job(argv, job_env(closed_port()), tmp_path / "logs") as job:
        rc = job.wait()
    line = one_line_failure(job.output())
    assert rc == EXIT_RUN_FAILED
    assert "image store probe failed, nothing was run: EndpointConnectionError" in line
    assert "SparkContext" not in job.output() and "log4j" not in job.output()  # no JVM
    assert not out.exists()


@pytest.mark.parametrize("kind", [BAD_KEY, BAD_SIGNATURE])
def test_rejected_credentials_fail_the_run_before_any_spark_work(
    s3_endpoint: str, s3: Any, color_bundle: Path, tmp_path: Path, kind: str
) -> None:
    base = s3_catalog(tmp_path, s3, 12)
    out = tmp_path / "commodity"
    argv = tag_argv(base, out, color_bundle, RUN_DATE, "badkey", config(tmp_path))
    with FaultProxy(s3_endpoint) as proxy:
        proxy.fail_after(0, kind)
        with running_job(argv, job_env(proxy.endpoint), tmp_path / "logs") as job:
            rc = job.wait()
        gets = sum(1 for m, _, _ in proxy.log if m == "GET")
    line = one_line_failure(job.output())
    code = {BAD_KEY: "InvalidAccessKeyId", BAD_SIGNATURE: "SignatureDoesNotMatch"}[kind]
    assert rc == EXIT_RUN_FAILED
    assert f"the store refused the credentials ({code})" in line
    assert gets == 1  # one probe, no retry, no Spark
    assert not out.exists()


def write_prior_run(out: Path, run_id: str, products: list[str]) -> None:
    """A complete earlier run of the date, as a downstream reader sees one."""
    CommodityLibrary(str(out)).create_layout()
    part = out / "tags_history" / f"run_date={RUN_DATE}" / f"run_id={run_id}"
    part.mkdir(parents=True)
    frame = pd.DataFrame({"product_id": products, "status": "ok", "error_code": None})
    frame.to_parquet(part / "part-00000.parquet", index=False)
    (out / "_runs").mkdir()
    (out / "_runs" / f"{run_id}.json").write_text(
        f'{{"run_id": "{run_id}", "run_date": "{RUN_DATE}", "rows_written": {len(products)}}}'
    )


def test_a_store_failing_mid_run_publishes_nothing_and_keeps_the_previous_run(
    s3_endpoint: str, s3: Any, color_bundle: Path, tmp_path: Path
) -> None:
    n = 40
    base = s3_catalog(tmp_path, s3, n)
    out = tmp_path / "commodity"
    write_prior_run(out, "prior", [f"p{i:03d}" for i in range(n)])
    before = tree_digest(out)
    argv = tag_argv(base, out, color_bundle, RUN_DATE, "midway", config(tmp_path))
    with FaultProxy(s3_endpoint) as proxy:
        proxy.fail_after(15, EXPIRED)  # the probe and 14 products, then the token expires
        with running_job(argv, job_env(proxy.endpoint), tmp_path / "logs") as job:
            rc = job.wait()
        outcomes = Counter(o for m, _, o in proxy.log if m == "GET")
    line = one_line_failure(job.output())
    assert rc == EXIT_RUN_FAILED, job.tail()
    assert outcomes["forwarded"] == 15 and outcomes[EXPIRED] >= 10, outcomes
    assert line.startswith("prodclf: error: run midway failed, nothing published: ")
    assert "products are store_unavailable rows" in line
    assert "e.g. the store refused the credentials (ExpiredToken)" in line
    # Nothing was published: the earlier complete run is intact and still the one to read;
    # beside it, only the record a scheduler reads to retry (spark-submit in cluster mode).
    failure = json.loads((out / "_runs" / "midway.failure").read_text())
    assert failure["exit_code"] == 3 and failure["retryable"] is True
    assert failure["message"] == line.removeprefix("prodclf: error: ")
    (out / "_runs" / "midway.failure").unlink()
    assert tree_digest(out) == before
    assert complete_runs(out, RUN_DATE) == ["prior"]
    assert set(manifests(out)) == {"prior"}
    assert not staging_debris(out)


def test_the_model_is_loaded_once_per_python_worker(color_bundle: Path, tmp_path: Path) -> None:
    """Six inference tasks on two cores: each reused Python worker loads the model once."""
    images = tmp_path / "images"
    images.mkdir()
    rows = []
    for i in range(30):
        color = "red" if i % 2 else "blue"
        (images / f"{i}.png").write_bytes(png_bytes(COLORS[color]))
        rows.append({"product_id": f"p{i:02d}", "image_uri": f"file://{images}/{i}.png"})
    base = write_base(tmp_path / "base", rows)
    out = tmp_path / "commodity"
    cfg = write_config(
        tmp_path / "job.yaml",
        storage={"allowed_schemes": ["file"]},
        inference={"arrow_batch_size": 4, "model_batch_size": 4, "rows_per_partition": 5},
        spark_conf={"spark.python.daemon.module": "counting_daemon"},
    )
    loads = tmp_path / "loads.txt"
    argv = tag_argv(base, out, color_bundle, RUN_DATE, "once", cfg)
    env = job_env(None, PYTHONPATH=str(ROOT / "tests"), **{LOADS_ENV: str(loads)})
    with running_job(argv, env, tmp_path / "logs") as job:
        rc = job.wait()
    assert rc == 0, job.tail()
    table = outcome(read_partition(out, RUN_DATE))
    assert len(table) == 30 and {s for s, _ in table.values()} == {"ok"}
    pids = Counter(loads.read_text().split())
    assert pids and set(pids.values()) == {1}, pids  # no worker loaded it twice
    assert sum(pids.values()) < 6  # fewer loads than the 6 tasks
