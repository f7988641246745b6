"""The Fashion-MNIST reader (idx format) and the class -> taxonomy mapping the demo uses."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED

from prodclf import fashion_mnist
from prodclf.errors import InputError
from prodclf.fashion_mnist import (
    CLASS_NAMES,
    IMAGES_MAGIC,
    LABELS_MAGIC,
    TAXONOMY_IDS,
    IdxFormatError,
    load,
    missing_files,
    read_idx,
)

TAXONOMY = SHARED / "taxonomy" / "google-product-taxonomy-with-ids.en-US.txt"


def idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    """Encode a uint8 array in the idx format (big-endian header, then the raw bytes)."""
    magic = (0x0800 | array.ndim) if magic is None else magic
    return struct.pack(f">I{array.ndim}I", magic, *array.shape) + array.astype(np.uint8).tobytes()


def write_split(root: Path, prefix: str, images: np.ndarray, labels: np.ndarray) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(images)))
    (root / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(labels)))


def test_load_parses_a_tiny_idx_pair(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    labels = np.array([0, 9, 3, 3, 7], dtype=np.uint8)
    write_split(tmp_path, "t10k", images, labels)

    got_images, got_labels = load(tmp_path, "test")

    assert got_images.dtype == np.uint8 and got_images.shape == (5, 28, 28)
    assert got_labels.dtype == np.uint8 and got_labels.shape == (5,)
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)
    assert [p.name for p in missing_files(tmp_path)] == [
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
    ]


def test_plain_uncompressed_idx_is_read_too(tmp_path: Path) -> None:
    path = tmp_path / "labels"
    path.write_bytes(idx_bytes(np.array([1, 2, 3], dtype=np.uint8)))
    np.testing.assert_array_equal(read_idx(path, LABELS_MAGIC), [1, 2, 3])


def test_bad_magic_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "images.gz"
    # A labels file where an images file is expected: magic 0x801, not 0x803.
    path.write_bytes(gzip.compress(idx_bytes(np.zeros(4, dtype=np.uint8))))
    with pytest.raises(IdxFormatError, match=r"bad magic number 0x00000801, expected 0x00000803"):
        read_idx(path, IMAGES_MAGIC)
    assert issubclass(IdxFormatError, InputError)  # a refusal: one line, exit 2


@pytest.mark.parametrize(
    "data, message",
    [
        (b"\x00\x00", "too short"),
        (struct.pack(">II", IMAGES_MAGIC, 2), "truncated header"),
        (struct.pack(">IIII", IMAGES_MAGIC, 2, 2, 2) + b"\x00" * 7, "7 data bytes"),
        (gzip.compress(b"\x00\x00\x08\x03")[:-6], "cannot read it"),
    ],
)
def test_damaged_files_are_refused(tmp_path: Path, data: bytes, message: str) -> None:
    path = tmp_path / "broken"
    path.write_bytes(data)
    with pytest.raises(IdxFormatError, match=message):
        read_idx(path, IMAGES_MAGIC)


def test_images_and_labels_must_agree(tmp_path: Path) -> None:
    write_split(tmp_path, "train", np.zeros((3, 2, 2), np.uint8), np.zeros(2, np.uint8))
    with pytest.raises(IdxFormatError, match=r"3 images but .* has 2 labels"):
        load(tmp_path, "train")
    write_split(tmp_path, "train", np.zeros((1, 2, 2), np.uint8), np.array([10], np.uint8))
    with pytest.raises(IdxFormatError, match="label 10 is not a class index"):
        load(tmp_path, "train")


def test_unknown_split_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="split must be one of"):
        load(tmp_path, "validation")


def _taxonomy() -> dict[str, str]:
    entries = {}
    for line in TAXONOMY.read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            ident, _, path = line.partition(" - ")
            entries[ident.strip()] = path.strip()
    return entries


def test_taxonomy_ids_exist_and_are_apparel() -> None:
    taxonomy = _taxonomy()
    assert set(TAXONOMY_IDS) == set(CLASS_NAMES)
    assert len(CLASS_NAMES) == 10
    for name, ident in TAXONOMY_IDS.items():
        assert ident in taxonomy, f"{name}: {ident} is not in {TAXONOMY.name}"
        assert taxonomy[ident].startswith("Apparel & Accessories > "), (name, taxonomy[ident])
    assert taxonomy[TAXONOMY_IDS["Trouser"]].endswith("> Pants")
    assert taxonomy[TAXONOMY_IDS["Dress"]].endswith("> Dresses")
    assert taxonomy[TAXONOMY_IDS["Bag"]].endswith("> Handbags")
    assert taxonomy[TAXONOMY_IDS["Sneaker"]].endswith("> Shoes")


@pytest.mark.skipif(
    bool(missing_files(fashion_mnist.DEFAULT_DATA_DIR)),
    reason="dataset-fashion-mnist is not installed",
)
def test_the_installed_dataset_loads() -> None:
    images, labels = load(fashion_mnist.DEFAULT_DATA_DIR, "test")
    assert images.shape == (10_000, 28, 28)
    assert labels.shape == (10_000,)
    assert np.bincount(labels).tolist() == [1000] * 10
