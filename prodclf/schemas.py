"""The data contracts as code, and the checks applied at the edges of every job."""

from __future__ import annotations

from collections.abc import Mapping

from pyspark.sql.types import (
    ArrayType,
    BooleanType,
    DataType,
    DateType,
    FloatType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

from prodclf.errors import SchemaMismatch

#: Columns the base library must have; every other column is passed over.
BASE_LIBRARY_REQUIRED: dict[str, DataType] = {
    "product_id": StringType(),
    "image_uri": StringType(),
}

#: What the inference UDF returns per product (flat, Arrow-friendly).
PREDICTION = StructType(
    [
        StructField("category", StringType()),
        StructField("category_id", StringType()),
        StructField("category_path", StringType()),  # taxonomy path text; null when unknown
        StructField("confidence", FloatType()),
        StructField("top_k_categories", ArrayType(StringType())),
        StructField("top_k_scores", ArrayType(FloatType())),
        StructField("status", StringType()),
        StructField("error_code", StringType()),
        StructField("error_message", StringType()),
    ]
)

TOP_K_ENTRY = StructType([StructField("category", StringType()), StructField("score", FloatType())])

#: One row per product per run; partitioned by ``run_date`` on disk.
COMMODITY_LIBRARY = StructType(
    [
        StructField("product_id", StringType(), nullable=False),
        StructField("image_uri", StringType()),
        StructField("category", StringType()),
        StructField("category_id", StringType()),
        StructField("category_path", StringType()),  # taxonomy path text; null when unknown
        StructField("confidence", FloatType()),
        StructField("top_k", ArrayType(TOP_K_ENTRY)),
        StructField("needs_review", BooleanType()),
        StructField("status", StringType()),
        StructField("error_code", StringType()),
        StructField("error_message", StringType()),
        StructField("model_name", StringType()),
        StructField("model_version", StringType()),
        StructField("run_id", StringType()),
        StructField("tagged_at", TimestampType()),
        StructField("run_date", DateType()),
    ]
)

COMMODITY_PARTITION_COLUMN = "run_date"

STATUS_OK = "ok"
STATUS_ERROR = "error"


def check_columns(schema: StructType, required: Mapping[str, DataType | None], what: str) -> None:
    """Raise ``SchemaMismatch`` naming every missing or mistyped column (None: any type)."""
    found = {f.name: f.dataType for f in schema.fields}
    missing = [name for name in required if name not in found]
    wrong = [
        (name, required[name].simpleString(), found[name].simpleString())  # type: ignore[union-attr]
        for name in required
        if name in found and required[name] is not None and found[name] != required[name]
    ]
    if missing or wrong:
        raise SchemaMismatch(what, missing=missing, wrong_types=wrong, found=list(found))


def check_matches(schema: StructType, expected: StructType, what: str) -> None:
    """Names and types must match ``expected`` exactly (order included); nullability is free."""
    got = [(f.name, f.dataType.simpleString()) for f in schema.fields]
    want = [(f.name, f.dataType.simpleString()) for f in expected.fields]
    if got != want:
        have = dict(got)
        missing = [n for n, _ in want if n not in have]
        wrong = [(n, t, have[n]) for n, t in want if n in have and have[n] != t]
        extra = [n for n, _ in got if n not in dict(want)]
        if not (missing or wrong or extra):
            what += f" (columns out of order; expected {', '.join(n for n, _ in want)})"
        raise SchemaMismatch(
            what + (f" (unexpected: {', '.join(extra)})" if extra else ""),
            missing=missing,
            wrong_types=wrong,
            found=[n for n, _ in got],
        )
