"""The tagging transforms: pure ``DataFrame -> DataFrame`` steps chained with ``df.transform``.

They know nothing of paths or storage; ``tag_products`` chains them, and
``prodclf.tagging.job`` wires that between the reads and writes of ``prodclf.storage.tables``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from prodclf.schemas import COMMODITY_LIBRARY, REASON_FULL, STATUS_OK


@dataclass(frozen=True)
class RunInfo:
    """What every output row of one run carries."""

    run_id: str
    run_date: date
    model_name: str
    model_version: str
    tagged_at: datetime


def select_products(
    base: DataFrame, num_partitions: int | None = None, change_column: str | None = None
) -> DataFrame:
    """One row per distinct non-null ``product_id``: ``product_id, image_uri, change_value``.

    ``num_partitions`` fixes how many inference tasks there will be: the rows are tiny,
    so left to itself adaptive execution would coalesce a whole catalog into one task.
    Hash-partitioning by ``product_id`` before the aggregation costs no extra shuffle.

    Duplicate product rows collapse to one (the smallest non-blank ``image_uri``, so the
    choice is deterministic across reruns); rows without a ``product_id`` cannot be keyed
    and are counted in the run manifest instead (see ``prodclf.tagging.job.count_catalog``).
    ``change_value`` is ``change_column`` as text (its largest value over duplicate rows),
    or null without one.
    """
    keyed = base.where(F.col("product_id").isNotNull())
    if num_partitions:
        keyed = keyed.repartition(num_partitions, "product_id")
    usable = F.when(F.trim("image_uri") != F.lit(""), F.col("image_uri"))
    # The smallest non-blank reference; a blank one only when the product has nothing else.
    uri = F.coalesce(F.min(usable), F.min("image_uri"))
    change = F.max(F.col(change_column).cast("string")) if change_column else F.lit(None)
    return keyed.groupBy("product_id").agg(
        uri.alias("image_uri"), change.cast("string").alias("change_value")
    )


def plan_partitions(products: int, parallelism: int, rows_per_partition: int) -> int:
    """Enough tasks to keep every core busy, and no task longer than ``rows_per_partition``."""
    return max(1, parallelism, -(-products // rows_per_partition))


def classify(products: DataFrame, tag_udf: Any) -> DataFrame:
    """Adds the ``prediction`` struct produced by the inference UDF."""
    return products.withColumn("prediction", tag_udf(F.col("image_uri")))


def to_commodity_rows(classified: DataFrame, run: RunInfo, review_threshold: float) -> DataFrame:
    """Shape classified products into the commodity library contract (``COMMODITY_LIBRARY``)."""
    p = F.col("prediction")
    ok = p["status"] == F.lit(STATUS_OK)
    top_k: Column = F.zip_with(
        p["top_k_categories"],
        p["top_k_scores"],
        lambda c, s: F.struct(c.alias("category"), s.alias("score")),
    )
    columns = {
        "product_id": F.col("product_id"),
        "image_uri": F.col("image_uri"),
        "category": p["category"],
        "category_id": p["category_id"],
        # An empty path (a label never mapped to the taxonomy) is unknown, not a path.
        "category_path": F.when(p["category_path"] != F.lit(""), p["category_path"]),
        "confidence": F.when(ok, p["confidence"]),
        "top_k": top_k,
        # Error rows need a person as much as doubtful ones do.
        "needs_review": F.when(ok, p["confidence"] < F.lit(review_threshold)).otherwise(True),
        "status": p["status"],
        "error_code": p["error_code"],
        "error_message": p["error_message"],
        "model_name": F.lit(run.model_name),
        "model_version": F.lit(run.model_version),
        "tagged_at": F.lit(run.tagged_at).cast("timestamp"),
        # Why the run selected the product; a run without a selection tags everything.
        "reason": _column_or(classified, "reason", F.lit(REASON_FULL)),
        "change_value": _column_or(classified, "change_value", F.lit(None)),
        "run_date": F.lit(run.run_date).cast("date"),
        "run_id": F.lit(run.run_id),
    }
    return classified.select(
        *[columns[f.name].cast(f.dataType).alias(f.name) for f in COMMODITY_LIBRARY.fields]
    )


def _column_or(df: DataFrame, name: str, default: Column) -> Column:
    return F.col(name) if name in df.columns else default


def tag_selected(
    selected: DataFrame,
    *,
    udf: Any,
    run: RunInfo,
    review_threshold: float,
    partitions: int | None = None,
) -> DataFrame:
    """Selected products (one row each, maybe with ``reason``) -> commodity rows.

    ``partitions`` hash-partitions the products by ``product_id`` into that many
    inference tasks first (a selection's joins leave them in too few, or too many).
    """
    products = selected.repartition(partitions, "product_id") if partitions else selected
    return products.transform(classify, udf).transform(to_commodity_rows, run, review_threshold)


def tag_products(
    base: DataFrame,
    *,
    udf: Any,
    run: RunInfo,
    review_threshold: float,
    partitions: int | None = None,
) -> DataFrame:
    """The tagging composition: products -> one commodity row each, in the library contract.

    The steps are chained here and in ``tag_selected`` only; used by the tag job (through
    its selections), evaluation and the benchmark.
    """
    return tag_selected(
        base.transform(select_products, partitions),
        udf=udf,
        run=run,
        review_threshold=review_threshold,
    )
