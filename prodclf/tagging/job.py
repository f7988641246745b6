"""The catalog-tagging job: select products, classify them, commit one run to the library.

``tag_preflight`` refuses bad input before Spark starts; ``run_tag`` does the work on an
injected SparkSession, given what the preflight returned. One run, under the library's
lock, reads as: select, tag, ``library.commit``:

1. ``library.begin``: the ``tags_current`` the run selects against, and the version of
   the pointer its commit will be conditional on;
2. select the products (``full``, ``incremental`` or ``backfill``; see
   ``prodclf.tagging.selection``);
3. tag them, judge the error rates, and write the run's ``tags_history`` partition;
4. read the partition back and check it holds one row per selected product;
5. ``library.commit``: the next ``tags_current``, the manifest, the pointer swap (the
   commit; see ``prodclf.library.table``); then the ``runs`` table, the catalog and the
   report.

A run killed before its commit leaves the library as it was; rerunning the same
``run_id`` redoes it. A rerun of a complete ``run_id`` changes nothing and returns its
manifest.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

import prodclf
from prodclf.config import TagConfig
from prodclf.errors import ConfigError, InputError, worker_setup_fails_run
from prodclf.library.lock import LibraryLock
from prodclf.library.manifest import RunManifest, now
from prodclf.library.table import CommodityLibrary, Transaction
from prodclf.model.bundle import BundleMeta, read_meta
from prodclf.schemas import STATUS_ERROR, STATUS_OK
from prodclf.storage import tables
from prodclf.storage.uris import is_same_or_inside, normalize_location
from prodclf.tagging import checks
from prodclf.tagging import selection as sel
from prodclf.tagging.progress import Progress
from prodclf.tagging.transforms import RunInfo, plan_partitions, select_products, tag_selected
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


@dataclass
class Selection:
    """What a run will tag: the products (persisted) and the counts the manifest records."""

    products: DataFrame
    total: int
    reasons: dict[str, int]
    new_products: int  # not in tags_current yet: the rows it will gain
    unknown_product_ids: int
    unknown_examples: list[str]


def tag_preflight(cfg: TagConfig) -> BundleMeta:
    """Every check that needs no Spark: locations, the library's layout, the model bundle."""
    base, out = cfg.base_library, cfg.commodity_library
    tables.refuse_overlap(base, out, "--commodity-library")
    if is_same_or_inside(out, cfg.model) or is_same_or_inside(cfg.model, out):
        raise ConfigError(f"--commodity-library {out} overlaps the model bundle {cfg.model}")
    tables.require_dataset(base, "base library")
    library = CommodityLibrary(out, table=cfg.library)
    library.require_layout()
    if not cfg.dry_run:
        library.refuse_if_locked()
    if cfg.products:
        tables.require_dataset(cfg.products, "--products list")
    meta = read_meta(cfg.model)
    with library.failures_recorded(cfg.run_id):  # a store outage is a run failure (exit 3)
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


@dataclass
class Inputs:
    """The run's inputs, read and checked before the library is locked or written."""

    base: DataFrame
    counts: CatalogCounts
    listed: DataFrame | None  # --products ids
    matching: DataFrame | None  # ids of the base rows --where selects


def read_inputs(cfg: TagConfig, spark: SparkSession) -> Inputs:
    """The base library (an empty or keyless one is refused) and the backfill selection's
    inputs (an unreadable list or a bad predicate is refused): nothing written yet."""
    extra = (cfg.change_column,) if cfg.change_column else ()
    base = tables.read_base_library(spark, cfg.base_library, cfg.storage.spark_s3_scheme, extra)
    # The selection's inputs first: a bad predicate is refused before the catalog is counted.
    listed = matching = None
    if cfg.mode == "backfill" and cfg.products:
        listed = tables.read_product_list(spark, cfg.products, cfg.storage.spark_s3_scheme)
    if cfg.mode == "backfill" and cfg.where:
        try:
            matching = base.where(F.expr(cfg.where)).select("product_id")
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
            raise ConfigError(
                f"--where {cfg.where!r} is not a predicate over the base library's "
                f"columns ({first[:300]})"
            ) from None
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
    return Inputs(base, counts, listed, matching)


def plan_selection(
    cfg: TagConfig, inputs: Inputs, current: DataFrame, model_version: str
) -> Selection:
    """The run's products and why, for its mode (``--dry-run`` stops here)."""
    products = inputs.base.transform(select_products, None, cfg.change_column)
    unknown, examples = 0, []
    if cfg.mode == "full":
        chosen = sel.select_full(products, current)
    elif cfg.mode == "incremental":
        chosen = sel.select_incremental(
            products, current, model_version, cfg.retry_codes, cfg.change_column is not None
        )
    else:
        filters = []
        if inputs.listed is not None:
            missing = sel.unknown_ids(inputs.listed, products)
            unknown = missing.count()
            examples = sorted(r["product_id"] for r in missing.limit(10).collect())
            if unknown:
                log.warning(
                    "--products: %d id(s) are not in the base library (e.g. %s); skipped",
                    unknown,
                    ", ".join(examples),
                )
            filters.append(inputs.listed)
        if inputs.matching is not None:
            filters.append(inputs.matching)
        chosen = sel.select_backfill(products, current, filters, cfg.retry_errors)
    chosen = chosen.persist()
    stats = chosen.groupBy("reason", "in_current").count().collect()
    reasons: dict[str, int] = {}
    for r in stats:
        reasons[r["reason"]] = reasons.get(r["reason"], 0) + int(r["count"])
    return Selection(
        products=chosen,
        total=sum(reasons.values()),
        reasons=dict(sorted(reasons.items())),
        new_products=sum(int(r["count"]) for r in stats if not r["in_current"]),
        unknown_product_ids=unknown,
        unknown_examples=examples,
    )


def run_tag(cfg: TagConfig, spark: SparkSession, meta: BundleMeta) -> dict[str, Any]:
    """Run ``cfg.mode`` for ``cfg.run_date``; returns the manifest (or the dry-run counts)
    as the command prints it.

    ``meta`` is the bundle metadata ``tag_preflight`` returned.
    """
    inputs = read_inputs(cfg, spark)
    library = CommodityLibrary(cfg.commodity_library, cfg.storage.spark_s3_scheme, cfg.library)
    if cfg.dry_run:
        return dry_run(cfg, spark, meta, inputs, library)
    owner = f"prodclf tag {cfg.mode} run {cfg.run_id}"
    lock = library.lock(owner, cfg.lock_ttl_s, cfg.run_id)
    with library.failures_recorded(cfg.run_id), lock.held():
        manifests = library.roll_forward(spark)
        done = next((m for m in manifests if m.run_id == cfg.run_id), None)
        if done is not None:
            log.warning("run %s is already complete; nothing to do", cfg.run_id)
            register(cfg, spark, library, done)
            return done.to_dict()
        manifest = tag_run(cfg, spark, meta, library, lock, inputs)
        register(cfg, spark, library, manifest)
    churn = write_report(cfg, spark, library, manifest)
    return {**manifest.to_dict(), **({"churn": churn} if churn else {})}


def dry_run(
    cfg: TagConfig,
    spark: SparkSession,
    meta: BundleMeta,
    inputs: Inputs,
    library: CommodityLibrary,
) -> dict[str, Any]:
    """How many products the run would tag, and why. Nothing is written, no lock taken."""
    current = library.read_current(spark)
    chosen = plan_selection(cfg, inputs, current, meta.model_version)
    chosen.products.unpersist()
    return {
        "dry_run": True,
        "run_id": cfg.run_id,
        "run_date": cfg.run_date.isoformat(),
        "mode": cfg.mode,
        "selection": cfg.selection,
        "model_name": meta.model_name,
        "model_version": meta.model_version,
        "products_in": chosen.total,
        "reasons": chosen.reasons,
        "unknown_product_ids": chosen.unknown_product_ids,
        "unknown_product_id_examples": chosen.unknown_examples,
        "base_products": inputs.counts.distinct_products,
        "current_rows": library.current_rows(spark),
        "commodity_library": library.root,
    }


def tag_run(
    cfg: TagConfig,
    spark: SparkSession,
    meta: BundleMeta,
    library: CommodityLibrary,
    lock: LibraryLock,
    inputs: Inputs,
) -> RunManifest:
    """Select, tag, commit (the caller holds the lock); returns the committed manifest."""
    started = now()
    txn = library.begin(spark, cfg.run_id, cfg.run_date)
    chosen = plan_selection(cfg, inputs, txn.current, meta.model_version)
    log.info(
        "run %s (%s): %d product(s) to tag %s", cfg.run_id, cfg.mode, chosen.total, chosen.reasons
    )
    tag_seconds, progress = tag_and_write(cfg, spark, meta, library, txn, chosen, started)
    written = library.run_rows(spark, txn)
    checks.verify_read_back(written, cfg.run_id, chosen.total)
    counts = inputs.counts
    manifest = RunManifest(
        run_id=cfg.run_id,
        run_date=cfg.run_date,
        mode=cfg.mode,
        selection=cfg.selection,
        reasons=chosen.reasons,
        unknown_product_ids=chosen.unknown_product_ids,
        model_name=meta.model_name,
        model_version=meta.model_version,
        started_at=started,
        finished_at=now(),
        products_in=chosen.total,
        base_products=counts.distinct_products,
        base_rows=counts.rows,
        null_product_ids=counts.null_product_ids,
        duplicate_product_rows=counts.duplicate_rows,
        **run_summary(written),
        images_per_second=round(chosen.total / max(tag_seconds, 1e-9), 2),
        tag_seconds=round(tag_seconds, 3),
        progress=progress.samples[-200:],
        review_threshold=cfg.inference.review_threshold,
        base_library=normalize_location(cfg.base_library),
        model_uri=normalize_location(cfg.model),
        prodclf_version=prodclf.__version__,
    )
    return library.commit(
        spark,
        txn,
        manifest,
        lock,
        new_products=chosen.new_products,
    )


def tag_and_write(
    cfg: TagConfig,
    spark: SparkSession,
    meta: BundleMeta,
    library: CommodityLibrary,
    txn: Transaction,
    chosen: Selection,
    started: Any,
) -> tuple[float, Progress]:
    """Tag the selection and write the run's rows; (the tag stage's seconds, its progress)."""
    run = RunInfo(cfg.run_id, cfg.run_date, meta.model_name, meta.model_version, started)
    udf = tag_images_udf(
        normalize_location(cfg.model), cfg.storage, cfg.inference, meta.fingerprint
    )
    partitions = plan_partitions(
        chosen.total, spark.sparkContext.defaultParallelism, cfg.inference.rows_per_partition
    )
    rows = tag_selected(
        chosen.products,
        udf=udf,
        run=run,
        review_threshold=cfg.inference.review_threshold,
        partitions=partitions,
    )
    progress = Progress(
        spark.sparkContext,
        f"prodclf-{cfg.run_id}",
        chosen.total,
        partitions,
        cfg.progress_interval_s,
        f"run {cfg.run_id}",
    )
    t0 = time.perf_counter()
    with progress, worker_setup_fails_run(f"run {cfg.run_id}"):
        # Rows are judged (error rates) before anything of the run is written.
        rows = checks.gate_error_rates(rows, cfg.run_id, chosen.total, cfg.checks)
        library.write_run_rows(txn, rows)
    rows.unpersist()
    chosen.products.unpersist()
    return time.perf_counter() - t0, progress


def register(
    cfg: TagConfig, spark: SparkSession, library: CommodityLibrary, manifest: RunManifest
) -> None:
    """The Spark SQL catalog (idempotent): the run's partition, the current snapshot."""
    if cfg.database:
        library.register(spark, cfg.database, [manifest])


def write_report(
    cfg: TagConfig, spark: SparkSession, library: CommodityLibrary, manifest: RunManifest
) -> dict[str, int] | None:
    """The run's HTML report beside its manifest; its category churn (None when the report
    failed: that is logged, and the run stays complete)."""
    from prodclf.tagging.report import build_report

    try:
        threshold = cfg.inference.review_threshold
        uri, data = build_report(spark, library, manifest, threshold, storage=cfg.storage)
        log.info("report: %s", uri)
        return {"compared": data.compared, "changed": data.changed}
    except Exception:
        log.exception(
            "run %s is complete, but its report failed; rebuild it with "
            "`prodclf report %s --commodity-library %s`",
            manifest.run_id,
            manifest.run_id,
            cfg.commodity_library,
        )
        return None


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
