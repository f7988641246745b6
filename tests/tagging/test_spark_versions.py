"""What differs between Spark 3.5 and 4.x: byte-sized Arrow batches, and ANSI SQL mode."""

from __future__ import annotations

from collections.abc import Iterator

import pandas as pd
import pyspark
import pytest
from pyspark.sql import SparkSession
from pyspark.sql.functions import pandas_udf
from test_transforms import RUN, fake_tag

from prodclf.session import ARROW_MAX_BYTES_PER_BATCH, version_settings
from prodclf.tagging.transforms import classify, to_commodity_rows

pytestmark = pytest.mark.spark4

SPARK4 = int(pyspark.__version__.split(".")[0]) >= 4
BYTES_KEY = "spark.sql.execution.arrow.maxBytesPerBatch"


def test_byte_sized_arrow_batches_and_classic_mode_are_set_from_spark_4_only() -> None:
    spark4 = {BYTES_KEY: ARROW_MAX_BYTES_PER_BATCH, "spark.api.mode": "classic"}
    assert version_settings("4.3.0") == spark4
    assert version_settings("4.0.0") == spark4
    assert version_settings("3.5.9") == {}


def test_the_session_caps_arrow_batches_in_bytes_where_spark_can(spark: SparkSession) -> None:
    expected = ARROW_MAX_BYTES_PER_BATCH if SPARK4 else "unset"
    assert spark.conf.get(BYTES_KEY, "unset") == expected


def test_the_session_is_classic_not_spark_connect(spark: SparkSession) -> None:
    assert not type(spark).__module__.startswith("pyspark.sql.connect")
    assert spark.sparkContext.defaultParallelism >= 1


@pytest.mark.skipif(not SPARK4, reason="Spark 3.5 sizes Arrow batches by record count only")
def test_udf_batches_are_cut_by_bytes_before_the_record_limit(spark: SparkSession) -> None:
    """Rows of 4 KB under an 8 KB cap reach the UDF a few at a time, not 16 per batch."""

    @pandas_udf("long")  # type: ignore[call-overload]
    def batch_len(refs: Iterator[pd.Series]) -> Iterator[pd.Series]:
        for batch in refs:
            yield pd.Series([len(batch)] * len(batch))

    rows = spark.range(64).selectExpr("repeat('x', 4096) AS ref").coalesce(1)
    assert int(spark.conf.get("spark.sql.execution.arrow.maxRecordsPerBatch")) > 4
    spark.conf.set(BYTES_KEY, "8k")
    try:
        sizes = {r[0] for r in rows.select(batch_len("ref")).collect()}
    finally:
        spark.conf.set(BYTES_KEY, ARROW_MAX_BYTES_PER_BATCH)
    assert max(sizes) <= 4, sizes


@pytest.mark.parametrize("ansi", ["true", "false"])
def test_commodity_rows_are_the_same_with_ansi_mode_on_and_off(
    spark: SparkSession, ansi: str
) -> None:
    """prodclf leaves spark.sql.ansi.enabled as it is (off in 3.5, on in 4.x): same rows."""
    products = spark.createDataFrame(
        [("p1", "s3://b/k"), ("p2", "s3://b/x"), ("p3", "s3://b/n")],
        "product_id string, image_uri string",
    )
    before = spark.conf.get("spark.sql.ansi.enabled")
    spark.conf.set("spark.sql.ansi.enabled", ansi)
    try:
        out = products.transform(classify, fake_tag).transform(to_commodity_rows, RUN, 0.6)
        rows = {r.product_id: r.asDict(recursive=True) for r in out.collect()}
    finally:
        spark.conf.set("spark.sql.ansi.enabled", before)
    assert rows["p1"]["category"] == "k" and rows["p1"]["confidence"] == 0.5
    assert rows["p2"]["status"] == "error" and rows["p2"]["top_k"] is None
    assert rows["p3"]["category_path"] is None
    assert rows["p2"]["needs_review"] is True and rows["p1"]["needs_review"] is True
