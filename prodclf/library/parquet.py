"""The library's tables as plain Parquet (``library.format: parquet``, the default).

The functions are the Spark reads and writes of one layout; ``ParquetTables`` is the
format ``CommodityLibrary`` commits through.
"""

from __future__ import annotations

import io
import logging
from datetime import date

import pyarrow.parquet as pq
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StructType

from prodclf.errors import RunFailed
from prodclf.library.catalog import register_tables
from prodclf.library.current import merge_current
from prodclf.library.layout import Layout, snapshot_name
from prodclf.library.manifest import Pointer, RunManifest, Transaction, iso, now, runs_rows
from prodclf.schemas import (
    COMMODITY_LIBRARY,
    CURRENT_TAGS,
    HISTORY_PARTITION_COLUMNS,
    check_matches,
)
from prodclf.storage import conditional, objects
from prodclf.storage.uris import spark_location

log = logging.getLogger(__name__)

#: Rows per tags_current file: big enough for few files, small enough to write in parallel.
CURRENT_ROWS_PER_FILE = 2_000_000

#: The rows of the first layout (run_date partitions at the root), for ``prodclf migrate``.
FIRST_LAYOUT_COLUMNS = (
    "product_id",
    "image_uri",
    "category",
    "category_id",
    "category_path",
    "confidence",
    "top_k",
    "needs_review",
    "status",
    "error_code",
    "error_message",
    "model_name",
    "model_version",
    "run_id",
    "tagged_at",
    "run_date",
)


def write_history_run(df: DataFrame, layout: Layout, s3_scheme: str) -> None:
    """Write runs' rows into ``tags_history``, replacing only their own partitions.

    Partitioned by ``run_date`` and ``run_id``: several runs of a date coexist, and
    dynamic partition overwrite replaces exactly the run's partition at job commit.
    """
    check_matches(df.schema, COMMODITY_LIBRARY, "commodity rows")
    (
        df.write.mode("overwrite")
        .option("partitionOverwriteMode", "dynamic")
        .partitionBy(*HISTORY_PARTITION_COLUMNS)
        .parquet(spark_location(layout.history, s3_scheme))
    )


def read_history(
    spark: SparkSession,
    layout: Layout,
    s3_scheme: str,
    run_date: date | None = None,
    run_id: str | None = None,
) -> DataFrame:
    """``tags_history`` rows (with the contract's schema) on storage, optionally of one
    date or run. One run is read from its own directory, without listing the rest.
    Columns added after a partition was written read as null."""
    base = spark_location(layout.history, s3_scheme)
    if run_date is not None and run_id is not None:
        where = layout.history_partition(run_date, run_id)
    elif run_date is not None:
        where = layout.history_date(run_date)
    else:
        where = layout.history
    if not objects.exists(where):
        return spark.createDataFrame([], COMMODITY_LIBRARY)
    reader = spark.read.schema(COMMODITY_LIBRARY).option("basePath", base)
    df = reader.parquet(spark_location(where, s3_scheme))
    if run_date is not None:
        df = df.where(F.col("run_date") == F.lit(run_date))
    if run_id is not None:
        df = df.where(F.col("run_id") == F.lit(run_id))
    return df


def write_snapshot(
    df: DataFrame, layout: Layout, snapshot: str, rows_hint: int, s3_scheme: str
) -> str:
    """Write a new ``tags_current`` snapshot directory (never the one readers use).

    Sorted by ``product_id`` within a few files, so Parquet row-group statistics let
    DuckDB and Spark skip most of a file when looking up products.
    """
    check_matches(df.schema, CURRENT_TAGS, "current tags")
    uri = layout.path(snapshot)
    files = max(1, -(-rows_hint // CURRENT_ROWS_PER_FILE))
    (
        df.repartition(files, "product_id")
        .sortWithinPartitions("product_id")
        .write.mode("overwrite")
        .parquet(spark_location(uri, s3_scheme))
    )
    return uri


def read_snapshot(
    spark: SparkSession, layout: Layout, snapshot: str | None, s3_scheme: str
) -> DataFrame:
    """One ``tags_current`` snapshot (relative path), or an empty table for None."""
    if snapshot is None:
        return spark.createDataFrame([], CURRENT_TAGS)
    uri = layout.path(snapshot)
    return spark.read.schema(CURRENT_TAGS).parquet(spark_location(uri, s3_scheme))


def read_first_layout(
    spark: SparkSession, layout: Layout, partitions: list[str], s3_scheme: str
) -> DataFrame:
    """The rows of a first-layout library's ``run_date=`` partition directories.

    The directories are named, not discovered, so nothing else below the root is read.
    """
    by_name = {f.name: f for f in COMMODITY_LIBRARY.fields}
    schema = StructType([by_name[c] for c in FIRST_LAYOUT_COLUMNS])
    if not partitions:
        return spark.createDataFrame([], schema)
    paths = [spark_location(layout.path(p), s3_scheme) for p in partitions]
    reader = spark.read.schema(schema).option("basePath", spark_location(layout.root, s3_scheme))
    return reader.parquet(*paths)


class ParquetTables:
    """The tables as plain Parquet: history partitions, current snapshots, the pointer.

    The commit point is the pointer: one object, replaced conditionally on the version
    it had when the run began.
    """

    name = "parquet"

    def __init__(self, layout: Layout, s3_scheme: str) -> None:
        self.layout = layout
        self.s3_scheme = s3_scheme

    def pointer(self) -> Pointer | None:
        found = conditional.read(self.layout.pointer)
        return Pointer.from_json(found.data) if found else None

    def current_location(self) -> str | None:
        pointer = self.pointer()
        return self.layout.path(pointer.snapshot) if pointer else None

    # --- reads ---------------------------------------------------------------------------

    def read_snapshot(self, spark: SparkSession, snapshot: str | None) -> DataFrame:
        return read_snapshot(spark, self.layout, snapshot, self.s3_scheme)

    def snapshot_available(self, snapshot: str) -> bool:
        return objects.exists(self.layout.path(snapshot))

    def current_rows(self, spark: SparkSession) -> int:
        pointer = self.pointer()
        return pointer.rows if pointer else 0

    def read_current(self, spark: SparkSession) -> DataFrame:
        pointer = self.pointer()
        return self.read_snapshot(spark, pointer.snapshot if pointer else None)

    def read_history(
        self, spark: SparkSession, run_date: date | None, run_id: str | None
    ) -> DataFrame:
        return read_history(spark, self.layout, self.s3_scheme, run_date, run_id)

    # --- a run's commit ------------------------------------------------------------------

    def begin(self, spark: SparkSession, run_id: str, run_date: date) -> Transaction:
        found = conditional.read(self.layout.pointer)
        pointer = Pointer.from_json(found.data) if found else None
        objects.delete_tree(self.layout.history_partition(run_date, run_id))
        current = self.read_snapshot(spark, pointer.snapshot if pointer else None)
        return Transaction(
            run_id,
            run_date,
            current,
            pointer.snapshot if pointer else None,
            pointer.version if pointer else 0,
            pointer.rows if pointer else 0,
            found.etag if found else None,
        )

    def write_run_rows(self, txn: Transaction, rows: DataFrame) -> None:
        write_history_run(rows, self.layout, self.s3_scheme)

    def run_rows(self, spark: SparkSession, txn: Transaction) -> DataFrame:
        return self.read_history(spark, txn.run_date, txn.run_id)

    def prepare(
        self,
        spark: SparkSession,
        txn: Transaction,
        manifest: RunManifest,
        new_products: int,
    ) -> RunManifest:
        """The next ``tags_current`` snapshot, written beside the current one and counted."""
        version, snapshot, rows = txn.version, txn.snapshot, txn.rows
        if manifest.products_in or snapshot is None:
            version, snapshot = version + 1, snapshot_name(version + 1, txn.run_id)
            merged = merge_current(
                txn.current,
                self.run_rows(spark, txn),
                run_id=txn.run_id,
                run_date=txn.run_date,
                full_run=manifest.mode == "full",
            )
            rows += new_products
            write_snapshot(merged, self.layout, snapshot, rows, self.s3_scheme)
            found = self.read_snapshot(spark, snapshot).count()
            if found != rows:
                raise RunFailed(
                    f"run {txn.run_id}: the new tags_current has {found} rows, expected "
                    f"{rows}; nothing published, rerun it (same --run-id)"
                )
        return manifest.with_(current_version=version, current_snapshot=snapshot, current_rows=rows)

    def swap(self, spark: SparkSession, txn: Transaction, manifest: RunManifest) -> str | None:
        """The commit: the pointer, if unchanged since ``begin``. None, or who won instead."""
        nxt = Pointer(
            int(manifest.current_version or 0),
            str(manifest.current_snapshot),
            txn.run_id,
            int(manifest.current_rows or 0),
            iso(now()),
        )
        if conditional.put(self.layout.pointer, nxt.to_json(), txn.token) is not None:
            return None
        winner = self.pointer()
        return winner.run_id if winner else "?"

    def committed(self, spark: SparkSession | None, manifest: RunManifest) -> bool:
        pointer = self.pointer()
        return pointer is not None and pointer.run_id == manifest.run_id

    def publish(self, spark: SparkSession | None, manifest: RunManifest) -> None:
        """Nothing after the pointer: the runs table follows the manifests."""

    def repair(self, manifests: list[RunManifest]) -> None:
        """A ``runs`` table missing a complete run (a command killed before it was
        rewritten); a library left by an earlier version between a manifest and its
        pointer swap."""
        listed = self.runs_listed()
        if listed is not None and listed != [m.run_id for m in manifests]:
            self.write_runs_table(manifests)
        found = conditional.read(self.layout.pointer)
        pointer = Pointer.from_json(found.data) if found else None
        made = [m for m in manifests if m.current_snapshot]
        if not made:
            return
        last = max(made, key=RunManifest.order)
        ahead = pointer is None or int(last.current_version or 0) > pointer.version
        if ahead and objects.exists(self.layout.path(str(last.current_snapshot))):
            log.warning("tags_current: finishing the pointer swap of run %s", last.run_id)
            nxt = Pointer(
                int(last.current_version or 0),
                str(last.current_snapshot),
                last.run_id,
                int(last.current_rows or 0),
                iso(now()),
            )
            conditional.put(self.layout.pointer, nxt.to_json(), found.etag if found else None)

    def runs_listed(self) -> list[str] | None:
        """The run ids the ``runs`` table lists (None: no table)."""
        try:
            data = objects.read_bytes(self.layout.runs_file)
        except FileNotFoundError:
            return None
        return [str(r) for r in pq.read_table(io.BytesIO(data), columns=["run_id"])["run_id"]]

    def write_runs_table(self, manifests: list[RunManifest]) -> None:
        """Replace ``runs/runs.parquet`` (one object) from the manifests."""
        buf = io.BytesIO()
        pq.write_table(runs_rows(manifests), buf, compression="zstd")
        objects.write_bytes(self.layout.runs_file, buf.getvalue())

    def register(
        self, spark: SparkSession, database: str, manifests: list[RunManifest], sync: bool
    ) -> None:
        complete = [(m.run_date, m.run_id) for m in manifests if m.rows_written]
        register_tables(
            spark,
            database,
            self.layout,
            self.s3_scheme,
            complete,
            self.current_location(),
            sync,
        )
