"""Classifier architectures: shapes, trainable fractions, real pretrained weights, fusion, export.

Models are built at their minimum input sizes and run on a couple of images: every
test here takes seconds. The one real pretrained file (MobileNet alpha 0.25) must be
present under ../shared: its absence is a failure, not a skip.
"""

from __future__ import annotations

import subprocess
import sys
import urllib.error
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from prodclf.errors import ConfigError
from prodclf.model.builders import (
    BACKBONE,
    CAFFE_MEAN_BGR,
    LUMA_601,
    build_classifier,
    crossentropy,
    describe_weights_file,
    freeze_backbone,
    set_trainable_fraction,
)
from prodclf.model.catalog import ARCHITECTURES, ModelOptions, architecture_info

ROOT = Path(__file__).resolve().parents[2]
MOBILENET_025 = ROOT.parent / "shared" / "weights" / "mobilenet_2_5_224_tf_no_top.h5"


def pixels(n: int, shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """Random pixels in [-1, 1]: valid input for every scale's range of interest."""
    return np.random.default_rng(seed).uniform(-1, 1, (n, *shape)).astype("float32")


def tiny_mobilenet(**kw: Any) -> Any:
    opts = ModelOptions(architecture="mobilenet", alpha=0.25, **kw)
    return build_classifier(opts, (32, 32, 3), 3)


def backbone_bn_layers(model: Any) -> list[Any]:
    from keras import layers

    return [
        layer
        for layer in model.get_layer(BACKBONE).layers
        if isinstance(layer, layers.BatchNormalization)
    ]


# --- architectures -----------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_architecture_builds_and_outputs_probabilities(arch: str) -> None:
    size = architecture_info(arch).min_size
    model = build_classifier(ModelOptions(architecture=arch), (size, size, 3), 3)
    probs = model.predict(pixels(2, (size, size, 3)), verbose=0)
    assert probs.shape == (2, 3)
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert (probs >= 0).all()
    assert model.layers[-1].name == "probabilities"
    if arch != "small_cnn":
        assert model.get_layer(BACKBONE).count_params() > 0


def test_architecture_info_matches_what_backbones_expect() -> None:
    assert architecture_info("mobilenet").scale == "symmetric"
    assert architecture_info("mobilenet_v2").scale == "symmetric"
    assert architecture_info("efficientnet_b0").scale == "raw"
    assert architecture_info("resnet50").scale == "raw"
    inception = architecture_info("inception_v3")
    assert (inception.default_size, inception.min_size, inception.scale) == (299, 75, "symmetric")
    assert architecture_info("small_cnn").scale == "unit"
    with pytest.raises(ConfigError, match="unknown architecture 'vgg'"):
        architecture_info("vgg")


def test_grayscale_input_is_repeated_to_rgb_inside_the_model() -> None:
    model = build_classifier(ModelOptions(architecture="mobilenet", alpha=0.25), (32, 32, 1), 2)
    rgb = model.get_layer("gray_to_rgb").output
    assert tuple(rgb.shape[1:]) == (32, 32, 3)
    assert model.predict(pixels(2, (32, 32, 1)), verbose=0).shape == (2, 2)


def test_resnet50_caffe_preprocessing_is_inside_the_model() -> None:
    import keras

    model = build_classifier(ModelOptions(architecture="resnet50"), (32, 32, 3), 2)
    layer = model.get_layer("caffe_preprocess")
    assert not layer.trainable
    pre = keras.Model(model.input, layer.output)
    x = np.random.default_rng(1).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    expected = keras.applications.resnet50.preprocess_input(x.copy())
    assert np.allclose(pre.predict(x, verbose=0), expected, atol=1e-3)
    assert np.allclose(expected[..., 0], x[..., 2] - CAFFE_MEAN_BGR[0], atol=1e-3)


def test_small_cnn_works_on_grayscale_and_rgb_and_has_no_backbone() -> None:
    for channels in (1, 3):
        model = build_classifier(ModelOptions(), (28, 28, channels), 10)
        assert model.predict(pixels(2, (28, 28, channels)), verbose=0).shape == (2, 10)
        assert set_trainable_fraction(model, 0.5)["backbone_params"] == 0
        assert all(layer.trainable for layer in model.layers)


def test_label_smoothing_moves_the_target_off_the_true_class() -> None:
    assert crossentropy(3) == "sparse_categorical_crossentropy"
    y_true = np.array([0, 2])
    y_pred = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]], dtype="float32")
    s = 0.3
    target = np.full((2, 3), s / 3)
    target[[0, 1], y_true] += 1 - s
    expected = -(target * np.log(y_pred)).sum(axis=1)
    got = np.asarray(crossentropy(3, s)(y_true, y_pred))
    assert np.allclose(got, expected, atol=1e-5)
    # A column of labels ([B, 1], as Keras may pass them) is the same thing.
    assert np.allclose(np.asarray(crossentropy(3, s)(y_true[:, None], y_pred)), expected, atol=1e-5)
    # The smoothed loss of a confident right answer is no longer near 0.
    sure = np.array([[0.999, 0.0005, 0.0005]], dtype="float32")
    assert float(np.asarray(crossentropy(3, s)(np.array([0]), sure))[0]) > 0.5


def test_a_small_cnn_trains_with_label_smoothing_and_class_weights() -> None:
    model = build_classifier(ModelOptions(), (28, 28, 1), 3)
    model.compile(optimizer="adam", loss=crossentropy(3, 0.1), metrics=["accuracy"])
    y = np.array([0, 1, 2, 0, 1, 2])
    h = model.fit(
        pixels(6, (28, 28, 1)),
        y,
        epochs=2,
        batch_size=3,
        class_weight={0: 2.0, 1: 1.0, 2: 1.0},
        verbose=0,
    )
    assert set(h.history) >= {"loss", "accuracy"}
    assert all(np.isfinite(h.history["loss"]))


@pytest.mark.parametrize(
    ("opts", "shape", "message"),
    [
        (ModelOptions(architecture="vgg"), (32, 32, 3), "unknown architecture"),
        (ModelOptions(fusion="rgb+depth"), (28, 28, 1), "fusion must be one of"),
        (ModelOptions(trainable_fraction=1.5), (28, 28, 1), "trainable_fraction"),
        (ModelOptions(dropout=1.0), (28, 28, 1), "dropout"),
        (ModelOptions(architecture="resnet50", alpha=0.5), (32, 32, 3), "alpha applies to"),
        (ModelOptions(weights="imagenet"), (28, 28, 1), "small_cnn is trained from scratch"),
        (ModelOptions(architecture="mobilenet", weights="s3://b/w.h5"), (32, 32, 3), "local"),
        (ModelOptions(architecture="inception_v3"), (64, 64, 3), "at least 75x75"),
        (ModelOptions(), (28, 28, 2), "1 \\(grayscale\\) or 3"),
    ],
)
def test_bad_options_are_refused(opts: ModelOptions, shape: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_classifier(opts, shape, 3)


def test_importing_the_modules_does_not_import_tensorflow() -> None:
    code = (
        "import sys, prodclf.model.builders, prodclf.model.augment; "
        "heavy = {'tensorflow', 'keras'} & set(sys.modules); "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


# --- trainable fraction --------------------------------------------------------------------


def test_trainable_fraction_counts_parameters_from_the_top_with_bn_frozen() -> None:
    model = tiny_mobilenet()
    stats = set_trainable_fraction(model, 0.75)
    backbone = model.get_layer(BACKBONE)
    assert stats["backbone_params"] == backbone.count_params()
    assert abs(stats["trainable_share"] - 0.75) < 0.05
    assert stats["trainable_backbone_params"] == sum(
        int(np.prod(v.shape)) for v in backbone.trainable_weights
    )
    assert not any(bn.trainable for bn in backbone_bn_layers(model))
    assert not backbone.get_layer("conv1").trainable  # the bottom stays frozen
    assert backbone.get_layer("conv_pw_13").trainable  # the top trains
    assert model.get_layer("probabilities").trainable


def test_trainable_fraction_extremes_and_freeze_backbone() -> None:
    model = tiny_mobilenet()
    none = set_trainable_fraction(model, 0.0)
    assert none["trainable_backbone_params"] == 0
    bn_params = sum(bn.count_params() for bn in backbone_bn_layers(model))
    full = set_trainable_fraction(model, 1.0)
    assert full["trainable_backbone_params"] == full["backbone_params"] - bn_params
    assert not any(bn.trainable for bn in backbone_bn_layers(model))
    frozen = freeze_backbone(model)
    assert frozen["trainable_backbone_params"] == 0
    head = model.get_layer("probabilities").trainable_weights
    assert {id(v) for v in model.trainable_weights} == {id(v) for v in head}
    with pytest.raises(ConfigError, match="trainable_fraction"):
        set_trainable_fraction(model, -0.1)


def test_frozen_batchnorm_keeps_its_statistics_while_fine_tuning() -> None:
    import keras

    assert MOBILENET_025.is_file(), f"missing shared pretrained weights {MOBILENET_025}"
    model = tiny_mobilenet(weights=str(MOBILENET_025), trainable_fraction=1.0)
    backbone = model.get_layer(BACKBONE)
    bn = backbone_bn_layers(model)[-1]
    before = bn.moving_mean.numpy().copy()
    kernel = backbone.get_layer("conv_pw_13").kernel.numpy().copy()
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
    model.train_on_batch(pixels(4, (32, 32, 3)), np.array([0, 1, 2, 0]))
    assert np.array_equal(bn.moving_mean.numpy(), before)  # inference mode: no update
    assert not np.array_equal(backbone.get_layer("conv_pw_13").kernel.numpy(), kernel)


def test_random_init_backbone_trains_everything() -> None:
    model = tiny_mobilenet()  # weights "none": nothing to preserve, BatchNorm learns too
    backbone = model.get_layer(BACKBONE)
    assert all(layer.trainable for layer in backbone.layers)


# --- pretrained weights --------------------------------------------------------------------


def h5_kernel(path: Path, layer: str) -> np.ndarray:
    with h5py.File(path, "r") as f:
        return np.array(f[f"{layer}/{layer}/kernel:0"])


def test_real_mobilenet_weights_load_into_the_backbone() -> None:
    assert MOBILENET_025.is_file(), f"missing shared pretrained weights {MOBILENET_025}"
    opts = ModelOptions(architecture="mobilenet", alpha=0.25, weights=str(MOBILENET_025))
    model = build_classifier(opts, (224, 224, 3), 5)
    backbone = model.get_layer(BACKBONE)
    for layer in ("conv1", "conv_pw_13"):
        assert np.array_equal(
            backbone.get_layer(layer).kernel.numpy(), h5_kernel(MOBILENET_025, layer)
        )
    # Pretrained: the default fraction (0.75) is applied, BatchNorm frozen.
    trainable = sum(int(np.prod(v.shape)) for v in backbone.trainable_weights)
    assert abs(trainable / backbone.count_params() - 0.75) < 0.05
    assert not any(bn.trainable for bn in backbone_bn_layers(model))


def test_real_weights_load_at_another_input_size_from_a_file_uri() -> None:
    assert MOBILENET_025.is_file(), f"missing shared pretrained weights {MOBILENET_025}"
    opts = ModelOptions(architecture="mobilenet", alpha=0.25, weights=MOBILENET_025.as_uri())
    model = build_classifier(opts, (96, 96, 1), 2)  # no top: conv weights fit any size
    kernel = model.get_layer(BACKBONE).get_layer("conv1").kernel.numpy()
    assert np.array_equal(kernel, h5_kernel(MOBILENET_025, "conv1"))
    assert model.predict(pixels(1, (96, 96, 1)), verbose=0).shape == (1, 2)


@pytest.mark.parametrize(
    ("arch", "alpha"),
    [("mobilenet", 0.5), ("mobilenet_v2", 0.35), ("efficientnet_b0", 1.0)],
)
def test_weights_of_another_backbone_are_refused_with_advice(arch: str, alpha: float) -> None:
    assert MOBILENET_025.is_file(), f"missing shared pretrained weights {MOBILENET_025}"
    opts = ModelOptions(architecture=arch, alpha=alpha, weights=str(MOBILENET_025))
    with pytest.raises(ConfigError) as err:
        build_classifier(opts, (32, 32, 3), 2)
    text = str(err.value)
    assert str(MOBILENET_025) in text
    assert f"architecture {arch}" in text  # what was asked for
    assert "build architecture mobilenet, alpha 0.25, input 224x224x3" in text  # what fits


def test_describe_weights_file_names_the_backbone() -> None:
    hint = describe_weights_file(MOBILENET_025)
    assert hint is not None
    assert "architecture mobilenet, alpha 0.25" in hint
    assert describe_weights_file(ROOT / "README.md") is None  # not HDF5


def test_missing_or_unreadable_weights_file_is_a_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.h5"
    opts = ModelOptions(architecture="mobilenet", alpha=0.25, weights=str(missing))
    with pytest.raises(ConfigError, match="does not exist"):
        build_classifier(opts, (32, 32, 3), 2)
    garbage = tmp_path / "garbage.h5"
    garbage.write_text("not HDF5")
    opts = ModelOptions(architecture="mobilenet", alpha=0.25, weights=str(garbage))
    with pytest.raises(ConfigError, match=r"garbage\.h5 does not fit architecture mobilenet"):
        build_classifier(opts, (32, 32, 3), 2)


def test_imagenet_weights_offline_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No network here; the download is also cut off so the test holds on any machine."""
    import keras.src.backend.config as keras_config
    import keras.src.utils.file_utils as file_utils

    def offline(*args: Any, **kwargs: Any) -> None:
        raise urllib.error.URLError("network is unreachable (test)")

    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setattr(keras_config, "_KERAS_DIR", str(tmp_path))  # read at import time
    monkeypatch.setattr(file_utils, "urlretrieve", offline)
    opts = ModelOptions(architecture="mobilenet", alpha=0.25, weights="imagenet")
    with pytest.raises(ConfigError, match=r"cannot be downloaded.*local weights file"):
        build_classifier(opts, (128, 128, 3), 2)


# --- gray + rgb fusion ---------------------------------------------------------------------


def test_fusion_has_a_fixed_gray_conversion_and_a_recurrent_stream() -> None:
    import keras

    opts = ModelOptions(architecture="mobilenet", alpha=0.25, fusion="gray+rgb")
    model = build_classifier(opts, (32, 32, 3), 3)
    to_gray = model.get_layer("to_gray")
    assert not to_gray.trainable
    assert np.allclose(to_gray.kernel.numpy().ravel(), LUMA_601)
    assert isinstance(model.get_layer("gray_rnn").forward_layer, keras.layers.GRU)
    fusion = model.get_layer("fusion")
    assert [t.shape[-1] for t in fusion.input] == [256, 128]  # backbone + BiGRU features
    # The luminance of scaled pixels is scaled the same way (weights sum to 1).
    x = pixels(2, (32, 32, 3))
    gray = keras.Model(model.input, to_gray.output).predict(x, verbose=0)
    assert np.allclose(gray[..., 0], x @ np.array(LUMA_601, dtype="float32"), atol=1e-5)


def test_fusion_trains_a_step_with_the_gray_conversion_fixed() -> None:
    model = build_classifier(ModelOptions(fusion="gray+rgb"), (28, 28, 3), 3)
    to_gray = model.get_layer("to_gray")
    before = to_gray.kernel.numpy().copy()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    loss = model.train_on_batch(pixels(2, (28, 28, 3)), np.array([0, 2]))
    assert np.isfinite(loss)
    assert np.array_equal(to_gray.kernel.numpy(), before)


def test_fusion_with_small_cnn_on_grayscale_input() -> None:
    model = build_classifier(ModelOptions(fusion="gray+rgb"), (28, 28, 1), 4)
    names = {layer.name for layer in model.layers}
    assert {"gray_rnn", "fusion"} <= names
    assert "to_gray" not in names  # already gray
    assert model.predict(pixels(3, (28, 28, 1)), verbose=0).shape == (3, 4)


# --- export ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("opts", "shape"),
    [
        (ModelOptions(), (28, 28, 1)),
        (ModelOptions(fusion="gray+rgb"), (28, 28, 3)),
        (ModelOptions(architecture="mobilenet", alpha=0.25), (32, 32, 3)),
    ],
    ids=["small_cnn", "small_cnn_gray_rgb", "mobilenet"],
)
def test_export_reloads_as_a_graph_with_the_same_outputs(
    opts: ModelOptions, shape: Any, tmp_path: Path
) -> None:
    import tensorflow as tf

    model = build_classifier(opts, shape, 3)
    x = pixels(4, shape)
    expected = model.predict(x, verbose=0)
    model.export(str(tmp_path / "saved_model"), format="tf_saved_model", verbose=False)
    loaded = tf.saved_model.load(str(tmp_path / "saved_model"))
    got = loaded.serve(tf.constant(x)).numpy()
    assert np.allclose(got, expected, atol=1e-5)
