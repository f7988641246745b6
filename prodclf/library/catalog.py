"""The Parquet library's tables in a Spark SQL catalog (the Hive metastore, Glue).

Plain external Parquet tables (``STORED AS PARQUET``), so Hive, Trino or Athena read
them too. ``tags_history`` lists the partitions of complete runs only: a run killed
before its commit has a directory on storage, never a partition in the catalog.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date
from typing import Any

from prodclf.library.layout import Layout
from prodclf.library.manifest import runs_columns
from prodclf.schemas import COMMODITY_LIBRARY, CURRENT_TAGS, HISTORY_PARTITION_COLUMNS
from prodclf.storage.uris import spark_location


def _columns_ddl(fields: Iterable[Any]) -> str:
    return ", ".join(f"`{f.name}` {f.dataType.simpleString()}" for f in fields)


def history_ddl(database: str, layout: Layout, s3_scheme: str) -> str:
    data = [f for f in COMMODITY_LIBRARY.fields if f.name not in HISTORY_PARTITION_COLUMNS]
    parts = [f for f in COMMODITY_LIBRARY.fields if f.name in HISTORY_PARTITION_COLUMNS]
    return (
        f"CREATE EXTERNAL TABLE IF NOT EXISTS `{database}`.`tags_history` "
        f"({_columns_ddl(data)}) PARTITIONED BY ({_columns_ddl(parts)}) STORED AS PARQUET "
        f"LOCATION '{spark_location(layout.history, s3_scheme)}'"
    )


def _registered(spark: Any, database: str) -> set[tuple[str, str]]:
    found = set()
    for row in spark.sql(f"SHOW PARTITIONS `{database}`.`tags_history`").collect():
        spec = dict(part.split("=", 1) for part in str(row[0]).split("/"))
        found.add((spec["run_date"], spec["run_id"]))
    return found


def register_tables(
    spark: Any,
    database: str,
    layout: Layout,
    s3_scheme: str,
    complete: Iterable[tuple[date, str]],
    current: str | None,
    sync: bool = False,
) -> None:
    """Create or update ``database``'s tags_history, tags_current and runs tables.

    ``complete`` are the (run_date, run_id) partitions to list; with ``sync`` the
    partitions not among them are dropped (after a vacuum or a migration). ``current``
    is the URI of the current tags_current snapshot.
    """
    table = f"`{database}`.`tags_history`"
    spark.sql(f"CREATE DATABASE IF NOT EXISTS `{database}`")
    spark.sql(history_ddl(database, layout, s3_scheme))
    wanted = {(day.isoformat(), run_id) for day, run_id in complete}
    have = _registered(spark, database) if sync else set()
    for day_text, run_id in sorted(have - wanted):
        spark.sql(
            f"ALTER TABLE {table} DROP IF EXISTS PARTITION "
            f"(run_date=DATE'{day_text}', run_id='{run_id}')"
        )
    for day_text, run_id in sorted(wanted - have):
        where = spark_location(
            layout.history_partition(date.fromisoformat(day_text), run_id), s3_scheme
        )
        spark.sql(
            f"ALTER TABLE {table} ADD IF NOT EXISTS PARTITION "
            f"(run_date=DATE'{day_text}', run_id='{run_id}') LOCATION '{where}'"
        )
    if current is not None:
        where = spark_location(current, s3_scheme)
        spark.sql(
            f"CREATE EXTERNAL TABLE IF NOT EXISTS `{database}`.`tags_current` "
            f"({_columns_ddl(CURRENT_TAGS.fields)}) STORED AS PARQUET LOCATION '{where}'"
        )
        spark.sql(f"ALTER TABLE `{database}`.`tags_current` SET LOCATION '{where}'")
        spark.sql(f"REFRESH TABLE `{database}`.`tags_current`")
    runs_cols = ", ".join(f"`{n}` {sql}" for n, _, sql in runs_columns())
    runs_at = spark_location(layout.runs_dir, s3_scheme)
    spark.sql(
        f"CREATE EXTERNAL TABLE IF NOT EXISTS `{database}`.`runs` ({runs_cols}) "
        f"STORED AS PARQUET LOCATION '{runs_at}'"
    )
    spark.sql(f"REFRESH TABLE `{database}`.`runs`")
    spark.sql(f"REFRESH TABLE {table}")
