"""The catalogue of classifier architectures: names, input sizes and scaling, build options.

Plain data and validation, without Keras: the configuration and the CLI check names and
options against it on the driver, where TensorFlow is never imported. The Keras builders
that turn these options into networks are in ``prodclf.model.builders``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
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

    def validate(self) -> None:
        """Refuse bad values with a ``ConfigError`` naming the option."""
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
