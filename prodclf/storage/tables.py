"""The Parquet libraries and run manifests: the only code that knows dataset locations."""

from __future__ import annotations

import json
import shutil
from datetime import date
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import DataType

from prodclf.errors import ConfigError, InputError
from prodclf.schemas import (
    BASE_LIBRARY_REQUIRED,
    COMMODITY_LIBRARY,
    COMMODITY_PARTITION_COLUMN,
    check_columns,
    check_matches,
)
from prodclf.storage import objects
from prodclf.storage.uris import is_same_or_inside, normalize_location, spark_location

RUNS_DIR = "_runs"


def require_dataset(location: str, what: str) -> None:
    try:
        found = objects.exists(normalize_location(location))
    except OSError as exc:
        raise InputError(f"{what} {location}: cannot be listed ({exc})") from None
    if not found:
        raise InputError(f"{what} {location}: not found")


def refuse_overlap(base: str, out: str, out_flag: str) -> None:
    """An output location must neither be, nor contain, nor lie inside the base library."""
    if is_same_or_inside(out, base):
        raise ConfigError(
            f"{out_flag} {out} is inside the base library {base}; the base library is never written"
        )
    if is_same_or_inside(base, out):
        # Writing the output (an overwrite, or a bundle export) could delete the base library.
        raise ConfigError(f"--base-library {base} is inside {out_flag} {out}")


def read_dataset(
    spark: SparkSession, location: str, what: str, s3_scheme: str = "s3a"
) -> DataFrame:
    """An input Parquet dataset (read-only); a missing or unreadable one is an InputError."""
    require_dataset(location, what)
    try:
        return spark.read.parquet(spark_location(location, s3_scheme))
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{what} {location}: not a readable Parquet dataset ({first})") from None


def read_base_library(
    spark: SparkSession, location: str, s3_scheme: str = "s3a", extra: tuple[str, ...] = ()
) -> DataFrame:
    """The base library, checked for the contract columns. Read-only, always."""
    df = read_dataset(spark, location, "base library", s3_scheme)
    required: dict[str, DataType | None] = {**BASE_LIBRARY_REQUIRED, **dict.fromkeys(extra)}
    check_columns(df.schema, required, f"base library {location}")
    return df


def write_commodity_run(df: DataFrame, location: str, s3_scheme: str = "s3a") -> None:
    """Write one run's rows, replacing only its ``run_date`` partition (dynamic overwrite)."""
    check_matches(df.schema, COMMODITY_LIBRARY, "commodity rows")
    (
        df.write.mode("overwrite")
        .option("partitionOverwriteMode", "dynamic")
        .partitionBy(COMMODITY_PARTITION_COLUMN)
        .parquet(spark_location(location, s3_scheme))
    )


def read_commodity_run(
    spark: SparkSession, location: str, run_date: date, s3_scheme: str = "s3a"
) -> DataFrame:
    """The rows of one ``run_date`` partition, read back from storage."""
    df = spark.read.schema(COMMODITY_LIBRARY).parquet(spark_location(location, s3_scheme))
    return df.where(F.col(COMMODITY_PARTITION_COLUMN) == F.lit(run_date))


def manifest_uri(location: str, run_id: str) -> str:
    return f"{normalize_location(location)}/{RUNS_DIR}/{run_id}.json"


def write_manifest(location: str, manifest: dict[str, Any]) -> str:
    uri = manifest_uri(location, str(manifest["run_id"]))
    objects.write_bytes(uri, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
    return uri


def read_manifest(location: str, run_id: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(objects.read_bytes(manifest_uri(location, run_id)))
    return data


def write_string_table(folder: Path, columns: dict[str, list[str]]) -> None:
    """A one-file Parquet table of string columns, replacing ``folder`` (demo catalogs)."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    table = pa.table({k: pa.array(v, pa.string()) for k, v in columns.items()})
    pq.write_table(table, folder / "part-00000.parquet", compression="zstd")
