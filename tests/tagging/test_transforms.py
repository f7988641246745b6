"""The pure tagging transforms, with a stand-in UDF (no model, no images)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, datetime

import pandas as pd
import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from pyspark.sql.functions import pandas_udf

from prodclf.config import InferenceConfig, StorageConfig
from prodclf.schemas import COMMODITY_LIBRARY, PREDICTION
from prodclf.tagging.transforms import (
    RunInfo,
    classify,
    plan_partitions,
    select_products,
    tag_products,
    to_commodity_rows,
)
from prodclf.tagging.udf import tag_images_udf

pytestmark = pytest.mark.spark4

RUN = RunInfo("r1", date(2026, 11, 21), "m", "7", datetime(2026, 11, 21, 3, 0, 0))


@pandas_udf(PREDICTION)  # type: ignore[call-overload]
def fake_tag(uris: Iterator[pd.Series]) -> Iterator[pd.DataFrame]:
    """'ok' with category = the URI's last letter; 'x' means an error row."""
    for batch in uris:
        rows: list[tuple[object, ...]] = []
        for uri in batch:
            last = str(uri)[-1]
            if last == "x":
                rows.append((None, None, None, None, None, None, "error", "not_found", "gone"))
            else:
                path = f"Top > {last}" if last != "n" else ""  # 'n': a label without a path
                top = ([last, "z"], [0.5, 0.25])
                rows.append((last, f"id-{last}", path, 0.5, *top, "ok", None, None))
        yield pd.DataFrame(rows, columns=PREDICTION.fieldNames())


def test_select_products_keeps_one_row_per_product_deterministically(spark: SparkSession) -> None:
    base = spark.createDataFrame(
        [
            ("a", "s3://b/2", "t"),
            ("a", "s3://b/1", "t"),
            ("b", None, "t"),
            (None, "s3://b/n", "t"),
            ("c", "s3://b/c", "t"),
            ("d", "  ", "t"),  # a blank reference never wins over a usable one
            ("d", "", "t"),
            ("d", "s3://b/d", "t"),
            ("e", " ", "t"),  # ... but stays when it is all there is (an invalid_uri row)
        ],
        "product_id string, image_uri string, title string",
    )
    got = sorted(tuple(r)[:2] for r in base.transform(select_products, 3).collect())
    assert got == [
        ("a", "s3://b/1"),
        ("b", None),
        ("c", "s3://b/c"),
        ("d", "s3://b/d"),
        ("e", " "),
    ]
    assert base.transform(select_products, 3).rdd.getNumPartitions() == 3
    assert {r.change_value for r in base.transform(select_products).collect()} == {None}


def test_select_products_carries_the_change_column_as_text(spark: SparkSession) -> None:
    base = spark.createDataFrame(
        [("a", "s3://b/a", 3), ("a", "s3://b/a", 5), ("b", "s3://b/b", None)],
        "product_id string, image_uri string, version int",
    )
    got = sorted(tuple(r) for r in base.transform(select_products, None, "version").collect())
    assert got == [("a", "s3://b/a", "5"), ("b", "s3://b/b", None)]


def test_commodity_rows_have_the_contract_schema_and_values(spark: SparkSession) -> None:
    products = spark.createDataFrame(
        [("p1", "s3://b/k"), ("p2", "s3://b/x")], "product_id string, image_uri string"
    )
    out = products.transform(classify, fake_tag).transform(to_commodity_rows, RUN, 0.6)
    assert out.schema.simpleString() == COMMODITY_LIBRARY.simpleString()
    rows = {r.product_id: r.asDict(recursive=True) for r in out.collect()}
    assert rows["p1"] == {
        "product_id": "p1",
        "image_uri": "s3://b/k",
        "category": "k",
        "category_id": "id-k",
        "category_path": "Top > k",
        "confidence": 0.5,
        "top_k": [{"category": "k", "score": 0.5}, {"category": "z", "score": 0.25}],
        "needs_review": True,
        "status": "ok",
        "error_code": None,
        "error_message": None,
        "model_name": "m",
        "model_version": "7",
        "tagged_at": datetime(2026, 11, 21, 3, 0, 0),
        "reason": "full",
        "change_value": None,
        "run_date": date(2026, 11, 21),
        "run_id": "r1",
    }
    assert rows["p2"]["status"] == "error" and rows["p2"]["error_code"] == "not_found"
    assert rows["p2"]["needs_review"] is True and rows["p2"]["top_k"] is None
    assert rows["p2"]["category_path"] is None


def test_an_empty_taxonomy_path_becomes_null(spark: SparkSession) -> None:
    products = spark.createDataFrame([("p1", "s3://b/n")], "product_id string, image_uri string")
    out = products.transform(classify, fake_tag).transform(to_commodity_rows, RUN, 0.6)
    row = out.first()
    assert row is not None
    assert (row["category_id"], row["category_path"]) == ("id-n", None)


def test_review_threshold_decides_needs_review(spark: SparkSession) -> None:
    products = spark.createDataFrame([("p1", "s3://b/k")], "product_id string, image_uri string")
    low = products.transform(classify, fake_tag).transform(to_commodity_rows, RUN, 0.4)
    assert low.first()["needs_review"] is False  # type: ignore[index]


def test_the_model_udf_is_evaluated_once_per_row(spark: SparkSession) -> None:
    """Every field reads one struct: the plan must hold a single Python UDF evaluation.

    prodclf's own UDF (never run here: only planned), through the job's own composition,
    so the test fails when ``tag_images_udf`` stops marking it non-deterministic: with a
    filter on its output (as any reader of the rows may add), Spark 3.5 pushes the filter
    below the projection of a deterministic UDF and evaluates the model twice per row.
    """
    udf = tag_images_udf("file:///no/such/model", StorageConfig(), InferenceConfig())
    base = spark.createDataFrame([("p1", "s3://b/k")], "product_id string, image_uri string")
    out = tag_products(base, udf=udf, run=RUN, review_threshold=0.6, partitions=2).where(
        F.col("status") == F.lit("ok")
    )
    plan = out._jdf.queryExecution().executedPlan().toString()
    assert plan.count("ArrowEvalPython") == 1
    assert plan.count("tag(") == 1, plan


@pytest.mark.parametrize(
    ("products", "parallelism", "per_partition", "expected"),
    [(0, 4, 100, 4), (10, 4, 100, 4), (1000, 4, 100, 10), (1001, 4, 100, 11), (5, 0, 100, 1)],
)
def test_plan_partitions(
    products: int, parallelism: int, per_partition: int, expected: int
) -> None:
    assert plan_partitions(products, parallelism, per_partition) == expected
