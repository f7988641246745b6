"""``prodclf evaluate``: a bundle classifying now, and a commodity run read back, score alike."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from catalog import Catalog, build_catalog
from conftest import run_tag_job

from prodclf import requirements
from prodclf.cli import main
from prodclf.config import EvaluateConfig, TagConfig
from prodclf.errors import ConfigError, InputError, RunFailed
from prodclf.evaluation.job import evaluate_preflight, run_evaluate, score_tags

pytestmark = pytest.mark.spark4

DAY = date(2026, 11, 20)


def labels_table(cat: Catalog, folder: Path, flipped: set[str]) -> Path:
    """The true colour of each product, except ``flipped`` ones (labelled the other colour).

    The colour model is always right about colours, so every flipped label is one error.
    """
    rows = []
    for pid, (status, _, category) in sorted(cat.expected.items()):
        if status == "ok":
            label = category
            if pid in flipped:
                label = "red" if category == "blue" else "blue"
            rows.append({"product_id": pid, "label": label, "split": "test"})
    rows.append({"product_id": "missing", "label": "red", "split": "test"})
    rows.append({"product_id": "corrupt", "label": "blue", "split": "test"})
    rows.append({"product_id": "p000", "label": "blue", "split": "train"})  # other split: ignored
    rows.append({"product_id": "not-in-catalog", "label": "red", "split": "test"})
    folder.mkdir(parents=True)
    frame = pd.DataFrame(rows)
    frame = frame.drop_duplicates("product_id", keep="first")
    frame.merge(
        pd.DataFrame({"product_id": list(cat.expected)}), how="outer", on="product_id"
    ).merge(_uris(cat), how="left", on="product_id").to_parquet(folder / "part-0.parquet")
    return folder


def _uris(cat: Catalog) -> pd.DataFrame:
    base = pd.read_parquet(cat.base)
    return base[["product_id", "image_uri"]].drop_duplicates("product_id")


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Catalog, Path]:
    cat = build_catalog(tmp_path / "cat", n_ok=12)
    return cat, labels_table(cat, tmp_path / "labels", flipped={"p001", "p004"})


def check_scores(result: dict[str, Any], by_model: bool) -> None:
    # 12 ok products, 2 with flipped labels: accuracy 10/12. Two classes, so the tags carry
    # two categories and top-2 accuracy is 1. Error rows are coverage, not accuracy.
    assert result["images"] == 12
    assert result["accuracy"] == pytest.approx(10 / 12, abs=1e-6)
    assert result["top_k_accuracy"]["top_2"] == 1.0
    assert "top_3" not in result["top_k_accuracy"]
    assert result["coverage"]["scored"] == 12
    errors = {"not_found": 1, "undecodable_image": 1}
    # not-in-catalog has no image: classifying it now is an invalid_uri error row, while
    # a run of the catalog never tagged it.
    if by_model:
        assert result["coverage"]["error_rows"] == {**errors, "invalid_uri": 1}
        assert result["coverage"]["untagged"] == 0
    else:
        assert result["coverage"]["error_rows"] == errors
        assert result["coverage"]["untagged"] == 1


@pytest.mark.slow
def test_evaluate_a_bundle_and_the_run_it_tagged_give_the_same_scores(
    spark: Any, tmp_path: Path, setup: tuple[Catalog, Path], color_bundle: Path
) -> None:
    cat, labels = setup
    common = dict(labels=str(labels), split_column="split", split="test")
    by_model = EvaluateConfig(out=str(tmp_path / "eval-model"), model=str(color_bundle), **common)
    result_model = run_evaluate(by_model, spark, evaluate_preflight(by_model))
    check_scores(result_model, by_model=True)

    tag = TagConfig(
        base_library=str(cat.base),
        commodity_library=str(tmp_path / "commodity"),
        model=str(color_bundle),
        run_date=DAY,
        run_id="nightly-1",
    )
    run_tag_job(tag, spark)
    by_run = EvaluateConfig(
        out=str(tmp_path / "eval-run"),
        commodity_library=str(tmp_path / "commodity"),
        run_date=DAY,
        run_id="nightly-1",
        **common,
    )
    assert evaluate_preflight(by_run) is None
    result_run = run_evaluate(by_run, spark, None)
    check_scores(result_run, by_model=False)
    # The class order differs (the bundle's vs sorted), so compare order-free parts.
    for key in ("images", "accuracy", "macro_f1", "top_k_accuracy"):
        assert result_run[key] == result_model[key], key
    assert sorted(result_run["per_class"], key=lambda c: c["label"]) == sorted(
        result_model["per_class"], key=lambda c: c["label"]
    )

    written = {p.name for p in (tmp_path / "eval-run").iterdir()}
    assert {"metrics.json", "report.md", "confusion.png", "reliability.png"} <= written
    on_disk = json.loads((tmp_path / "eval-run" / "metrics.json").read_text())
    assert on_disk["accuracy"] == result_run["accuracy"]


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:toPandas attempted Arrow optimization")
def test_workers_with_other_prodclf_code_fail_the_evaluation(
    spark: Any,
    tmp_path: Path,
    setup: tuple[Catalog, Path],
    color_bundle: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, labels = setup
    out = tmp_path / "eval-model"
    cfg = EvaluateConfig(out=str(out), model=str(color_bundle), labels=str(labels))
    monkeypatch.setattr(requirements, "code_identity", lambda: "0.0.9+0123456789ab")
    with pytest.raises(RunFailed, match=r"^evaluation failed, nothing published: VersionSkew: "):
        run_evaluate(cfg, spark, evaluate_preflight(cfg))
    assert not out.exists()


@pytest.mark.slow
def test_evaluate_command_line(
    spark: Any, tmp_path: Path, setup: tuple[Catalog, Path], color_bundle: Path, capsys: Any
) -> None:
    _, labels = setup
    out = tmp_path / "eval"
    argv = ["evaluate", "--labels", str(labels), "--model", str(color_bundle), "--out", str(out)]
    argv += ["--split-column", "split", "--master", "local[2]"]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["accuracy"] == pytest.approx(10 / 12, abs=1e-6)
    assert (out / "report.md").read_text().startswith("# Evaluation: color 1")


def test_score_counts_labels_the_model_cannot_predict_as_errors() -> None:
    pdf = pd.DataFrame(
        {
            "product_id": ["a", "b", "c", "d"],
            "label": ["red", "blue", "green", "red"],
            "status": ["ok", "ok", "ok", "error"],
            "error_code": [None, None, None, "not_found"],
            "category": ["red", "blue", "red", None],
            "confidence": [0.9, 0.8, 0.7, None],
            "top_k": [
                [{"category": "red", "score": 0.9}, {"category": "blue", "score": 0.1}],
                [{"category": "blue", "score": 0.8}, {"category": "red", "score": 0.2}],
                [{"category": "red", "score": 0.7}, {"category": "blue", "score": 0.3}],
                None,
            ],
        }
    )
    result, coverage = score_tags(pdf, ["red", "blue"], target_precision=0.9)
    assert result["accuracy"] == pytest.approx(2 / 3, abs=1e-6)
    assert [c["label"] for c in result["per_class"]] == ["red", "blue", "green"]
    assert coverage == {"labelled_products": 4, "scored": 3, "error_rows": {"not_found": 1}}


def test_score_refuses_when_nothing_is_ok() -> None:
    pdf = pd.DataFrame(
        {
            "product_id": ["a"],
            "label": ["red"],
            "status": ["error"],
            "error_code": ["not_found"],
            "category": [None],
            "confidence": [None],
            "top_k": [None],
        }
    )
    with pytest.raises(InputError, match="nothing to score"):
        score_tags(pdf, None, 0.9)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({}, "exactly one of --model or --commodity-library"),
        ({"model": "/m", "commodity_library": "/c"}, "exactly one of"),
        ({"commodity_library": "/c"}, "needs --run-date"),
        ({"model": "/m", "target_precision": 0.0}, "--target-precision"),
    ],
)
def test_evaluate_config_refusals(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        EvaluateConfig(labels="/l", out="/o", **changes).validate()


def test_evaluate_refuses_before_spark(tmp_path: Path, capsys: Any) -> None:
    labels = tmp_path / "labels"
    labels.mkdir()
    pd.DataFrame({"product_id": ["a"], "label": ["x"]}).to_parquet(labels / "p.parquet")
    argv = ["evaluate", "--labels", str(labels), "--out", str(labels / "report")]
    assert main([*argv, "--model", str(tmp_path / "nope")]) == 2
    assert "overlaps --labels" in capsys.readouterr().err
    argv[-1] = str(tmp_path / "report")
    assert main([*argv, "--model", str(tmp_path / "nope")]) == 2
    assert "model bundle" in capsys.readouterr().err
    assert main([*argv, "--commodity-library", str(tmp_path / "c"), "--run-date", "x"]) == 2
    assert "--run-date 'x'" in capsys.readouterr().err
    assert not (tmp_path / "report").exists()
