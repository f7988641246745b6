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

#: One row per product per run: the rows of ``tags_history``, partitioned on disk by
#: ``run_date`` and ``run_id`` (the last two columns), so several runs of one date coexist and
#: a rerun of a ``run_id`` replaces exactly its own partition.
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
        StructField("tagged_at", TimestampType()),
        StructField("reason", StringType()),  # why the run selected the product (REASONS)
        StructField("change_value", StringType()),  # the base library's change column, as text
        StructField("run_date", DateType()),
        StructField("run_id", StringType()),
    ]
)

#: The partition columns of ``tags_history``, outermost first.
HISTORY_PARTITION_COLUMNS = ("run_date", "run_id")

#: ``tags_current``: one row per product ever tagged. The ok-tag columns hold its latest
#: ``ok`` tag (null when it never had one); the ``error_*`` columns its latest error when
#: that is newer than the ok tag (an error never erases a good tag); ``attempt_*`` what the
#: latest attempt looked at (incremental runs compare them with the base library).
CURRENT_TAGS = StructType(
    [
        StructField("product_id", StringType(), nullable=False),
        StructField("active", BooleanType()),  # false once a full run no longer finds it
        StructField("inactive_since", DateType()),
        StructField("status", StringType()),  # the latest attempt's status
        StructField("category", StringType()),
        StructField("category_id", StringType()),
        StructField("category_path", StringType()),
        StructField("confidence", FloatType()),
        StructField("top_k", ArrayType(TOP_K_ENTRY)),
        StructField("needs_review", BooleanType()),
        StructField("image_uri", StringType()),
        StructField("model_name", StringType()),
        StructField("model_version", StringType()),
        StructField("run_id", StringType()),
        StructField("run_date", DateType()),
        StructField("tagged_at", TimestampType()),
        StructField("error_code", StringType()),
        StructField("error_message", StringType()),
        StructField("error_run_id", StringType()),
        StructField("error_at", TimestampType()),
        StructField("attempt_image_uri", StringType()),
        StructField("attempt_change", StringType()),
        StructField("attempt_model_version", StringType()),
        StructField("updated_run_id", StringType()),  # the run that last changed the row
    ]
)

#: The ok-tag columns of ``tags_current``, copied from the history row that made them.
CURRENT_OK_COLUMNS = (
    "category",
    "category_id",
    "category_path",
    "confidence",
    "top_k",
    "needs_review",
    "image_uri",
    "model_name",
    "model_version",
    "run_id",
    "run_date",
    "tagged_at",
)

MODES = ("full", "incremental", "backfill")

#: Why a run selected a product (the ``reason`` column and the manifest's ``reasons``).
REASON_FULL = "full"  # a full run, product already in tags_current
REASON_NEW = "new"  # not in tags_current yet
REASON_RETURNED = "returned"  # inactive in tags_current, back in the base library
REASON_IMAGE_CHANGED = "image_changed"  # image_uri differs from the latest attempt's
REASON_CHANGE_COLUMN = "change_column"  # the configured change column differs
REASON_MODEL_VERSION = "model_version"  # no ok tag (or attempt) from the model being run
REASON_RETRY_ERROR = "retry_error"  # latest attempt failed with a retryable code
REASON_BACKFILL = "backfill"  # an explicit backfill selection
REASONS = (
    REASON_FULL,
    REASON_NEW,
    REASON_RETURNED,
    REASON_IMAGE_CHANGED,
    REASON_CHANGE_COLUMN,
    REASON_MODEL_VERSION,
    REASON_RETRY_ERROR,
    REASON_BACKFILL,
)

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
