"""Which products a run tags, and why: pure ``DataFrame -> DataFrame`` selections.

Every selection takes the run's candidate products (``select_products``: one row per
product with ``product_id, image_uri, change_value``) and ``tags_current`` (schema
``CURRENT_TAGS``), and returns the products to tag with two more columns: ``reason``
(one of ``prodclf.schemas.REASONS``) and ``in_current`` (whether ``tags_current`` already
has a row for the product, so the job knows how many rows ``tags_current`` will gain).
Incremental runs decide by one join with ``tags_current``; history is never reread.
"""

from __future__ import annotations

from collections.abc import Sequence

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from prodclf.schemas import (
    REASON_BACKFILL,
    REASON_CHANGE_COLUMN,
    REASON_FULL,
    REASON_IMAGE_CHANGED,
    REASON_MODEL_VERSION,
    REASON_NEW,
    REASON_RETRY_ERROR,
    REASON_RETURNED,
    STATUS_ERROR,
)

#: What the selections read of tags_current, prefixed so nothing clashes with the products.
_CURRENT_COLUMNS = (
    "active",
    "status",
    "error_code",
    "attempt_image_uri",
    "attempt_change",
    "attempt_model_version",
)


def _with_current(products: DataFrame, current: DataFrame) -> DataFrame:
    cur = current.select(
        F.col("product_id"),
        F.lit(True).alias("cur_present"),
        *[F.col(c).alias(f"cur_{c}") for c in _CURRENT_COLUMNS],
    )
    return products.join(cur, "product_id", "left")


def _finish(annotated: DataFrame, reason: Column) -> DataFrame:
    return (
        annotated.withColumn("reason", reason)
        .where(F.col("reason").isNotNull())
        .select(
            "product_id",
            "image_uri",
            "change_value",
            "reason",
            F.coalesce(F.col("cur_present"), F.lit(False)).alias("in_current"),
        )
    )


def select_full(products: DataFrame, current: DataFrame) -> DataFrame:
    """Every product: ``new`` when tags_current has no row for it yet, else ``full``."""
    annotated = _with_current(products, current)
    reason = F.when(F.col("cur_present").isNull(), F.lit(REASON_NEW)).otherwise(REASON_FULL)
    return _finish(annotated, reason)


def select_incremental(
    products: DataFrame,
    current: DataFrame,
    model_version: str,
    retry_codes: Sequence[str],
    use_change_column: bool = False,
) -> DataFrame:
    """The products that need a tag, each with its first reason, in this order:

    ``new`` (no row in tags_current), ``returned`` (inactive, back in the base library),
    ``image_changed`` (``image_uri`` differs from the latest attempt's),
    ``change_column`` (the change column differs from the value the latest attempt
    recorded; only with ``use_change_column``, and only where a value was recorded),
    ``retry_error`` (the latest attempt failed with a code in ``retry_codes``),
    ``model_version`` (the latest attempt was not made with ``model_version``: an ok tag
    from an older model, or an older model's failure). A product whose latest attempt
    failed permanently (``not_found``, ``undecodable_image``...) with this model and the
    same image is not retried until its image changes.
    """
    annotated = _with_current(products, current)
    reason = (
        F.when(F.col("cur_present").isNull(), F.lit(REASON_NEW))
        .when(~F.coalesce(F.col("cur_active"), F.lit(True)), F.lit(REASON_RETURNED))
        .when(
            ~F.col("cur_attempt_image_uri").eqNullSafe(F.col("image_uri")),
            F.lit(REASON_IMAGE_CHANGED),
        )
    )
    if use_change_column:
        # Only against a recorded value: a product last tagged without the change column
        # has none, and is compared by image_uri alone until a run records one.
        reason = reason.when(
            F.col("cur_attempt_change").isNotNull()
            & ~F.col("cur_attempt_change").eqNullSafe(F.col("change_value")),
            F.lit(REASON_CHANGE_COLUMN),
        )
    retryable = (F.col("cur_status") == F.lit(STATUS_ERROR)) & F.col("cur_error_code").isin(
        list(retry_codes)
    )
    reason = reason.when(retryable, F.lit(REASON_RETRY_ERROR)).when(
        ~F.col("cur_attempt_model_version").eqNullSafe(F.lit(model_version)),
        F.lit(REASON_MODEL_VERSION),
    )
    return _finish(annotated, reason)


def select_backfill(
    products: DataFrame,
    current: DataFrame,
    filters: Sequence[DataFrame] = (),
    retry_errors: bool = False,
) -> DataFrame:
    """The products in every one of ``filters`` (DataFrames of ``product_id``), and, with
    ``retry_errors``, whose current tag is an error. The criteria combine with AND."""
    selected = products
    for ids in filters:
        selected = selected.join(ids.select("product_id").distinct(), "product_id", "left_semi")
    annotated = _with_current(selected, current)
    if retry_errors:
        annotated = annotated.where(F.col("cur_status") == F.lit(STATUS_ERROR))
    return _finish(annotated, F.lit(REASON_BACKFILL))


def unknown_ids(ids: DataFrame, products: DataFrame) -> DataFrame:
    """Listed product ids that are not in the base library (counted, never fatal)."""
    return ids.select("product_id").distinct().join(products, "product_id", "left_anti")
