"""The selections and the tags_current merge as pure DataFrame functions, on tiny tables."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

import pytest
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from prodclf.library.current import current_from_history, merge_current
from prodclf.schemas import COMMODITY_LIBRARY, CURRENT_TAGS
from prodclf.tagging.selection import (
    select_backfill,
    select_full,
    select_incremental,
    unknown_ids,
)

pytestmark = pytest.mark.spark4

D1, D2, D3 = date(2026, 11, 20), date(2026, 11, 21), date(2026, 11, 22)
T1, T2, T3 = (datetime(2026, 11, d, 3) for d in (20, 21, 22))

PRODUCTS = "product_id string, image_uri string, change_value string"


def current_row(pid: str, **values: Any) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(CURRENT_TAGS.fieldNames())
    row.update(product_id=pid, active=True, status="ok", attempt_model_version="1")
    row.update(attempt_image_uri=f"s3://b/{pid}", category="red", run_id="r0")
    row.update(values)
    return row


def current_df(spark: SparkSession, rows: list[dict[str, Any]]) -> DataFrame:
    return spark.createDataFrame(
        [tuple(r[c] for c in CURRENT_TAGS.fieldNames()) for r in rows], CURRENT_TAGS
    )


def reasons(df: DataFrame) -> dict[str, str]:
    return {r.product_id: r.reason for r in df.collect()}


def test_incremental_selects_each_product_for_its_first_reason(spark: SparkSession) -> None:
    products = spark.createDataFrame(
        [
            ("same", "s3://b/same", None),
            ("new", "s3://b/new", None),
            ("returned", "s3://b/returned", None),
            ("moved", "s3://b/moved-v2", None),
            ("etag", "s3://b/etag", "e2"),
            ("etag-untracked", "s3://b/etag-untracked", "e9"),
            ("flaky", "s3://b/flaky", None),
            ("model-failed", "s3://b/model-failed", None),
            ("broken", "s3://b/broken", None),
            ("broken-old-model", "s3://b/broken-old-model", None),
            ("old-model", "s3://b/old-model", None),
        ],
        PRODUCTS,
    )
    current = current_df(
        spark,
        [
            current_row("same"),
            current_row("returned", active=False, inactive_since=D1),
            current_row("moved"),
            current_row("etag", attempt_change="e1"),
            current_row("etag-untracked"),  # tagged before the change column was recorded
            current_row("flaky", status="error", error_code="fetch_failed"),
            current_row("model-failed", status="error", error_code="inference_failed"),
            # A permanent error with this model and this image: not retried.
            current_row("broken", status="error", error_code="not_found", category=None),
            current_row(
                "broken-old-model",
                status="error",
                error_code="undecodable_image",
                attempt_model_version="0",
            ),
            current_row("old-model", attempt_model_version="0", model_version="0"),
            current_row("left-the-catalog"),
        ],
    )
    got = products.transform(
        select_incremental, current, "1", ("fetch_failed", "inference_failed"), True
    )
    assert reasons(got) == {
        "new": "new",
        "returned": "returned",
        "moved": "image_changed",
        "etag": "change_column",
        "flaky": "retry_error",
        "model-failed": "retry_error",
        "broken-old-model": "model_version",
        "old-model": "model_version",
    }
    assert {r.product_id for r in got.where("in_current").collect()} == set(reasons(got)) - {"new"}
    # Without the change column the etag is not compared; with fewer retry codes, fewer.
    narrow = products.transform(select_incremental, current, "1", ("fetch_failed",), False)
    assert "etag" not in reasons(narrow)
    assert reasons(narrow).get("model-failed") is None


def test_full_selects_everything_and_marks_new_products(spark: SparkSession) -> None:
    products = spark.createDataFrame([("a", "u", None), ("b", "u", None)], PRODUCTS)
    current = current_df(spark, [current_row("a")])
    assert reasons(products.transform(select_full, current)) == {"a": "full", "b": "new"}


def test_backfill_criteria_combine_with_and(spark: SparkSession) -> None:
    products = spark.createDataFrame(
        [(p, f"s3://b/{p}", None) for p in ("a", "b", "c", "d")], PRODUCTS
    )
    current = current_df(
        spark,
        [
            current_row("a", status="error", error_code="not_found"),
            current_row("b"),
            current_row("c", status="error", error_code="fetch_failed"),
        ],
    )
    listed = spark.createDataFrame([("a",), ("b",), ("c",), ("nope",)], "product_id string")
    merchant = spark.createDataFrame([("b",), ("c",), ("d",)], "product_id string")
    assert reasons(products.transform(select_backfill, current, [listed])) == dict.fromkeys(
        "abc", "backfill"
    )
    assert set(reasons(products.transform(select_backfill, current, [listed, merchant]))) == {
        "b",
        "c",
    }
    both = products.transform(select_backfill, current, [listed, merchant], True)
    assert set(reasons(both)) == {"c"}
    assert set(reasons(products.transform(select_backfill, current, [], True))) == {"a", "c"}
    assert [r.product_id for r in unknown_ids(listed, products).collect()] == ["nope"]


def history(spark: SparkSession, rows: list[tuple[Any, ...]]) -> DataFrame:
    """(product_id, status, category, error_code, run_id, run_date, tagged_at) rows."""
    full = []
    for pid, status, category, code, run_id, day, at in rows:
        row: dict[str, Any] = dict.fromkeys(COMMODITY_LIBRARY.fieldNames())
        row.update(product_id=pid, status=status, category=category, error_code=code)
        row.update(run_id=run_id, run_date=day, tagged_at=at, image_uri=f"s3://b/{pid}")
        row.update(model_name="m", model_version="1", reason="full")
        row.update(needs_review=status != "ok", confidence=0.9 if status == "ok" else None)
        full.append(tuple(row[c] for c in COMMODITY_LIBRARY.fieldNames()))
    return spark.createDataFrame(full, COMMODITY_LIBRARY)


RUN1 = [
    ("a", "ok", "red", None, "r1", D1, T1),
    ("b", "ok", "blue", None, "r1", D1, T1),
    ("c", "error", None, "not_found", "r1", D1, T1),
]
RUN2 = [  # a backfill: a fails now (its good tag stays), c recovers
    ("a", "error", None, "fetch_failed", "r2", D2, T2),
    ("c", "ok", "red", None, "r2", D2, T2),
]
RUN3 = [  # a full run without b: b left the catalog
    ("a", "ok", "blue", None, "r3", D3, T3),
    ("c", "ok", "red", None, "r3", D3, T3),
]


def columns(df: DataFrame) -> DataFrame:
    return df.select(
        "product_id",
        "active",
        "inactive_since",
        "status",
        "category",
        "run_id",
        "error_code",
        "error_run_id",
        "updated_run_id",
    )


def test_merging_runs_keeps_good_tags_and_marks_products_that_left(spark: SparkSession) -> None:
    empty = spark.createDataFrame([], CURRENT_TAGS)
    after1 = merge_current(empty, history(spark, RUN1), run_id="r1", run_date=D1, full_run=True)
    after2 = merge_current(after1, history(spark, RUN2), run_id="r2", run_date=D2, full_run=False)
    after3 = merge_current(after2, history(spark, RUN3), run_id="r3", run_date=D3, full_run=True)
    schema = (
        "product_id string, active boolean, inactive_since date, status string, "
        "category string, run_id string, error_code string, error_run_id string, "
        "updated_run_id string"
    )
    assertDataFrameEqual(
        columns(after2),
        spark.createDataFrame(
            [
                # An error never erases a good tag: a keeps red from r1, plus r2's error.
                ("a", True, None, "error", "red", "r1", "fetch_failed", "r2", "r2"),
                ("b", True, None, "ok", "blue", "r1", None, None, "r1"),  # untouched
                ("c", True, None, "ok", "red", "r2", None, None, "r2"),  # error cleared
            ],
            schema,
        ),
    )
    assertDataFrameEqual(
        columns(after3),
        spark.createDataFrame(
            [
                ("a", True, None, "ok", "blue", "r3", None, None, "r3"),
                ("b", False, D3, "ok", "blue", "r1", None, None, "r3"),  # kept, inactive
                ("c", True, None, "ok", "red", "r3", None, None, "r3"),
            ],
            schema,
        ),
    )
    # The same table rebuilt from history alone.
    rebuilt = current_from_history(
        history(spark, RUN1 + RUN2 + RUN3),
        spark.createDataFrame([("r1", 1), ("r2", 2), ("r3", 3)], "run_id string, seq int"),
        [(1, "r1", D1), (3, "r3", D3)],
    )
    assertDataFrameEqual(rebuilt, after3)
    assert after3.schema.simpleString() == CURRENT_TAGS.simpleString()
    assert after3.where(F.col("product_id") == "a").first()["error_at"] is None  # type: ignore[index]
