"""Classifier architectures: a small CNN, ImageNet backbones, and a Gray + RGB fusion model.

The recipe follows transfer-learning work on e-commerce product photos: fine-tune an
ImageNet backbone with about 75% of its parameters trainable (BatchNormalization kept in
inference mode), dropout 0.3 before the classifier, and optionally a second, grayscale
stream (convolutions then a recurrent layer reading the feature map's rows) whose
features are concatenated with the backbone's before the classifier.

Every model takes pixels already scaled per ``ArchitectureInfo.scale`` (the tagging job
scales outside the model) and outputs softmax probabilities. Whatever else a backbone
needs (grayscale to RGB, ResNet's caffe preprocessing, the grayscale conversion of the
fusion stream) is done inside the model with plain, fixed layers, so ``model.export``
gives a graph that loads without any Python from this package.

Importing this module does not import TensorFlow or Keras: the Spark driver imports
``prodclf`` without them.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import Any

from prodclf.errors import ConfigError
from prodclf.model.catalog import (
    ALPHA_ARCHITECTURES,
    CUSTOM,
    ModelOptions,
    architecture_info,
    inspect_backbone_file,
    weights_path,
)

#: Name of the pretrained sub-model inside a classifier (what the trainer freezes/unfreezes).
BACKBONE = "backbone"
#: Name of the output layer (softmax probabilities).
OUTPUT = "probabilities"
#: Name of the layer whose output is the backbone's feature vector (pooled when needed).
FEATURES = "pool"

#: ITU-R BT.601 luma weights. They sum to 1, so the luminance of pixels scaled as
#: unit/symmetric/raw is scaled the same way: the conversion commutes with the scaling.
LUMA_601 = (0.299, 0.587, 0.114)
#: Caffe-style ImageNet means (BGR order) that Keras' ResNet50 weights expect subtracted.
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)

# --- building ---------------------------------------------------------------------------


def build_classifier(
    opts: ModelOptions, input_shape: tuple[int, int, int], num_classes: int
) -> Any:
    """Build (uncompiled) ``opts.architecture`` for ``input_shape`` pixels and ``num_classes``.

    Input: pixels already scaled per ``architecture_info(...).scale``; grayscale input
    (1 channel) works with every architecture. Output: softmax probabilities, layer
    ``probabilities``. Pretrained backbones (weights not ``none``) get
    ``set_trainable_fraction(opts.trainable_fraction)``; a randomly initialised backbone
    stays fully trainable, BatchNormalization included, since it learns from scratch.
    Seeds Keras' global generators with ``opts.seed`` so a build is reproducible.
    """
    opts.validate()
    if opts.backbone is not None:
        return _build_custom(opts, input_shape, num_classes)
    info = architecture_info(opts.architecture)
    height, width, channels = (int(d) for d in input_shape)
    if channels not in (1, 3):
        raise ConfigError(f"input must have 1 (grayscale) or 3 (RGB) channels, not {channels}")
    if min(height, width) < info.min_size:
        raise ConfigError(
            f"{opts.architecture} needs inputs of at least {info.min_size}x{info.min_size} "
            f"pixels, not {height}x{width}"
        )
    if num_classes < 2:
        raise ConfigError(f"a classifier needs at least 2 classes, not {num_classes}")

    import keras
    from keras import layers

    keras.utils.set_random_seed(opts.seed)
    inputs = keras.Input(shape=(height, width, channels), name="pixels")
    if opts.architecture == "small_cnn":
        features = _small_cnn_features(inputs, opts)
        name = "prodclf_small_cnn"
    else:
        rgb = _to_rgb(inputs)
        if opts.architecture == "resnet50":
            rgb = _caffe_preprocess(rgb)
        backbone = _backbone(opts, (height, width, 3))
        features = layers.GlobalAveragePooling2D(name=FEATURES)(backbone(rgb))
        name = f"prodclf_{opts.architecture}"
    return _head(opts, inputs, features, info.scale, num_classes, name)


def _head(
    opts: ModelOptions, inputs: Any, features: Any, scale: str, num_classes: int, name: str
) -> Any:
    """Fusion (optional), dropout and the softmax classifier on top of ``features``."""
    import keras
    from keras import layers

    if opts.fusion == "gray+rgb":
        gray = _gray_features(inputs, scale)
        features = layers.Concatenate(name="fusion")([features, gray])
        name += "_gray_rgb"
    if opts.dropout > 0:
        features = layers.Dropout(opts.dropout, seed=opts.seed, name="dropout")(features)
    outputs = layers.Dense(num_classes, activation="softmax", name=OUTPUT)(features)
    model = keras.Model(inputs, outputs, name=name)
    if opts.architecture != "small_cnn" and opts.pretrained:
        set_trainable_fraction(model, opts.trainable_fraction)
    return model


def _build_custom(opts: ModelOptions, input_shape: tuple[int, int, int], num_classes: int) -> Any:
    """A classifier on a backbone read from a Keras model file (``--backbone``).

    The file is checked without Keras first (``inspect_backbone_file``: standard layers
    only, one image input), then loaded with ``safe_mode=True``, so no Python from the
    file runs. Its output must be a feature map (pooled here) or a feature vector.
    """
    import keras
    from keras import layers

    assert opts.backbone is not None
    info = inspect_backbone_file(opts.backbone)
    height, width, channels = (int(d) for d in input_shape)
    if num_classes < 2:
        raise ConfigError(f"a classifier needs at least 2 classes, not {num_classes}")
    if channels not in (1, info.channels) or (channels == 3 and info.channels == 1):
        raise ConfigError(
            f"--backbone {opts.backbone} takes {info.channels}-channel images, not {channels}"
        )
    keras.utils.set_random_seed(opts.seed)
    backbone = load_backbone_file(opts.backbone, (height, width))
    if opts.backbone_init == "random":  # the same layers, freshly initialised: from scratch
        backbone = keras.models.clone_model(backbone)
    inputs = keras.Input(shape=(height, width, channels), name="pixels")
    x = _to_rgb(inputs) if channels != info.channels else inputs
    out = backbone(x)
    if len(out.shape) == 4:
        features = layers.GlobalAveragePooling2D(name=FEATURES)(out)
    else:
        features = layers.Identity(name=FEATURES)(out)
    # The file's scaling is the one the caller planned with; the gray stream sees unit pixels.
    return _head(opts, inputs, features, "raw", num_classes, f"prodclf_{CUSTOM}")


def load_backbone_file(location: str, size: tuple[int, int] | None = None) -> Any:
    """The file's model (safe mode, standard layers only) as a sub-model named ``backbone``.

    ``size`` other than the file's own input size rebuilds the same layers for that input
    (convolutional backbones take any size); None keeps the file's. Refuses, with a
    ``ConfigError``, an output that is neither a feature map nor a feature vector.
    """
    import keras

    info = inspect_backbone_file(location)
    what = f"--backbone {location}"
    try:
        loaded = keras.saving.load_model(str(info.path), safe_mode=True, compile=False)
    except Exception as exc:
        raise ConfigError(f"{what}: Keras cannot load it safely ({_first_line(exc)})") from None
    for layer in _all_layers(loaded):
        module = type(layer).__module__
        if not module.startswith("keras.") or type(layer).__name__ == "Lambda":
            raise ConfigError(f"{what}: layer {layer.name!r} is not a standard Keras layer")
    if len(loaded.outputs) != 1 or len(loaded.output.shape) not in (2, 4):
        shapes = [tuple(o.shape) for o in loaded.outputs]
        raise ConfigError(
            f"{what}: the output must be one feature map (None, h, w, c) or feature vector "
            f"(None, c), not {shapes}"
        )
    if size is not None and tuple(size) != (info.height, info.width):
        config = loaded.get_config()
        for layer in config["layers"]:
            if layer["class_name"] == "InputLayer":
                shape = layer["config"]["batch_shape"]
                layer["config"]["batch_shape"] = [shape[0], size[0], size[1], shape[3]]
        try:
            resized = keras.Model.from_config(config)
            resized.set_weights(loaded.get_weights())
        except Exception as exc:
            raise ConfigError(
                f"{what}: cannot be used at input {size[0]}x{size[1]} ({_first_line(exc)})"
            ) from None
        loaded = resized
    return keras.Model(loaded.input, loaded.output, name=BACKBONE)


def _all_layers(model: Any) -> Any:
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from _all_layers(layer)


#: (filters, convolutions) per small_cnn block; inputs up to 32 px use the first two.
_SMALL_CNN_BLOCKS = ((32, 2), (64, 2), (128, 2))


def _small_cnn_features(x: Any, opts: ModelOptions) -> Any:
    """(Conv-BN-ReLU) x 2 + max-pool blocks, then a 256-unit dense feature vector.

    Sized for 28x28 thumbnails on a 2-core CPU: two 32-filter convs at full resolution,
    two 64-filter convs at 14x14, flatten 7x7x64, dense 256. The second full-resolution
    conv costs about half as much time again per epoch (one conv there: 93.4% test on
    Fashion-MNIST in 15 epochs; docs/results.md has what this one reaches with the
    ``fashion_mnist_small_cnn`` recipe). Inputs above 32 px get a third block (two
    128-filter convs) so the feature map stays small. Small maps are flattened (position
    matters for silhouettes), large ones averaged. BatchNorm momentum 0.9, not 0.99: a
    small catalog gives only a few hundred steps, too few for 0.99's moving statistics
    to settle.
    """
    from keras import layers

    height, width = x.shape[1], x.shape[2]
    blocks = _SMALL_CNN_BLOCKS if max(height, width) > 32 else _SMALL_CNN_BLOCKS[:2]
    for i, (filters, convs) in enumerate(blocks, start=1):
        for j in range(1, convs + 1):
            x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"conv{i}_{j}")(x)
            x = layers.BatchNormalization(momentum=0.9, name=f"bn{i}_{j}")(x)
            x = layers.ReLU(name=f"relu{i}_{j}")(x)
        x = layers.MaxPooling2D(padding="same", name=f"pool{i}")(x)
        x = layers.Dropout(0.1, seed=opts.seed + i, name=f"drop{i}")(x)
    _, h, w, _ = x.shape
    x = layers.Flatten(name="flatten")(x) if h * w <= 64 else layers.GlobalAveragePooling2D()(x)
    return layers.Dense(256, activation="relu", name="dense")(x)


def _to_rgb(x: Any) -> Any:
    """Grayscale input for an RGB backbone: the channel repeated three times (no weights)."""
    from keras import layers

    if x.shape[-1] == 3:
        return x
    return layers.Concatenate(name="gray_to_rgb")([x, x, x])


def _fixed_conv(x: Any, kernel: Any, bias: Any | None, name: str) -> Any:
    """A frozen 1x1 convolution: a fixed per-pixel linear map of the channels."""
    from keras import layers

    conv = layers.Conv2D(kernel.shape[-1], 1, use_bias=bias is not None, trainable=False, name=name)
    y = conv(x)
    conv.set_weights([kernel] if bias is None else [kernel, bias])
    return y


def _caffe_preprocess(x: Any) -> Any:
    """``keras.applications.resnet50.preprocess_input`` as a layer: RGB->BGR, minus the mean."""
    import numpy as np

    kernel = np.zeros((1, 1, 3, 3), dtype="float32")
    for c in range(3):
        kernel[0, 0, 2 - c, c] = 1.0  # output channel c (BGR) is input channel 2 - c (RGB)
    bias = -np.array(CAFFE_MEAN_BGR, dtype="float32")
    return _fixed_conv(x, kernel, bias, "caffe_preprocess")


def _gray_features(x: Any, scale: str) -> Any:
    """The grayscale stream: luma, Conv-BN-ReLU-pool blocks, a BiGRU over the rows.

    The recurrent layer reads the feature map row by row ([B, H, W, C] -> [B, H, W*C]),
    its final states summarising the image's vertical layout. Raw 0..255 input is
    rescaled to 0..1 first, so the stream sees the same range whatever the backbone.
    """
    import numpy as np
    from keras import layers

    if x.shape[-1] == 3:
        kernel = np.array(LUMA_601, dtype="float32").reshape(1, 1, 3, 1)
        x = _fixed_conv(x, kernel, None, "to_gray")
    if scale == "raw":
        x = layers.Rescaling(1.0 / 255.0, name="gray_rescale")(x)
    height = int(x.shape[1])
    blocks = 2
    while blocks < 5 and -(-height // 2**blocks) > 16:
        blocks += 1
    for i in range(1, blocks + 1):
        f = min(16 * 2 ** (i - 1), 64)
        x = layers.Conv2D(f, 3, padding="same", use_bias=False, name=f"gray_conv{i}")(x)
        x = layers.BatchNormalization(momentum=0.9, name=f"gray_bn{i}")(x)
        x = layers.ReLU(name=f"gray_relu{i}")(x)
        x = layers.MaxPooling2D(padding="same", name=f"gray_pool{i}")(x)
    _, h, w, c = x.shape
    x = layers.Reshape((h, w * c), name="gray_rows")(x)
    return layers.Bidirectional(layers.GRU(64), name="gray_rnn")(x)


_APPLICATIONS = {
    "mobilenet": "MobileNet",
    "mobilenet_v2": "MobileNetV2",
    "efficientnet_b0": "EfficientNetB0",
    "resnet50": "ResNet50",
    "inception_v3": "InceptionV3",
}


def _backbone(opts: ModelOptions, shape: tuple[int, int, int]) -> Any:
    """The Keras application without its top, named ``backbone``, with its weights loaded."""
    import keras

    factory = getattr(keras.applications, _APPLICATIONS[opts.architecture])
    kwargs: dict[str, Any] = {"include_top": False, "input_shape": shape, "name": BACKBONE}
    if opts.architecture in ALPHA_ARCHITECTURES:
        kwargs["alpha"] = opts.alpha
    what = _describe(opts, shape)
    path = weights_path(opts.weights)
    if opts.weights == "imagenet":
        try:
            return factory(weights="imagenet", **kwargs)
        except ValueError as exc:  # Keras refuses the combination (alpha, size, ...)
            raise ConfigError(f"{what} with ImageNet weights: {exc}") from None
        except Exception as exc:  # urllib/HTTP failures surface as a bare Exception
            raise ConfigError(
                f"{what}: the ImageNet weights cannot be downloaded ({_first_line(exc)}); "
                "on a machine without network pass a local weights file (weights: PATH, "
                "e.g. a Keras *_no_top.h5 file)"
            ) from None
    try:
        backbone = factory(weights=None, **kwargs)
    except ValueError as exc:
        raise ConfigError(f"{what}: {exc}") from None
    if path is not None:
        _load_backbone_weights(backbone, path, opts, shape)
    return backbone


def _load_backbone_weights(
    backbone: Any, path: Path, opts: ModelOptions, shape: tuple[int, int, int]
) -> None:
    what = _describe(opts, shape)
    if not path.is_file():
        raise ConfigError(f"weights file {path} does not exist (for {what})")
    try:
        backbone.load_weights(str(path))
    except Exception as exc:
        hint = describe_weights_file(path)
        raise ConfigError(
            f"weights file {path} does not fit {what}: {_first_line(exc)}"
            + (f"; {hint}" if hint else "")
        ) from None


def _describe(opts: ModelOptions, shape: tuple[int, int, int]) -> str:
    alpha = f" alpha {opts.alpha}" if opts.architecture in ALPHA_ARCHITECTURES else ""
    return f"architecture {opts.architecture}{alpha} at input {shape[0]}x{shape[1]}x{shape[2]}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


def describe_weights_file(path: str | Path) -> str | None:
    """Guess which backbone a Keras weights file holds, as advice for an error message.

    Reads layer names and a few kernel shapes with h5py (legacy ``.h5`` and Keras 3
    ``.weights.h5`` layouts). None when the file is not HDF5 or not recognised.
    """
    try:
        import h5py

        with h5py.File(path, "r") as f:
            if "layer_names" in f.attrs:
                names = [
                    n.decode() if isinstance(n, bytes) else str(n) for n in f.attrs["layer_names"]
                ]

                def out_channels(layer: str) -> int | None:
                    group = f.get(f"{layer}/{layer}")
                    if group is None:
                        return None
                    key = next((k for k in group if k.startswith("kernel")), None)
                    return int(group[key].shape[-1]) if key else None

            elif "layers" in f:
                names = list(f["layers"].keys())

                def out_channels(layer: str) -> int | None:
                    var = f.get(f"layers/{layer}/vars/0")
                    return int(var.shape[-1]) if var is not None else None

            else:
                return "it is not a Keras weights file"
            return _guess_backbone(names, out_channels, Path(path).name)
    except Exception:
        return None


def _guess_backbone(names: list[str], out_channels: Any, filename: str) -> str | None:
    have = set(names)
    arch: str | None = None
    alpha: float | None = None
    if "conv_dw_1" in have:
        arch = "mobilenet"
        c = out_channels("conv1")
        alpha = c / 32 if c else None
    elif "block_16_project" in have:
        arch = "mobilenet_v2"
        c = out_channels("block_16_project")
        alpha = c / 320 if c else None
    elif "block1a_dwconv" in have:
        arch = "efficientnet_b0" if "block6e_dwconv" not in have else "a larger EfficientNet"
    elif "conv4_block6_out" in have or "conv4_block6_1_conv" in have:
        arch = "resnet50" if "conv4_block7_1_conv" not in have else "a deeper ResNet"
    elif "mixed10" in have:
        arch = "inception_v3"
    if arch is None:
        return None
    tops = {"conv_preds", "predictions", "Logits", "fc1000", "logits"}
    if have & tops:
        return f"it looks like a {arch} file WITH its classifier top: use the *_no_top file"
    text = f"it looks like a {arch} backbone without top: build architecture {arch}"
    if alpha is not None:
        text += f", alpha {round(alpha, 3):g}"
    size = re.search(r"_(\d{2,3})(?:_tf)?_no_top", filename)
    if size:
        n = int(size.group(1))
        text += f", input {n}x{n}x3 (other sizes load too)"
    return text


# --- trainable parameters ---------------------------------------------------------------


def _backbone_of(model: Any) -> Any | None:
    with contextlib.suppress(ValueError):
        return model.get_layer(BACKBONE)
    return None


def _count(variables: Any) -> int:
    total = 0
    for v in variables:
        n = 1
        for d in v.shape:
            n *= int(d)
        total += n
    return total


def _stats(backbone: Any | None) -> dict[str, Any]:
    if backbone is None:
        return {"backbone_params": 0, "trainable_backbone_params": 0, "trainable_share": 0.0}
    total = _count(backbone.weights)
    trainable = _count(backbone.trainable_weights)
    return {
        "backbone_params": total,
        "trainable_backbone_params": trainable,
        "trainable_share": round(trainable / total, 4) if total else 0.0,
    }


def set_trainable_fraction(model: Any, fraction: float) -> dict[str, Any]:
    """Unfreeze the top layers of the backbone so that about ``fraction`` of its parameters train.

    Layers are unfrozen from the top down to the cut that brings the trainable count
    closest to ``fraction`` of all backbone parameters (moving statistics included).
    BatchNormalization layers stay frozen, i.e. in inference mode, as Keras' fine-tuning
    guide recommends: updating their statistics on small batches of a new domain wrecks
    the pretrained features. Models without a backbone (small_cnn) are left as they are.
    Recompile the model afterwards. Returns counts for logging.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ConfigError(f"trainable_fraction must be within [0, 1], not {fraction}")
    from keras import layers

    backbone = _backbone_of(model)
    if backbone is None:
        return _stats(None)
    # Make every layer trainable, then read what each could train. Set one by one: a
    # functional model's own setter does not reach layers frozen individually before.
    backbone.trainable = True
    for layer in backbone.layers:
        layer.trainable = True
    units = [
        (
            layer,
            0 if isinstance(layer, layers.BatchNormalization) else _count(layer.trainable_weights),
        )
        for layer in backbone.layers
    ]
    target = fraction * _count(backbone.weights)
    best_cut, best_gap, running = len(units), target, 0
    for pos in range(len(units) - 1, -1, -1):
        running += units[pos][1]
        if abs(running - target) < best_gap:
            best_cut, best_gap = pos, abs(running - target)
    for pos, (layer, _) in enumerate(units):
        layer.trainable = pos >= best_cut and not isinstance(layer, layers.BatchNormalization)
    return _stats(backbone)


def freeze_backbone(model: Any) -> dict[str, Any]:
    """Freeze the whole backbone (BatchNormalization in inference mode): the head-first phase.

    Recompile the model afterwards. Returns the same counts as ``set_trainable_fraction``.
    """
    backbone = _backbone_of(model)
    if backbone is not None:
        backbone.trainable = False
    return _stats(backbone)


# --- the fine-tuning recipe: features, head, per-group learning rates ------------------------


def feature_extractor(model: Any) -> Any | None:
    """The backbone up to its pooled features (what the head reads), or None with fusion.

    With the backbone frozen (BatchNorm in inference mode) these features are fixed, so the
    head-only phase can train on them computed once instead of running the backbone on
    every image in every epoch.
    """
    import keras

    if _backbone_of(model) is None:
        return None
    with contextlib.suppress(ValueError):
        model.get_layer("fusion")
        return None
    return keras.Model(model.input, model.get_layer(FEATURES).output, name="features")


def head_model(model: Any) -> Any:
    """Dropout + classifier of ``model`` on a feature-vector input; the layers are shared."""
    import keras

    dim = int(model.get_layer(FEATURES).output.shape[-1])
    x = inputs = keras.Input(shape=(dim,), name="features")
    with contextlib.suppress(ValueError):
        x = model.get_layer("dropout")(x)
    return keras.Model(inputs, model.get_layer(OUTPUT)(x), name="head")


def backbone_variables(model: Any) -> list[Any]:
    """The backbone's trainable variables (those a lower learning rate applies to)."""
    backbone = _backbone_of(model)
    return list(backbone.trainable_variables) if backbone is not None else []


def crossentropy(num_classes: int, label_smoothing: float = 0.0) -> Any:
    """The training loss on integer labels: sparse cross-entropy, label-smoothed when asked.

    Keras' sparse cross-entropy has no label smoothing, so a smoothed loss one-hot encodes
    the labels and uses the categorical one: the target is ``1 - s + s / k`` on the true
    class and ``s / k`` on each of the other ``k - 1``. Labels stay integers, so class
    weights and the ``accuracy`` metric see them as before.
    """
    if not label_smoothing:
        return "sparse_categorical_crossentropy"
    import keras

    def smoothed_crossentropy(y_true: Any, y_pred: Any) -> Any:
        labels = keras.ops.cast(keras.ops.reshape(y_true, (-1,)), "int32")
        target = keras.ops.one_hot(labels, num_classes, dtype=y_pred.dtype)
        return keras.losses.categorical_crossentropy(
            target, y_pred, label_smoothing=label_smoothing
        )

    return smoothed_crossentropy


def warmup_cosine(peak: float, total_steps: int, warmup_steps: int) -> Any:
    """Linear warm-up from ~0 to ``peak`` over ``warmup_steps``, then cosine decay to 0."""
    import keras

    warmup = max(0, min(warmup_steps, total_steps - 1))
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=peak * 1e-3 if warmup else peak,
        decay_steps=max(1, total_steps - warmup),
        alpha=0.0,
        warmup_target=peak if warmup else None,
        warmup_steps=warmup,
    )


def adam_with_multipliers(learning_rate: Any, scaled: list[Any], multiplier: float) -> Any:
    """Adam whose steps for the variables in ``scaled`` use ``multiplier`` x the rate.

    How the backbone gets a much lower learning rate than the head in one optimizer: the
    rate (a float or a schedule) is the head's, the backbone's is ``multiplier`` times it.
    (Adam is invariant to the gradient's scale, so the rate itself must be scaled.)
    """
    import keras

    # The TensorFlow backend hands update_step the variable's underlying tf.Variable.
    ids = {id(v) for v in scaled} | {id(getattr(v, "value", v)) for v in scaled}

    class ScaledAdam(keras.optimizers.Adam):
        def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> None:
            if id(variable) in ids and multiplier != 1.0:
                learning_rate = keras.ops.multiply(learning_rate, multiplier)
            super().update_step(gradient, variable, learning_rate)

    return ScaledAdam(learning_rate=learning_rate)
