"""Training-time augmentation: shapes, ranges, the noise-image transforms, determinism."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from prodclf.errors import ConfigError
from prodclf.images import scale_pixels
from prodclf.model.augment import AugmentOptions, make_augmenter, scale_tf

OFF = AugmentOptions(
    flip=False, rotation=0, zoom=0, shift=0, brightness=0, contrast=0, occlusion=0, clutter=0
)


def only(**kw: Any) -> AugmentOptions:
    """Everything disabled except ``kw``."""
    return AugmentOptions(**{**OFF.__dict__, **kw})


def through_dataset(augment: Any, images: np.ndarray, batch: int) -> list[np.ndarray]:
    """Run the augmenter the way the trainer does: ``Dataset.map`` on batches."""
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices(images).batch(batch).map(augment)
    return [b.numpy() for b in ds]


def photos(n: int, shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (n, *shape)).astype("float32")


@pytest.mark.parametrize("channels", [1, 3])
def test_shape_dtype_and_range_are_kept_for_variable_batch_sizes(channels: int) -> None:
    shape = (24, 20, channels)
    augment = make_augmenter(AugmentOptions(occlusion=0.5, clutter=0.5), shape)
    batches = through_dataset(augment, photos(7, shape), batch=3)
    assert [b.shape for b in batches] == [(3, *shape), (3, *shape), (1, *shape)]
    for b in batches:
        assert b.dtype == np.float32
        assert b.min() >= 0.0
        assert b.max() <= 255.0


def test_all_disabled_is_the_identity() -> None:
    x = photos(4, (16, 16, 3))
    (out,) = through_dataset(make_augmenter(OFF, (16, 16, 3)), x, batch=4)
    assert np.array_equal(out, x)


def test_same_seed_same_output_and_another_seed_differs() -> None:
    x = photos(6, (16, 16, 3))

    def run(seed: int) -> np.ndarray:
        augment = make_augmenter(AugmentOptions(occlusion=0.5, clutter=0.5, seed=seed), x.shape[1:])
        return np.concatenate(through_dataset(augment, x, batch=4))

    first = run(7)
    assert np.array_equal(first, run(7))
    assert not np.array_equal(first, run(8))
    assert not np.array_equal(first, x)


def changed_box(before: np.ndarray, after: np.ndarray) -> tuple[np.ndarray, tuple[slice, slice]]:
    """The changed pixels of one image and their bounding box."""
    changed = (before != after).any(axis=-1)
    rows, cols = np.nonzero(changed)
    assert rows.size, "nothing changed"
    return changed, (slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1))


@pytest.mark.parametrize("channels", [1, 3])
def test_occlusion_covers_one_rectangle_of_at_most_a_quarter(channels: int) -> None:
    x = np.full((5, 32, 32, channels), 128.0, dtype="float32")
    (out,) = through_dataset(make_augmenter(only(occlusion=1.0), x.shape[1:]), x, batch=5)
    for before, after in zip(x, out, strict=True):
        changed, box = changed_box(before, after)
        assert changed[box].all()  # a solid rectangle, nothing changed outside it
        assert 0 < changed.sum() <= 0.25 * 32 * 32


def test_clutter_copies_pixels_from_another_image_of_the_batch_at_an_edge() -> None:
    values = np.array([20.0, 60.0, 100.0, 140.0, 180.0], dtype="float32")
    x = np.broadcast_to(values[:, None, None, None], (5, 30, 30, 3)).copy()
    (out,) = through_dataset(make_augmenter(only(clutter=1.0), x.shape[1:]), x, batch=5)
    for i, (before, after) in enumerate(zip(x, out, strict=True)):
        changed, box = changed_box(before, after)
        assert changed[box].all()
        pasted = np.unique(after[changed])
        assert len(pasted) == 1
        assert pasted[0] in values
        assert pasted[0] != values[i]
        rows, cols = box
        assert rows.start == 0 or cols.start == 0 or rows.stop == 30 or cols.stop == 30


def test_clutter_leaves_a_batch_of_one_unchanged() -> None:
    x = photos(1, (16, 16, 1))
    (out,) = through_dataset(make_augmenter(only(clutter=1.0), x.shape[1:]), x, batch=1)
    assert np.array_equal(out, x)


def test_geometric_and_photometric_layers_change_the_images() -> None:
    x = photos(4, (16, 16, 3))
    for opts in (only(flip=True), only(rotation=0.2), only(brightness=0.5), only(contrast=0.5)):
        (out,) = through_dataset(make_augmenter(opts, x.shape[1:]), x, batch=4)
        assert out.shape == x.shape
        assert not np.array_equal(out, x), opts


def test_pad_crop_shifts_each_image_by_whole_pixels_with_zero_fill() -> None:
    # One bright pixel in the middle of a 7x7 image; pad_crop 0.3 -> 2 px: it must land
    # 0..2 px away on each axis (nowhere else, unblurred), the rest of the image zeros.
    x = np.zeros((64, 7, 7, 1), "float32")
    x[:, 3, 3, 0] = 200.0
    opts = only(pad_crop=0.3)
    assert opts.pad_crop_pixels(7, 7) == 2
    (out,) = through_dataset(make_augmenter(opts, x.shape[1:]), x, batch=64)
    assert out.shape == x.shape
    moves = set()
    for img in out:
        assert np.count_nonzero(img) == 1 and img.max() == 200.0  # moved, not interpolated
        y, c = np.argwhere(img[..., 0])[0]
        assert abs(y - 3) <= 2 and abs(c - 3) <= 2
        moves.add((int(y) - 3, int(c) - 3))
    assert len(moves) > 10  # 25 possible shifts; both axes move independently


def test_pad_crop_brings_zeros_in_where_the_content_left() -> None:
    x = np.full((32, 6, 6, 3), 100.0, "float32")
    (out,) = through_dataset(make_augmenter(only(pad_crop=0.2), x.shape[1:]), x, batch=32)
    assert set(np.unique(out)) <= {0.0, 100.0}
    shifted = [img for img in out if (img == 0).any()]
    assert shifted, "no image moved"
    for img in shifted:  # the zeros are whole border rows / columns
        zero_rows = np.where((img == 0).all(axis=(1, 2)))[0]
        zero_cols = np.where((img == 0).all(axis=(0, 2)))[0]
        assert np.count_nonzero(img == 0) == 3 * (
            6 * len(zero_rows) + 6 * len(zero_cols) - len(zero_rows) * len(zero_cols)
        )
        assert len(zero_rows) <= 1 and len(zero_cols) <= 1  # 0.2 x 6 -> at most 1 px


def test_bad_options_are_refused() -> None:
    with pytest.raises(ConfigError, match="occlusion is a probability"):
        make_augmenter(AugmentOptions(occlusion=1.5), (8, 8, 3))
    with pytest.raises(ConfigError, match="zoom"):
        make_augmenter(AugmentOptions(zoom=-0.1), (8, 8, 3))
    with pytest.raises(ConfigError, match="pad_crop must be within"):
        make_augmenter(AugmentOptions(pad_crop=0.5), (8, 8, 3))
    with pytest.raises(ConfigError, match="1 or 3 channels"):
        make_augmenter(AugmentOptions(), (8, 8, 4))


@pytest.mark.parametrize("scale", ["unit", "symmetric", "raw"])
def test_scale_tf_equals_the_numpy_scaling(scale: str) -> None:
    pixels = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1)
    assert np.array_equal(scale_tf(pixels, scale).numpy(), scale_pixels(pixels, scale))
    assert np.array_equal(
        scale_tf(pixels.astype("float32"), scale).numpy(), scale_pixels(pixels, scale)
    )


def test_scale_tf_refuses_an_unknown_scale() -> None:
    with pytest.raises(ConfigError, match="scale must be one of"):
        scale_tf(np.zeros((1, 2, 2, 1), dtype="float32"), "imagenet")
