"""An Iceberg library (Hadoop catalog) through its commits, as Spark reads it.

Spark 3.5 only: the Iceberg runtime here is the test stand-in ``make iceberg-jar``
builds (no Spark 4 runtime is on PyPI).
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest
from conftest import iceberg_jars
from pyspark.sql import SparkSession
from support.library import commit, staged

from prodclf.config import TableFormatConfig
from prodclf.library.table import CommitConflict, CommodityLibrary

pytestmark = pytest.mark.skipif(not iceberg_jars(), reason="no Iceberg runtime (Spark 4)")

ICEBERG = TableFormatConfig(format="iceberg")
D2 = date(2026, 11, 21)


def current(spark: SparkSession, library: CommodityLibrary) -> list[tuple[object, ...]]:
    rows = library.read_current(spark).collect()
    return sorted(
        (r.product_id, r.active, r.category, r.error_code, r.updated_run_id) for r in rows
    )


def test_runs_commit_to_iceberg_tables_under_todays_rules(
    spark: SparkSession, tmp_path: Path
) -> None:
    library = CommodityLibrary(str(tmp_path / "lib"), table=ICEBERG)
    # Before the first run (a dry run reads these): empty, not an error.
    assert library.read_current(spark).count() == 0 and library.current_rows(spark) == 0
    assert library.read_history(spark).count() == 0
    first = commit(spark, library, staged(spark, library, "a", {"p1": "red", "p2": "blue"}), 2)
    assert library.recorded_format() == "iceberg" and first.table_format == "iceberg"
    assert library.current_rows(spark) == 2 == first.current_rows
    assert current(spark, library) == [
        ("p1", True, "red", None, "a"),
        ("p2", True, "blue", None, "a"),
    ]
    # An error never erases a good tag; a new product is added.
    commit(spark, library, staged(spark, library, "b", {"p1": None, "p3": "green"}, D2), 1)
    assert current(spark, library) == [
        ("p1", True, "red", "not_found", "b"),
        ("p2", True, "blue", None, "a"),
        ("p3", True, "green", None, "b"),
    ]
    # A full run marks the products it did not see inactive.
    txn = staged(spark, library, "c", {"p1": "red", "p3": "green"}, D2)
    commit(spark, library, txn, 0, mode="full")
    assert current(spark, library) == [
        ("p1", True, "red", None, "c"),
        ("p2", False, "blue", None, "c"),
        ("p3", True, "green", None, "c"),
    ]
    history = library.read_history(spark).select("run_id", "product_id").collect()
    assert sorted((r.run_id, r.product_id) for r in history) == [
        ("a", "p1"),
        ("a", "p2"),
        ("b", "p1"),
        ("b", "p3"),
        ("c", "p1"),
        ("c", "p3"),
    ]
    assert [m.run_id for m in library.manifests()] == ["a", "b", "c"]
    tables = library.format.tables(spark)  # type: ignore[union-attr]
    runs = spark.sql(f"SELECT run_id, products_in FROM {tables.runs} ORDER BY run_id").collect()
    assert [(r.run_id, r.products_in) for r in runs] == [("a", 2), ("b", 2), ("c", 2)]
    # Time travel: tags_current as run a left it.
    then = library.read_snapshot(spark, first.current_snapshot)
    assert sorted((r.product_id, r.category) for r in then.collect()) == [
        ("p1", "red"),
        ("p2", "blue"),
    ]


def test_a_run_killed_before_its_commit_is_invisible_in_every_table(
    spark: SparkSession, tmp_path: Path
) -> None:
    library = CommodityLibrary(str(tmp_path / "lib"), table=ICEBERG)
    commit(spark, library, staged(spark, library, "a", {"p1": "red"}), 1)
    staged(spark, library, "killed", {"p1": "blue", "p2": "blue"})  # staged, never committed
    assert current(spark, library) == [("p1", True, "red", None, "a")]
    history = library.read_history(spark).collect()
    assert sorted((r.run_id, r.product_id) for r in history) == [("a", "p1")]
    # The rerun of the killed run replaces nothing and commits once.
    commit(spark, library, staged(spark, library, "killed", {"p2": "blue"}), 1)
    history = library.read_history(spark).collect()
    assert sorted((r.run_id, r.product_id) for r in history) == [("a", "p1"), ("killed", "p2")]


def test_a_second_commit_from_the_same_state_is_refused(
    spark: SparkSession, tmp_path: Path
) -> None:
    library = CommodityLibrary(str(tmp_path / "lib"), table=ICEBERG)
    commit(spark, library, staged(spark, library, "a", {"p1": "red"}), 1)
    first = staged(spark, library, "b", {"p2": "blue"})
    second = staged(spark, library, "c", {"p3": "green"})
    commit(spark, library, first, 1)
    with pytest.raises(CommitConflict) as lost:
        commit(spark, library, second, 1)
    assert lost.value.exit_code == 3
    assert [m.run_id for m in library.manifests()] == ["a", "b"]
    assert [r[0] for r in current(spark, library)] == ["p1", "p2"]
    assert {r.run_id for r in library.read_history(spark).collect()} == {"a", "b"}
