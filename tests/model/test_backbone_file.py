"""``--backbone FILE``: a Keras model file as the backbone, read safely, refused with one line.

The real file is the shared EfficientNet-Lite0 (``../shared/weights``); its absence is a
failure, not a skip. The refused files are written here by Keras itself.
"""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from prodclf.errors import ConfigError
from prodclf.model.builders import (
    BACKBONE,
    adam_with_multipliers,
    backbone_variables,
    build_classifier,
    feature_extractor,
    head_model,
    load_backbone_file,
    warmup_cosine,
)
from prodclf.model.catalog import CUSTOM, ModelOptions, inspect_backbone_file

ROOT = Path(__file__).resolve().parents[2]
WEIGHTS = ROOT.parent / "shared" / "weights"
EFFICIENTNET = WEIGHTS / "efficientnet_lite0_imagenet_no_top.keras"
MOBILENET_H5 = WEIGHTS / "mobilenet_2_5_224_tf_no_top.h5"


def custom(**kw: Any) -> ModelOptions:
    return ModelOptions(architecture=CUSTOM, backbone=str(EFFICIENTNET), **kw)


def test_the_shared_file_is_read_without_keras() -> None:
    assert EFFICIENTNET.is_file(), f"missing shared backbone {EFFICIENTNET}"
    info = inspect_backbone_file(str(EFFICIENTNET))
    assert (info.height, info.width, info.channels) == (224, 224, 3)
    assert info.scale == "raw"  # its first layer rescales 0..255 itself
    code = (
        "import sys; from prodclf.model.catalog import inspect_backbone_file as f; "
        f"f({str(EFFICIENTNET)!r}); assert 'keras' not in sys.modules; "
        "assert 'tensorflow' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_features_are_those_of_the_file_loaded_directly() -> None:
    import keras

    model = build_classifier(custom(), (224, 224, 3), 5)
    x = np.random.default_rng(0).uniform(0, 255, (3, 224, 224, 3)).astype("float32")
    direct = keras.saving.load_model(str(EFFICIENTNET), safe_mode=True)
    expected = np.asarray(direct.predict(x, verbose=0)).mean(axis=(1, 2))
    got = feature_extractor(model).predict(x, verbose=0)
    assert got.shape == (3, 1280)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    # Every weight of the file is in the backbone, unchanged.
    for a, b in zip(model.get_layer(BACKBONE).get_weights(), direct.get_weights(), strict=True):
        assert np.array_equal(a, b)
    # The head on precomputed features is the classifier's own head.
    probs = head_model(model).predict(got, verbose=0)
    np.testing.assert_allclose(probs, model.predict(x, verbose=0), rtol=1e-4, atol=1e-6)
    # The same fine-tuning controls: ~75% of the backbone trainable, BatchNorm frozen.
    backbone = model.get_layer(BACKBONE)
    share = sum(int(np.prod(v.shape)) for v in backbone.trainable_weights) / sum(
        int(np.prod(v.shape)) for v in backbone.weights
    )
    assert 0.7 < share < 0.8
    assert not any(
        layer.trainable
        for layer in backbone.layers
        if isinstance(layer, keras.layers.BatchNormalization)
    )


def test_backbone_init_random_is_the_same_architecture_from_scratch() -> None:
    import keras
    from keras import layers

    model = build_classifier(custom(backbone_init="random"), (64, 64, 3), 5)
    assert not custom(backbone_init="random").pretrained and custom().pretrained
    direct = keras.saving.load_model(str(EFFICIENTNET), safe_mode=True)
    backbone = model.get_layer(BACKBONE)
    ours, theirs = backbone.get_weights(), direct.get_weights()
    assert [w.shape for w in ours] == [w.shape for w in theirs]
    convs = [
        (a, b)
        for layer, a, b in zip(
            [x for x in backbone.layers for _ in x.weights], ours, theirs, strict=True
        )
        if isinstance(layer, layers.Conv2D | layers.DepthwiseConv2D)
    ]
    assert convs and not any(np.allclose(a, b) for a, b in convs)  # none kept from the file
    # From scratch everything trains, BatchNorm included (no frozen pretrained layers).
    assert all(layer.trainable for layer in backbone.layers)
    with pytest.raises(ConfigError, match="backbone_init must be file or random"):
        custom(backbone_init="imagenet").validate()


def test_the_backbone_can_be_rebuilt_at_another_input_size() -> None:
    backbone = load_backbone_file(str(EFFICIENTNET), (64, 64))
    assert backbone.input_shape == (None, 64, 64, 3)
    assert backbone.output_shape == (None, 2, 2, 1280)


def test_the_backbone_learning_rate_multiplier_applies_to_backbone_variables_only() -> None:
    model = build_classifier(custom(), (32, 32, 3), 2)
    scaled = backbone_variables(model)
    assert scaled
    model.compile(
        optimizer=adam_with_multipliers(warmup_cosine(1e-2, 10, 0), scaled, 0.0),
        loss="sparse_categorical_crossentropy",
    )
    before = [np.array(v.numpy()) for v in scaled]
    head = np.array(model.get_layer("probabilities").kernel.numpy())
    x = np.random.default_rng(1).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    model.train_on_batch(x, np.array([0, 1, 0, 1]))
    assert all(np.array_equal(b, v.numpy()) for b, v in zip(before, scaled, strict=True))
    assert not np.array_equal(head, model.get_layer("probabilities").kernel.numpy())


def test_warmup_then_cosine_schedule() -> None:
    schedule = warmup_cosine(1e-3, total_steps=110, warmup_steps=10)
    rates = [float(schedule(step)) for step in (0, 5, 10, 60, 110)]
    assert rates[0] < 1e-5 and rates[1] < rates[2]
    assert rates[2] == pytest.approx(1e-3)
    assert rates[3] == pytest.approx(5e-4, rel=1e-3)
    assert rates[4] == pytest.approx(0.0, abs=1e-9)


# --- refusals -------------------------------------------------------------------------------


def save(model: Any, path: Path) -> Path:
    model.save(str(path))
    return path


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory: Any) -> dict[str, Path]:
    import keras

    root = tmp_path_factory.mktemp("backbones")
    inp = keras.Input((32, 32, 3))
    files: dict[str, Path] = {}
    files["lambda"] = save(
        keras.Model(inp, keras.layers.Lambda(lambda t: t * 2.0)(inp)), root / "lambda.keras"
    )

    @keras.saving.register_keras_serializable(package="inhouse")
    class Doubler(keras.layers.Layer):  # type: ignore[misc]
        def call(self, x: Any) -> Any:
            return x * 2.0

    files["custom"] = save(keras.Model(inp, Doubler()(inp)), root / "custom.keras")
    vec = keras.Input((10,))
    files["not_image"] = save(keras.Model(vec, keras.layers.Dense(4)(vec)), root / "vec.keras")
    seq = keras.Input((32, 32, 3))
    files["rank3"] = save(
        keras.Model(seq, keras.layers.Reshape((32, 96))(seq)), root / "rank3.keras"
    )
    conv = keras.Input((32, 32, 3))
    files["unscaled"] = save(
        keras.Model(conv, keras.layers.Conv2D(4, 3)(conv)), root / "unscaled.keras"
    )
    files["text"] = root / "notes.keras"
    files["text"].write_text("not a model")
    with zipfile.ZipFile(root / "empty.keras", "w") as z:
        z.writestr("metadata.json", json.dumps({"keras_version": "3"}))
    files["no_config"] = root / "empty.keras"
    return files


@pytest.mark.parametrize(
    "name, message",
    [
        ("lambda", "is a Lambda layer, refused"),
        ("custom", "Doubler); only Keras' standard layers are accepted"),
        ("not_image", "the input must be an image batch (None, height, width, 1 or 3)"),
        ("text", "not a Keras model file"),
        ("no_config", "not a Keras model file"),
    ],
)
def test_files_that_are_not_safe_image_backbones_are_refused_before_loading(
    bad_files: dict[str, Path], name: str, message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        inspect_backbone_file(str(bad_files[name]))
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_an_h5_weights_file_is_not_a_backbone_file() -> None:
    with pytest.raises(ConfigError, match="not a Keras model file"):
        inspect_backbone_file(str(MOBILENET_H5))


def test_an_output_that_is_not_features_is_refused(bad_files: dict[str, Path]) -> None:
    with pytest.raises(ConfigError, match="the output must be one feature map"):
        load_backbone_file(str(bad_files["rank3"]))


def test_cli_refuses_a_bad_backbone_with_one_line(
    bad_files: dict[str, Path], tmp_path: Path
) -> None:
    library = tmp_path / "lib"
    library.mkdir()
    table = pa.table({"product_id": ["a"], "image_uri": ["file:///a.png"], "label": ["x"]})
    pq.write_table(table, library / "part-0.parquet")
    base = [sys.executable, "-m", "prodclf", "train", "--base-library", str(library)]
    base += ["--model-out", str(tmp_path / "m")]
    for backbone, extra, message in [
        (bad_files["lambda"], [], "is a Lambda layer, refused"),
        (bad_files["not_image"], [], "the input must be an image batch"),
        (MOBILENET_H5, [], "not a Keras model file"),
        (bad_files["unscaled"], [], "give --scale unit, symmetric or raw"),
    ]:
        done = subprocess.run(
            [*base, "--backbone", str(backbone), *extra],
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        assert done.returncode == 2, done.stderr
        lines = [line for line in done.stderr.splitlines() if line.startswith("prodclf")]
        assert len(lines) == 1 and message in lines[0], done.stderr
        assert lines[0].startswith("prodclf: error: --backbone") or "--scale" in lines[0]
    assert not (tmp_path / "m").exists()
