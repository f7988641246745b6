"""The input datasets (the base library, product lists, labels): checks and Spark reads.

The commodity library, which prodclf writes, is ``prodclf.library``'s alone.
"""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import DataType, NullType, StringType, StructField, StructType

from prodclf.errors import ConfigError, InputError
from prodclf.schemas import (
    BASE_LIBRARY_REQUIRED,
    check_columns,
)
from prodclf.storage import objects
from prodclf.storage.uris import is_same_or_inside, normalize_location, spark_location


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


def write_string_table(folder: Path, columns: dict[str, list[str]]) -> None:
    """A one-file Parquet table of string columns, replacing ``folder`` (demo catalogs)."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    table = pa.table({k: pa.array(v, pa.string()) for k, v in columns.items()})
    pq.write_table(table, folder / "part-00000.parquet", compression="zstd")
