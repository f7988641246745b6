"""The whole tag job with everything on S3: base library, images, bundle, commodity library.

Parquet (the base library, ``tags_history``, the ``tags_current`` snapshots) goes through
Spark's s3a connector; the pointer, the lock, the manifests, the runs table, the layout
marker, the bundle and the images through boto3; both at the loopback S3 server, nothing
patched. The library is given as ``s3://`` in one run and ``s3a://`` in another: both
must address the same objects. Read back with Spark, and with boto3 + pyarrow's own S3
client (``s3lake``), as a consumer without Spark would.

The library's first run goes through ``FaultProxy`` for all its s3a traffic, which answers
a seeded 20% of the requests that change the store (PUT: uploads and copies; POST: bulk
deletes; DELETE) with ``503 SlowDown``.

The output committer is the classic FileOutputCommitter, algorithm v1 (infra/README.md,
"Output committer"): its job commit renames (copies, then deletes) files one by one, so a
killed commit leaves part of a run at its final path. The kill test catches a job in
exactly that state and shows that no reader following the pointer or the manifest rule
sees it, and that the rerun leaves exactly the expected rows.
"""

from __future__ import annotations

import io
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import boto3
import pyarrow.parquet as pq
import pytest
from conftest import COLORS, S3A_JARS, png_bytes, run_tag_job
from faultproxy import SLOWDOWN, FaultProxy
from jobproc import job_env, running_job, tag_argv, write_config
from pyspark.sql import DataFrame, SparkSession
from pyspark.testing import assertDataFrameEqual
from s3lake import (
    S3A_MARKS,
    Expected,
    Lake,
    complete_runs,
    current_by_pointer,
    keys,
    make_lake,
    quick_s3a_retries,
    read_json,
)
from support.outputs import without_churn

from prodclf.config import InferenceConfig, TagConfig
from prodclf.library.table import CommodityLibrary

pytestmark = S3A_MARKS

DAY = date(2026, 11, 20)
HISTORY = "run_id string, product_id string, status string, error_code string, category string"
CURRENT = (
    "product_id string, status string, category string, run_id string, "
    "error_code string, error_run_id string, updated_run_id string"
)
#: The requests that change the store (uploads, copies, deletes, bulk deletes): where a
#: commit could lose or duplicate a file. Reads are answered 503 in storage/test_s3a.py.
WRITES = ("PUT", "POST", "DELETE")


def config(lake: Lake, run_id: str, scheme: str = "s3") -> TagConfig:
    """A run of ``DAY``; the library and the bundle spelled ``scheme``, the base library
    the other way."""
    return TagConfig(
        base_library=lake.uri("base", "s3a" if scheme == "s3" else "s3"),
        commodity_library=lake.uri("commodity", scheme),
        model=lake.uri("models/color", scheme),
        run_date=DAY,
        run_id=run_id,
        inference=InferenceConfig(model_batch_size=8, use_gpu=False, rows_per_partition=4),
    )


def expected_history(spark: SparkSession, expected: Expected, run_id: str) -> DataFrame:
    rows = [(run_id, pid, *outcome) for pid, outcome in expected.items()]
    return spark.createDataFrame(rows, HISTORY)


def history(spark: SparkSession, lake: Lake, run_id: str | None = None) -> DataFrame:
    """``run_id``'s rows of ``DAY``; without it, every row under ``run_date=DAY``."""
    rows = CommodityLibrary(lake.uri("commodity", "s3a")).read_history(spark, DAY, run_id)
    return rows.select("run_id", "product_id", "status", "error_code", "category")


def expected_current(spark: SparkSession, expected: Expected, run_id: str) -> DataFrame:
    rows = []
    for pid, (status, code, category) in expected.items():
        if status == "ok":
            rows.append((pid, "ok", category, run_id, None, None, run_id))
        else:  # never tagged ok: no ok-tag columns, its error and the run that made it
            rows.append((pid, "error", None, None, code, run_id, run_id))
    return spark.createDataFrame(rows, CURRENT)


def current(spark: SparkSession, lake: Lake) -> DataFrame:
    table = CommodityLibrary(lake.uri("commodity")).read_current(spark)
    return table.select(*[f.split()[0] for f in CURRENT.split(", ")])


@dataclass
class Library:
    lake: Lake
    proxy: FaultProxy  # in front of the tests' session's s3a traffic to the lake
    first: dict[str, Any]  # the manifest of run d1
    d1_expected: Expected


@pytest.fixture(scope="module")
def library(spark: SparkSession, s3_endpoint: str, color_bundle: Path) -> Iterator[Library]:
    """A lake and its library's first run ``d1``, whose s3a traffic went through a proxy
    answering 503 to a fifth of the writes. The session's s3a FileSystem of the bucket
    keeps the proxy's endpoint: the proxy stays up for the module, forwarding only."""
    lake = make_lake(boto3.client("s3"), color_bundle)
    with FaultProxy(s3_endpoint, rate=0.2, kinds=(SLOWDOWN,), seed=13, methods=WRITES) as proxy:
        quick_s3a_retries(spark, lake.bucket, endpoint=proxy.endpoint)
        first = run_tag_job(config(lake, "d1"), spark)
        proxy.rate = 0.0
        yield Library(lake, proxy, first, dict(lake.expected))


def test_the_whole_job_on_s3_through_503s_leaves_exactly_its_rows(
    spark: SparkSession, s3: Any, s3_endpoint: str, library: Library
) -> None:
    lake, first, b = library.lake, library.first, library.lake.bucket

    faults = Counter(m for m, _, outcome in library.proxy.log if outcome == SLOWDOWN)
    assert sum(faults.values()) >= 2 and "PUT" in faults, faults  # about 13 expected
    # Every row exactly once, in tags_history and in tags_current.
    assertDataFrameEqual(history(spark, lake), expected_history(spark, library.d1_expected, "d1"))
    assertDataFrameEqual(current(spark, lake), expected_current(spark, library.d1_expected, "d1"))
    assert first["commodity_library"] == f"s3://{b}/commodity"
    assert first["base_library"] == f"s3://{b}/base"
    assert (first["rows_written"], first["ok"], first["errors"]) == (7, 6, {"not_found": 1})

    # The warehouse's small objects, where boto3 put them; no lock, no staging left.
    found = keys(s3, b, "commodity/")
    for key in (
        "commodity/_prodclf_layout.json",
        "commodity/tags_current/_CURRENT.json",
        "commodity/_runs/d1.json",
        "commodity/_runs/d1.html",
        "commodity/runs/runs.parquet",
    ):
        assert key in found, sorted(found)
    assert "commodity/_lock.json" not in found
    assert [k for k in found if "_temporary" in k or ".spark-staging" in k] == []
    pointer = read_json(s3, b, "commodity/tags_current/_CURRENT.json")
    assert (pointer["version"], pointer["run_id"], pointer["rows"]) == (1, "d1", 7)
    assert complete_runs(s3, b, DAY.isoformat()) == ["d1"]
    # pyarrow's own S3 client reads tags_current through the pointer, row for row.
    by_arrow = current_by_pointer(s3_endpoint, s3, b)
    assert dict(zip(by_arrow["product_id"], by_arrow["category"], strict=True)) == {
        p: c for p, (_, _, c) in library.d1_expected.items()
    }

    # The complete run rerun: nothing rewritten but the runs table (rebuilt, same manifests).
    before = keys(s3, b, "commodity/")
    assert run_tag_job(config(lake, "d1"), spark) == without_churn(first)
    after = keys(s3, b, "commodity/")
    changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    assert changed <= {"commodity/runs/runs.parquet"}, changed


def test_a_run_killed_mid_commit_is_invisible_and_its_rerun_replaces_only_its_run(
    spark: SparkSession, s3: Any, s3_endpoint: str, library: Library, tmp_path: Path
) -> None:
    lake, b = library.lake, library.lake.bucket
    # p00's photo is re-shot red: the new run's rows differ from d1's.
    s3.put_object(Bucket=b, Key="images/p00.png", Body=png_bytes(COLORS["red"]))
    lake.expected["p00"] = ("ok", None, "red")
    before = keys(s3, b, "commodity/")
    pointer_before = read_json(s3, b, "commodity/tags_current/_CURRENT.json")
    current_before = CommodityLibrary(lake.uri("commodity")).read_current(spark).collect()
    d1_objects = {k: v for k, v in before.items() if "/run_id=d1/" in k}
    assert d1_objects

    # A second run of the same date, in a process of its own (its own JVM with the s3a
    # jars), every request of it (boto3 and s3a) through a proxy that lets the first file
    # of the job commit's rename into the run's final partition through and holds the
    # others: FileOutputCommitter v1's job commit caught half-way.
    final = f"/{b}/commodity/tags_history/run_date={DAY}/run_id=d2/"
    config_file = write_config(
        tmp_path / "job.yaml",
        storage={"allowed_schemes": ["s3"]},
        inference={"arrow_batch_size": 4, "model_batch_size": 4, "rows_per_partition": 2},
    )
    argv = tag_argv(
        lake.uri("base", "s3a"),
        lake.uri("commodity"),
        lake.uri("models/color"),
        DAY.isoformat(),
        "d2",
        config_file,
        master="local[1]",  # one Python worker to start: the 4 tasks run one after another
    )
    env = job_env(PRODCLF_SPARK_JARS=",".join(map(str, S3A_JARS)))
    with FaultProxy(s3_endpoint) as proxy:
        proxy.hold_matching(
            lambda method, path: (
                method == "PUT" and unquote(path).startswith(final) and path.endswith(".parquet")
            ),
            after=1,
        )
        env["AWS_ENDPOINT_URL_S3"] = proxy.endpoint
        with running_job(argv, env, tmp_path / "logs") as job:
            deadline = time.monotonic() + 240
            while not (proxy.waiting and parquet_under(s3, b, final[len(b) + 2 :])):
                assert job.alive(), f"the job exited ({job.proc.returncode})\n{job.tail()}"
                assert time.monotonic() < deadline, f"no commit caught\n{job.tail()}"
                time.sleep(0.25)
            job.kill_hard()
            assert not job.pids()

    # At the final path: one of the run's files (the rename is not atomic), which a reader
    # listing tags_history without the rule sees...
    assert len(parquet_under(s3, b, final[len(b) + 2 :])) == 1
    assert 0 < history(spark, lake, "d2").count() < len(lake.expected)
    # ...but no reader that follows the pointer or the manifests: no manifest, one complete
    # run that date, the pointer and tags_current as they were, every object outside the
    # run's own partition and the staging area as it was. The dead run's lock is left.
    after = keys(s3, b, "commodity/")
    assert "commodity/_runs/d2.json" not in after
    assert complete_runs(s3, b, DAY.isoformat()) == ["d1"]
    assert read_json(s3, b, "commodity/tags_current/_CURRENT.json") == pointer_before
    assert CommodityLibrary(lake.uri("commodity")).read_current(spark).collect() == current_before
    unchanged = {
        k: v
        for k, v in after.items()
        if "/run_id=d2/" not in k and not staging(k) and k != "commodity/_lock.json"
    }
    assert unchanged == before
    assert "run d2" in read_json(s3, b, "commodity/_lock.json")["owner"]

    # The rerun of the run id, the library and the bundle spelled s3a:// this time (the
    # same objects: it finds the dead run's lock, takes it over, and d1's pointer).
    manifest = run_tag_job(config(lake, "d2", scheme="s3a"), spark)

    assert manifest["commodity_library"] == f"s3://{b}/commodity"
    assert manifest["model_uri"] == f"s3://{b}/models/color"
    assert manifest["previous_snapshot"] == pointer_before["snapshot"]
    assert manifest["rows_written"] == manifest["products_in"] == len(lake.expected)
    assertDataFrameEqual(history(spark, lake, "d2"), expected_history(spark, lake.expected, "d2"))
    # The whole date, as a reader listing it sees it: d1's rows and d2's, each once.
    assertDataFrameEqual(
        history(spark, lake),
        expected_history(spark, library.d1_expected, "d1").union(
            expected_history(spark, lake.expected, "d2")
        ),
    )
    assertDataFrameEqual(current(spark, lake), expected_current(spark, lake.expected, "d2"))
    assert complete_runs(s3, b, DAY.isoformat()) == ["d1", "d2"]
    after = keys(s3, b, "commodity/")
    assert {k: v for k, v in after.items() if "/run_id=d1/" in k} == d1_objects
    assert "commodity/_lock.json" not in after
    runs = s3.get_object(Bucket=b, Key="commodity/runs/runs.parquet")["Body"].read()
    assert pq.read_table(io.BytesIO(runs)).column("run_id").to_pylist() == ["d1", "d2"]


def staging(key: str) -> bool:
    """A Spark write's staging object below tags_history (``.spark-staging-*``,
    ``_temporary``): hidden from readers, which skip paths starting with ``.`` or ``_``."""
    parts = key.split("/")
    return parts[1] == "tags_history" and any(p.startswith((".", "_")) for p in parts[2:])


def parquet_under(s3: Any, bucket: str, prefix: str) -> list[str]:
    return [k for k in keys(s3, bucket, prefix) if k.endswith(".parquet")]
