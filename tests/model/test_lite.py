"""The bundle's LiteRT model: converted at export, checked, and what CPU workers run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from prodclf.images import PreprocessSpec
from prodclf.model import runtime
from prodclf.model.bundle import META_FILE, SAVED_MODEL_DIR, BundleMeta, Label, export_bundle
from prodclf.model.lite import LITE_FILE, LitePredict, parity_batch

pytestmark = pytest.mark.spark4

SPEC = PreprocessSpec(16, 16, "rgb", "symmetric")


def small_model() -> Any:
    import keras

    keras.utils.set_random_seed(3)
    inputs = keras.Input(shape=SPEC.shape)
    x = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(3, activation="softmax")(x)
    return keras.Model(inputs, outputs)


def bundle_meta() -> BundleMeta:
    labels = (Label("a", "1"), Label("b", "2"), Label("c", "3"))
    return BundleMeta(model_name="m", model_version="1", labels=labels, preprocessing=SPEC)


@pytest.fixture(scope="module")
def lite_bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    model = small_model()
    dest = tmp_path_factory.mktemp("lite") / "bundle"
    export_bundle(model, bundle_meta(), str(dest))
    return dest, model


def scaled(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float32) / 127.5 - 1.0


def test_export_writes_a_lite_model_that_answers_like_keras(lite_bundle: tuple[Path, Any]) -> None:
    dest, model = lite_bundle
    entry = json.loads((dest / META_FILE).read_text())["lite_model"]
    assert entry["file"] == LITE_FILE
    x = np.random.default_rng(1).integers(0, 256, size=(5, *SPEC.shape), dtype=np.uint8)
    got = LitePredict((dest / LITE_FILE).read_bytes(), threads=1)(x)
    np.testing.assert_allclose(got, model.predict(scaled(x), verbose=0), atol=1e-5)


def test_cpu_workers_run_the_lite_model_and_tensorflow_when_asked(
    lite_bundle: tuple[Path, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    dest, model = lite_bundle
    x = parity_batch(SPEC, rows=3)
    auto = runtime.load_predictor(str(dest), use_gpu=False, engine="auto")
    plain = runtime.load_predictor(str(dest), use_gpu=False, engine="tensorflow")
    assert isinstance(auto.predict, LitePredict)
    assert not isinstance(plain.predict, LitePredict)
    expected = model.predict(scaled(x), verbose=0)
    np.testing.assert_allclose(auto.predict(x), expected, atol=1e-5)
    np.testing.assert_allclose(plain.predict(x), expected, atol=1e-5)


def test_a_lite_file_that_does_not_match_its_digest_is_not_run(
    lite_bundle: tuple[Path, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    dest = tmp_path / "bundle"
    shutil.copytree(lite_bundle[0], dest)
    (dest / LITE_FILE).write_bytes((dest / LITE_FILE).read_bytes() + b"\0")
    predictor = runtime.load_predictor(str(dest), use_gpu=False, engine="auto")
    assert not isinstance(predictor.predict, LitePredict)
    assert predictor.predict(parity_batch(SPEC)).shape == (4, 3)


def test_a_model_that_converts_differently_gets_no_lite_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The parity check is what keeps a wrong conversion out of the bundle."""
    from prodclf.model import lite

    real = lite.LitePredict

    class Off(real):  # type: ignore[misc, valid-type]
        def __call__(self, x: np.ndarray) -> np.ndarray:
            return super().__call__(x) + 0.01

    monkeypatch.setattr(lite, "LitePredict", Off)
    dest = tmp_path / "bundle"
    written = export_bundle(small_model(), bundle_meta(), str(dest))
    assert written.lite_model is None
    assert not (dest / LITE_FILE).exists()
    assert (dest / SAVED_MODEL_DIR / "saved_model.pb").exists()


def test_lite_predict_takes_uint8_only_and_any_batch_size(lite_bundle: tuple[Path, Any]) -> None:
    predict = LitePredict((lite_bundle[0] / LITE_FILE).read_bytes(), threads=1)
    assert predict(parity_batch(SPEC, rows=2)).shape == (2, 3)
    assert predict(parity_batch(SPEC, rows=7)).shape == (7, 3)
    with pytest.raises(TypeError, match="uint8"):
        predict(parity_batch(SPEC).astype(np.float32))


def test_a_cpu_worker_running_the_lite_model_never_imports_tensorflow(
    lite_bundle: tuple[Path, Any],
) -> None:
    """LiteRT's own package runs the model: no TensorFlow import, its memory or start-up."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from prodclf.model.runtime import load_predictor\n"
        "from prodclf.model.lite import LitePredict, parity_batch\n"
        f"p = load_predictor({str(lite_bundle[0])!r}, use_gpu=False)\n"
        "assert isinstance(p.predict, LitePredict)\n"
        "print(p.predict(parity_batch(p.meta.preprocessing)).shape, 'tensorflow' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.split("\n")[-2] == "(4, 3) False"
