"""A library's upkeep: the list of runs, vacuum, and the migration from the first layout.

Reached through ``CommodityLibrary`` (``runs``, ``vacuum``, ``migrate``). The writers
hold the library's lock, as a tagging run does.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import date, datetime, time, timezone
from typing import TYPE_CHECKING, Any

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from prodclf.library import layout as L
from prodclf.library import parquet
from prodclf.library.current import current_from_history
from prodclf.library.iceberg import IcebergFormat
from prodclf.library.lock import stale_reason
from prodclf.library.manifest import Pointer, iso, now
from prodclf.schemas import COMMODITY_LIBRARY, REASON_FULL
from prodclf.storage import conditional, objects

if TYPE_CHECKING:
    from prodclf.library.table import CommodityLibrary

log = logging.getLogger(__name__)

COMPLETE, INCOMPLETE, RUNNING = "complete", "incomplete", "running"


def list_runs(lib: CommodityLibrary) -> list[dict[str, Any]]:
    """Every run, newest first: complete (a manifest), running (holding the lock), or
    incomplete (history rows but no manifest, and not running)."""
    if lib.require_layout() == L.LAYOUT_EMPTY:
        return []
    runs = [{**m.to_dict(), "state": COMPLETE} for m in lib.manifests()]
    known = {r["run_id"] for r in runs}
    lock = lib.read_lock() or {}
    running = lock.get("run_id") if lock and not stale_reason(lock) else None
    if running and running not in known:
        runs.append(
            {
                "run_id": running,
                "run_date": None,
                "started_at": lock.get("started_at"),
                "owner": lock.get("owner"),
                "state": RUNNING,
            }
        )
        known.add(running)
    for day, run_id in lib.history_partitions():
        if run_id not in known:
            runs.append({"run_id": run_id, "run_date": day.isoformat(), "state": INCOMPLETE})
            known.add(run_id)
    # A running run sorts first: it is the newest.
    return sorted(
        runs,
        key=lambda r: (r["state"] == RUNNING, str(r.get("run_date")), str(r.get("started_at"))),
        reverse=True,
    )


@dataclass
class VacuumPlan:
    commodity_library: str
    cutoff: str
    applied: bool
    runs: list[str] = field(default_factory=list)
    kept_referenced_by_tags_current: list[str] = field(default_factory=list)
    incomplete_runs: list[str] = field(default_factory=list)
    snapshots: list[str] = field(default_factory=list)
    #: Iceberg: data and orphan files removed per table by the snapshot expiry.
    expired_files: dict[str, int] = field(default_factory=dict)


def vacuum(
    lib: CommodityLibrary, spark: SparkSession, cutoff: date, apply: bool, database: str | None
) -> VacuumPlan:
    """Plan (and with ``apply``, do) the removal of history older than ``cutoff``.

    Removed: complete runs dated before the cutoff (history partition, manifest, report)
    that tags_current does not point to (``run_id``, ``error_run_id``, ``updated_run_id``),
    uncommitted runs' partitions and pending manifests before the cutoff, and
    tags_current snapshots older than the current one made by runs before the cutoff.
    Iceberg: the old runs' rows are deleted, then snapshots older than the cutoff expire
    (the last is kept) and files no snapshot references are removed.
    """
    with lib.lock("prodclf vacuum").held():
        current = lib.read_current(spark)
        referenced = {
            r[0]
            for r in current.select(F.explode(F.array("run_id", "error_run_id", "updated_run_id")))
            .distinct()
            .collect()
            if r[0]
        }
        manifests = {m.run_id: m for m in lib.manifests()}
        partitions = {r: d for d, r in lib.history_partitions()}
        pointer = lib.pointer()
        plan = VacuumPlan(lib.root, cutoff.isoformat(), apply)
        for run_id, m in sorted(manifests.items()):
            if m.run_date < cutoff:
                kept = run_id in referenced or (pointer is not None and pointer.run_id == run_id)
                (plan.kept_referenced_by_tags_current if kept else plan.runs).append(run_id)
        for run_id, day in sorted(partitions.items()):
            if run_id not in manifests and day < cutoff:
                plan.incomplete_runs.append(run_id)
        made_by = {m.current_snapshot: r for r, m in manifests.items()}
        for version, snap in lib.snapshot_versions():
            if pointer is None or version >= pointer.version:
                continue
            maker = made_by.get(snap)
            if maker is None or maker in plan.runs or manifests[maker].run_date < cutoff:
                plan.snapshots.append(snap)
        if not apply:
            return plan
        if isinstance(lib.format, IcebergFormat):
            tables = lib.format.tables(spark)
            tables.forget_runs(plan.runs)
            for run_id in plan.runs:
                objects.delete(lib.layout.report(run_id))
                objects.delete(lib.layout.manifest(run_id))
            plan.expired_files = tables.expire(datetime.combine(cutoff, time(), timezone.utc))
            return plan
        for run_id in [*plan.runs, *plan.incomplete_runs]:
            if run_id in partitions:
                objects.delete_tree(lib.layout.history_partition(partitions[run_id], run_id))
        for run_id in plan.runs:
            objects.delete(lib.layout.report(run_id))
            objects.delete(lib.layout.manifest(run_id))  # the manifest goes last
        for run_id in lib.pending_ids():
            if pointer is None or run_id != pointer.run_id:
                objects.delete(lib.layout.pending_manifest(run_id))
        for snap in plan.snapshots:
            objects.delete_tree(lib.layout.path(snap))
        remaining = lib.manifests()
        lib.write_runs_table(remaining)
        if database:
            lib.register(spark, database, remaining, sync=True)
    log.info(
        "vacuum: removed %d run(s), %d incomplete run(s), %d snapshot(s)",
        len(plan.runs),
        len(plan.incomplete_runs),
        len(plan.snapshots),
    )
    return plan


def migrate(lib: CommodityLibrary, spark: SparkSession, database: str | None) -> dict[str, Any]:
    """Upgrade a library of the first layout in place.

    Each date's complete run (its manifest's ``run_id`` and ``rows_written`` match the
    partition) becomes a ``tags_history`` partition; ``tags_current`` is rebuilt from
    them (all first-layout runs were full runs); the layout marker is written, and only
    then are the old ``run_date=`` directories removed. Rows without a matching manifest
    (runs that never completed) are not migrated and are reported. Rerunnable.
    """
    with lib.lock("prodclf migrate").held():
        dates = [d for d in objects.list_dirs(lib.root) if d.startswith("run_date=")]
        manifests = {m.run_id: m for m in lib.manifests()}
        old = parquet.read_first_layout(spark, lib.layout, dates, lib.s3_scheme)
        counts = old.groupBy("run_date", "run_id").count().collect()
        complete: list[tuple[date, str]] = []
        skipped: list[tuple[date, str]] = []
        for r in counts:
            m = manifests.get(r["run_id"])
            ok = m is not None and m.run_date == r["run_date"] and m.rows_written == r["count"]
            (complete if ok else skipped).append((r["run_date"], r["run_id"]))

        def started(key: tuple[date, str]) -> tuple[date, str]:
            m = manifests[key[1]]
            return key[0], iso(m.started_at) if m.started_at else ""

        ordered = sorted(complete, key=started)
        seq = {run_id: i + 1 for i, (_, run_id) in enumerate(ordered)}
        if ordered:
            rows = (
                old.where(F.col("run_id").isin(list(seq)))
                .withColumn("reason", F.lit(REASON_FULL))
                .withColumn("change_value", F.lit(None).cast("string"))
                .select(*COMMODITY_LIBRARY.fieldNames())
            )
            parquet.write_history_run(rows, lib.layout, lib.s3_scheme)
            history = lib.read_history(spark)
            sequence = spark.createDataFrame(list(seq.items()), "run_id string, seq int")
            full = [(seq[r], r, d) for d, r in ordered]
            current = current_from_history(history, sequence, full)
            last_run = ordered[-1][1]
            snapshot = L.snapshot_name(len(ordered), last_run)
            products = history.select("product_id").distinct().count()
            parquet.write_snapshot(current, lib.layout, snapshot, products, lib.s3_scheme)
            for run_id in seq:
                m = manifests[run_id]
                m = m.with_(
                    mode=m.mode or "full",
                    current_version=seq[run_id],
                    reasons=m.reasons or {REASON_FULL: m.products_in or 0},
                )
                if run_id == last_run:
                    m = m.with_(current_snapshot=snapshot, current_rows=products)
                objects.write_bytes(lib.layout.manifest(run_id), m.to_json())
            pointer = Pointer(len(ordered), snapshot, last_run, products, iso(now()))
            found = conditional.read(lib.layout.pointer)
            conditional.put(lib.layout.pointer, pointer.to_json(), found.etag if found else None)
        lib.create_layout()  # the commit of the migration
        for d in dates:
            objects.delete_tree(lib.layout.path(d))
        remaining = lib.manifests()
        lib.write_runs_table(remaining)
        if database:
            lib.register(spark, database, remaining, sync=True)
    return {
        "commodity_library": lib.root,
        "migrated_runs": [r for _, r in ordered],
        "skipped_incomplete_runs": sorted(r for _, r in skipped),
        "current_location": lib.current_location(),
    }
