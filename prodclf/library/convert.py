"""``prodclf migrate --to iceberg``: a Parquet library becomes an Iceberg one, in place.

Under the library's lock, the complete runs' history rows, the current ``tags_current``
and the runs are copied into new Iceberg tables (one commit each); then the layout
marker is switched to ``iceberg``, which is the migration's commit. Interrupted before
that, the library is still a Parquet one and a rerun starts the Iceberg tables again.
The Parquet files stay where they are until you remove them (they are no longer read).
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from prodclf.library.iceberg import IcebergFormat
from prodclf.library.parquet import ParquetTables
from prodclf.schemas import COMMODITY_LIBRARY, CURRENT_TAGS

if TYPE_CHECKING:
    from prodclf.library.table import CommodityLibrary


def to_iceberg(lib: CommodityLibrary, spark: SparkSession) -> dict[str, Any]:
    with lib.lock("prodclf migrate --to iceberg").held():
        if lib.recorded_format() == "iceberg":
            return {"commodity_library": lib.root, "format": "iceberg", "migrated_runs": []}
        source = ParquetTables(lib.layout, lib.s3_scheme)
        lib.roll_forward(spark)  # a Parquet commit cut short is finished first
        manifests = lib.manifests()
        table = replace(lib.table, format="iceberg")
        tables = IcebergFormat(lib.layout, lib.s3_scheme, table).tables(spark)
        for name in (tables.history, tables.current, tables.runs):
            spark.sql(f"DROP TABLE IF EXISTS {name} PURGE")  # an interrupted attempt's
        tables.ensure()
        complete = [m.run_id for m in manifests]
        history = source.read_history(spark, None, None).where(F.col("run_id").isin(complete))
        history.select(*COMMODITY_LIBRARY.fieldNames()).writeTo(tables.history).append()
        current = source.read_current(spark).select(*CURRENT_TAGS.fieldNames())
        current.writeTo(tables.current).append()
        tables.list_runs(manifests)
        lib.create_layout("iceberg")  # the commit of the migration
    return {
        "commodity_library": lib.root,
        "format": "iceberg",
        "migrated_runs": complete,
        "history_rows": tables.total_records(tables.history, tables.snapshot_id(tables.history)),
        "current_rows": tables.total_records(tables.current, tables.snapshot_id(tables.current)),
    }
