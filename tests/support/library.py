"""Runs committed straight through ``CommodityLibrary``, without tagging images."""

from __future__ import annotations

from datetime import date, datetime, timezone
from typing import Any

from pyspark.sql import DataFrame, SparkSession

from prodclf.library.manifest import RunManifest, Transaction
from prodclf.library.table import CommodityLibrary
from prodclf.schemas import COMMODITY_LIBRARY

DAY = date(2026, 11, 20)
AT = datetime(2026, 11, 20, 3, tzinfo=timezone.utc)


def run_rows(
    spark: SparkSession, run_id: str, tags: dict[str, str | None], day: date = DAY
) -> DataFrame:
    """A run's history rows: a category tags the product ok, None is a not_found error."""
    rows = []
    for pid, category in tags.items():
        row: dict[str, Any] = dict.fromkeys(COMMODITY_LIBRARY.fieldNames())
        ok = category is not None
        row.update(product_id=pid, status="ok" if ok else "error", category=category)
        row.update(confidence=0.9 if ok else None, error_code=None if ok else "not_found")
        row.update(run_id=run_id, run_date=day, tagged_at=AT, image_uri=f"s3://b/{pid}")
        row.update(model_name="m", model_version="1", reason="new", needs_review=False)
        rows.append(tuple(row[c] for c in COMMODITY_LIBRARY.fieldNames()))
    return spark.createDataFrame(rows, COMMODITY_LIBRARY)


def staged(
    spark: SparkSession,
    library: CommodityLibrary,
    run_id: str,
    tags: dict[str, str | None],
    day: date = DAY,
) -> Transaction:
    """A run begun and its rows written: everything but the commit."""
    txn = library.begin(spark, run_id, day)
    library.write_run_rows(txn, run_rows(spark, run_id, tags, day))
    return txn


def commit(
    spark: SparkSession,
    library: CommodityLibrary,
    txn: Transaction,
    new_products: int,
    mode: str = "incremental",
) -> RunManifest:
    """Commit a staged run under the library's lock (``new_products``: rows it adds)."""
    products = library.run_rows(spark, txn).count()
    manifest = RunManifest(
        txn.run_id, txn.run_date, mode=mode, products_in=products, rows_written=products
    )
    with library.lock(f"test {txn.run_id}", run_id=txn.run_id).held() as lock:
        return library.commit(spark, txn, manifest, lock, new_products=new_products)
