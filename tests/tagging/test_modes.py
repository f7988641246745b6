"""Run modes end to end on one library: full -> backfill -> base changes -> incremental -> full.

The library is built once for the module (five real runs of the tag job on local Spark,
images in a local directory store); each test checks one aspect of it with exact
expected rows. Every tags_current snapshot stays on storage, so the table as it was after
each run is read back from its own snapshot directory.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, replace
from datetime import date
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from catalog import tree_digest
from conftest import COLORS, png_bytes, run_tag_job
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from prodclf.config import TagConfig, VacuumConfig
from prodclf.library.current import current_from_history
from prodclf.library.table import CommodityLibrary
from prodclf.tagging.library import list_runs, run_vacuum, runs_table_text

pytestmark = [pytest.mark.slow, pytest.mark.spark4]

DAY1, DAY2, DAY3 = date(2026, 11, 20), date(2026, 11, 21), date(2026, 11, 22)
ALL_IDS = ("gone", "p0", "p1", "p2", "p3", "p4", "p5")


@dataclass
class Library:
    out: Path
    images: Path
    base1: Path
    base2: Path
    manifests: dict[str, dict[str, Any]]
    dry_run: dict[str, Any]
    digest_around_dry_run: tuple[dict[str, str], dict[str, str]]


def write_base(path: Path, rows: list[tuple[str, str, str, str]]) -> Path:
    path.mkdir(parents=True)
    frame = pd.DataFrame(rows, columns=["product_id", "image_uri", "merchant", "image_updated_at"])
    frame.to_parquet(path / "part-0.parquet", index=False)
    return path


def image(images: Path, name: str, color: str) -> str:
    (images / name).write_bytes(png_bytes(COLORS[color]))
    return f"file://{images / name}"


@pytest.fixture(scope="module")
def library(
    spark: SparkSession, color_bundle: Path, tmp_path_factory: pytest.TempPathFactory
) -> Library:
    root = tmp_path_factory.mktemp("modes")
    images = root / "images"
    images.mkdir()
    uri = {
        p: image(images, f"{p}.png", c)
        for p, c in zip(
            ("p0", "p1", "p2", "p3", "p4"), ("red", "red", "blue", "blue", "red"), strict=True
        )
    }
    gone = f"file://{images / 'gone.png'}"  # no such object (yet)
    base1 = write_base(
        root / "base1",
        [
            ("p0", uri["p0"], "m1", "t1"),
            ("p1", uri["p1"], "m1", "t1"),
            ("p2", uri["p2"], "m1", "t1"),
            ("p3", uri["p3"], "m2", "t1"),
            ("p4", uri["p4"], "m2", "t1"),
            ("gone", gone, "m2", "t1"),
        ],
    )
    out = root / "commodity"
    cfg = TagConfig(
        base_library=str(base1),
        commodity_library=str(out),
        model=str(color_bundle),
        run_date=DAY1,
        run_id="r1",
        change_column="image_updated_at",  # recorded by every run, compared by incremental
        progress_interval_s=0.5,
    )
    manifests = {"r1": run_tag_job(cfg, spark)}

    # A backfill of three listed products (and one id the catalog does not have). p1's
    # photo was replaced at the same URI, so the backfill changes its category.
    image(images, "p1.png", "blue")
    ids = root / "ids.txt"
    ids.write_text("# products to redo\np1\np2\n\np3\nnope\n")
    manifests["r2"] = run_tag_job(
        replace(cfg, mode="backfill", products=str(ids), run_date=DAY2, run_id="r2"), spark
    )

    # The catalog changes: p0 gets a new photo, p2's photo is gone (a new broken
    # reference), p3 is re-shot (change column), p4 leaves, p5 arrives, and gone's photo
    # appears at the URI that failed (the same reference: incremental does not retry it).
    base2 = write_base(
        root / "base2",
        [
            ("p0", image(images, "p0-new.png", "blue"), "m1", "t1"),
            ("p1", uri["p1"], "m1", "t1"),
            ("p2", f"file://{images / 'p2-missing.png'}", "m1", "t1"),
            ("p3", uri["p3"], "m2", "t2"),
            ("p5", image(images, "p5.png", "red"), "m2", "t1"),
            ("gone", gone, "m2", "t1"),
        ],
    )
    image(images, "gone.png", "red")
    incremental = replace(
        cfg,
        base_library=str(base2),
        mode="incremental",
        run_date=DAY3,
        run_id="r3",
    )
    before = tree_digest(out)
    dry = run_tag_job(replace(incremental, dry_run=True), spark)
    after = tree_digest(out)
    manifests["r3"] = run_tag_job(incremental, spark)
    # A full run the same day: p4 is no longer in the catalog.
    manifests["r4"] = run_tag_job(
        replace(cfg, base_library=str(base2), run_date=DAY3, run_id="r4"), spark
    )
    return Library(out, images, base1, base2, manifests, dry, (before, after))


HISTORY_COLUMNS = ("run_id", "product_id", "status", "error_code", "category", "reason")
HISTORY_SCHEMA = (
    "run_id string, product_id string, status string, error_code string, category string, "
    "reason string"
)


def test_history_holds_every_row_of_every_run(spark: SparkSession, library: Library) -> None:
    got = CommodityLibrary(str(library.out)).read_history(spark).select(*HISTORY_COLUMNS)
    expected = [
        *[
            ("r1", p, "ok", None, c, "new")
            for p, c in (
                ("p0", "red"),
                ("p1", "red"),
                ("p2", "blue"),
                ("p3", "blue"),
                ("p4", "red"),
            )
        ],
        ("r1", "gone", "error", "not_found", None, "new"),
        ("r2", "p1", "ok", None, "blue", "backfill"),
        ("r2", "p2", "ok", None, "blue", "backfill"),
        ("r2", "p3", "ok", None, "blue", "backfill"),
        ("r3", "p0", "ok", None, "blue", "image_changed"),
        ("r3", "p2", "error", "not_found", None, "image_changed"),
        ("r3", "p3", "ok", None, "blue", "change_column"),
        ("r3", "p5", "ok", None, "red", "new"),
        *[
            ("r4", p, "ok", None, c, "full")
            for p, c in (
                ("p0", "blue"),
                ("p1", "blue"),
                ("p3", "blue"),
                ("p5", "red"),
                ("gone", "red"),
            )
        ],
        ("r4", "p2", "error", "not_found", None, "full"),
    ]
    assertDataFrameEqual(got, spark.createDataFrame(expected, HISTORY_SCHEMA))
    # Partitioned so that a date range prunes: run_date, then run_id, directories.
    assert sorted(
        p.relative_to(library.out).as_posix() for p in library.out.glob("tags_history/*/*")
    ) == [
        "tags_history/run_date=2026-11-20/run_id=r1",
        "tags_history/run_date=2026-11-21/run_id=r2",
        "tags_history/run_date=2026-11-22/run_id=r3",
        "tags_history/run_date=2026-11-22/run_id=r4",
    ]


CURRENT_COLUMNS = (
    "product_id",
    "active",
    "inactive_since",
    "status",
    "category",
    "run_id",
    "error_code",
    "error_run_id",
    "updated_run_id",
)
CURRENT_SCHEMA = (
    "product_id string, active boolean, inactive_since date, status string, category string, "
    "run_id string, error_code string, error_run_id string, updated_run_id string"
)


def snapshot(spark: SparkSession, library: Library, run_id: str) -> DataFrame:
    """tags_current as run ``run_id`` left it (its own snapshot directory)."""
    snap = library.manifests[run_id]["current_snapshot"]
    return CommodityLibrary(str(library.out)).read_snapshot(spark, snap)


def test_tags_current_after_each_run(spark: SparkSession, library: Library) -> None:
    after3 = [
        ("p0", True, None, "ok", "blue", "r3", None, None, "r3"),
        ("p1", True, None, "ok", "blue", "r2", None, None, "r2"),
        # An error never erases a good tag: p2 keeps r2's blue beside r3's error.
        ("p2", True, None, "error", "blue", "r2", "not_found", "r3", "r3"),
        ("p3", True, None, "ok", "blue", "r3", None, None, "r3"),
        ("p4", True, None, "ok", "red", "r1", None, None, "r1"),
        ("p5", True, None, "ok", "red", "r3", None, None, "r3"),
        ("gone", True, None, "error", None, None, "not_found", "r1", "r1"),
    ]
    assertDataFrameEqual(
        snapshot(spark, library, "r3").select(*CURRENT_COLUMNS),
        spark.createDataFrame(after3, CURRENT_SCHEMA),
    )
    after4 = [
        ("p0", True, None, "ok", "blue", "r4", None, None, "r4"),
        ("p1", True, None, "ok", "blue", "r4", None, None, "r4"),
        ("p2", True, None, "error", "blue", "r2", "not_found", "r4", "r4"),
        ("p3", True, None, "ok", "blue", "r4", None, None, "r4"),
        # Left the catalog: kept, marked inactive by the full run, its tag intact.
        ("p4", False, DAY3, "ok", "red", "r1", None, None, "r4"),
        ("p5", True, None, "ok", "red", "r4", None, None, "r4"),
        ("gone", True, None, "ok", "red", "r4", None, None, "r4"),
    ]
    current = CommodityLibrary(str(library.out)).read_current(spark)
    assertDataFrameEqual(
        current.select(*CURRENT_COLUMNS), spark.createDataFrame(after4, CURRENT_SCHEMA)
    )
    assert library.manifests["r4"]["current_rows"] == 7


def test_a_backfill_changes_only_its_selection(spark: SparkSession, library: Library) -> None:
    before, after = snapshot(spark, library, "r1"), snapshot(spark, library, "r2")
    listed = ["p1", "p2", "p3"]
    # Every other row, every column: identical.
    assertDataFrameEqual(
        after.where(~F.col("product_id").isin(listed)),
        before.where(~F.col("product_id").isin(listed)),
    )
    assert {r.product_id for r in after.where(F.col("updated_run_id") == "r2").collect()} == set(
        listed
    )
    m = library.manifests["r2"]
    assert (m["mode"], m["products_in"], m["unknown_product_ids"]) == ("backfill", 3, 1)
    assert m["selection"]["products"].endswith("ids.txt")
    assert m["reasons"] == {"backfill": 3}


def test_an_incremental_run_touches_exactly_the_changed_products(
    spark: SparkSession, library: Library
) -> None:
    dry = library.dry_run
    assert dry["dry_run"] is True
    assert dry["reasons"] == {"change_column": 1, "image_changed": 2, "new": 1}
    assert dry["products_in"] == 4
    before, after = library.digest_around_dry_run
    assert before == after  # a dry run writes nothing
    m = library.manifests["r3"]
    assert (m["reasons"], m["products_in"]) == (dry["reasons"], 4)
    changed = ["p0", "p2", "p3", "p5"]
    prev, cur = snapshot(spark, library, "r2"), snapshot(spark, library, "r3")
    assertDataFrameEqual(
        cur.where(~F.col("product_id").isin(changed)),
        prev.where(~F.col("product_id").isin(changed)),
    )


def test_tags_current_is_what_history_says(spark: SparkSession, library: Library) -> None:
    manifests = sorted(
        library.manifests.values(),
        key=lambda m: (m["current_version"], m["started_at"], m["run_id"]),
    )
    sequence = spark.createDataFrame(
        [(m["run_id"], i) for i, m in enumerate(manifests)], "run_id string, seq int"
    )
    full = [
        (i, m["run_id"], date.fromisoformat(m["run_date"]))
        for i, m in enumerate(manifests)
        if m["mode"] == "full"
    ]
    rebuilt = current_from_history(
        CommodityLibrary(str(library.out)).read_history(spark), sequence, full
    )
    assertDataFrameEqual(rebuilt, CommodityLibrary(str(library.out)).read_current(spark))


def plain(value: Any) -> Any:
    if hasattr(value, "asDict"):
        return {k: plain(v) for k, v in value.asDict().items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


def test_duckdb_reads_tags_current_row_for_row_like_spark(
    spark: SparkSession, library: Library
) -> None:
    import duckdb

    where = CommodityLibrary(str(library.out)).current_location()
    assert where is not None
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    rel = con.sql(f"SELECT * FROM read_parquet('{where.removeprefix('file://')}/*.parquet')")
    duck = sorted((tuple(plain(v) for v in row) for row in rel.fetchall()), key=lambda r: r[0])
    cols = [c for c in rel.columns]
    sparked = CommodityLibrary(str(library.out)).read_current(spark)
    assert cols == sparked.columns
    rows = sorted((tuple(plain(v) for v in r) for r in sparked.collect()), key=lambda r: r[0])
    assert len(duck) == len(rows) == 7
    for d, s in zip(duck, rows, strict=True):
        assert [_naive(v) for v in d] == [_naive(v) for v in s]


def _naive(value: Any) -> Any:
    return value.replace(tzinfo=None) if hasattr(value, "tzinfo") and value.tzinfo else value


def test_runs_listing_runs_table_and_reports(spark: SparkSession, library: Library) -> None:
    out = str(library.out)
    runs = list_runs(out)
    assert [(r["run_id"], r["state"], r.get("mode")) for r in runs] == [
        ("r4", "complete", "full"),
        ("r3", "complete", "incremental"),
        ("r2", "complete", "backfill"),
        ("r1", "complete", "full"),
    ]
    text = runs_table_text(runs)
    assert text.splitlines()[0].split() == [
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
    assert "not_found 1" in text.splitlines()[-1]  # r1: gone
    table = spark.read.parquet(f"{out}/runs")
    assert sorted(r.run_id for r in table.collect()) == ["r1", "r2", "r3", "r4"]
    for run_id in library.manifests:
        page = (library.out / "_runs" / f"{run_id}.html").read_text()
        assert page.count("data:image/png;base64,") == 4
        assert "http://" not in page and "https://" not in page  # readable offline
    churn = (library.out / "_runs" / "r2.html").read_text()
    # p1 was re-shot red -> blue; p2 and p3 kept their category.
    assert "1 of 3 products that had an ok tag changed category (33.33%)" in churn
    assert "<td>red</td><td>blue</td><td>1</td>" in churn
    progress = library.manifests["r4"]["progress"]
    assert all(done <= 6 for _, done in progress)


def test_vacuum_keeps_what_tags_current_points_to(
    spark: SparkSession, library: Library, tmp_path: Path
) -> None:
    out = tmp_path / "copy"
    shutil.copytree(library.out, out)
    cfg = VacuumConfig(commodity_library=str(out), keep_days=1, today=date(2026, 12, 31))
    plan = run_vacuum(cfg, spark)
    # r1 made p4's tag (inactive), r2 p2's good tag, r4 the rest: kept; r3 is superseded.
    assert (plan["runs"], plan["kept_referenced_by_tags_current"]) == (["r3"], ["r1", "r2", "r4"])
    assert plan["snapshots"] == [
        "tags_current/_v/000001-r1",
        "tags_current/_v/000002-r2",
        "tags_current/_v/000003-r3",
    ]
    assert tree_digest(out) == tree_digest(library.out)  # a dry run unless --apply
    current = CommodityLibrary(str(out)).read_current(spark).collect()

    run_vacuum(replace(cfg, apply=True), spark)
    assert sorted(p.stem for p in (out / "_runs").glob("*.json")) == ["r1", "r2", "r4"]
    assert [r for _, r in CommodityLibrary(str(out)).history_partitions()] == ["r1", "r2", "r4"]
    assert [s for _, s in CommodityLibrary(str(out)).snapshot_versions()] == [
        "tags_current/_v/000004-r4"
    ]
    assert sorted(CommodityLibrary(str(out)).read_current(spark).collect()) == sorted(current)
    runs_left = sorted(r.run_id for r in spark.read.parquet(f"{out}/runs").collect())
    assert runs_left == ["r1", "r2", "r4"]


def test_the_report_command_rebuilds_a_runs_page(
    spark: SparkSession, library: Library, tmp_path: Path
) -> None:
    from prodclf.config import ReportConfig
    from prodclf.tagging.library import run_report

    out = tmp_path / "copy"
    shutil.copytree(library.out, out)
    (out / "_runs" / "r2.html").unlink()
    where = run_report(ReportConfig(commodity_library=str(out), run_id="r2"), spark)
    assert where == f"file://{out}/_runs/r2.html"
    page = (out / "_runs" / "r2.html").read_text()
    assert "1 of 3 products that had an ok tag changed category (33.33%)" in page
    with pytest.raises(Exception, match="no manifest"):
        run_report(ReportConfig(commodity_library=str(out), run_id="nope"), spark)
