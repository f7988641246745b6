"""The catalogue of classifier architectures: names, input sizes and scaling, build options.

Plain data and validation, without Keras: the configuration and the CLI check names and
options against it on the driver, where TensorFlow is never imported. The Keras builders
that turn these options into networks are in ``prodclf.model.builders``.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from prodclf.errors import ConfigError

ARCHITECTURES = (
    "small_cnn",
    "mobilenet",
    "mobilenet_v2",
    "efficientnet_b0",
    "resnet50",
    "inception_v3",
)
FUSIONS = ("none", "gray+rgb")
#: The architecture of a classifier whose backbone is a Keras model file (``--backbone``).
CUSTOM = "custom"


ALPHA_ARCHITECTURES = ("mobilenet", "mobilenet_v2")


@dataclass(frozen=True)
class ArchitectureInfo:
    """What an architecture expects: sizes and the ``PreprocessSpec`` scale and colour mode.

    ``scale`` is binding (the pixel range the weights were trained on); ``color_mode`` is
    the default only: every architecture also takes the other mode (grayscale input is
    repeated to RGB inside the model for the ImageNet backbones).
    """

    default_size: int
    min_size: int
    scale: str
    color_mode: str


_INFO = {
    # Fashion-MNIST's size and colour (RGB works too), trained from scratch on [0, 1].
    "small_cnn": ArchitectureInfo(
        default_size=28, min_size=16, scale="unit", color_mode="grayscale"
    ),
    "mobilenet": ArchitectureInfo(224, 32, "symmetric", "rgb"),
    "mobilenet_v2": ArchitectureInfo(224, 32, "symmetric", "rgb"),
    # Keras' EfficientNet rescales and normalises inside the model: it takes 0..255.
    "efficientnet_b0": ArchitectureInfo(224, 32, "raw", "rgb"),
    # 0..255 RGB; the caffe preprocessing (RGB->BGR, mean subtraction) is inside the model.
    "resnet50": ArchitectureInfo(224, 32, "raw", "rgb"),
    "inception_v3": ArchitectureInfo(299, 75, "symmetric", "rgb"),
}


def architecture_info(name: str) -> ArchitectureInfo:
    """The sizes and input scaling of ``name``; ``ConfigError`` for an unknown name."""
    try:
        return _INFO[name]
    except KeyError:
        raise ConfigError(
            f"unknown architecture {name!r}; choose one of {', '.join(ARCHITECTURES)}"
        ) from None


@dataclass(frozen=True)
class ModelOptions:
    """How to build a classifier (see ``build_classifier``).

    ``weights``: ``imagenet`` (downloads, needs a network), ``none`` (random init) or a
    local path / ``file://`` URI of a Keras ``.h5`` / ``.weights.h5`` backbone file
    without its top. ``trainable_fraction`` is the share of the backbone's parameters
    left trainable, counted from the top; it applies to pretrained backbones only.
    """

    architecture: str = "small_cnn"
    weights: str = "none"
    alpha: float = 1.0
    trainable_fraction: float = 0.75
    dropout: float = 0.3
    fusion: str = "none"
    seed: int = 42
    #: A Keras model file (``.keras``) used as the backbone; ``architecture`` is then
    #: ``custom`` and the file carries its own (pretrained) weights.
    backbone: str | None = None
    #: ``file``: the backbone file's weights; ``random``: its architecture, weights freshly
    #: initialised (trained from scratch, so not ``pretrained``).
    backbone_init: str = "file"

    def validate(self) -> None:
        """Refuse bad values with a ``ConfigError`` naming the option."""
        if self.backbone is not None:
            if self.architecture != CUSTOM:
                raise ConfigError(
                    f"a backbone file makes the architecture {CUSTOM!r}, not {self.architecture!r}"
                )
            if self.weights != "none":
                raise ConfigError("--backbone: the file carries its weights; leave --weights out")
            if self.backbone_init not in ("file", "random"):
                raise ConfigError(
                    f"backbone_init must be file or random, not {self.backbone_init!r}"
                )
        elif self.architecture == CUSTOM:
            raise ConfigError(f"architecture {CUSTOM!r} needs a backbone file (--backbone FILE)")
        else:
            architecture_info(self.architecture)
        if self.fusion not in FUSIONS:
            raise ConfigError(f"fusion must be one of {', '.join(FUSIONS)}, not {self.fusion!r}")
        if not 0.0 <= self.trainable_fraction <= 1.0:
            raise ConfigError(
                f"trainable_fraction must be within [0, 1], not {self.trainable_fraction}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be within [0, 1), not {self.dropout}")
        if self.alpha <= 0:
            raise ConfigError(f"alpha must be positive, not {self.alpha}")
        if self.alpha != 1.0 and self.architecture not in ALPHA_ARCHITECTURES:
            raise ConfigError(
                f"alpha applies to {' and '.join(ALPHA_ARCHITECTURES)} only, "
                f"not to {self.architecture} (leave it at 1.0)"
            )
        if self.architecture == "small_cnn" and self.weights != "none":
            raise ConfigError("small_cnn is trained from scratch: weights must be 'none'")
        weights_path(self.weights)

    @property
    def pretrained(self) -> bool:
        """Whether the backbone starts from trained weights (a weights or backbone file)."""
        if self.backbone is not None:
            return self.backbone_init == "file"
        return self.weights != "none"


def weights_path(weights: str) -> Path | None:
    """The local file named by ``weights``; None for ``imagenet`` and ``none``."""
    if weights in ("imagenet", "none"):
        return None
    if not weights:
        raise ConfigError("weights must be 'imagenet', 'none' or a local weights file")
    parsed = urlparse(weights)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise ConfigError(f"weights {weights}: file:// URIs must name a local file")
        return Path(unquote(parsed.path))
    if parsed.scheme and len(parsed.scheme) > 1:  # one letter: a Windows drive
        raise ConfigError(
            f"weights {weights}: only local files (a path or a file:// URI) are supported; "
            "copy the file to the machine first"
        )
    return Path(weights)


# --- backbone files (--backbone), read without Keras ---------------------------------------

#: Keras layer classes a backbone file may not contain even though Keras ships them: they
#: run Python (Lambda) or load another model's code or graph (TFSMLayer, JaxLayer, ...).
FORBIDDEN_LAYERS = frozenset({"Lambda", "TFSMLayer", "JaxLayer", "FlaxLayer", "TorchModuleWrapper"})
#: Model containers a backbone file may nest (their layers are checked too).
_MODEL_CLASSES = frozenset({"Functional", "Sequential", "Model"})
#: A first ``Rescaling`` whose scale maps 0..255 into a range this wide (or narrower) means
#: the file takes raw 0..255 pixels and normalises them itself.
_RAW_RANGE = 2.5


@dataclass(frozen=True)
class BackboneFile:
    """What a Keras backbone file says about itself, read from its ``config.json``.

    ``scale`` is ``raw`` when the model's first layer is a ``Rescaling`` that normalises
    0..255 pixels itself, else None (the input scaling must then be given: ``--scale``).
    """

    path: Path
    height: int
    width: int
    channels: int
    scale: str | None
    layers: int


def inspect_backbone_file(location: str) -> BackboneFile:
    """Read and check a Keras 3 model file (``.keras`` zip) without importing Keras.

    Refused with one ``ConfigError`` line: a file that is missing or not a Keras model
    file; a layer that is not one of Keras' own (custom or registered classes) or that
    runs code (``Lambda`` and the other ``FORBIDDEN_LAYERS``); an input that is not one
    image batch ``(None, height, width, 1 or 3)`` of known size.
    """
    path = weights_path(location)
    if path is None:
        raise ConfigError(f"--backbone {location}: expected a Keras model file (.keras)")
    what = f"--backbone {location}"
    if not path.is_file():
        raise ConfigError(f"{what}: no such file")
    try:
        with zipfile.ZipFile(path) as archive:
            config = json.loads(archive.read("config.json"))
            has_weights = "model.weights.h5" in archive.namelist()
    except (zipfile.BadZipFile, KeyError, ValueError, OSError):
        raise ConfigError(
            f"{what}: not a Keras model file (a .keras archive with config.json, as written "
            "by model.save)"
        ) from None
    if not isinstance(config, dict) or config.get("class_name") not in _MODEL_CLASSES:
        raise ConfigError(f"{what}: not a Keras model file (its config holds no model)")
    if not has_weights:
        raise ConfigError(f"{what}: the file holds no weights (model.weights.h5)")
    layers = list(_layers(config, what))
    inputs = [layer for layer in layers if layer.get("class_name") == "InputLayer"]
    top = [layer for layer in config["config"].get("layers", []) if isinstance(layer, dict)]
    top_inputs = [layer for layer in top if layer.get("class_name") == "InputLayer"]
    if config.get("class_name") == "Sequential" and not top_inputs:
        top_inputs = inputs[:1]
    if len(top_inputs) != 1:
        raise ConfigError(f"{what}: the model must have one image input, found {len(top_inputs)}")
    shape = (top_inputs[0].get("config") or {}).get("batch_shape") or []
    if (
        len(shape) != 4
        or not all(isinstance(d, int) and d > 0 for d in shape[1:])
        or shape[3] not in (1, 3)
    ):
        raise ConfigError(
            f"{what}: the input must be an image batch (None, height, width, 1 or 3) of known "
            f"size, not {tuple(shape)}"
        )
    return BackboneFile(
        path=path,
        height=int(shape[1]),
        width=int(shape[2]),
        channels=int(shape[3]),
        scale=_input_scale(top, top_inputs[0]),
        layers=len(layers),
    )


def _layers(model: dict[str, Any], what: str) -> Any:
    """Every layer config of a model config, nested models included; refuses foreign ones."""
    for layer in (model.get("config") or {}).get("layers") or []:
        if not isinstance(layer, dict):
            raise ConfigError(f"{what}: not a Keras model file (malformed layer list)")
        cls = str(layer.get("class_name"))
        module = str(layer.get("module") or "")
        registered = layer.get("registered_name")
        nested = cls in _MODEL_CLASSES and module.startswith("keras")
        if cls in FORBIDDEN_LAYERS:
            raise ConfigError(f"{what}: layer {layer.get('name')!r} is a {cls} layer, refused")
        if not nested and (module != "keras.layers" or registered not in (None, cls)):
            raise ConfigError(
                f"{what}: layer {layer.get('name')!r} is a custom layer ({module or '?'}."
                f"{cls}); only Keras' standard layers are accepted"
            )
        yield layer
        if nested:
            yield from _layers(layer, what)


def _input_scale(layers: list[dict[str, Any]], input_layer: dict[str, Any]) -> str | None:
    """``raw`` when the layer right after the input is a Rescaling of 0..255 pixels."""
    name = input_layer.get("name") or (input_layer.get("config") or {}).get("name")
    for layer in layers:
        nodes = json.dumps(layer.get("inbound_nodes") or [])
        if layer is input_layer or f'"keras_history": ["{name}"' not in nodes:
            continue
        if layer.get("class_name") != "Rescaling":
            return None
        scale = (layer.get("config") or {}).get("scale")
        if isinstance(scale, int | float) and 0 < abs(scale) * 255 <= _RAW_RANGE:
            return "raw"
        return None
    return None
