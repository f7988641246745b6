"""An Iceberg commodity library through the real commands: a Parquet library's full run,
``migrate --to iceberg``, incremental and backfill runs, a run killed mid-run and rerun,
``vacuum``; then read from a fresh Spark process through the catalog and by DuckDB's
``iceberg_scan``, row for row the same.

Spark 3.5 only: the Iceberg runtime is the test stand-in of ``make iceberg-jar``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from conftest import COLORS, ROOT, iceberg_jars, png_bytes
from jobproc import job_env, running_job, tag_argv, write_config
from pyspark.sql import SparkSession

from prodclf.cli import main
from prodclf.config import TableFormatConfig, VacuumConfig
from prodclf.library.table import CommodityLibrary
from prodclf.tagging.library import run_vacuum

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not iceberg_jars(), reason="no Iceberg runtime (Spark 4)"),
]

READER = ROOT / ".venv-iceberg-reader" / "bin" / "python"
ICEBERG = ["--library-format", "iceberg"]

#: Spark SQL from a fresh process: the library's Hadoop catalog, as a reader configures it.
QUERY = """
import json, sys
from prodclf.config import SparkConfig, TableFormatConfig
from prodclf.library.iceberg import hadoop_catalog_name
from prodclf.library.layout import Layout
from prodclf.session import create_session
root = Layout.of(sys.argv[1]).root
name = hadoop_catalog_name(root)
conf = (("spark.ui.enabled", "false"), ("spark.jars", sys.argv[2]),
        (f"spark.sql.catalog.{name}", "org.apache.iceberg.spark.SparkCatalog"),
        (f"spark.sql.catalog.{name}.type", "hadoop"),
        (f"spark.sql.catalog.{name}.warehouse", root + "/iceberg"))
spark = create_session(SparkConfig(master="local[1]", conf=conf),
                       extra=TableFormatConfig(format="iceberg").spark_settings())
q = lambda sql: [list(r) for r in spark.sql(sql.format(c=name)).collect()]
print(json.dumps({
    "current": q("SELECT product_id, active, status, category, updated_run_id "
                 "FROM {c}.prodclf.tags_current ORDER BY product_id"),
    "history": q("SELECT run_id, count(*) FROM {c}.prodclf.tags_history "
                 "GROUP BY run_id ORDER BY run_id"),
    "runs": q("SELECT run_id, mode, products_in FROM {c}.prodclf.runs ORDER BY run_id"),
}, default=str))
"""


def write_base(path: Path, images: Path, ids: list[str], stamp: str = "v1") -> Path:
    rows = []
    for i, pid in enumerate(ids):
        (images / f"{pid}.png").write_bytes(png_bytes(COLORS["red" if i % 2 else "blue"]))
        rows.append({"product_id": pid, "image_uri": f"file://{images / pid}.png"})
    path.mkdir(parents=True)
    pd.DataFrame(rows).to_parquet(path / "part-0.parquet", index=False)
    return path


def run(argv: list[str], env: dict[str, str], logs: Path) -> None:
    with running_job(argv, env, logs) as job:
        assert job.wait() == 0, job.tail()


def duckdb_rows(table: Path, sql: str) -> list[dict[str, Any]]:
    proc = subprocess.run(
        [str(READER), str(ROOT / "infra" / "iceberg_read.py"), str(table), "--sql", sql],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]


def test_an_iceberg_library_through_every_command_read_by_spark_and_duckdb(
    spark: SparkSession, color_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``spark``: the in-process commands (migrate, vacuum) join the tests' session, which
    has the Iceberg runtime and extensions."""
    images = tmp_path / "images"
    images.mkdir()
    base1 = write_base(tmp_path / "base1", images, ["a", "b", "c"])
    base2 = write_base(tmp_path / "base2", images, ["a", "b", "c", "d"])
    out = tmp_path / "commodity"
    config = write_config(tmp_path / "job.yaml")
    env = job_env(PRODCLF_SPARK_JARS=str(iceberg_jars()[0]))

    def tag(base: Path, day: str, run_id: str, *extra: str) -> list[str]:
        return [*tag_argv(base, out, color_bundle, day, run_id, config), *extra]

    # A Parquet library's first run, then its conversion (twice: the rerun is a no-op).
    run(tag(base1, "2026-11-20", "full-1"), env, tmp_path / "logs-1")
    for attempt in range(2):
        args = ["migrate", "--to", "iceberg", "--commodity-library", str(out), "--config"]
        assert main([*args, str(config), "--master", "local[2]"]) == 0, attempt
    library = CommodityLibrary(str(out))
    assert library.recorded_format() == "iceberg"
    # The library refuses to be written as Parquet now.
    assert main(["vacuum", "--commodity-library", str(out), "--keep-days", "9"]) == 2
    assert "is in the iceberg format" in capsys.readouterr().err

    run(tag(base2, "2026-11-21", "inc-2", "--mode", "incremental", *ICEBERG), env, tmp_path / "l2")
    ids = tmp_path / "ids.txt"
    ids.write_text("a\n")
    backfill = ["--mode", "backfill", "--products", str(ids), *ICEBERG]
    run(tag(base2, "2026-11-21", "back-3", *backfill), env, tmp_path / "logs-3")

    # A full run killed once its rows are staged, before its commit; then rerun.
    metadata = out / "iceberg" / "prodclf" / "tags_history" / "metadata"
    before = len(list(metadata.glob("v*.metadata.json")))
    argv = tag(base2, "2026-11-22", "full-4", *ICEBERG)
    with running_job(argv, env, tmp_path / "logs-4k") as job:
        deadline = time.monotonic() + 600
        while len(list(metadata.glob("v*.metadata.json"))) == before and job.alive():
            assert time.monotonic() < deadline, job.tail()
            time.sleep(0.05)
        job.kill_hard()
    assert library.manifest("full-4") is None
    run(argv, env, tmp_path / "logs-4")

    proc = subprocess.run(
        [sys.executable, "-c", QUERY, str(out), str(iceberg_jars()[0])],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["current"] == [
        ["a", True, "ok", "blue", "full-4"],
        ["b", True, "ok", "red", "full-4"],
        ["c", True, "ok", "blue", "full-4"],
        ["d", True, "ok", "red", "full-4"],
    ]
    # Every run exactly once: the killed attempt left nothing.
    assert got["history"] == [["back-3", 1], ["full-1", 3], ["full-4", 4], ["inc-2", 1]]
    assert got["runs"] == [
        ["back-3", "backfill", 1],
        ["full-1", "full", 3],
        ["full-4", "full", 4],
        ["inc-2", "incremental", 1],
    ]

    # DuckDB reads the same tags_current, row for row.
    if READER.exists():
        sql = "SELECT product_id, active, status, category, updated_run_id FROM t ORDER BY 1"
        rows = duckdb_rows(out / "iceberg" / "prodclf" / "tags_current", sql)
        assert [list(r.values()) for r in rows] == got["current"]
    else:
        assert not os.environ.get("CI"), "make iceberg-reader-env must have run in CI"

    # Vacuum: the runs tags_current no longer points to go, and old snapshots expire.
    # (In-process, to date it in the future: every snapshot is older than its cutoff.)
    table = TableFormatConfig(format="iceberg")
    vacuum = VacuumConfig(str(out), keep_days=0, apply=True, today=date(2999, 1, 1), library=table)
    plan = run_vacuum(vacuum, spark)
    assert plan["runs"] == ["back-3", "full-1", "inc-2"]
    assert sum(plan["expired_files"].values()) > 0
    library = CommodityLibrary(str(out), table=table)
    assert {r.run_id for r in library.read_history(spark).collect()} == {"full-4"}
    assert [m.run_id for m in library.manifests()] == ["full-4"]
