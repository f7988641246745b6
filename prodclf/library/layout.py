"""Where each part of a commodity library lives below its root (layout 2).

::

    _prodclf_layout.json                         {"layout": 2}: this layout, written first
    tags_history/run_date=D/run_id=R/*.parquet   every row of every run
    tags_current/_v/<version>-<run_id>/*.parquet immutable snapshots of the current tags
    tags_current/_CURRENT.json                   the pointer: which snapshot is current
    runs/runs.parquet                            one row per complete run (from the manifests)
    _runs/<run_id>.json                          a run's manifest: marks it complete
    _runs/<run_id>.json.pending                  a manifest waiting for its pointer swap
    _runs/<run_id>.html                          a run's report
    _runs/<run_id>.failure                       why the run's last attempt failed (exit 3)
    _lock.json                                   the lock held by the command writing the library
    iceberg/                                     the Iceberg tables (library.format: iceberg)

Only ``prodclf.library`` uses these names; everything else asks a ``CommodityLibrary``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from prodclf.storage.uris import normalize_location

LAYOUT_VERSION = 2
LAYOUT_MARKER = "_prodclf_layout.json"
HISTORY = "tags_history"
CURRENT = "tags_current"
SNAPSHOTS = "_v"
POINTER = "_CURRENT.json"
RUNS_TABLE = "runs"
RUNS_FILE = "runs.parquet"
MANIFESTS = "_runs"
PENDING = ".pending"
LOCK = "_lock.json"
ICEBERG = "iceberg"

LAYOUT_EMPTY, LAYOUT_V1, LAYOUT_V2 = "empty", "v1", "v2"


@dataclass(frozen=True)
class Layout:
    """The URIs of one library's parts, from its root."""

    root: str

    @classmethod
    def of(cls, location: str) -> Layout:
        return cls(normalize_location(location).rstrip("/"))

    def path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    @property
    def marker(self) -> str:
        return self.path(LAYOUT_MARKER)

    @property
    def history(self) -> str:
        return self.path(HISTORY)

    def history_date(self, run_date: date) -> str:
        return self.path(HISTORY, f"run_date={run_date.isoformat()}")

    def history_partition(self, run_date: date, run_id: str) -> str:
        return self.path(HISTORY, f"run_date={run_date.isoformat()}", f"run_id={run_id}")

    @property
    def pointer(self) -> str:
        return self.path(CURRENT, POINTER)

    @property
    def snapshots(self) -> str:
        return self.path(CURRENT, SNAPSHOTS)

    @property
    def runs_file(self) -> str:
        return self.path(RUNS_TABLE, RUNS_FILE)

    @property
    def runs_dir(self) -> str:
        return self.path(RUNS_TABLE)

    @property
    def manifests(self) -> str:
        return self.path(MANIFESTS)

    def manifest(self, run_id: str) -> str:
        return self.path(MANIFESTS, f"{run_id}.json")

    def pending_manifest(self, run_id: str) -> str:
        return self.path(MANIFESTS, f"{run_id}.json{PENDING}")

    def failure(self, run_id: str) -> str:
        return self.path(MANIFESTS, f"{run_id}.failure")

    def report(self, run_id: str) -> str:
        return self.path(MANIFESTS, f"{run_id}.html")

    @property
    def lock(self) -> str:
        return self.path(LOCK)

    @property
    def iceberg(self) -> str:
        return self.path(ICEBERG)


def snapshot_name(version: int, run_id: str) -> str:
    """A ``tags_current`` snapshot's path relative to the root."""
    return f"{CURRENT}/{SNAPSHOTS}/{version:06d}-{run_id}"


def migrate_hint(location: str) -> str:
    return f"prodclf migrate --commodity-library {location}"
