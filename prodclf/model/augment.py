"""Training-time data augmentation, applied in the tf.data input pipeline.

Augmenting in the input pipeline (not in the model) keeps the exported model a plain
inference graph and costs nothing at tagging time. The augmenter works on batches of
raw pixels (float32, 0..255, before ``scale_tf``) of any batch size, grayscale or RGB:

* geometry and photometry with Keras preprocessing layers (flip, rotation, zoom,
  shift, brightness, contrast), which Keras 3 runs inside ``tf.data`` on TensorFlow;
* pad-and-random-crop (``pad_crop``): whole-pixel shifts with zero fill and no
  interpolation, the usual augmentation of small centred thumbnails (Fashion-MNIST);
* "noise images" as seen in real product photos: an *occluding* patch (a hand, a
  container, a price tag: a random-colour or noise-filled rectangle) and *clutter* (a
  patch cut from another photo of the batch pasted at an edge: background objects).

Determinism: every random draw comes from generators seeded by ``AugmentOptions.seed``,
so a fresh augmenter fed the same batches in the same order repeats its output. With a
parallel ``Dataset.map`` (``num_parallel_calls``) the batches draw from the shared
generators in whatever order the threads run, so runs are no longer repeatable.

Importing this module does not import TensorFlow.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prodclf.errors import ConfigError

#: Occluding patch: each side a uniform share of the image side in this range, so the
#: area is at most a quarter of the image.
OCCLUSION_SIDE = (0.15, 0.5)
#: Clutter patch (cut from another image of the batch): at most ~1/6 of the area, so the
#: product stays the main object of the photo.
CLUTTER_SIDE = (0.2, 0.4)


@dataclass(frozen=True)
class AugmentOptions:
    """What to augment and how strongly; 0 / False disables a transformation.

    ``rotation`` is a fraction of 2*pi, ``zoom``/``shift`` fractions of the image side,
    ``brightness``/``contrast`` Keras factors, ``occlusion``/``clutter`` the probability
    per image of an occluding patch / a pasted patch of another image.
    ``pad_crop`` is a fraction of the image side: each image is padded with zeros by
    ``pad_crop_pixels`` on every side and cropped back to its size at a random place, so
    its content moves by whole pixels, at most that many in each direction.
    """

    flip: bool = True
    rotation: float = 0.05
    zoom: float = 0.1
    shift: float = 0.1
    brightness: float = 0.1
    contrast: float = 0.1
    occlusion: float = 0.25
    clutter: float = 0.25
    pad_crop: float = 0.0
    seed: int = 42

    def validate(self) -> None:
        for name in ("rotation", "zoom", "shift", "brightness", "contrast"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ConfigError(f"augmentation {name} must be within [0, 1), not {value}")
        for name in ("occlusion", "clutter"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"augmentation {name} is a probability, not {value}")
        if not 0.0 <= self.pad_crop < 0.5:
            raise ConfigError(f"augmentation pad_crop must be within [0, 0.5), not {self.pad_crop}")

    def pad_crop_pixels(self, height: int, width: int) -> int:
        """Pixels of padding (and largest shift) for an image of that size; 0 when off."""
        if not self.pad_crop:
            return 0
        return max(1, round(self.pad_crop * min(height, width)))

    @property
    def enabled(self) -> bool:
        return bool(
            self.flip
            or self.rotation
            or self.zoom
            or self.shift
            or self.brightness
            or self.contrast
            or self.occlusion
            or self.clutter
            or self.pad_crop
        )


def make_augmenter(opts: AugmentOptions, image_shape: tuple[int, ...]) -> Callable[[Any], Any]:
    """A function mapping a float32 batch ``[B, H, W, C]`` of 0..255 pixels to the same.

    For ``Dataset.map`` on batched data (apply it to the images only, e.g.
    ``ds.map(lambda x, y: (augment(x), y))``), before scaling. ``image_shape`` is
    ``(H, W, C)`` with C 1 or 3; B may vary between calls. Output is clipped to 0..255.
    """
    opts.validate()
    height, width, channels = (int(d) for d in image_shape[-3:])
    if channels not in (1, 3):
        raise ConfigError(f"images must have 1 or 3 channels, not {channels}")
    if not opts.enabled:
        return _identity

    import tensorflow as tf
    from keras import layers

    seed = opts.seed
    stages: list[Any] = []
    if opts.flip:
        stages.append(layers.RandomFlip("horizontal", seed=seed + 1))
    if opts.rotation:
        stages.append(layers.RandomRotation(opts.rotation, fill_mode="reflect", seed=seed + 2))
    if opts.zoom:
        stages.append(layers.RandomZoom(opts.zoom, fill_mode="reflect", seed=seed + 3))
    if opts.shift:
        stages.append(
            layers.RandomTranslation(opts.shift, opts.shift, fill_mode="reflect", seed=seed + 4)
        )
    if opts.brightness:
        stages.append(layers.RandomBrightness(opts.brightness, value_range=(0, 255), seed=seed + 5))
    if opts.contrast:
        stages.append(layers.RandomContrast(opts.contrast, value_range=(0, 255), seed=seed + 6))
    rng = tf.random.Generator.from_seed(seed)
    pad = opts.pad_crop_pixels(height, width)

    def augment(images: Any) -> Any:
        x = tf.cast(images, tf.float32)
        for stage in stages:
            x = stage(x, training=True)
        if pad:
            x = pad_and_crop(x, pad, rng)
        if opts.occlusion:
            x = occlude(x, opts.occlusion, rng)
        if opts.clutter:
            x = paste_clutter(x, opts.clutter, rng)
        x = tf.clip_by_value(x, 0.0, 255.0)
        x.set_shape([None, height, width, channels])
        return x

    return augment


def _identity(images: Any) -> Any:
    import tensorflow as tf

    return tf.cast(images, tf.float32)


def _boxes(rng: Any, batch: Any, height: int, width: int, side: tuple[float, float]) -> Any:
    """Random box sizes per image: integer heights and widths within ``side`` of the image."""
    import tensorflow as tf

    lo, hi = side
    hs = rng.uniform([batch], lo, hi) * height
    ws = rng.uniform([batch], lo, hi) * width
    return (
        tf.maximum(tf.cast(tf.round(hs), tf.int32), 1),
        tf.maximum(tf.cast(tf.round(ws), tf.int32), 1),
    )


def _box_mask(y0: Any, x0: Any, hs: Any, ws: Any, height: int, width: int) -> Any:
    """``[B, H, W, 1]`` booleans: inside each image's box."""
    import tensorflow as tf

    rows = tf.range(height)[None, :, None]
    cols = tf.range(width)[None, None, :]
    y0, x0 = y0[:, None, None], x0[:, None, None]
    inside = (
        (rows >= y0)
        & (rows < y0 + hs[:, None, None])
        & (cols >= x0)
        & (cols < x0 + ws[:, None, None])
    )
    return inside[..., None]


def _randint(rng: Any, upper: Any) -> Any:
    """Per-element uniform integers in ``[0, upper)`` (``upper`` an int32 tensor >= 1)."""
    import tensorflow as tf

    u = rng.uniform(tf.shape(upper), 0.0, 1.0)
    value = tf.cast(tf.floor(u * tf.cast(upper, tf.float32)), tf.int32)
    return tf.minimum(value, upper - 1)


def occlude(images: Any, probability: float, rng: Any) -> Any:
    """Cover a random rectangle of each image (with ``probability``) by colour or noise.

    Half the patches are one random colour (a container, a hand in a glove, a sticker),
    half uniform noise (texture the model should learn to ignore).
    """
    import tensorflow as tf

    shape = tf.shape(images)
    batch, channels = shape[0], images.shape[-1]
    height, width = int(images.shape[1]), int(images.shape[2])
    hs, ws = _boxes(rng, batch, height, width, OCCLUSION_SIDE)
    y0 = _randint(rng, height - hs + 1)
    x0 = _randint(rng, width - ws + 1)
    apply = rng.uniform([batch]) < probability
    mask = _box_mask(y0, x0, hs, ws, height, width) & apply[:, None, None, None]
    colour = tf.broadcast_to(rng.uniform([batch, 1, 1, channels], 0.0, 255.0), shape)
    noise = rng.uniform(shape, 0.0, 255.0)
    use_noise = (rng.uniform([batch]) < 0.5)[:, None, None, None]
    fill = tf.where(use_noise, noise, colour)
    return tf.where(mask, fill, images)


def pad_and_crop(images: Any, pad: int, rng: Any) -> Any:
    """Pad each image with ``pad`` zero pixels per side, crop back at a random place.

    The content moves by whole pixels, independently per image and axis, by -pad..pad;
    what leaves the frame is lost and zeros come in on the other side.
    """
    import tensorflow as tf

    batch = tf.shape(images)[0]
    height, width = int(images.shape[1]), int(images.shape[2])
    padded = tf.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
    dy = _randint(rng, tf.fill([batch], 2 * pad + 1))
    dx = _randint(rng, tf.fill([batch], 2 * pad + 1))
    rows = dy[:, None] + tf.range(height)[None, :]
    cols = dx[:, None] + tf.range(width)[None, :]
    out = tf.gather(padded, rows, axis=1, batch_dims=1)
    return tf.gather(out, cols, axis=2, batch_dims=1)


def paste_clutter(images: Any, probability: float, rng: Any) -> Any:
    """Paste, with ``probability`` per image, a patch of another image of the batch at an edge.

    The patch is cut around the centre of the other photo (where its product usually
    is) and pasted touching a random edge of this one, like a neighbouring product
    entering the frame. A batch of one has no other image and is returned unchanged.
    """
    import tensorflow as tf

    shape = tf.shape(images)
    batch = shape[0]
    height, width = int(images.shape[1]), int(images.shape[2])
    hs, ws = _boxes(rng, batch, height, width, CLUTTER_SIDE)
    # Another image of the batch for every image: a non-zero offset modulo B.
    offset = 1 + _randint(rng, tf.fill([batch], tf.maximum(batch - 1, 1)))
    partner = (tf.range(batch) + offset) % batch
    # Source box: anywhere in the partner's middle half, clamped inside the image.
    sy = tf.clip_by_value(
        height // 4 + _randint(rng, tf.fill([batch], height // 2 + 1)) - hs // 2, 0, height - hs
    )
    sx = tf.clip_by_value(
        width // 4 + _randint(rng, tf.fill([batch], width // 2 + 1)) - ws // 2, 0, width - ws
    )
    # Destination box: touching one of the four edges, at a random place along it.
    edge = _randint(rng, tf.fill([batch], 4))
    along_y = _randint(rng, height - hs + 1)
    along_x = _randint(rng, width - ws + 1)
    y0 = tf.where(edge == 0, 0, tf.where(edge == 1, height - hs, along_y))
    x0 = tf.where(edge == 2, 0, tf.where(edge == 3, width - ws, along_x))
    apply = (rng.uniform([batch]) < probability) & (batch > 1)
    mask = _box_mask(y0, x0, hs, ws, height, width) & apply[:, None, None, None]
    # Every pixel's source in the partner image; only pixels inside the box are used.
    rows = tf.clip_by_value(tf.range(height)[None, :] - y0[:, None] + sy[:, None], 0, height - 1)
    cols = tf.clip_by_value(tf.range(width)[None, :] - x0[:, None] + sx[:, None], 0, width - 1)
    source = tf.gather(images, partner)  # [B, H, W, C]
    source = tf.gather(source, rows, axis=1, batch_dims=1)
    source = tf.gather(source, cols, axis=2, batch_dims=1)
    return tf.where(mask, source, images)


def scale_tf(images: Any, scale: str) -> Any:
    """TensorFlow twin of ``prodclf.images.scale_pixels``: the same float32 values.

    ``unit`` -> [0, 1], ``symmetric`` -> [-1, 1], ``raw`` -> 0..255 unchanged.
    """
    import tensorflow as tf

    x = tf.cast(images, tf.float32)
    if scale == "unit":
        return x / 255.0
    if scale == "symmetric":
        return x / 127.5 - 1.0
    if scale == "raw":
        return x
    raise ConfigError(f"scale must be one of unit, symmetric, raw, not {scale!r}")
