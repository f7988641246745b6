"""The column checks applied at the edges of every job (no Spark session needed)."""

from __future__ import annotations

import pytest
from pyspark.sql.types import (
    ArrayType,
    DoubleType,
    FloatType,
    IntegerType,
    LongType,
    StringType,
    StructField,
    StructType,
)

from prodclf.errors import InputError, SchemaMismatch
from prodclf.schemas import (
    BASE_LIBRARY_REQUIRED,
    COMMODITY_LIBRARY,
    PREDICTION,
    check_columns,
    check_matches,
)

pytestmark = pytest.mark.spark4


def schema(*cols: tuple[str, object]) -> StructType:
    return StructType([StructField(name, dtype) for name, dtype in cols])  # type: ignore[arg-type]


def test_check_columns_accepts_required_columns_and_ignores_others() -> None:
    base = schema(("product_id", StringType()), ("image_uri", StringType()), ("x", LongType()))
    check_columns(base, BASE_LIBRARY_REQUIRED, "base library")


def test_check_columns_names_missing_and_wrong_typed_columns() -> None:
    base = schema(("product_id", LongType()), ("title", StringType()))
    with pytest.raises(SchemaMismatch) as info:
        check_columns(base, BASE_LIBRARY_REQUIRED, "base library /data/base")
    err = info.value
    assert isinstance(err, InputError)
    assert err.missing == ["image_uri"]
    assert err.wrong_types == [("product_id", "string", "bigint")]
    assert str(err) == (
        "base library /data/base: missing column(s) image_uri; "
        "wrong type(s) product_id (expected string, found bigint) "
        "(columns found: product_id, title)"
    )


def test_check_columns_with_any_type_and_empty_schema() -> None:
    check_columns(schema(("label", IntegerType())), {"label": None}, "labels")
    with pytest.raises(SchemaMismatch) as info:
        check_columns(StructType([]), {"product_id": StringType(), "label": None}, "base")
    assert info.value.missing == ["label", "product_id"]
    assert str(info.value) == "base: missing column(s) label, product_id (columns found: none)"


def test_check_matches_accepts_the_exact_schema_whatever_the_nullability() -> None:
    check_matches(COMMODITY_LIBRARY, COMMODITY_LIBRARY, "commodity rows")
    relaxed = StructType([StructField(f.name, f.dataType, True) for f in COMMODITY_LIBRARY])
    check_matches(relaxed, COMMODITY_LIBRARY, "commodity rows")


def test_check_matches_names_missing_wrong_and_unexpected_columns() -> None:
    got = schema(
        ("category", StringType()),
        ("category_id", StringType()),
        ("category_path", StringType()),
        ("confidence", DoubleType()),
        ("top_k_categories", ArrayType(StringType())),
        ("top_k_scores", ArrayType(FloatType())),
        ("status", StringType()),
        ("error_code", StringType()),
        ("debug", StringType()),
    )
    with pytest.raises(SchemaMismatch) as info:
        check_matches(got, PREDICTION, "prediction")
    err = info.value
    assert err.missing == ["error_message"]
    assert err.wrong_types == [("confidence", "float", "double")]
    assert str(err).startswith("prediction (unexpected: debug): missing column(s) error_message; ")
    assert "confidence (expected float, found double)" in str(err)


def test_taxonomy_path_follows_the_category_id_in_both_contracts() -> None:
    for contract in (PREDICTION, COMMODITY_LIBRARY):
        names = contract.fieldNames()
        assert names[names.index("category_id") + 1] == "category_path"
        assert contract["category_path"].dataType == StringType()
        assert contract["category_path"].nullable


def test_check_matches_refuses_a_different_order() -> None:
    fields = list(PREDICTION.fields)
    swapped = StructType([fields[1], fields[0], *fields[2:]])
    with pytest.raises(SchemaMismatch) as info:
        check_matches(swapped, PREDICTION, "prediction")
    assert info.value.missing == []
    assert info.value.wrong_types == []
    assert info.value.found[:2] == ["category_id", "category"]
