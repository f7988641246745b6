"""prodclf.evaluation.report: files written, PNGs valid, metrics.json round-trips, Markdown."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from prodclf.evaluation.metrics import Scored, evaluate, scored_from_probabilities
from prodclf.evaluation.report import (
    plot_confusion,
    plot_learning_curves,
    plot_reliability,
    write_report,
)

pytestmark = pytest.mark.spark4

LABELS = ["shirt", "shoe", "bag"]


def small_metrics() -> dict:
    # Same worked example as tests/test_metrics.py: F1 shirt 0.8, shoe 0.5, bag 2/3;
    # accuracy 4/6, macro-F1 59/90, ECE (5 bins) 0.3, threshold at precision 0.75: 0.65.
    # Top-3 needs K >= 3, so the ranking lists all three classes.
    s = Scored(
        labels=LABELS,
        y_true=np.array([0, 0, 0, 1, 1, 2]),
        y_pred=np.array([0, 0, 1, 1, 2, 2]),
        confidence=np.array([0.95, 0.85, 0.75, 0.65, 0.55, 0.35]),
        top_k=np.array([[0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 0, 2], [2, 0, 1], [2, 1, 0]]),
    )
    return evaluate(s, target_precision=0.75, bins=5)


def assert_png(path: Path) -> tuple[int, int]:
    assert path.is_file() and path.stat().st_size > 0
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert im.width > 100 and im.height > 100
        return im.size


HISTORY = {
    "loss": [1.2, 0.8, 0.6, 0.55],
    "accuracy": [0.5, 0.7, 0.8, 0.82],
    "val_loss": [1.1, 0.9, 0.85, 0.84],
    "val_accuracy": [0.55, 0.65, 0.7, 0.71],
}


def test_importing_report_does_not_import_matplotlib() -> None:
    code = "import sys, prodclf.evaluation.report; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_write_report(tmp_path: Path) -> None:
    metrics = small_metrics()
    out = tmp_path / "eval" / "run-1"  # created on demand
    context = {"model": "fashion-cnn", "version": "20240607T120000Z", "run id": "r|42"}
    files = write_report(out, metrics, title="Catalog tags", context=context, history=HISTORY)

    names = [p.name for p in files]
    assert names == [
        "metrics.json",
        "confusion.png",
        "reliability.png",
        "learning_curves.png",
        "report.md",
    ]
    assert all(p.parent == out for p in files)
    for p in files:
        if p.suffix == ".png":
            assert_png(p)

    text = (out / "metrics.json").read_text()
    assert json.loads(text) == metrics
    assert text == json.dumps(metrics, indent=2, sort_keys=True) + "\n"

    md = (out / "report.md").read_text()
    assert md.startswith("# Catalog tags\n")
    assert "- **model**: fashion-cnn" in md
    assert "- **run id**: r\\|42" in md  # a pipe would break the Markdown
    assert "| Images | 6 |" in md
    assert "| Accuracy | 66.67% |" in md
    assert "| Top-3 accuracy | 100.00% |" in md
    assert "| Macro-F1 | 0.6556 |" in md
    assert "| Weighted F1 | 0.6778 |" in md
    assert "| Expected calibration error (5 bins) | 0.3000 |" in md
    assert "0.6500 (auto-accepts 66.67% of products at precision 75.00%)" in md
    # Worst class first: shoe (0.5) < bag (0.667) < shirt (0.8).
    rows = [line for line in md.splitlines() if line.startswith(("| shirt ", "| shoe ", "| bag "))]
    per_class = rows[:3]
    assert [r.split("|")[1].strip() for r in per_class] == ["shoe", "bag", "shirt"]
    assert per_class[0] == "| shoe | 0.5000 | 0.5000 | 0.5000 | 2 |"
    # Most confused pairs: three off-diagonal cells of count 1, in row order.
    assert "| shirt | shoe | 1 | 33.33% |" in md
    assert "| shoe | bag | 1 | 50.00% |" in md
    for image in ("confusion.png", "reliability.png", "learning_curves.png"):
        assert f"]({image})" in md


def test_write_report_without_history_or_top3(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    probs = rng.dirichlet(np.ones(2), size=40)
    metrics = evaluate(scored_from_probabilities(probs, rng.integers(0, 2, 40), ["a", "b"], k=3))
    files = write_report(tmp_path, metrics, title="Two classes")
    assert [p.name for p in files] == [
        "metrics.json",
        "confusion.png",
        "reliability.png",
        "report.md",
    ]
    assert not (tmp_path / "learning_curves.png").exists()
    md = (tmp_path / "report.md").read_text()
    assert "| Top-3 accuracy | n/a" in md
    assert "learning_curves.png" not in md


def test_report_unreachable_threshold_and_unseen_class(tmp_path: Path) -> None:
    s = Scored(
        labels=["a", "b", "never"],
        y_true=np.array([1, 0, 0]),
        y_pred=np.array([0, 0, 0]),
        confidence=np.array([0.9, 0.8, 0.7]),
        top_k=np.array([[0], [0], [0]]),
    )
    metrics = evaluate(s, target_precision=0.99)
    assert metrics["review_threshold"]["threshold"] is None
    write_report(tmp_path, metrics, title="Hard")
    md = (tmp_path / "report.md").read_text()
    assert "| Review threshold for precision 99.00% | none: no confidence threshold" in md
    lines = md.splitlines()
    table = lines[lines.index("| Category | Precision | Recall | F1 | Images |") + 2 :]
    # b (F1 0, 1 image, never predicted) on top; "never" (no images, no predictions) last.
    assert table[0].startswith("| b | 0.0000 |")
    assert table[2] == "| never | n/a | n/a | n/a | 0 |"
    assert "never predicted" in md


def test_plot_confusion_many_classes(tmp_path: Path) -> None:
    n = 100
    rng = np.random.default_rng(0)
    cm = rng.integers(0, 5, size=(n, n)) + np.diag(rng.integers(20, 60, size=n))
    cm[3] = 0  # a class with no images must not divide by zero
    labels = [f"category-with-a-rather-long-name-{i:03d}" for i in range(n)]
    small = assert_png(plot_confusion(np.eye(3, dtype=int), LABELS, tmp_path / "small.png"))
    big = assert_png(plot_confusion(cm, labels, tmp_path / "big.png"))
    assert big[0] > small[0] and big[1] > small[1]  # the figure grows with the class count
    with pytest.raises(ValueError, match="expected"):
        plot_confusion(cm, labels[:5], tmp_path / "bad.png")


def test_plot_reliability_with_empty_bins(tmp_path: Path) -> None:
    bins = small_metrics()["reliability"]
    assert bins[0]["count"] == 0
    assert_png(plot_reliability(bins, tmp_path / "rel.png"))


def test_learning_curves_with_learning_rate(tmp_path: Path) -> None:
    with_lr = {**HISTORY, "learning_rate": [1e-3, 1e-3, 5e-4, 2.5e-4]}
    lr_size = assert_png(plot_learning_curves(with_lr, tmp_path / "lr.png"))
    keras_lr = {"loss": [1.0, 0.5], "lr": [0.01, 0.005]}  # older Keras name, no accuracy
    assert_png(plot_learning_curves(keras_lr, tmp_path / "lr_old.png"))
    plain_size = assert_png(plot_learning_curves(HISTORY, tmp_path / "plain.png"))
    assert lr_size[1] > plain_size[1]  # a third panel for the learning rate
    train_only = {"loss": [1.0, 0.7, 0.6], "accuracy": [0.4, 0.6, 0.7]}
    assert_png(plot_learning_curves(train_only, tmp_path / "train_only.png"))


def test_learning_curves_refuses_empty_history(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="nothing to plot"):
        plot_learning_curves({"epoch_time": [1.0]}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="nothing to plot"):
        plot_learning_curves({"loss": []}, tmp_path / "x.png")


def test_report_shows_head_only_beside_fine_tuned_and_the_calibration(tmp_path: Path) -> None:
    metrics = small_metrics()
    metrics["phases"] = {
        "head_only": {"accuracy": 0.8, "validation_accuracy": 0.81, "macro_f1": 0.7, "epochs": 14},
        "fine_tuned": {
            "accuracy": 0.84,
            "validation_accuracy": 0.84,
            "macro_f1": 0.78,
            "epochs": 8,
        },
        "kept": "fine_tuned",
    }
    metrics["calibration"] = {
        "temperature": 1.41,
        "fitted_on": "validation",
        "images": 296,
        "expected_calibration_error": {"before": 0.062, "after": 0.024, "split": "test"},
    }
    history = {"loss": [1.0, 0.8, 0.9, 0.5], "phase": [1.0, 1.0, 2.0, 2.0]}
    write_report(tmp_path, metrics, title="t", history=history)
    text = (tmp_path / "report.md").read_text()
    assert "| head only | 81.00% | 80.00% | n/a | 0.7000 | n/a | 14 |" in text
    assert "| fine-tuned | 84.00% | 84.00% | n/a | 0.7800 | n/a | 8 |" in text
    assert "Kept: the **fine tuned** weights" in text
    assert "T = 1.4100, fitted on 296 validation image(s)" in text
    assert "0.0620 before, 0.0240 after" in text
    assert_png(tmp_path / "learning_curves.png")
