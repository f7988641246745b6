"""Commands on a commodity library as a whole: runs, report, vacuum, migrate, unlock.

Each opens the ``CommodityLibrary`` and asks it. ``list_runs`` and ``unlock`` need no
Spark (manifests, listings, the lock); ``run_report``, ``run_vacuum`` and ``run_migrate``
take a SparkSession like the jobs do.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from datetime import datetime, timedelta, timezone
from typing import Any

from pyspark.sql import SparkSession

from prodclf.config import LibraryConfig, MigrateConfig, ReportConfig, VacuumConfig
from prodclf.errors import InputError
from prodclf.library import layout
from prodclf.library.lock import describe
from prodclf.library.maintenance import COMPLETE
from prodclf.library.table import CommodityLibrary
from prodclf.tagging.report import build_report

log = logging.getLogger(__name__)


def _open(cfg: LibraryConfig) -> CommodityLibrary:
    return CommodityLibrary(cfg.commodity_library, cfg.storage.spark_s3_scheme, cfg.library)


# --- prodclf runs ----------------------------------------------------------------------------


def list_runs(location: str) -> list[dict[str, Any]]:
    """Every run of the library, newest first: complete (a manifest), running (holding
    the lock), or incomplete (history rows but no manifest)."""
    return CommodityLibrary(location).runs()


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
    info, removed = CommodityLibrary(location).clear_lock(force)
    if info is None:
        return f"{location}: not locked"
    if removed:
        return f"{location}: removed the lock of {describe(info)}"
    raise InputError(
        f"{location}: locked by {describe(info)}, which looks alive; if you know it is not, "
        "add --force"
    )


# --- prodclf report --------------------------------------------------------------------------


def run_report(cfg: ReportConfig, spark: SparkSession, _: None = None) -> str:
    """Rebuild a complete run's HTML report; returns where it was written."""
    library = _open(cfg)
    manifest = library.manifest(cfg.run_id)
    if manifest is None:
        raise InputError(
            f"run {cfg.run_id}: no manifest in {cfg.commodity_library}; not a complete run"
        )
    threshold = manifest.review_threshold if manifest.review_threshold is not None else 0.6
    return build_report(spark, library, manifest, threshold, cfg.out, cfg.storage)[0]


# --- prodclf vacuum and migrate ----------------------------------------------------------------


def library_preflight(cfg: LibraryConfig) -> None:
    library = _open(cfg)
    library.require_layout()
    if isinstance(cfg, VacuumConfig) and cfg.apply:
        library.refuse_if_locked()


def run_vacuum(cfg: VacuumConfig, spark: SparkSession, _: None = None) -> dict[str, Any]:
    """Plan (and with ``apply``, do) the removal of history older than ``keep_days``."""
    today = cfg.today or datetime.now(timezone.utc).date()
    cutoff = today - timedelta(days=cfg.keep_days)
    return asdict(_open(cfg).vacuum(spark, cutoff, cfg.apply, cfg.database))


def migrate_preflight(cfg: MigrateConfig) -> None:
    library = _open(cfg)
    if cfg.to == "iceberg":
        if library.layout_version() != layout.LAYOUT_V2:
            hint = layout.migrate_hint(cfg.commodity_library)
            raise InputError(
                f"commodity library {cfg.commodity_library}: no library of this layout to "
                f"convert (upgrade a first-layout one first: `{hint}`)"
            )
        library.refuse_if_locked()
        return
    if library.layout_version() != layout.LAYOUT_V1:
        raise InputError(
            f"commodity library {cfg.commodity_library}: not in the first layout "
            "(run_date partitions at its root); nothing to migrate"
        )
    library.refuse_if_locked()


def run_migrate(cfg: MigrateConfig, spark: SparkSession, _: None = None) -> dict[str, Any]:
    """Upgrade a library of the first layout in place, or (``--to iceberg``) convert a
    Parquet library to Iceberg tables. Both rerunnable."""
    if cfg.to == "iceberg":
        return _open(cfg).migrate_to_iceberg(spark)
    return _open(cfg).migrate(spark, cfg.database)
