"""The catalog-tagging job: read the base library, classify every product, write one run.

``tag_preflight`` refuses bad input before Spark starts; ``run_tag`` does the work on an
injected SparkSession, given what the preflight returned. The manifest is written last,
so its presence marks a complete run.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

import prodclf
from prodclf.config import TagConfig
from prodclf.errors import ConfigError, InputError
from prodclf.model.bundle import BundleMeta, read_meta
from prodclf.schemas import STATUS_ERROR, STATUS_OK
from prodclf.storage import tables
from prodclf.storage.uris import is_same_or_inside, normalize_location
from prodclf.tagging import checks
from prodclf.tagging.transforms import RunInfo, plan_partitions, tag_products
from prodclf.tagging.udf import tag_images_udf

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CatalogCounts:
    rows: int
    null_product_ids: int
    distinct_products: int

    @property
    def duplicate_rows(self) -> int:
        return self.rows - self.null_product_ids - self.distinct_products


def tag_preflight(cfg: TagConfig) -> BundleMeta:
    """Every check that needs no Spark: locations, the model bundle."""
    base, out = cfg.base_library, cfg.commodity_library
    tables.refuse_overlap(base, out, "--commodity-library")
    if is_same_or_inside(out, cfg.model) or is_same_or_inside(cfg.model, out):
        raise ConfigError(f"--commodity-library {out} overlaps the model bundle {cfg.model}")
    tables.require_dataset(base, "base library")
    meta = read_meta(cfg.model)
    checks.preflight(cfg)  # the base library's footers, then a probe of the image store
    return meta


def count_catalog(base: DataFrame) -> CatalogCounts:
    row = base.agg(
        F.count(F.lit(1)).alias("rows"),
        F.count(F.when(F.col("product_id").isNull(), 1)).alias("nulls"),
        F.countDistinct("product_id").alias("distinct"),
    ).first()
    assert row is not None
    return CatalogCounts(int(row["rows"]), int(row["nulls"]), int(row["distinct"]))


def run_tag(cfg: TagConfig, spark: SparkSession, meta: BundleMeta) -> dict[str, Any]:
    """Tag the whole catalog for ``cfg.run_date``; returns the manifest it wrote.

    ``meta`` is the bundle metadata ``tag_preflight`` returned.
    """
    started = _now()
    s3 = cfg.storage.spark_s3_scheme
    base = tables.read_base_library(spark, cfg.base_library, s3)
    counts = count_catalog(base)
    if counts.rows == 0:
        raise InputError(f"base library {cfg.base_library}: has no rows; nothing to tag")
    if counts.distinct_products == 0:
        raise InputError(
            f"base library {cfg.base_library}: no row has a product_id "
            f"({counts.rows} row(s)); nothing to tag"
        )
    if counts.null_product_ids or counts.duplicate_rows:
        log.warning(
            "base library: %d row(s) without product_id (not taggable), %d duplicate row(s) "
            "collapsed to one per product",
            counts.null_product_ids,
            counts.duplicate_rows,
        )

    run = RunInfo(cfg.run_id, cfg.run_date, meta.model_name, meta.model_version, started)
    udf = tag_images_udf(
        normalize_location(cfg.model), cfg.storage, cfg.inference, meta.fingerprint
    )
    partitions = plan_partitions(
        counts.distinct_products,
        spark.sparkContext.defaultParallelism,
        cfg.inference.rows_per_partition,
    )
    rows = tag_products(
        base,
        udf=udf,
        run=run,
        review_threshold=cfg.inference.review_threshold,
        partitions=partitions,
    )
    t0 = time.perf_counter()
    rows = checks.gate_error_rates(rows, cfg.run_id, counts.distinct_products, cfg.checks)
    tables.write_commodity_run(rows, cfg.commodity_library, s3)
    rows.unpersist()
    tag_seconds = time.perf_counter() - t0

    written = tables.read_commodity_run(spark, cfg.commodity_library, cfg.run_date, s3)
    checks.verify_read_back(written, cfg.run_id, counts.distinct_products)
    summary = run_summary(written)
    manifest = {
        "run_id": cfg.run_id,
        "run_date": cfg.run_date.isoformat(),
        "mode": cfg.mode,
        "model_name": meta.model_name,
        "model_version": meta.model_version,
        "started_at": _iso(started),
        "finished_at": _iso(_now()),
        "products_in": counts.distinct_products,
        "base_rows": counts.rows,
        "null_product_ids": counts.null_product_ids,
        "duplicate_product_rows": counts.duplicate_rows,
        **summary,
        "images_per_second": round(counts.distinct_products / max(tag_seconds, 1e-9), 2),
        "tag_seconds": round(tag_seconds, 3),
        "base_library": normalize_location(cfg.base_library),
        "commodity_library": normalize_location(cfg.commodity_library),
        "model_uri": normalize_location(cfg.model),
        "prodclf_version": prodclf.__version__,
    }
    manifest["manifest_uri"] = tables.write_manifest(cfg.commodity_library, manifest)
    return manifest


def run_summary(run_rows: DataFrame) -> dict[str, Any]:
    """Counts for the manifest, computed from what was actually written."""
    stats = (
        run_rows.groupBy("status", "error_code")
        .agg(F.count(F.lit(1)).alias("n"), F.sum(F.col("needs_review").cast("int")).alias("r"))
        .collect()
    )
    ok = sum(r["n"] for r in stats if r["status"] == STATUS_OK)
    errors = {
        r["error_code"]: r["n"]
        for r in sorted(stats, key=lambda r: str(r["error_code"]))
        if r["status"] == STATUS_ERROR
    }
    review = sum(r["r"] or 0 for r in stats if r["status"] == STATUS_OK)
    return {
        "rows_written": sum(r["n"] for r in stats),
        "ok": ok,
        "errors": errors,
        "error_rows": sum(errors.values()),
        "needs_review": review,
    }


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


def _iso(ts: datetime) -> str:
    return ts.isoformat().replace("+00:00", "Z")
