"""The Parquet libraries and run manifests: the only code that knows dataset locations.

The commodity library's own layout (history, current snapshots, pointer, lock, runs
table) is ``prodclf.storage.warehouse``; the Spark reads and writes of its tables are here.
"""

from __future__ import annotations

import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import DataType, NullType, StringType, StructField, StructType

from prodclf.errors import ConfigError, InputError
from prodclf.schemas import (
    BASE_LIBRARY_REQUIRED,
    COMMODITY_LIBRARY,
    CURRENT_TAGS,
    HISTORY_PARTITION_COLUMNS,
    check_columns,
    check_matches,
)
from prodclf.storage import objects, warehouse
from prodclf.storage.uris import is_same_or_inside, normalize_location, spark_location

RUNS_DIR = warehouse.MANIFESTS
#: Rows per tags_current file: big enough for few files, small enough to write in parallel.
CURRENT_ROWS_PER_FILE = 2_000_000


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


# --- Parquet footers, read on the driver before any Spark work ------------------------------


@dataclass(frozen=True)
class FooterSummary:
    """What the Parquet footers of a dataset say, without Spark.

    ``nulls`` counts the nulls of ``null_column`` from the row-group statistics, or is
    None when some row group has no statistics for it.
    """

    files: tuple[str, ...]
    rows: int
    rows_by_file: tuple[int, ...]
    nulls: int | None


def _visible(rel: str) -> bool:
    """Spark's and pyarrow's rule: paths with a part starting with ``.`` or ``_`` are hidden."""
    return not any(part.startswith((".", "_")) for part in rel.split("/"))


def _spark_schema(arrow_schema: pa.Schema, partition_keys: set[str]) -> StructType:
    from pyspark.sql.pandas.types import from_arrow_type

    fields = []
    for f in arrow_schema:
        try:
            dtype = from_arrow_type(f.type)
        except TypeError:
            dtype = NullType()  # a type Spark cannot read: never one of the required ones
        fields.append(StructField(f.name, dtype))
    names = {f.name for f in fields}
    fields += [StructField(k, StringType()) for k in sorted(partition_keys - names)]
    return StructType(fields)


def inspect_footers(
    location: str,
    what: str,
    required: dict[str, DataType | None],
    null_column: str | None = None,
) -> FooterSummary:
    """Check every Parquet file's columns and count its rows from its footer (pyarrow).

    ``file://`` datasets are read in place; ``s3://`` ones through boto3 ranged reads
    (the same settings chain as every other object), a few requests per file. A file that
    is not Parquet, or lacks a required column or has it with another type, is an
    ``InputError`` / ``SchemaMismatch`` naming it, as Spark would fail on it mid-run.
    """
    uri = normalize_location(location)
    try:
        files = [u for rel, u in objects.list_files(uri) if _visible(rel)]
    except OSError as exc:
        raise InputError(f"{what} {location}: cannot be listed ({exc})") from None
    if not files:
        raise InputError(f"{what} {location}: no data files; nothing to tag")

    def footer(file_uri: str) -> tuple[pq.FileMetaData, set[str]]:
        try:
            with objects.open_object(file_uri) as fh:
                meta = pq.ParquetFile(fh).metadata
        except OSError as exc:
            raise InputError(f"{what} {location}: {file_uri} cannot be read ({exc})") from None
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise InputError(
                f"{what} {location}: {file_uri} is not a Parquet file ({first})"
            ) from None
        rel = file_uri[len(uri) :]
        keys = {part.split("=", 1)[0] for part in rel.split("/") if "=" in part}
        return meta, keys

    with ThreadPoolExecutor(8) as pool:
        metas = list(pool.map(footer, files))
    nulls: int | None = 0
    for file_uri, (meta, keys) in zip(files, metas, strict=True):
        schema = _spark_schema(meta.schema.to_arrow_schema(), keys)
        check_columns(schema, required, f"{what} {location} ({file_uri.rsplit('/', 1)[-1]})")
        if null_column is not None and nulls is not None:
            nulls = _null_count(meta, null_column, nulls)
    rows = tuple(int(m.num_rows) for m, _ in metas)
    return FooterSummary(tuple(files), sum(rows), rows, nulls if null_column else None)


def _null_count(meta: pq.FileMetaData, column: str, so_far: int) -> int | None:
    names = [meta.schema.column(i).path for i in range(meta.num_columns)]
    if column not in names:
        return None  # a partition column: no statistics
    index = names.index(column)
    for g in range(meta.num_row_groups):
        if meta.row_group(g).num_rows == 0:
            continue
        stats = meta.row_group(g).column(index).statistics
        if stats is None or not stats.has_null_count:
            return None
        so_far += int(stats.null_count)
    return so_far


def sample_values(
    summary: FooterSummary, column: str, most: int, scan_rows: int = 4096
) -> list[str]:
    """Up to ``most`` distinct non-blank values of a string column, in file order.

    Reads at most about ``scan_rows`` rows of that one column (first files first).
    """
    found: list[str] = []
    scanned = 0
    for file_uri, n in zip(summary.files, summary.rows_by_file, strict=True):
        if not n:
            continue
        with objects.open_object(file_uri) as fh:
            for batch in pq.ParquetFile(fh).iter_batches(batch_size=256, columns=[column]):
                for value in batch.column(0).to_pylist():
                    if isinstance(value, str) and value.strip() and value not in found:
                        found.append(value)
                        if len(found) >= most:
                            return found
                scanned += batch.num_rows
                if scanned >= scan_rows:
                    return found
    return found


def write_history_run(df: DataFrame, location: str, s3_scheme: str = "s3a") -> None:
    """Write one run's rows into ``tags_history``, replacing only its own partition.

    Partitioned by ``run_date`` and ``run_id``: several runs of a date coexist, and
    dynamic partition overwrite replaces exactly this run's partition at job commit.
    """
    check_matches(df.schema, COMMODITY_LIBRARY, "commodity rows")
    (
        df.write.mode("overwrite")
        .option("partitionOverwriteMode", "dynamic")
        .partitionBy(*HISTORY_PARTITION_COLUMNS)
        .parquet(spark_location(warehouse.history_uri(location), s3_scheme))
    )


def read_history(
    spark: SparkSession,
    location: str,
    s3_scheme: str = "s3a",
    run_date: date | None = None,
    run_id: str | None = None,
) -> DataFrame:
    """``tags_history`` rows (with the contract's schema), optionally of one date or run.

    One run is read from its own directory, without listing the rest of the history.
    Columns added after a partition was written read as null.
    """
    base = spark_location(warehouse.history_uri(location), s3_scheme)
    if run_date is not None and run_id is not None:
        where = warehouse.history_partition_uri(location, run_date, run_id)
    elif run_date is not None:
        where = warehouse.path(location, warehouse.HISTORY, f"run_date={run_date.isoformat()}")
    else:
        where = warehouse.history_uri(location)
    if not objects.exists(where):
        return spark.createDataFrame([], COMMODITY_LIBRARY)
    reader = spark.read.schema(COMMODITY_LIBRARY).option("basePath", base)
    df = reader.parquet(spark_location(where, s3_scheme))
    if run_date is not None:
        df = df.where(F.col("run_date") == F.lit(run_date))
    if run_id is not None:
        df = df.where(F.col("run_id") == F.lit(run_id))
    return df


def read_commodity_run(
    spark: SparkSession,
    location: str,
    run_date: date,
    s3_scheme: str = "s3a",
    run_id: str | None = None,
) -> DataFrame:
    """The history rows of one ``run_date`` (of every run that date, or of ``run_id``)."""
    return read_history(spark, location, s3_scheme, run_date=run_date, run_id=run_id)


def write_current_snapshot(
    df: DataFrame, location: str, snapshot: str, rows_hint: int, s3_scheme: str = "s3a"
) -> str:
    """Write a new ``tags_current`` snapshot directory (never the one readers use).

    Sorted by ``product_id`` within a few files, so Parquet row-group statistics let
    DuckDB and Spark skip most of a file when looking up products.
    """
    check_matches(df.schema, CURRENT_TAGS, "current tags")
    uri = warehouse.path(location, snapshot)
    files = max(1, -(-rows_hint // CURRENT_ROWS_PER_FILE))
    (
        df.repartition(files, "product_id")
        .sortWithinPartitions("product_id")
        .write.mode("overwrite")
        .parquet(spark_location(uri, s3_scheme))
    )
    return uri


def read_snapshot(
    spark: SparkSession, location: str, snapshot: str | None, s3_scheme: str = "s3a"
) -> DataFrame:
    """One ``tags_current`` snapshot (relative path), or an empty table for None."""
    if snapshot is None:
        return spark.createDataFrame([], CURRENT_TAGS)
    uri = warehouse.path(location, snapshot)
    return spark.read.schema(CURRENT_TAGS).parquet(spark_location(uri, s3_scheme))


def read_current(spark: SparkSession, location: str, s3_scheme: str = "s3a") -> DataFrame:
    """``tags_current`` as the pointer names it (empty before the first run)."""
    pointer = warehouse.read_pointer(location)
    return read_snapshot(spark, location, pointer.snapshot if pointer else None, s3_scheme)


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


def read_first_layout(
    spark: SparkSession, location: str, partitions: list[str], s3_scheme: str = "s3a"
) -> DataFrame:
    """The rows of a first-layout library's ``run_date=`` partition directories.

    The directories are named, not discovered, so nothing else below the root is read.
    """
    from pyspark.sql.types import StructType

    by_name = {f.name: f for f in COMMODITY_LIBRARY.fields}
    schema = StructType([by_name[c] for c in FIRST_LAYOUT_COLUMNS])
    if not partitions:
        return spark.createDataFrame([], schema)
    paths = [spark_location(warehouse.path(location, p), s3_scheme) for p in partitions]
    reader = spark.read.schema(schema).option("basePath", spark_location(location, s3_scheme))
    return reader.parquet(*paths)


def read_product_list(spark: SparkSession, location: str, s3_scheme: str = "s3a") -> DataFrame:
    """A list of product ids: ``.txt`` (one a line; blank and ``#`` lines skipped), ``.csv``
    (a ``product_id`` column, or a single column without header) or Parquet (a
    ``product_id`` column). Returns distinct, non-null ``product_id`` strings."""
    require_dataset(location, "--products list")
    where = spark_location(location, s3_scheme)
    name = location.rstrip("/").lower()
    try:
        if name.endswith((".txt", ".lst", ".ids")):
            raw = spark.read.text(where).select(F.trim("value").alias("product_id"))
            ids = raw.where((F.col("product_id") != "") & ~F.col("product_id").startswith("#"))
        elif name.endswith(".csv"):
            with_header = spark.read.option("header", True).csv(where)
            if "product_id" in with_header.columns:
                ids = with_header.select(F.trim("product_id").alias("product_id"))
            elif len(with_header.columns) == 1:
                ids = spark.read.csv(where).select(F.trim("_c0").alias("product_id"))
            else:
                raise InputError(
                    f"--products {location}: a CSV list needs a product_id column "
                    f"(columns found: {', '.join(with_header.columns)})"
                )
        else:
            df = spark.read.parquet(where)
            check_columns(df.schema, {"product_id": None}, f"--products {location}")
            ids = df.select(F.col("product_id").cast("string").alias("product_id"))
    except InputError:
        raise
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"--products {location}: not a readable list ({first})") from None
    return ids.where(F.col("product_id").isNotNull()).distinct()


def manifest_uri(location: str, run_id: str) -> str:
    return warehouse.manifest_uri(location, run_id)


def write_manifest(location: str, manifest: dict[str, Any]) -> str:
    return warehouse.write_manifest(location, manifest)


def read_manifest(location: str, run_id: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(objects.read_bytes(manifest_uri(location, run_id)))
    return data


def write_string_table(folder: Path, columns: dict[str, list[str]]) -> None:
    """A one-file Parquet table of string columns, replacing ``folder`` (demo catalogs)."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    table = pa.table({k: pa.array(v, pa.string()) for k, v in columns.items()})
    pq.write_table(table, folder / "part-00000.parquet", compression="zstd")
