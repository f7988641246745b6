"""The tables in the Spark SQL catalog (Hive metastore, embedded Derby), seen from a new
session; and the command-line tools around a library (runs, unlock, the first layout).

A Hive-enabled SparkSession needs a process of its own (the test suite shares one
in-memory session), so the runs are ``prodclf tag`` processes and the queries run in a
third, fresh process against the same metastore directory.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import date, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from conftest import COLORS, ROOT, png_bytes
from jobproc import job_env, running_job, tag_argv

from prodclf.cli import EXIT_REFUSED, main
from prodclf.library.table import CommodityLibrary

pytestmark = [pytest.mark.slow, pytest.mark.spark4]

QUERY = """
import json, sys
from prodclf.config import SparkConfig
from prodclf.session import create_session
cfg = SparkConfig(master="local[1]", catalog_implementation="hive", metastore_dir=sys.argv[1],
                  conf=(("spark.ui.enabled", "false"),))
spark = create_session(cfg)
q = lambda sql: [list(r) for r in spark.sql(sql).collect()]
print(json.dumps({
    "current": q("SELECT product_id, status, category, run_id FROM prodclf.tags_current "
                 "ORDER BY product_id"),
    "history": q("SELECT run_id, count(*) FROM prodclf.tags_history "
                 "WHERE run_date BETWEEN DATE'2026-11-20' AND DATE'2026-11-21' "
                 "GROUP BY run_id ORDER BY run_id"),
    "runs": q("SELECT run_id, mode, products_in, ok, errors['not_found'] FROM prodclf.runs "
              "ORDER BY run_id"),
    "tables": sorted(r.tableName for r in spark.sql("SHOW TABLES IN prodclf").collect()),
}))
"""


def write_products(path: Path, images: Path, ids: list[str]) -> Path:
    rows = []
    for i, pid in enumerate(ids):
        color = "red" if i % 2 else "blue"
        (images / f"{pid}.png").write_bytes(png_bytes(COLORS[color]))
        rows.append({"product_id": pid, "image_uri": f"file://{images / pid}.png"})
    rows.append({"product_id": "missing", "image_uri": f"file://{images}/missing.png"})
    path.mkdir(parents=True)
    pd.DataFrame(rows).to_parquet(path / "part-0.parquet", index=False)
    return path


def test_tables_are_registered_and_queried_by_sql_from_a_new_session(
    color_bundle: Path, tmp_path: Path
) -> None:
    images = tmp_path / "images"
    images.mkdir()
    base1 = write_products(tmp_path / "base1", images, ["a", "b", "c"])
    base2 = write_products(tmp_path / "base2", images, ["a", "b", "c", "d"])
    out = tmp_path / "commodity"
    metastore = tmp_path / "metastore"
    config = tmp_path / "hive.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "inference": {"use_gpu": False},
                "spark": {
                    "metastore_dir": str(metastore),
                    "conf": {"spark.ui.enabled": "false", "spark.sql.shuffle.partitions": "2"},
                },
            }
        )
    )
    env = job_env()
    for base, day, run_id, extra in (
        (base1, "2026-11-20", "full-1", []),
        (base2, "2026-11-21", "inc-2", ["--mode", "incremental"]),
    ):
        argv = [*tag_argv(base, out, color_bundle, day, run_id, config), "--database", "prodclf"]
        with running_job([*argv, *extra], env, tmp_path / f"logs-{run_id}") as job:
            assert job.wait() == 0, job.tail()
    assert not (ROOT / "metastore_db").exists() and not (ROOT / "derby.log").exists()

    proc = subprocess.run(
        [sys.executable, "-c", QUERY, str(metastore)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["tables"] == ["runs", "tags_current", "tags_history"]
    # tags_current follows the pointer: the incremental run's snapshot (d added).
    assert got["current"] == [
        ["a", "ok", "blue", "full-1"],
        ["b", "ok", "red", "full-1"],
        ["c", "ok", "blue", "full-1"],
        ["d", "ok", "red", "inc-2"],
        ["missing", "error", None, None],
    ]
    assert got["history"] == [["full-1", 4], ["inc-2", 1]]
    assert got["runs"] == [["full-1", "full", 4, 3, 1], ["inc-2", "incremental", 1, 1, None]]


def test_runs_and_unlock_commands(
    color_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "_prodclf_layout.json").write_text('{"layout": 2}')
    assert main(["runs", "--commodity-library", str(lib)]) == 0
    assert capsys.readouterr().out.split() == [
        "date",
        "run_id",
        "mode",
        "model",
        "products",
        "ok",
        "errors",
        "needs_review",
        "img/s",
        "state",
    ]
    (lib / "_lock.json").write_text(
        json.dumps(
            {
                "owner": "prodclf tag full run x",
                "host": "elsewhere",
                "pid": 7,
                "token": "t",
                "started_at": "2026-11-20T03:00:00Z",
                "expires_at": "2999-01-01T00:00:00Z",
            }
        )
    )
    assert main(["unlock", "--commodity-library", str(lib)]) == EXIT_REFUSED
    assert "looks alive; if you know it is not, add --force" in capsys.readouterr().err
    assert main(["unlock", "--commodity-library", str(lib), "--force"]) == 0
    assert "removed the lock of prodclf tag full run x" in capsys.readouterr().out
    assert not (lib / "_lock.json").exists()


def first_layout_library(spark: Any, lib: Path) -> None:
    """A library as the first layout wrote it: run_date partitions and manifests at the root."""
    from prodclf.library.parquet import FIRST_LAYOUT_COLUMNS
    from prodclf.schemas import COMMODITY_LIBRARY

    def row(pid: str, status: str, category: str | None, run_id: str, day: date) -> tuple:
        values = dict.fromkeys(COMMODITY_LIBRARY.fieldNames())
        values.update(product_id=pid, status=status, category=category, run_id=run_id)
        values.update(run_date=day, tagged_at=datetime(day.year, day.month, day.day, 3))
        values.update(model_name="color", model_version="1", image_uri=f"file:///img/{pid}.png")
        values.update(error_code=None if status == "ok" else "not_found")
        return tuple(values[c] for c in COMMODITY_LIBRARY.fieldNames())

    d1, d2, d3 = date(2026, 11, 1), date(2026, 11, 2), date(2026, 11, 3)
    rows = [
        row("a", "ok", "red", "old-1", d1),
        row("b", "ok", "blue", "old-1", d1),
        row("c", "error", None, "old-1", d1),
        row("a", "ok", "blue", "old-2", d2),
        row("b", "ok", "blue", "old-2", d2),
        row("a", "ok", "red", "dead", d3),  # a run that never finished: no manifest
    ]
    df = spark.createDataFrame(rows, COMMODITY_LIBRARY).select(*FIRST_LAYOUT_COLUMNS)
    df.write.partitionBy("run_date").parquet(str(lib))
    (lib / "_runs").mkdir()
    for run_id, day, n in (("old-1", d1, 3), ("old-2", d2, 2)):
        manifest = {
            "run_id": run_id,
            "run_date": day.isoformat(),
            "mode": "full",
            "rows_written": n,
            "products_in": n,
            "started_at": f"{day.isoformat()}T03:00:00Z",
        }
        (lib / "_runs" / f"{run_id}.json").write_text(json.dumps(manifest))


def test_a_first_layout_library_is_refused_then_migrated(
    spark: Any, color_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pyspark.testing import assertDataFrameEqual

    from prodclf.config import MigrateConfig
    from prodclf.tagging.library import run_migrate

    lib = tmp_path / "old-lib"
    first_layout_library(spark, lib)
    base = write_products(tmp_path / "base", tmp_path, ["a"])
    argv = [
        "tag",
        "--base-library",
        str(base),
        "--commodity-library",
        str(lib),
        "--model",
        str(color_bundle),
        "--run-date",
        "2026-11-21",
    ]
    assert main(argv) == EXIT_REFUSED
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert err.endswith(f"upgrade it once with `prodclf migrate --commodity-library {lib}`")

    result = run_migrate(MigrateConfig(commodity_library=str(lib)), spark)

    assert result["migrated_runs"] == ["old-1", "old-2"]
    assert result["skipped_incomplete_runs"] == ["dead"]
    assert CommodityLibrary(str(lib)).layout_version() == "v2"
    assert not list(lib.glob("run_date=*"))
    history = (
        CommodityLibrary(str(lib)).read_history(spark).select("run_id", "product_id", "category")
    )
    assertDataFrameEqual(
        history,
        spark.createDataFrame(
            [
                ("old-1", "a", "red"),
                ("old-1", "b", "blue"),
                ("old-1", "c", None),
                ("old-2", "a", "blue"),
                ("old-2", "b", "blue"),
            ],
            "run_id string, product_id string, category string",
        ),
    )
    current = (
        CommodityLibrary(str(lib))
        .read_current(spark)
        .select(
            "product_id", "active", "inactive_since", "status", "category", "run_id", "error_run_id"
        )
    )
    assertDataFrameEqual(
        current,
        spark.createDataFrame(
            [
                ("a", True, None, "ok", "blue", "old-2", None),
                ("b", True, None, "ok", "blue", "old-2", None),
                # c was not in the last full run: kept, inactive, its error kept.
                ("c", False, date(2026, 11, 2), "error", None, None, "old-1"),
            ],
            "product_id string, active boolean, inactive_since date, status string, "
            "category string, run_id string, error_run_id string",
        ),
    )
    assert [m.current_version for m in CommodityLibrary(str(lib)).manifests()] == [1, 2]
