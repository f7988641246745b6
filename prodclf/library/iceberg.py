"""The library's tables in Apache Iceberg (``library.format: iceberg``).

``tags_history`` (partitioned by ``run_date``), ``tags_current`` and ``runs`` are Iceberg
tables in a Spark catalog: by default a Hadoop catalog on ``<library>/iceberg`` that the
library registers in the session itself; in production the catalog the cluster names
(Hive metastore, Glue, REST), configured only through settings. Any Iceberg reader
(Spark, Trino, Athena, Snowflake, DuckDB) then reads them with snapshot isolation and
time travel, knowing nothing of prodclf.

A run commits once to each table, in this order, under the library's lock:

1. ``tags_history``: the run's rows are written as a *staged* snapshot (write-audit-
   publish, ``spark.wap.id`` = the run id), invisible to readers; the job reads them
   back from that snapshot;
2. ``tags_current``: one ``MERGE INTO`` with the products the run changed (the rules of
   ``prodclf.library.current``). This is the run's commit: before it, nothing of the run
   is visible; it is refused when ``tags_current`` moved since the run began;
3. ``tags_history``: the staged snapshot is published (``cherrypick_snapshot``);
4. ``runs``: the run's row.

The manifest file (``_runs/<run_id>.json``) is promoted last, as in the Parquet format.
A run killed after step 2 is finished by the next command (``roll_forward``); killed
before, it left nothing visible and its staged snapshot is expired by ``vacuum``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from prodclf.config import TableFormatConfig
from prodclf.library import layout as L
from prodclf.library.current import merge_current
from prodclf.library.layout import Layout
from prodclf.library.manifest import RunManifest, Transaction, now, runs_columns
from prodclf.schemas import COMMODITY_LIBRARY, CURRENT_TAGS
from prodclf.storage.uris import spark_location

log = logging.getLogger(__name__)

SPARK_CATALOG = "org.apache.iceberg.spark.SparkCatalog"
EXTENSIONS = "org.apache.iceberg.spark.extensions.IcebergSparkSessionExtensions"
TABLE_PROPERTIES = (
    "'format-version'='2', 'write.parquet.compression-codec'='zstd', "
    "'write.metadata.delete-after-commit.enabled'='true'"
)


def hadoop_catalog_name(root: str) -> str:
    """A Spark catalog name of the library's own (several libraries can share a session)."""
    return "prodclf_" + hashlib.sha1(root.encode()).hexdigest()[:12]


def register_hadoop_catalog(spark: SparkSession, name: str, warehouse: str) -> None:
    """A Hadoop catalog at ``warehouse``, registered in the running session.

    Uncached, so a table changed by another process is seen at once. Hadoop catalogs
    commit by atomic rename: fine on local disks and HDFS, not on S3 (use Hive, Glue or
    a REST catalog there).
    """
    spark.conf.set(f"spark.sql.catalog.{name}", SPARK_CATALOG)
    spark.conf.set(f"spark.sql.catalog.{name}.type", "hadoop")
    spark.conf.set(f"spark.sql.catalog.{name}.warehouse", warehouse)
    spark.conf.set(f"spark.sql.catalog.{name}.cache-enabled", "false")


def _ddl(fields: Iterable[Any]) -> str:
    return ", ".join(f"`{f.name}` {f.dataType.simpleString()}" for f in fields)


@dataclass(frozen=True)
class IcebergTables:
    """The three tables of one library in ``catalog.namespace``."""

    spark: SparkSession
    catalog: str
    namespace: str

    def name(self, table: str) -> str:
        return f"`{self.catalog}`.`{self.namespace}`.`{table}`"

    @property
    def history(self) -> str:
        return self.name("tags_history")

    @property
    def current(self) -> str:
        return self.name("tags_current")

    @property
    def runs(self) -> str:
        return self.name("runs")

    def sql(self, text: str) -> DataFrame:
        return self.spark.sql(text)

    def ensure(self) -> None:
        """Create the namespace and the tables where missing (idempotent)."""
        self.sql(f"CREATE NAMESPACE IF NOT EXISTS `{self.catalog}`.`{self.namespace}`")
        self.sql(
            f"CREATE TABLE IF NOT EXISTS {self.history} ({_ddl(COMMODITY_LIBRARY.fields)}) "
            f"USING iceberg PARTITIONED BY (run_date) "
            f"TBLPROPERTIES ({TABLE_PROPERTIES}, 'write.wap.enabled'='true')"
        )
        self.sql(
            f"CREATE TABLE IF NOT EXISTS {self.current} ({_ddl(CURRENT_TAGS.fields)}) "
            f"USING iceberg TBLPROPERTIES ({TABLE_PROPERTIES})"
        )
        runs = ", ".join(f"`{n}` {sql}" for n, _, sql in runs_columns())
        self.sql(
            f"CREATE TABLE IF NOT EXISTS {self.runs} ({runs}) "
            f"USING iceberg TBLPROPERTIES ({TABLE_PROPERTIES})"
        )

    def exists(self) -> bool:
        try:
            self.sql(f"DESCRIBE TABLE {self.runs}")
        except Exception:
            return False
        return True

    def snapshot_id(self, table: str) -> int | None:
        """The table's current snapshot (None: no snapshot yet)."""
        rows = self.sql(
            f"SELECT snapshot_id FROM {table}.history WHERE is_current_ancestor "
            "ORDER BY made_current_at DESC LIMIT 1"
        ).collect()
        return int(rows[0][0]) if rows else None

    # --- reads ---------------------------------------------------------------------------

    def read_current(self, snapshot: int | None = None) -> DataFrame:
        """The table (empty before the library's first run), or one snapshot of it."""
        if snapshot is None and (not self.exists() or self.snapshot_id(self.current) is None):
            return self.spark.createDataFrame([], CURRENT_TAGS)
        at = f" VERSION AS OF {snapshot}" if snapshot is not None else ""
        return self.sql(f"SELECT * FROM {self.current}{at}")

    def read_history(self, run_date: date | None = None, run_id: str | None = None) -> DataFrame:
        if not self.exists():
            return self.spark.createDataFrame([], COMMODITY_LIBRARY)
        df = self.sql(f"SELECT * FROM {self.history}")
        if run_date is not None:
            df = df.where(F.col("run_date") == F.lit(run_date))
        if run_id is not None:
            df = df.where(F.col("run_id") == F.lit(run_id))
        return df

    def staged_snapshot(self, run_id: str) -> int | None:
        """The newest staged (write-audit-publish) snapshot of ``run_id``'s history rows."""
        rows = self.sql(
            f"SELECT snapshot_id FROM {self.history}.snapshots "
            f"WHERE summary['wap.id'] = '{run_id}' ORDER BY committed_at DESC LIMIT 1"
        ).collect()
        return int(rows[0][0]) if rows else None

    def staged_rows(self, run_id: str, snapshot: int) -> DataFrame:
        return self.sql(f"SELECT * FROM {self.history} VERSION AS OF {snapshot}").where(
            F.col("run_id") == F.lit(run_id)
        )

    def published(self, run_id: str) -> bool:
        rows = self.sql(
            f"SELECT 1 FROM {self.history}.snapshots "
            f"WHERE summary['published-wap-id'] = '{run_id}' LIMIT 1"
        ).collect()
        return bool(rows)

    def merged(self, run_id: str) -> bool:
        """Whether ``tags_current`` holds the run's changes (its rows name it)."""
        return bool(
            self.sql(
                f"SELECT 1 FROM {self.current} WHERE updated_run_id = '{run_id}' LIMIT 1"
            ).collect()
        )

    def total_records(self, table: str, snapshot: int | None) -> int:
        if snapshot is None:
            return 0
        rows = self.sql(
            f"SELECT summary['total-records'] FROM {table}.snapshots WHERE snapshot_id = {snapshot}"
        ).collect()
        return int(rows[0][0]) if rows and rows[0][0] is not None else 0

    def run_listed(self, run_id: str) -> bool:
        return bool(self.sql(f"SELECT 1 FROM {self.runs} WHERE run_id = '{run_id}'").collect())

    # --- the steps of a commit -----------------------------------------------------------

    def stage_history(self, rows: DataFrame, run_id: str) -> None:
        """Write the run's rows as a staged snapshot, invisible until ``publish_history``."""
        self.spark.conf.set("spark.wap.id", run_id)
        try:
            rows.select(*COMMODITY_LIBRARY.fieldNames()).writeTo(self.history).append()
        finally:
            self.spark.conf.unset("spark.wap.id")

    def merge_run(
        self, base: DataFrame, rows: DataFrame, run_id: str, run_date: date, full_run: bool
    ) -> None:
        """One ``MERGE INTO tags_current``: the rows the run changes (``updated_run_id``)."""
        changes = merge_current(base, rows, run_id=run_id, run_date=run_date, full_run=full_run)
        view = f"prodclf_changes_{hashlib.sha1(run_id.encode()).hexdigest()[:10]}"
        changes.where(F.col("updated_run_id") == F.lit(run_id)).createOrReplaceTempView(view)
        try:
            self.sql(
                f"MERGE INTO {self.current} t USING {view} s ON t.product_id = s.product_id "
                "WHEN MATCHED THEN UPDATE SET * WHEN NOT MATCHED THEN INSERT *"
            )
        finally:
            self.spark.catalog.dropTempView(view)

    def publish_history(self, run_id: str) -> None:
        if self.published(run_id):
            return
        snapshot = self.staged_snapshot(run_id)
        if snapshot is None:
            raise RuntimeError(f"run {run_id}: no staged tags_history snapshot to publish")
        table = f"{self.namespace}.tags_history"
        self.sql(f"CALL `{self.catalog}`.system.cherrypick_snapshot('{table}', {snapshot})")

    def list_run(self, manifest: RunManifest) -> None:
        if not self.run_listed(manifest.run_id):
            self.list_runs([manifest])

    def list_runs(self, manifests: list[RunManifest]) -> None:
        """Append the runs' rows to ``runs`` (one commit)."""
        rows = []
        for m in manifests:
            values = []
            for name, _, _ in runs_columns():
                value = getattr(m, name)
                values.append(json.dumps(value, sort_keys=True) if name == "selection" else value)
            rows.append(tuple(values))
        schema = ", ".join(f"`{n}` {sql}" for n, _, sql in runs_columns())
        self.spark.createDataFrame(rows, schema).writeTo(self.runs).append()

    def forget_runs(self, run_ids: list[str]) -> None:
        """Delete the runs' rows from ``tags_history`` and ``runs`` (vacuum)."""
        if not run_ids:
            return
        listed = ", ".join(f"'{r}'" for r in run_ids)
        self.sql(f"DELETE FROM {self.history} WHERE run_id IN ({listed})")
        self.sql(f"DELETE FROM {self.runs} WHERE run_id IN ({listed})")

    # --- upkeep --------------------------------------------------------------------------

    def expire(self, older_than: datetime) -> dict[str, int]:
        """Expire snapshots older than ``older_than`` (keeping the last) and remove files
        no snapshot references (at least a day old); counts of the files removed."""
        removed: dict[str, int] = {}
        stamp = older_than.strftime("%Y-%m-%d %H:%M:%S")
        # Iceberg refuses to look for orphans younger than a day: a running write's files.
        orphan_stamp = min(older_than, now() - timedelta(days=1)).strftime("%Y-%m-%d %H:%M:%S")
        for table in ("tags_history", "tags_current", "runs"):
            name = f"{self.namespace}.{table}"
            row = self.sql(
                f"CALL `{self.catalog}`.system.expire_snapshots(table => '{name}', "
                f"older_than => TIMESTAMP '{stamp}', retain_last => 1)"
            ).collect()[0]
            removed[table] = int(row["deleted_data_files_count"])
            orphans = self.sql(
                f"CALL `{self.catalog}`.system.remove_orphan_files(table => '{name}', "
                f"older_than => TIMESTAMP '{orphan_stamp}')"
            ).collect()
            removed[table] += len(orphans)
        return removed


class IcebergFormat:
    """The tables as Iceberg tables; the commit point is the ``MERGE INTO tags_current``."""

    name = "iceberg"

    def __init__(self, layout: Layout, s3_scheme: str, table: TableFormatConfig) -> None:
        self.layout = layout
        self.s3_scheme = s3_scheme
        self.table = table

    def tables(self, spark: SparkSession) -> IcebergTables:
        if self.table.catalog == "hadoop":
            name = hadoop_catalog_name(self.layout.root)
            warehouse = spark_location(self.layout.iceberg, self.s3_scheme)
            register_hadoop_catalog(spark, name, warehouse)
        else:
            name = self.table.catalog_name
        return IcebergTables(spark, name, self.table.namespace)

    def current_location(self) -> str | None:
        """Where a Hadoop-catalog ``tags_current`` lives (for ``iceberg_scan``)."""
        if self.table.catalog != "hadoop":
            return None
        return self.layout.path(L.ICEBERG, self.table.namespace, "tags_current")

    # --- reads ---------------------------------------------------------------------------

    def read_current(self, spark: SparkSession) -> DataFrame:
        return self.tables(spark).read_current()

    def current_rows(self, spark: SparkSession) -> int:
        tables = self.tables(spark)
        if not tables.exists():
            return 0
        return tables.total_records(tables.current, tables.snapshot_id(tables.current))

    def read_snapshot(self, spark: SparkSession, snapshot: str | None) -> DataFrame:
        tables = self.tables(spark)
        if snapshot is None:
            return spark.createDataFrame([], CURRENT_TAGS)
        return tables.read_current(int(snapshot))

    def snapshot_available(self, snapshot: str) -> bool:
        return True  # expired snapshots fail the read; the report logs that

    def read_history(
        self, spark: SparkSession, run_date: date | None, run_id: str | None
    ) -> DataFrame:
        return self.tables(spark).read_history(run_date, run_id)

    # --- a run's commit ------------------------------------------------------------------

    def begin(self, spark: SparkSession, run_id: str, run_date: date) -> Transaction:
        tables = self.tables(spark)
        tables.ensure()
        snapshot = tables.snapshot_id(tables.current)
        rows = tables.total_records(tables.current, snapshot)
        current = tables.read_current(snapshot)
        token = str(snapshot) if snapshot is not None else None
        return Transaction(run_id, run_date, current, token, 0, rows, token)

    def write_run_rows(self, txn: Transaction, rows: DataFrame) -> None:
        self.tables(rows.sparkSession).stage_history(rows, txn.run_id)

    def run_rows(self, spark: SparkSession, txn: Transaction) -> DataFrame:
        tables = self.tables(spark)
        staged = tables.staged_snapshot(txn.run_id)
        if staged is None:
            return spark.createDataFrame([], COMMODITY_LIBRARY)
        return tables.staged_rows(txn.run_id, staged)

    def prepare(
        self,
        spark: SparkSession,
        txn: Transaction,
        manifest: RunManifest,
        new_products: int,
    ) -> RunManifest:
        return manifest.with_(current_rows=txn.rows + new_products)

    def swap(self, spark: SparkSession, txn: Transaction, manifest: RunManifest) -> str | None:
        """The commit: one ``MERGE INTO tags_current``, if it did not move since ``begin``."""
        tables = self.tables(spark)
        now_at = tables.snapshot_id(tables.current)
        if (str(now_at) if now_at is not None else None) != txn.token:
            return f"tags_current snapshot {now_at}"
        if manifest.products_in:
            rows = self.run_rows(spark, txn)
            full_run = manifest.mode == "full"
            tables.merge_run(txn.current, rows, txn.run_id, txn.run_date, full_run)
        return None

    def current_snapshot(self, spark: SparkSession) -> int | None:
        tables = self.tables(spark)
        return tables.snapshot_id(tables.current)

    def committed(self, spark: SparkSession | None, manifest: RunManifest) -> bool:
        assert spark is not None
        return not manifest.products_in or self.tables(spark).merged(manifest.run_id)

    def publish(self, spark: SparkSession | None, manifest: RunManifest) -> None:
        """After the commit: the staged history is published, then the runs row."""
        assert spark is not None
        tables = self.tables(spark)
        tables.publish_history(manifest.run_id)
        tables.list_run(manifest)

    def repair(self, manifests: list[RunManifest]) -> None:
        """Nothing: Iceberg tables have no pointer of prodclf's."""

    def write_runs_table(self, manifests: list[RunManifest]) -> None:
        """Nothing: ``runs`` is an Iceberg table, written by ``publish``."""

    def register(
        self, spark: SparkSession, database: str, manifests: list[RunManifest], sync: bool
    ) -> None:
        log.info(
            "library.format iceberg: the tables live in the Iceberg catalog (%s.%s), "
            "not in the database %s",
            self.table.catalog,
            self.table.namespace,
            database,
        )
