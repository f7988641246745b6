"""A run's commit: the conditional pointer swap, what readers see of an uncommitted run,
roll-forward, and the running run in ``prodclf runs``."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest
from pyspark.sql import SparkSession
from pyspark.testing import assertDataFrameEqual
from support.library import commit, staged

from prodclf.library.table import CommitConflict, CommodityLibrary

pytestmark = pytest.mark.spark4


def current_tags(spark: SparkSession, library: CommodityLibrary) -> list[tuple[str, str]]:
    return sorted((r.product_id, r.category) for r in library.read_current(spark).collect())


def test_of_two_commits_from_the_same_state_one_wins_and_the_other_publishes_nothing(
    spark: SparkSession, tmp_path: Path
) -> None:
    library = CommodityLibrary(str(tmp_path / "lib"))
    first = staged(spark, library, "a", {"p1": "red", "p2": "blue"})
    # The second run began from the same (empty) library: the lock failed to keep it out.
    second = staged(spark, library, "b", {"p1": "green"})
    won = commit(spark, library, first, 2)
    with pytest.raises(CommitConflict) as lost:
        commit(spark, library, second, 1)
    assert lost.value.exit_code == 3
    assert str(lost.value) == (
        f"run b: another run (a) committed to {tmp_path}/lib after this run began; "
        "nothing published, rerun it"
    )
    assert [m.run_id for m in library.manifests()] == ["a"] == [won.run_id]
    assert library.pending_ids() == []
    pointer = library.pointer()
    assert pointer is not None and pointer.run_id == "a" and pointer.rows == 2
    assert current_tags(spark, library) == [("p1", "red"), ("p2", "blue")]
    runs = duckdb.sql(f"SELECT run_id FROM read_parquet('{tmp_path}/lib/runs/runs.parquet')")
    assert runs.fetchall() == [("a",)]


def test_the_documented_history_recipe_never_reads_an_uncommitted_run(
    spark: SparkSession, tmp_path: Path
) -> None:
    library = CommodityLibrary(str(tmp_path / "lib"))
    commit(spark, library, staged(spark, library, "a", {"p1": "red"}), 1)
    staged(spark, library, "killed", {"p1": "blue", "p2": "blue"})  # no commit: killed
    root = f"{tmp_path}/lib"
    # docs: "Reading the history without Spark" (the runs table lists complete runs only).
    recipe = f"""
        SELECT h.product_id, h.category, h.run_id
        FROM read_parquet('{root}/tags_history/*/*/*.parquet', hive_partitioning = true) h
        SEMI JOIN read_parquet('{root}/runs/runs.parquet') r USING (run_id)
        ORDER BY h.product_id
    """
    assert duckdb.sql(recipe).fetchall() == [("p1", "red", "a")]
    # Plain Parquet has no commit of its own: without the join, the killed run shows.
    everything = f"SELECT count(*) FROM read_parquet('{root}/tags_history/*/*/*.parquet')"
    assert duckdb.sql(everything).fetchall() == [(3,)]


def test_a_commit_killed_after_its_pointer_swap_is_finished_by_the_next_command(
    spark: SparkSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    library = CommodityLibrary(str(tmp_path / "lib"))
    txn = staged(spark, library, "a", {"p1": "red"})

    def killed(*_: object) -> None:
        raise KeyboardInterrupt  # the process dies between the pointer and the manifest

    monkeypatch.setattr(library, "_finish", killed)
    with pytest.raises(KeyboardInterrupt):
        commit(spark, library, txn, 1)
    assert library.manifests() == [] and library.pending_ids() == ["a"]
    again = CommodityLibrary(str(tmp_path / "lib"))
    with again.lock("the next command").held():
        done = again.roll_forward()
    assert [m.run_id for m in done] == ["a"] and again.pending_ids() == []
    assert current_tags(spark, again) == [("p1", "red")]


def test_runs_lists_the_run_holding_the_lock_as_running(
    spark: SparkSession, tmp_path: Path
) -> None:
    library = CommodityLibrary(str(tmp_path / "lib"))
    commit(spark, library, staged(spark, library, "a", {"p1": "red"}), 1)
    with library.lock("prodclf tag full run b", run_id="b").held():
        runs = library.runs()
        assert [(r["run_id"], r["state"]) for r in runs] == [("b", "running"), ("a", "complete")]
    assert [(r["run_id"], r["state"]) for r in library.runs()] == [("a", "complete")]


def test_a_rerun_after_a_lost_commit_replaces_its_debris(
    spark: SparkSession, tmp_path: Path
) -> None:
    library = CommodityLibrary(str(tmp_path / "lib"))
    staged(spark, library, "a", {"p1": "blue", "p9": "blue"})  # killed before its commit
    won = commit(spark, library, staged(spark, library, "a", {"p1": "red"}), 1)
    assert won.current_rows == 1
    assertDataFrameEqual(
        library.read_history(spark).select("product_id", "category"),
        spark.createDataFrame([("p1", "red")], "product_id string, category string"),
    )
