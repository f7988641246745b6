"""Commands on a commodity library as a whole: runs, report, vacuum, migrate, unlock.

``list_runs`` and ``unlock`` need no Spark (manifests, directory listings, the lock file);
``run_report``, ``run_vacuum`` and ``run_migrate`` take a SparkSession like the jobs do.
The writers (vacuum, migrate) hold the library's lock, as a tagging run does.
"""

from __future__ import annotations

import logging
from datetime import date, datetime, timedelta, timezone
from typing import Any

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from prodclf.config import LibraryConfig, MigrateConfig, ReportConfig, VacuumConfig
from prodclf.errors import InputError
from prodclf.schemas import COMMODITY_LIBRARY, REASON_FULL
from prodclf.storage import objects, tables, warehouse
from prodclf.storage.uris import normalize_location
from prodclf.tagging.current import current_from_history
from prodclf.tagging.report import collect_report_data, render_html

log = logging.getLogger(__name__)

COMPLETE, INCOMPLETE, RUNNING = "complete", "incomplete", "running"


# --- prodclf runs ----------------------------------------------------------------------------


def list_runs(location: str) -> list[dict[str, Any]]:
    """Every run of the library, newest first: complete (a manifest), incomplete (history
    rows but no manifest), or running (holding the lock)."""
    if warehouse.require_layout(location) == warehouse.LAYOUT_EMPTY:
        return []
    runs = [{**m, "state": COMPLETE} for m in warehouse.read_manifests(location)]
    known = {m["run_id"] for m in runs}
    lock = warehouse.read_lock(location) or {}
    for day, run_id in warehouse.history_partitions(location):
        if run_id not in known:
            running = run_id in str(lock.get("owner", "")) and not warehouse.stale_reason(lock)
            runs.append(
                {
                    "run_id": run_id,
                    "run_date": day.isoformat(),
                    "state": RUNNING if running else INCOMPLETE,
                }
            )
            known.add(run_id)
    return sorted(
        runs, key=lambda r: (str(r.get("run_date")), str(r.get("started_at", ""))), reverse=True
    )


def runs_table_text(runs: list[dict[str, Any]]) -> str:
    """``prodclf runs`` as a fixed-width text table."""
    headers = [
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
    rows = []
    for r in runs:
        errors = r.get("errors") or {}
        rows.append(
            [
                str(r.get("run_date", "")),
                str(r.get("run_id", "")),
                str(r.get("mode", "")),
                f"{r.get('model_name', '')} {r.get('model_version', '')}".strip(),
                str(r.get("products_in", "")),
                str(r.get("ok", "")),
                ", ".join(f"{k} {v}" for k, v in sorted(errors.items()))
                or ("0" if r.get("state") == COMPLETE else ""),
                str(r.get("needs_review", "")),
                str(r.get("images_per_second", "")),
                str(r["state"]),
            ]
        )
    widths = [
        max(len(h), *(len(row[i]) for row in rows)) if rows else len(h)
        for i, h in enumerate(headers)
    ]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(line.rstrip() for line in lines)


# --- prodclf unlock --------------------------------------------------------------------------


def unlock(location: str, force: bool = False) -> str:
    """Clear a stale lock (any lock with ``force``); the one-line outcome."""
    info, removed = warehouse.clear_lock(location, force)
    if info is None:
        return f"{location}: not locked"
    who = warehouse.describe_lock(info)
    if removed:
        return f"{location}: removed the lock of {who}"
    raise InputError(
        f"{location}: locked by {who}, which looks alive; if you know it is not, add --force"
    )


# --- prodclf report --------------------------------------------------------------------------


def run_report(cfg: ReportConfig, spark: SparkSession, _: None = None) -> str:
    """Rebuild a complete run's HTML report; returns where it was written."""
    out, s3 = cfg.commodity_library, cfg.storage.spark_s3_scheme
    manifest = warehouse.read_manifest(out, cfg.run_id)
    if manifest is None:
        raise InputError(f"run {cfg.run_id}: no manifest in {out}; not a complete run")
    day = date.fromisoformat(str(manifest["run_date"]))
    rows = tables.read_history(spark, out, s3, day, cfg.run_id)
    before = manifest.get("previous_snapshot")
    previous = None
    if before and objects.exists(warehouse.path(out, before)):
        previous = tables.read_snapshot(spark, out, before, s3)
    threshold = float(manifest.get("review_threshold", 0.6))
    data = collect_report_data(rows, previous, manifest, threshold)
    data.previous_available = previous is not None or not before
    uri = cfg.out or warehouse.report_uri(out, cfg.run_id)
    objects.write_bytes(uri, render_html(data).encode())
    return uri


# --- prodclf vacuum --------------------------------------------------------------------------


def library_preflight(cfg: LibraryConfig) -> None:
    warehouse.require_layout(cfg.commodity_library)


def run_vacuum(cfg: VacuumConfig, spark: SparkSession, _: None = None) -> dict[str, Any]:
    """Plan (and with ``apply``, do) the removal of history older than ``keep_days``.

    Removed: complete runs dated before the cutoff (history partition, manifest, report)
    that tags_current does not point to (``run_id``, ``error_run_id``, ``updated_run_id``),
    incomplete runs' partitions before the cutoff, and tags_current snapshots older than
    the current one made by runs before the cutoff. Kept: everything tags_current points to.
    """
    out, s3 = cfg.commodity_library, cfg.storage.spark_s3_scheme
    today = cfg.today or datetime.now(timezone.utc).date()
    cutoff = today - timedelta(days=cfg.keep_days)
    lock = warehouse.LibraryLock(out, "prodclf vacuum")
    with lock.held():
        current = tables.read_current(spark, out, s3)
        referenced = {
            r[0]
            for r in current.select(F.explode(F.array("run_id", "error_run_id", "updated_run_id")))
            .distinct()
            .collect()
            if r[0]
        }
        manifests = {m["run_id"]: m for m in warehouse.read_manifests(out)}
        partitions = dict((r, d) for d, r in warehouse.history_partitions(out))
        pointer = warehouse.read_pointer(out)
        old_runs: list[str] = []
        kept: list[str] = []
        incomplete: list[str] = []
        for run_id, m in sorted(manifests.items()):
            if date.fromisoformat(str(m["run_date"])) >= cutoff:
                continue
            (kept if run_id in referenced else old_runs).append(run_id)
        for run_id, day in sorted(partitions.items()):
            if run_id not in manifests and day < cutoff:
                incomplete.append(run_id)
        gone_runs = set(old_runs)
        made_by = {m.get("current_snapshot"): r for r, m in manifests.items()}
        snapshots = []
        for version, snap in warehouse.snapshot_versions(out):
            if pointer is None or version >= pointer.version:
                continue
            maker = made_by.get(snap)
            if (
                maker is None
                or maker in gone_runs
                or (date.fromisoformat(str(manifests[maker]["run_date"])) < cutoff)
            ):
                snapshots.append(snap)
        plan = {
            "commodity_library": normalize_location(out),
            "cutoff": cutoff.isoformat(),
            "applied": cfg.apply,
            "runs": old_runs,
            "kept_referenced_by_tags_current": kept,
            "incomplete_runs": incomplete,
            "snapshots": snapshots,
        }
        if not cfg.apply:
            return plan
        for run_id in [*old_runs, *incomplete]:
            if run_id in partitions:
                objects.delete_tree(
                    warehouse.history_partition_uri(out, partitions[run_id], run_id)
                )
        for run_id in old_runs:
            objects.delete(warehouse.report_uri(out, run_id))
            objects.delete(warehouse.manifest_uri(out, run_id))  # the manifest goes last
        for snap in snapshots:
            objects.delete_tree(warehouse.path(out, snap))
        remaining = warehouse.read_manifests(out)
        warehouse.write_runs_table(out, remaining)
        if cfg.database:
            warehouse.register_tables(spark, cfg.database, out, s3, partitions=None)
    log.info(
        "vacuum: removed %d run(s), %d incomplete run(s), %d snapshot(s)",
        len(old_runs),
        len(incomplete),
        len(snapshots),
    )
    return plan


# --- prodclf migrate -------------------------------------------------------------------------


def migrate_preflight(cfg: MigrateConfig) -> None:
    if warehouse.layout_of(cfg.commodity_library) != warehouse.LAYOUT_V1:
        raise InputError(
            f"commodity library {cfg.commodity_library}: not in the first layout "
            "(run_date partitions at its root); nothing to migrate"
        )


def run_migrate(cfg: MigrateConfig, spark: SparkSession, _: None = None) -> dict[str, Any]:
    """Upgrade a library of the first layout in place.

    Each date's complete run (its manifest's ``run_id`` and ``rows_written`` match the
    partition) becomes a ``tags_history`` partition; ``tags_current`` is rebuilt from
    them (all first-layout runs were full runs); the layout marker is written, and only
    then are the old ``run_date=`` directories removed. Rows without a matching manifest
    (runs that never completed) are not migrated and are reported. Rerunnable.
    """
    out, s3 = cfg.commodity_library, cfg.storage.spark_s3_scheme
    lock = warehouse.LibraryLock(out, "prodclf migrate")
    with lock.held():
        dates = [d for d in objects.list_dirs(warehouse.root_uri(out)) if d.startswith("run_date=")]
        manifests = {m["run_id"]: m for m in warehouse.read_manifests(out)}
        old = tables.read_first_layout(spark, out, dates, s3)
        counts = old.groupBy("run_date", "run_id").count().collect()
        complete: list[tuple[date, str]] = []
        skipped: list[tuple[date, str]] = []
        for r in counts:
            m = manifests.get(r["run_id"])
            ok = (
                m is not None
                and str(m.get("run_date")) == r["run_date"].isoformat()
                and int(m.get("rows_written", -1)) == int(r["count"])
            )
            (complete if ok else skipped).append((r["run_date"], r["run_id"]))
        ordered = sorted(complete, key=lambda k: (k[0], str(manifests[k[1]].get("started_at"))))
        seq = {run_id: i + 1 for i, (_, run_id) in enumerate(ordered)}
        if ordered:
            keep = [run_id for _, run_id in ordered]
            rows = (
                old.where(F.col("run_id").isin(keep))
                .withColumn("reason", F.lit(REASON_FULL))
                .withColumn("change_value", F.lit(None).cast("string"))
                .select(*COMMODITY_LIBRARY.fieldNames())
            )
            tables.write_history_run(rows, out, s3)
            history = tables.read_history(spark, out, s3)
            sequence = spark.createDataFrame(list(seq.items()), "run_id string, seq int")
            full = [(seq[r], r, d) for d, r in ordered]
            current = current_from_history(history, sequence, full)
            last_run = ordered[-1][1]
            snapshot = warehouse.snapshot_name(len(ordered), last_run)
            products = history.select("product_id").distinct().count()
            tables.write_current_snapshot(current, out, snapshot, products, s3)
            for run_id in seq:
                m = manifests[run_id]
                m.update(mode=m.get("mode", "full"), current_version=seq[run_id])
                m.setdefault("reasons", {REASON_FULL: m.get("products_in", 0)})
                if run_id == last_run:
                    m.update(current_snapshot=snapshot, current_rows=products)
                warehouse.write_manifest(out, m)
            warehouse.write_pointer(
                out,
                warehouse.Pointer(len(ordered), snapshot, last_run, products, _iso_now()),
            )
        warehouse.create_layout(out)  # the commit of the migration
        for d in dates:
            objects.delete_tree(warehouse.path(out, d))
        warehouse.write_runs_table(out, warehouse.read_manifests(out))
        if cfg.database:
            warehouse.register_tables(spark, cfg.database, out, s3, partitions=None)
    return {
        "commodity_library": normalize_location(out),
        "migrated_runs": [r for _, r in ordered],
        "skipped_incomplete_runs": sorted(r for _, r in skipped),
        "current_location": warehouse.current_location(out),
    }


def _iso_now() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")
