"""``make bench-incremental``: an incremental run's table work, in either table format.

Synthetic data, no images: a library seeded by yesterday's full run of ``--rows`` products
(model version 1, 0.5% ``fetch_failed`` errors), committed through ``CommodityLibrary``,
then today's catalog with ``--change`` of the products changed: half new photos
(``image_uri``), a quarter a changed ``image_updated_at``, a quarter new products (as many
old ones left). Timed: the selection, exactly what ``prodclf tag --mode incremental
--dry-run`` does (read the base library, one row per product, one join with
``tags_current``, the counts by reason), and the commit of the run's rows (the history
write, the next ``tags_current``, the manifest). Results go to
``bench-workdir/incremental-<format>.json``, with a linear 10M-product projection.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from prodclf.config import TABLE_FORMATS, SparkConfig, TableFormatConfig, TagConfig
from prodclf.library.manifest import RunManifest
from prodclf.library.table import CommodityLibrary, Transaction
from prodclf.schemas import COMMODITY_LIBRARY
from prodclf.session import create_session
from prodclf.tagging.job import plan_selection, read_inputs

YESTERDAY = date(2026, 11, 20)


def size_mb(path: Path) -> float:
    return round(sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20, 1)


def base_rows(spark: SparkSession, rows: int, change: float, today: bool) -> DataFrame:
    """The catalog; ``today`` applies the day's changes, keyed on a hash of the id."""
    ids = spark.range(rows).withColumn("h", F.abs(F.hash("id")) % 100_000 / 100_000.0)
    cut = F.col("h") < F.lit(change)
    pid = F.format_string("p%09d", "id")
    uri = F.format_string("s3://catalog-images/img/%09d.jpg", "id")
    if not today:
        return ids.select(
            pid.alias("product_id"), uri.alias("image_uri"), F.lit("v1").alias("image_updated_at")
        )
    kind = F.col("h") / F.lit(change)  # 0..1 within the changed share
    new_uri = F.when(cut & (kind < 0.5), F.concat(uri, F.lit("?v=2"))).otherwise(uri)
    stamp = F.when(cut & (kind >= 0.5) & (kind < 0.75), F.lit("v2")).otherwise(F.lit("v1"))
    # The last quarter: the old product left, a new one took its place.
    new_id = F.when(cut & (kind >= 0.75), F.format_string("n%09d", "id")).otherwise(pid)
    return ids.select(
        new_id.alias("product_id"), new_uri.alias("image_uri"), stamp.alias("image_updated_at")
    )


def yesterday_rows(base: DataFrame) -> DataFrame:
    """Yesterday's full run: every product tagged ok by model 1, 0.5% fetch_failed."""
    h = F.abs(F.hash("product_id")) % 1000
    failed = h < 5
    at = datetime(2026, 11, 20, 3, tzinfo=timezone.utc)
    cols: dict[str, Any] = {
        "product_id": F.col("product_id"),
        "image_uri": F.col("image_uri"),
        "category": F.when(~failed, F.concat(F.lit("cat-"), (h % 40).cast("string"))),
        "category_id": F.when(~failed, (h % 40).cast("string")),
        "confidence": F.when(~failed, F.lit(0.9)),
        "needs_review": F.lit(False),
        "status": F.when(failed, "error").otherwise("ok"),
        "error_code": F.when(failed, F.lit("fetch_failed")),
        "error_message": F.when(failed, F.lit("S3 error SlowDown")),
        "model_name": F.lit("bench"),
        "model_version": F.lit("1"),
        "tagged_at": F.lit(at),
        "reason": F.lit("new"),
        "change_value": F.col("image_updated_at"),
        "run_date": F.lit(YESTERDAY),
        "run_id": F.lit("yesterday"),
    }
    return base.select(
        *[cols.get(f.name, F.lit(None)).cast(f.dataType).alias(f.name) for f in COMMODITY_LIBRARY]
    )


def commit_run(
    spark: SparkSession,
    library: CommodityLibrary,
    txn: Transaction,
    rows: DataFrame,
    products: int,
    new_products: int,
    mode: str,
) -> float:
    """A run's write and commit through the library, as ``prodclf tag`` does; seconds."""
    t0 = time.perf_counter()
    with library.lock(f"bench {txn.run_id}", run_id=txn.run_id).held() as lock:
        library.write_run_rows(txn, rows)
        manifest = RunManifest(txn.run_id, txn.run_date, mode=mode, products_in=products)
        library.commit(spark, txn, manifest, lock, new_products=new_products)
    return time.perf_counter() - t0


def run_rows(selected: DataFrame, run_id: str) -> DataFrame:
    """What a run writes for the selected products: every one tagged ok by model 2."""
    at = datetime(2026, 11, 21, 3, tzinfo=timezone.utc)
    cols: dict[str, Any] = {
        "product_id": F.col("product_id"),
        "image_uri": F.col("image_uri"),
        "category": F.lit("cat-1"),
        "category_id": F.lit("1"),
        "confidence": F.lit(0.8),
        "needs_review": F.lit(False),
        "status": F.lit("ok"),
        "model_name": F.lit("bench"),
        "model_version": F.lit("1"),
        "tagged_at": F.lit(at),
        "reason": F.col("reason"),
        "change_value": F.col("change_value"),
        "run_date": F.lit(date(2026, 11, 21)),
        "run_id": F.lit(run_id),
    }
    return selected.select(
        *[cols.get(f.name, F.lit(None)).cast(f.dataType).alias(f.name) for f in COMMODITY_LIBRARY]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--change", type=float, default=0.01, help="share changed today")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", default="bench-workdir/incremental")
    parser.add_argument("--master", default="local[*]")
    parser.add_argument(
        "--format", choices=TABLE_FORMATS, default="parquet", help="the library's table format"
    )
    parser.add_argument(
        "--out", default=None, help="default: bench-workdir/incremental-<format>.json"
    )
    args = parser.parse_args()
    table = TableFormatConfig(format=args.format)

    work = Path(args.workdir).resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    spark = create_session(
        SparkConfig(master=args.master, app_name="prodclf-bench-incremental"),
        256,
        table.spark_settings(),
    )
    lib = str(work / "commodity")
    library = CommodityLibrary(lib, table=table)
    yesterday = base_rows(spark, args.rows, args.change, today=False)
    txn = library.begin(spark, "yesterday", YESTERDAY)
    commit_run(spark, library, txn, yesterday_rows(yesterday), args.rows, args.rows, "full")
    base_path = work / "base"
    base_rows(spark, args.rows, args.change, today=True).write.parquet(str(base_path))

    cfg = TagConfig(
        base_library=str(base_path),
        commodity_library=lib,
        model="unused",
        run_date=date(2026, 11, 21),
        run_id="bench",
        mode="incremental",
        change_column="image_updated_at",
        library=table,
    )
    timings = []
    result = None
    for i in range(args.repeats + 1):
        t0 = time.perf_counter()
        inputs = read_inputs(cfg, spark)  # the base library, as a run reads it
        current = library.read_current(spark)
        result = plan_selection(cfg, inputs, current, "1")
        result.products.unpersist()
        seconds = time.perf_counter() - t0
        if i:  # the first round warms the JVM up
            timings.append(seconds)
    assert result is not None
    # The rest of an incremental run's table work: its history rows, then the commit
    # (the next tags_current: previous snapshot + the run's rows, written beside the old one).
    # One run: a second one would find nothing left to tag.
    inputs = read_inputs(cfg, spark)
    txn = library.begin(spark, "bench", cfg.run_date)
    chosen = plan_selection(cfg, inputs, txn.current, "1")
    written = run_rows(chosen.products, txn.run_id)
    commit_seconds = commit_run(
        spark, library, txn, written, chosen.total, chosen.new_products, "incremental"
    )
    chosen.products.unpersist()
    selection = statistics.median(timings)
    scale = 10_000_000 / args.rows
    out = {
        "format": args.format,
        "rows": args.rows,
        "change": args.change,
        "master": args.master,
        "cores": spark.sparkContext.defaultParallelism,
        "selection_seconds": [round(t, 2) for t in timings],
        "median_seconds": round(selection, 2),
        "commit_seconds": round(commit_seconds, 2),
        "selected": result.total,
        "reasons": result.reasons,
        "base_library_mb": size_mb(base_path),
        "library_mb": size_mb(work / "commodity"),
        # Linear in rows (a scan, a shuffle join, a write), on the same cores.
        "projection_10m_seconds": {
            "selection": round(selection * scale),
            "commit": round(commit_seconds * scale),
        },
    }
    print(json.dumps(out, indent=2))
    target = Path(args.out or work.parent / f"incremental-{args.format}.json")
    target.write_text(json.dumps(out, indent=2) + "\n")
    spark.stop()


if __name__ == "__main__":
    main()
