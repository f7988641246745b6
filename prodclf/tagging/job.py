"""The catalog-tagging job: select products, classify them, write one run, update the tables.

``tag_preflight`` refuses bad input before Spark starts; ``run_tag`` does the work on an
injected SparkSession, given what the preflight returned. One run, under the library's
lock:

1. select the products (``full``, ``incremental`` or ``backfill``; see
   ``prodclf.tagging.selection``) against the current ``tags_current`` snapshot;
2. tag them and write the run's own ``tags_history`` partition (``run_date``, ``run_id``);
3. read the partition back and check it holds one row per selected product;
4. write the next ``tags_current`` snapshot (previous snapshot + this run's rows);
5. write the manifest (last of the run's data: its presence marks the run complete),
   then swap the ``tags_current`` pointer, rebuild the ``runs`` table, update the Spark
   SQL catalog and write the report.

A run killed before 5 leaves no manifest and ``tags_current`` untouched; rerunning the
same ``run_id`` redoes it. A run killed between the manifest and the pointer swap is
finished by the next command on the library (``roll_forward``). A rerun of a complete
``run_id`` changes nothing and returns its manifest.
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
from prodclf.errors import ConfigError, InputError, RunFailed, worker_setup_fails_run
from prodclf.model.bundle import BundleMeta, read_meta
from prodclf.schemas import STATUS_ERROR, STATUS_OK
from prodclf.storage import objects, tables, warehouse
from prodclf.storage.uris import is_same_or_inside, normalize_location
from prodclf.tagging import checks
from prodclf.tagging import selection as sel
from prodclf.tagging.current import merge_current
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
    warehouse.require_layout(out)
    if cfg.products:
        tables.require_dataset(cfg.products, "--products list")
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
    """Run ``cfg.mode`` for ``cfg.run_date``; returns the manifest (or the dry-run counts).

    ``meta`` is the bundle metadata ``tag_preflight`` returned.
    """
    inputs = read_inputs(cfg, spark)
    if cfg.dry_run:
        return dry_run(cfg, spark, meta, inputs)
    out = cfg.commodity_library
    lock = warehouse.LibraryLock(out, f"prodclf tag {cfg.mode} run {cfg.run_id}", cfg.lock_ttl_s)
    with lock.held():
        manifests = roll_forward(out)
        done = next((m for m in manifests if m.get("run_id") == cfg.run_id), None)
        if done is not None:
            log.warning("run %s is already complete; nothing to do", cfg.run_id)
            finish_tables(cfg, spark, manifests, done)
            return {**done, "manifest_uri": warehouse.manifest_uri(out, cfg.run_id)}
        manifest = tag_run(cfg, spark, meta, lock, inputs)
        finish_tables(cfg, spark, [*manifests, manifest], manifest)
    write_report(cfg, spark, manifest)
    return manifest


def dry_run(
    cfg: TagConfig, spark: SparkSession, meta: BundleMeta, inputs: Inputs
) -> dict[str, Any]:
    """How many products the run would tag, and why. Nothing is written, no lock taken."""
    pointer = warehouse.read_pointer(cfg.commodity_library)
    current = tables.read_snapshot(
        spark, cfg.commodity_library, pointer.snapshot if pointer else None
    )
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
        "current_rows": pointer.rows if pointer else 0,
        "commodity_library": normalize_location(cfg.commodity_library),
    }


def tag_run(
    cfg: TagConfig,
    spark: SparkSession,
    meta: BundleMeta,
    lock: warehouse.LibraryLock,
    inputs: Inputs,
) -> dict[str, Any]:
    """Steps 1-5 of one run (the caller holds the lock); returns the manifest it wrote."""
    started = _now()
    out, s3 = cfg.commodity_library, cfg.storage.spark_s3_scheme
    counts = inputs.counts
    pointer = warehouse.read_pointer(out)
    previous = pointer.snapshot if pointer else None
    current = tables.read_snapshot(spark, out, previous, s3)
    chosen = plan_selection(cfg, inputs, current, meta.model_version)
    log.info(
        "run %s (%s): %d product(s) to tag %s",
        cfg.run_id,
        cfg.mode,
        chosen.total,
        chosen.reasons,
    )

    warehouse.create_layout(out)
    # Debris of a killed attempt of this very run id (it has no manifest): start clean.
    objects.delete_tree(warehouse.history_partition_uri(out, cfg.run_date, cfg.run_id))
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
        tables.write_history_run(rows, out, s3)
    rows.unpersist()
    tag_seconds = time.perf_counter() - t0
    chosen.products.unpersist()

    written = tables.read_history(spark, out, s3, cfg.run_date, cfg.run_id)
    checks.verify_read_back(written, cfg.run_id, chosen.total)
    summary = run_summary(written)

    # The next tags_current snapshot, written beside the current one (never over it).
    nxt = pointer
    if chosen.total or pointer is None:
        version = (pointer.version if pointer else 0) + 1
        snapshot = warehouse.snapshot_name(version, cfg.run_id)
        merged = merge_current(
            current,
            written,
            run_id=cfg.run_id,
            run_date=cfg.run_date,
            full_run=cfg.mode == "full",
        )
        expected = (pointer.rows if pointer else 0) + chosen.new_products
        tables.write_current_snapshot(merged, out, snapshot, expected, s3)
        found = tables.read_snapshot(spark, out, snapshot, s3).count()
        if found != expected:
            raise RunFailed(
                f"run {cfg.run_id}: the new tags_current has {found} rows, expected "
                f"{expected}; no manifest written, rerun it (same --run-id)"
            )
        nxt = warehouse.Pointer(version, snapshot, cfg.run_id, expected, _iso(_now()))
    assert nxt is not None

    manifest = {
        "run_id": cfg.run_id,
        "run_date": cfg.run_date.isoformat(),
        "mode": cfg.mode,
        "selection": cfg.selection,
        "reasons": chosen.reasons,
        "unknown_product_ids": chosen.unknown_product_ids,
        "model_name": meta.model_name,
        "model_version": meta.model_version,
        "started_at": _iso(started),
        "finished_at": _iso(_now()),
        "products_in": chosen.total,
        "base_products": counts.distinct_products,
        "base_rows": counts.rows,
        "null_product_ids": counts.null_product_ids,
        "duplicate_product_rows": counts.duplicate_rows,
        **summary,
        "images_per_second": round(chosen.total / max(tag_seconds, 1e-9), 2),
        "tag_seconds": round(tag_seconds, 3),
        "progress": progress.samples[-200:],
        "review_threshold": cfg.inference.review_threshold,
        "current_version": nxt.version,
        "current_snapshot": nxt.snapshot,
        "current_rows": nxt.rows,
        "previous_snapshot": previous,
        "base_library": normalize_location(cfg.base_library),
        "commodity_library": normalize_location(out),
        "model_uri": normalize_location(cfg.model),
        "report_uri": warehouse.report_uri(out, cfg.run_id),
        "prodclf_version": prodclf.__version__,
    }
    lock.check()
    manifest["manifest_uri"] = tables.write_manifest(out, manifest)
    if nxt != pointer:
        warehouse.write_pointer(out, nxt)
    return manifest


def roll_forward(location: str) -> list[dict[str, Any]]:
    """Finish a commit cut short between a manifest and its pointer swap; the manifests."""
    manifests = warehouse.read_manifests(location)
    pointer = warehouse.read_pointer(location)
    made = [m for m in manifests if m.get("current_snapshot")]
    if made:
        last = max(made, key=warehouse.run_order)
        ahead = pointer is None or int(last["current_version"]) > pointer.version
        if ahead and objects.exists(warehouse.path(location, last["current_snapshot"])):
            log.warning(
                "tags_current: finishing the commit of run %s (its pointer update was cut short)",
                last["run_id"],
            )
            warehouse.write_pointer(
                location,
                warehouse.Pointer(
                    int(last["current_version"]),
                    str(last["current_snapshot"]),
                    str(last["run_id"]),
                    int(last["current_rows"]),
                    _iso(_now()),
                ),
            )
    return manifests


def finish_tables(
    cfg: TagConfig, spark: SparkSession, manifests: list[dict[str, Any]], manifest: dict[str, Any]
) -> None:
    """The runs table from the manifests, and the Spark SQL catalog (idempotent)."""
    out = cfg.commodity_library
    warehouse.write_runs_table(out, sorted(manifests, key=warehouse.run_order))
    if cfg.database:
        day = datetime.strptime(str(manifest["run_date"]), "%Y-%m-%d").date()
        partitions = [(day, str(manifest["run_id"]))] if manifest.get("rows_written") else []
        warehouse.register_tables(spark, cfg.database, out, cfg.storage.spark_s3_scheme, partitions)


def write_report(cfg: TagConfig, spark: SparkSession, manifest: dict[str, Any]) -> None:
    """The run's HTML report beside its manifest; a failure is logged, the run stays complete."""
    from prodclf.tagging.report import collect_report_data, render_html

    out, s3 = cfg.commodity_library, cfg.storage.spark_s3_scheme
    try:
        day = datetime.strptime(str(manifest["run_date"]), "%Y-%m-%d").date()
        rows = tables.read_history(spark, out, s3, day, str(manifest["run_id"]))
        before = manifest.get("previous_snapshot")
        previous = tables.read_snapshot(spark, out, before, s3) if before else None
        data = collect_report_data(rows, previous, manifest, cfg.inference.review_threshold)
        if before is None:
            data.previous_available = True  # the library's first run: nothing to churn from
        uri = warehouse.report_uri(out, str(manifest["run_id"]))
        objects.write_bytes(uri, render_html(data).encode())
        log.info("report: %s", uri)
    except Exception:
        log.exception(
            "run %s is complete, but its report failed; rebuild it with "
            "`prodclf report %s --commodity-library %s`",
            manifest["run_id"],
            manifest["run_id"],
            out,
        )


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
