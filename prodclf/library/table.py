"""``CommodityLibrary``: the one owner of a commodity library.

Opened once from a location, it holds the layout (``prodclf.library.layout``), its table
format (Parquet or Iceberg, recorded in the layout marker), the lock, the manifests,
the commit, roll-forward and the catalog registration; vacuum and migrate go through
it too. Nothing else writes the pointer, the lock, a manifest or a table.

The commit of a run (``commit``), after its rows are written (invisibly) and read back:

1. ``prepare``: the format readies the next ``tags_current`` (Parquet: a new snapshot
   beside the current one, counted);
2. the manifest is written as ``_runs/<run_id>.json.pending``;
3. the lock is checked, then the format's ``swap``, conditional on the state the run
   began from (Parquet: the pointer's ETag; Iceberg: the ``tags_current`` snapshot).
   This is the commit: of two runs that both get here, one succeeds; the other deletes
   its pending manifest and fails with ``CommitConflict`` (exit 3), publishing nothing;
4. ``publish`` (Iceberg: the history snapshot, the runs row), then the manifest is
   promoted to ``_runs/<run_id>.json`` and the ``runs`` table rebuilt. A command killed
   here is finished by the next one (``roll_forward``).

Readers of the pointer, the manifests, the ``runs`` table, the catalog or an Iceberg
table never see a run before step 3. Parquet history rows of a run that never
committed stay on storage until vacuum; the documented plain-Parquet recipe joins on
``runs``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import date
from typing import TYPE_CHECKING, Any

from pyspark.sql import DataFrame, SparkSession

from prodclf.config import TableFormatConfig
from prodclf.errors import ConfigError, InputError, RunFailed
from prodclf.library import layout as L
from prodclf.library.iceberg import IcebergFormat
from prodclf.library.lock import LibraryLock, clear_lock, read_lock, refuse_if_held
from prodclf.library.manifest import Pointer, RunManifest, Transaction, iso, now
from prodclf.library.parquet import ParquetTables
from prodclf.storage import conditional, objects

if TYPE_CHECKING:
    from prodclf.library.maintenance import VacuumPlan

log = logging.getLogger(__name__)


class LayoutError(InputError):
    """The library is in a layout this version does not write."""


class CommitConflict(RunFailed):
    """Another run committed to the library after this one began: nothing published."""


Format = ParquetTables | IcebergFormat


class CommodityLibrary:
    """A commodity library at ``location``; ``s3_scheme`` is the scheme Spark uses for S3.

    ``table`` is the configured format; an existing library's own format (its layout
    marker) must match it (``check_format``, before Spark starts).
    """

    def __init__(
        self, location: str, s3_scheme: str = "s3a", table: TableFormatConfig | None = None
    ) -> None:
        self.location = location
        self.layout = L.Layout.of(location)
        self.s3_scheme = s3_scheme
        self.table = table or TableFormatConfig()
        self._format: Format | None = None

    @property
    def root(self) -> str:
        return self.layout.root

    @property
    def format(self) -> Format:
        if self._format is None:
            name = self.recorded_format() or self.table.format
            if name == "iceberg":
                self._format = IcebergFormat(self.layout, self.s3_scheme, self.table)
            else:
                self._format = ParquetTables(self.layout, self.s3_scheme)
        return self._format

    # --- layout --------------------------------------------------------------------------

    def _marker(self) -> dict[str, Any] | None:
        try:
            data: dict[str, Any] = json.loads(objects.read_bytes(self.layout.marker))
        except FileNotFoundError:
            return None
        return data

    def recorded_format(self) -> str | None:
        """The format the library was written in (None: a new library)."""
        marker = self._marker()
        return str(marker.get("format", "parquet")) if marker is not None else None

    def layout_version(self) -> str:
        """``v2`` (this layout), ``v1`` (run_date partitions at the root) or ``empty``."""
        if objects.exists(self.layout.marker):
            return L.LAYOUT_V2
        if not objects.exists(self.root):
            return L.LAYOUT_EMPTY
        dirs = objects.list_dirs(self.root)
        if any(d.startswith("run_date=") for d in dirs) or L.MANIFESTS in dirs:
            return L.LAYOUT_V1
        return L.LAYOUT_EMPTY

    def require_layout(self) -> str:
        """The layout; the first layout, or a format other than the configured one, is
        refused with the command that fixes it."""
        try:
            found = self.layout_version()
            recorded = self.recorded_format()
        except OSError as exc:
            raise InputError(
                f"commodity library {self.location}: cannot be listed ({exc})"
            ) from None
        if found == L.LAYOUT_V1:
            raise LayoutError(
                f"commodity library {self.location} has the first layout (run_date partitions "
                f"at its root); upgrade it once with `{L.migrate_hint(self.location)}`"
            )
        if recorded is not None and recorded != self.table.format:
            hint = (
                f"`prodclf migrate --to iceberg --commodity-library {self.location}`"
                if recorded == "parquet"
                else "--library-format iceberg"
            )
            raise ConfigError(
                f"commodity library {self.location} is in the {recorded} format, not "
                f"{self.table.format}; use {hint}"
            )
        return found

    def create_layout(self, table_format: str | None = None) -> None:
        """Mark a new library as this layout and format (idempotent); ``table_format``
        replaces the recorded format (the commit of ``migrate --to iceberg``)."""
        body = {
            "layout": L.LAYOUT_VERSION,
            "format": table_format or self.table.format,
            "created_at": iso(now()),
        }
        data = (json.dumps(body) + "\n").encode()
        if table_format is None:
            objects.create_exclusive(self.layout.marker, data)
            return
        found = conditional.read(self.layout.marker)
        conditional.put(self.layout.marker, data, found.etag if found else None)
        self._format = None

    # --- what is on storage --------------------------------------------------------------

    def pointer(self) -> Pointer | None:
        """The Parquet format's ``tags_current`` pointer (None for Iceberg)."""
        return self.format.pointer() if isinstance(self.format, ParquetTables) else None

    def current_location(self) -> str | None:
        """Where the current ``tags_current`` is on storage, for readers without Spark::

            duckdb.sql(f"SELECT * FROM read_parquet('{lib.current_location()}/*.parquet')")

        (Iceberg, Hadoop catalog: the table's directory, for ``iceberg_scan``.)
        """
        return self.format.current_location()

    def snapshot_versions(self) -> list[tuple[int, str]]:
        """(version, relative path) of every Parquet snapshot directory, oldest first."""
        found = []
        for name in objects.list_dirs(self.layout.snapshots):
            number = name.split("-", 1)[0]
            if number.isdigit():
                found.append((int(number), f"{L.CURRENT}/{L.SNAPSHOTS}/{name}"))
        return sorted(found)

    def history_partitions(self) -> list[tuple[date, str]]:
        """(run_date, run_id) of every Parquet ``tags_history`` directory, complete or not."""
        found = []
        for d in objects.list_dirs(self.layout.history):
            try:
                day = date.fromisoformat(d.removeprefix("run_date="))
            except ValueError:
                continue
            for r in objects.list_dirs(self.layout.history_date(day)):
                if r.startswith("run_id="):
                    found.append((day, r.removeprefix("run_id=")))
        return sorted(found)

    # --- manifests -----------------------------------------------------------------------

    def manifest_ids(self) -> list[str]:
        names = objects.list_names(self.layout.manifests)
        return [n.removesuffix(".json") for n in names if n.endswith(".json") and n[0] != "."]

    def pending_ids(self) -> list[str]:
        names = objects.list_names(self.layout.manifests)
        return [n.removesuffix(".json" + L.PENDING) for n in names if n.endswith(L.PENDING)]

    def manifest(self, run_id: str) -> RunManifest | None:
        """A complete run's manifest, or None."""
        try:
            return RunManifest.from_json(objects.read_bytes(self.layout.manifest(run_id)))
        except FileNotFoundError:
            return None

    def manifests(self) -> list[RunManifest]:
        """Every complete run's manifest, in commit order."""
        with ThreadPoolExecutor(8) as pool:
            found = list(pool.map(self.manifest, self.manifest_ids()))
        return sorted((m for m in found if m is not None), key=RunManifest.order)

    def write_runs_table(self, manifests: list[RunManifest] | None = None) -> str:
        """The Parquet ``runs`` table from the manifests (Iceberg keeps its own)."""
        self.format.write_runs_table(manifests if manifests is not None else self.manifests())
        return self.layout.runs_file

    # --- the lock ------------------------------------------------------------------------

    def lock(self, owner: str, ttl_s: float = 900.0, run_id: str | None = None) -> LibraryLock:
        return LibraryLock(self.layout.lock, self.location, owner, ttl_s, run_id)

    def refuse_if_locked(self) -> None:
        """A live lock refuses the command before it starts any work."""
        refuse_if_held(self.layout.lock, self.location)

    def read_lock(self) -> dict[str, Any] | None:
        return read_lock(self.layout.lock)

    def clear_lock(self, force: bool = False) -> tuple[dict[str, Any] | None, bool]:
        return clear_lock(self.layout.lock, force)

    # --- Spark reads of the committed tables ---------------------------------------------

    def read_snapshot(self, spark: SparkSession, snapshot: str | None) -> DataFrame:
        """One ``tags_current`` snapshot, as a manifest names it (None: empty)."""
        return self.format.read_snapshot(spark, snapshot)

    def snapshot_available(self, snapshot: str) -> bool:
        return self.format.snapshot_available(snapshot)

    def read_current(self, spark: SparkSession) -> DataFrame:
        """``tags_current`` as committed (empty before the first run)."""
        return self.format.read_current(spark)

    def current_rows(self, spark: SparkSession) -> int:
        """Rows of the committed ``tags_current``, from metadata (no scan)."""
        return self.format.current_rows(spark)

    def read_history(
        self, spark: SparkSession, run_date: date | None = None, run_id: str | None = None
    ) -> DataFrame:
        """History rows, of one date or run when given (the caller names a complete run)."""
        return self.format.read_history(spark, run_date, run_id)

    # --- a run's commit ------------------------------------------------------------------

    def begin(self, spark: SparkSession, run_id: str, run_date: date) -> Transaction:
        """The state a run starts from; clears the debris of a killed attempt of ``run_id``."""
        self.create_layout()
        objects.delete(self.layout.pending_manifest(run_id))
        return self.format.begin(spark, run_id, run_date)

    def write_run_rows(self, txn: Transaction, rows: DataFrame) -> None:
        """The run's ``tags_history`` rows (invisible until the commit)."""
        self.format.write_run_rows(txn, rows)

    def run_rows(self, spark: SparkSession, txn: Transaction) -> DataFrame:
        """The rows ``write_run_rows`` wrote, read back from storage."""
        return self.format.run_rows(spark, txn)

    def commit(
        self,
        spark: SparkSession,
        txn: Transaction,
        manifest: RunManifest,
        lock: LibraryLock,
        *,
        new_products: int,
    ) -> RunManifest:
        """Publish the run (steps 1-4 above); returns the manifest as written."""
        final = self.format.prepare(spark, txn, manifest, new_products).with_(
            previous_snapshot=txn.snapshot,
            commodity_library=self.root,
            manifest_uri=self.layout.manifest(txn.run_id),
            report_uri=self.layout.report(txn.run_id),
            table_format=self.format.name,
        )
        if isinstance(self.format, IcebergFormat):
            version = max((m.current_version or 0 for m in self.manifests()), default=0) + 1
            final = final.with_(current_version=version)
        pending = self.layout.pending_manifest(txn.run_id)
        objects.write_bytes(pending, final.to_json())
        lock.check()
        winner = self.format.swap(spark, txn, final)
        if winner is not None:
            objects.delete(pending)
            raise CommitConflict(
                f"run {txn.run_id}: another run ({winner}) committed to {self.location} "
                "after this run began; nothing published, rerun it"
            )
        if isinstance(self.format, IcebergFormat):
            final = final.with_(current_snapshot=str(self.format.current_snapshot(spark)))
            objects.write_bytes(pending, final.to_json())
        self._finish(spark, final)
        self.write_runs_table()
        return final

    def _finish(self, spark: SparkSession | None, manifest: RunManifest) -> None:
        self.format.publish(spark, manifest)
        pending = self.layout.pending_manifest(manifest.run_id)
        objects.write_bytes(self.layout.manifest(manifest.run_id), objects.read_bytes(pending))
        objects.delete(pending)
        objects.delete(self.layout.failure(manifest.run_id))  # an earlier attempt's

    @contextmanager
    def failures_recorded(self, run_id: str) -> Iterator[None]:
        """Record (``record_failure``) a ``RunFailed`` raised inside, then let it go on."""
        try:
            yield
        except RunFailed as exc:
            self.record_failure(run_id, exc)
            raise

    def record_failure(self, run_id: str, exc: RunFailed) -> None:
        """Why run ``run_id`` failed as a whole: a scheduler that cannot see the exit code
        (spark-submit in cluster mode) reads it to decide whether to retry. Best effort;
        a library that does not exist yet gets nothing."""
        body = {
            "run_id": run_id,
            "exit_code": exc.exit_code,
            "error": type(exc).__name__,
            "retryable": exc.retryable,
            "message": str(exc),
            "at": iso(now()),
        }
        try:
            if self._marker() is None:
                return  # no library yet: a failed first run leaves nothing at all
            objects.write_bytes(self.layout.failure(run_id), json.dumps(body).encode())
        except OSError as err:
            log.warning("could not record the failure of run %s: %s", run_id, err)

    def roll_forward(self, spark: SparkSession | None = None) -> list[RunManifest]:
        """Finish commits cut short after their swap; the manifests.

        A pending manifest whose run committed (the pointer names it; Iceberg:
        ``tags_current`` holds its changes) is published and promoted; others are left
        to their rerun. A Parquet library left by an earlier version between a manifest
        and its pointer swap gets its pointer.
        """
        for run_id in self.pending_ids():
            raw = objects.read_bytes(self.layout.pending_manifest(run_id))
            pending = RunManifest.from_json(raw)
            if self.manifest(run_id) is None and self.format.committed(spark, pending):
                log.warning("finishing the commit of run %s (it was cut short)", run_id)
                self._finish(spark, pending)
                self.write_runs_table()
        manifests = self.manifests()
        self.format.repair(manifests)
        return manifests

    # --- upkeep (prodclf.library.maintenance) -------------------------------------------

    def runs(self) -> list[dict[str, Any]]:
        """Every run, newest first, with its state (complete, running, incomplete)."""
        from prodclf.library.maintenance import list_runs

        return list_runs(self)

    def vacuum(
        self, spark: SparkSession, cutoff: date, apply: bool, database: str | None = None
    ) -> VacuumPlan:
        from prodclf.library.maintenance import vacuum

        return vacuum(self, spark, cutoff, apply, database)

    def migrate(self, spark: SparkSession, database: str | None = None) -> dict[str, Any]:
        from prodclf.library.maintenance import migrate

        return migrate(self, spark, database)

    def migrate_to_iceberg(self, spark: SparkSession) -> dict[str, Any]:
        from prodclf.library.convert import to_iceberg

        return to_iceberg(self, spark)

    # --- the catalog ---------------------------------------------------------------------

    def register(
        self, spark: SparkSession, database: str, manifests: list[RunManifest], sync: bool = False
    ) -> None:
        """The tables in ``database``: the partitions of ``manifests`` (complete runs) are
        added; with ``sync``, ``manifests`` are all of them and other partitions dropped."""
        self.format.register(spark, database, manifests, sync)
