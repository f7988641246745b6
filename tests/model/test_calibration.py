"""Temperature scaling: fitted on synthetic logits of a known temperature, stored in the
bundle, applied at tag time; bundles without it keep their confidences."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from prodclf.config import InferenceConfig
from prodclf.errors import ModelBundleError
from prodclf.evaluation.metrics import expected_calibration_error
from prodclf.images import PreparedBatch, PreprocessSpec
from prodclf.model.bundle import META_FILE, SAVED_MODEL_DIR, BundleMeta, Label, calibrate, read_meta
from prodclf.model.calibration import (
    apply_temperature,
    fit_temperature,
    logits_of,
    negative_log_likelihood,
)
from prodclf.tagging.udf import finish_batch


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def synthetic(temperature: float, n: int = 20000, k: int = 6, seed: int = 0) -> tuple:
    """Logits of an over-confident model: labels really follow softmax(logits / T)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 4.0, (n, k))
    truth = softmax(logits / temperature)
    labels = np.array([rng.choice(k, p=p) for p in truth])
    return logits, labels


@pytest.mark.parametrize("true_t", [0.5, 1.0, 2.5])
def test_the_fitted_temperature_is_the_true_one(true_t: float) -> None:
    logits, labels = synthetic(true_t)
    t = fit_temperature(logits, labels)
    assert t == pytest.approx(true_t, rel=0.05)
    # It minimises the NLL: any other temperature nearby does worse.
    best = negative_log_likelihood(logits, labels, t)
    assert best < negative_log_likelihood(logits, labels, t * 1.2)
    assert best < negative_log_likelihood(logits, labels, t / 1.2)


def test_calibration_from_probabilities_lowers_the_ece_and_keeps_the_ranking() -> None:
    logits, labels = synthetic(2.5, seed=1)
    probs = softmax(logits).astype(np.float32)  # what the network outputs: over-confident
    t = fit_temperature(logits_of(probs), labels)
    assert t == pytest.approx(2.5, rel=0.05)
    calibrated = apply_temperature(probs, t)
    assert calibrated.dtype == np.float32
    np.testing.assert_allclose(calibrated.sum(axis=1), 1.0, rtol=1e-5)
    assert (np.argsort(-calibrated, axis=1) == np.argsort(-probs, axis=1)).all()
    correct = probs.argmax(axis=1) == labels
    before = expected_calibration_error(probs.max(axis=1), correct)
    after = expected_calibration_error(calibrated.max(axis=1), correct)
    assert before > 0.1 and after < 0.02, (before, after)


def test_temperature_one_changes_nothing() -> None:
    probs = softmax(np.random.default_rng(2).normal(size=(5, 4))).astype(np.float32)
    np.testing.assert_allclose(apply_temperature(probs, 1.0), probs, rtol=1e-5)
    with pytest.raises(ValueError, match="positive"):
        apply_temperature(probs, 0.0)


# --- in the bundle and at tag time ----------------------------------------------------------


LABELS = (Label("red", "1"), Label("green", "2"), Label("blue", "3"))


def meta(calibration: dict | None = None) -> BundleMeta:
    return BundleMeta(
        model_name="m",
        model_version="1",
        labels=LABELS,
        preprocessing=PreprocessSpec(1, 1, "rgb", "raw"),
        calibration=calibration,
    )


def write_bundle(root: Path, data: dict) -> str:
    (root / SAVED_MODEL_DIR).mkdir(parents=True)
    (root / SAVED_MODEL_DIR / "saved_model.pb").write_bytes(b"graph")
    (root / META_FILE).write_text(json.dumps(data))
    return str(root)


def test_the_temperature_round_trips_and_old_bundles_load_with_none(tmp_path: Path) -> None:
    written = meta({"method": "temperature_scaling", "temperature": 2.0})
    got = read_meta(write_bundle(tmp_path / "new", json.loads(written.to_json())))
    assert got.calibration == written.calibration and got.temperature == 2.0
    old = json.loads(meta().to_json())
    del old["calibration"]
    loaded = read_meta(write_bundle(tmp_path / "old", old))
    assert loaded.calibration is None and loaded.temperature == 1.0
    probs = np.array([[0.7, 0.2, 0.1]], dtype=np.float32)
    assert calibrate(probs, loaded) is probs


@pytest.mark.parametrize("bad", [{"temperature": 0}, {"temperature": "hot"}, [2.0]])
def test_a_bad_calibration_is_refused(bad: object) -> None:
    data = json.loads(meta().to_json())
    data["calibration"] = bad
    with pytest.raises(ModelBundleError, match=r"invalid bundle\.json"):
        BundleMeta.from_dict(data, "b")


def test_tagging_applies_the_bundles_temperature() -> None:
    scores = np.array([[0.7, 0.2, 0.1]], dtype=np.float32)

    def predict(x: np.ndarray) -> np.ndarray:
        return np.repeat(scores, len(x), axis=0)

    batch = PreparedBatch(1, np.zeros((1, 1, 1, 3), np.uint8), np.array([0]), {})
    cfg = InferenceConfig(model_batch_size=2, review_threshold=0.6)
    plain = finish_batch(batch, predict, meta(), cfg)
    hot = finish_batch(batch, predict, meta({"temperature": 3.0}), cfg)
    assert plain["confidence"][0] == pytest.approx(0.7)
    expected = apply_temperature(scores, 3.0)[0]
    assert hot["confidence"][0] == pytest.approx(float(expected[0]), rel=1e-5)
    assert hot["confidence"][0] < 0.6  # so the product now needs review
    assert list(hot["top_k_categories"][0]) == list(plain["top_k_categories"][0])
    assert hot["top_k_scores"][0] == pytest.approx(expected.tolist(), rel=1e-5)
