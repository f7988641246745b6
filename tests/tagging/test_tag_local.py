"""The tagging job end to end on local Spark with a local-directory object store."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from datetime import date
from pathlib import Path

import pandas as pd
import pytest
from catalog import Catalog, build_catalog, tree_digest
from conftest import run_tag_job
from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from support.outputs import without_churn

from prodclf import requirements
from prodclf.config import TagConfig
from prodclf.errors import RunFailed
from prodclf.library.table import CommodityLibrary
from prodclf.schemas import COMMODITY_LIBRARY

pytestmark = [pytest.mark.slow, pytest.mark.spark4]

DAY1 = date(2026, 11, 20)
DAY2 = date(2026, 11, 21)


def config(cat: Catalog, out: Path, bundle: Path, day: date, run_id: str) -> TagConfig:
    return TagConfig(
        base_library=str(cat.base),
        commodity_library=str(out),
        model=str(bundle),
        run_date=day,
        run_id=run_id,
    )


OUTCOME = ("product_id", "status", "error_code", "category")


def outcome(spark: SparkSession, out: Path, day: date) -> list[tuple[object, ...]]:
    rows = CommodityLibrary(str(out)).read_history(spark, day).select(*OUTCOME)
    return sorted(tuple(r) for r in rows.collect())


def expected(cat: Catalog) -> list[tuple[object, ...]]:
    return sorted((pid, *v) for pid, v in cat.expected.items())


@pytest.fixture
def catalog(tmp_path: Path) -> Catalog:
    return build_catalog(tmp_path)


def test_every_product_gets_exactly_one_row_with_its_tag(
    spark: SparkSession, catalog: Catalog, color_bundle: Path, tmp_path: Path
) -> None:
    out = tmp_path / "commodity"
    manifest = run_tag_job(config(catalog, out, color_bundle, DAY1, "r1"), spark)

    assert outcome(spark, out, DAY1) == expected(catalog)
    assert manifest["products_in"] == len(catalog.expected)
    assert manifest["rows_written"] == len(catalog.expected)
    assert manifest["ok"] == 12
    assert manifest["errors"] == {"invalid_uri": 1, "not_found": 1, "undecodable_image": 1}
    assert manifest["duplicate_product_rows"] == 1
    assert manifest["model_name"] == "color" and manifest["model_version"] == "1"
    stored = CommodityLibrary(str(out)).manifest("r1")
    # The command prints the manifest, and the report's churn beside it.
    assert stored is not None and stored.to_dict() == without_churn(manifest)


RED_PATH = "Colours > Red"


@pytest.fixture
def pathed_bundle(color_bundle: Path, tmp_path: Path) -> Path:
    """The color bundle with a taxonomy path on "red" only ("blue" keeps none)."""
    dest = tmp_path / "pathed-model"
    shutil.copytree(color_bundle, dest)
    meta = json.loads((dest / "bundle.json").read_text())
    meta["labels"][0]["path"] = RED_PATH
    (dest / "bundle.json").write_text(json.dumps(meta))
    return dest


def test_rows_follow_the_commodity_contract(
    spark: SparkSession, catalog: Catalog, pathed_bundle: Path, tmp_path: Path
) -> None:
    out = tmp_path / "commodity"
    run_tag_job(config(catalog, out, pathed_bundle, DAY1, "r1"), spark)
    df = spark.read.parquet(str(out / "tags_history"))  # a plain read, partitions inferred
    assert [(f.name, f.dataType) for f in df.schema.fields] == [
        (f.name, f.dataType) for f in COMMODITY_LIBRARY.fields
    ]
    assert sorted(p.relative_to(out).as_posix() for p in out.glob("tags_history/*/*")) == [
        "tags_history/run_date=2026-11-20/run_id=r1"
    ]
    red = df.where(F.col("product_id") == "p001").first()
    assert red is not None
    assert red["category"] == "red" and red["category_id"] == "1001"
    assert red["category_path"] == RED_PATH
    blue = df.where((F.col("category") == "blue") & (F.col("status") == "ok")).first()
    assert blue is not None and blue["category_path"] is None  # the label has no path
    assert red["confidence"] > 0.99 and red["needs_review"] is False
    assert [t["category"] for t in red["top_k"]] == ["red", "blue"]
    assert red["top_k"][0]["score"] == pytest.approx(red["confidence"])
    assert red["run_id"] == "r1" and red["error_code"] is None
    bad = df.where(F.col("product_id") == "missing").first()
    assert bad is not None
    assert bad["confidence"] is None and bad["top_k"] is None and bad["needs_review"] is True
    assert bad["category_path"] is None
    assert "gone.png" in bad["error_message"]


def test_base_library_and_images_are_byte_identical_after_a_run(
    spark: SparkSession, catalog: Catalog, color_bundle: Path, tmp_path: Path
) -> None:
    before = tree_digest(catalog.base), tree_digest(catalog.images)
    run_tag_job(config(catalog, tmp_path / "commodity", color_bundle, DAY1, "r1"), spark)
    assert (tree_digest(catalog.base), tree_digest(catalog.images)) == before


def test_runs_of_one_date_coexist_and_a_rerun_of_a_complete_run_changes_nothing(
    spark: SparkSession, catalog: Catalog, color_bundle: Path, tmp_path: Path
) -> None:
    out = tmp_path / "commodity"
    run_tag_job(config(catalog, out, color_bundle, DAY1, "day1"), spark)
    first = run_tag_job(config(catalog, out, color_bundle, DAY2, "day2"), spark)
    before = tree_digest(out)

    again = run_tag_job(config(catalog, out, color_bundle, DAY2, "day2"), spark)

    # Idempotent: the complete run's manifest, nothing rewritten (no report, so no churn).
    assert again == without_churn(first)
    changed = {k for k, v in tree_digest(out).items() if before.get(k) != v}
    assert changed <= {"runs/runs.parquet"}, changed  # rebuilt from the same manifests

    run_tag_job(config(catalog, out, color_bundle, DAY2, "day2-b"), spark)
    after = tree_digest(out)
    for prefix in (
        "tags_history/run_date=2026-11-20/",
        "tags_history/run_date=2026-11-21/run_id=day2/",
    ):
        assert {k: v for k, v in after.items() if k.startswith(prefix)} == {
            k: v for k, v in before.items() if k.startswith(prefix)
        }
    for run_id in ("day2", "day2-b"):  # each run's rows stay addressable by run_id
        rows = CommodityLibrary(str(out)).read_history(spark, DAY2, run_id=run_id)
        got = sorted(tuple(r) for r in rows.select(*OUTCOME).collect())
        assert got == expected(catalog)
    assert sorted(p.name for p in (out / "_runs").glob("*.json")) == [
        "day1.json",
        "day2-b.json",
        "day2.json",
    ]


def test_same_input_and_model_give_the_same_tags(
    spark: SparkSession, catalog: Catalog, color_bundle: Path, tmp_path: Path
) -> None:
    cols = ["product_id", "category", "category_id", "confidence", "top_k", "status", "error_code"]
    run_tag_job(config(catalog, tmp_path / "a", color_bundle, DAY1, "a"), spark)
    run_tag_job(config(catalog, tmp_path / "b", color_bundle, DAY1, "b"), spark)
    a = CommodityLibrary(str(tmp_path / "a")).read_history(spark, DAY1).select(cols)
    b = CommodityLibrary(str(tmp_path / "b")).read_history(spark, DAY1).select(cols)
    assert sorted(a.collect()) == sorted(b.collect())


def test_workers_with_other_prodclf_code_than_the_driver_fail_the_run(
    spark: SparkSession,
    catalog: Catalog,
    color_bundle: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The driver's prodclf is made to differ (as with a stale environment archive on the
    executors); the Python workers run this checkout's."""
    monkeypatch.setattr(requirements, "code_identity", lambda: "0.0.9+0123456789ab")
    out = tmp_path / "commodity"

    with pytest.raises(RunFailed) as info:
        run_tag_job(config(catalog, out, color_bundle, DAY1, "skewed"), spark)

    monkeypatch.undo()
    assert str(info.value) == (
        "run skewed failed, nothing published: VersionSkew: the executors run prodclf "
        f"{requirements.code_identity()}, the driver 0.0.9+0123456789ab: ship the executors "
        "an environment built from the driver's prodclf (infra/package.sh)"
    )
    assert not (out / "_runs" / "skewed.json").exists()
    assert not list(out.glob("tags_history/**/*.parquet"))
    # What a scheduler reads: not worth retrying until the executors' environment is fixed.
    failure = json.loads((out / "_runs" / "skewed.failure").read_text())
    assert (failure["exit_code"], failure["retryable"]) == (3, False)


@pytest.mark.parametrize("spelling", ["path", "file-uri"])
def test_a_base_library_given_as_one_parquet_file_is_tagged(
    spark: SparkSession, catalog: Catalog, color_bundle: Path, tmp_path: Path, spelling: str
) -> None:
    """spark.read.parquet and pyarrow read one file; so does prodclf (preflight included)."""
    single = tmp_path / "one-file.parquet"
    frame = pd.concat([pd.read_parquet(p) for p in sorted(catalog.base.glob("*.parquet"))])
    frame.to_parquet(single, index=False)
    out = tmp_path / "commodity"
    cfg = replace(
        config(catalog, out, color_bundle, DAY1, "r1"),
        base_library=str(single) if spelling == "path" else f"file://{single}",
    )
    manifest = run_tag_job(cfg, spark)
    assert outcome(spark, out, DAY1) == expected(catalog)
    assert manifest["base_rows"] == len(frame)
