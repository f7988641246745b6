"""Fashion-MNIST as Debian ships it (``dataset-fashion-mnist``): gzipped idx files.

The demo builds its catalog from these files, so reading them must need nothing but
numpy (no TensorFlow datasets, no network). The idx format is a big-endian header,
``0x00 0x00 <dtype> <ndim>`` then one uint32 per dimension, then the raw values.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

from prodclf.errors import InputError

DEFAULT_DATA_DIR = "/usr/share/datasets/fashion-mnist"

#: Label index -> class name, in the dataset's own order.
CLASS_NAMES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

#: Class name -> Google Product Taxonomy id (the 2021-09-21 taxonomy in shared/taxonomy).
#: That version has no sweater category and no subcategories under Shoes, so several
#: classes share the closest category there is; the class name stays the label.
TAXONOMY_IDS: dict[str, str] = {
    "T-shirt/top": "212",  # Apparel & Accessories > Clothing > Shirts & Tops
    "Trouser": "204",  # Apparel & Accessories > Clothing > Pants
    "Pullover": "212",  # Apparel & Accessories > Clothing > Shirts & Tops (sweaters go here)
    "Dress": "2271",  # Apparel & Accessories > Clothing > Dresses
    "Coat": "5598",  # Apparel & Accessories > Clothing > Outerwear > Coats & Jackets
    "Sandal": "187",  # Apparel & Accessories > Shoes
    "Shirt": "212",  # Apparel & Accessories > Clothing > Shirts & Tops
    "Sneaker": "187",  # Apparel & Accessories > Shoes
    "Bag": "3032",  # Apparel & Accessories > Handbags, Wallets & Cases > Handbags
    "Ankle boot": "187",  # Apparel & Accessories > Shoes
}

SPLITS = {"train": "train", "test": "t10k", "t10k": "t10k"}
IMAGES_MAGIC = 0x00000803  # unsigned byte, 3 dimensions
LABELS_MAGIC = 0x00000801  # unsigned byte, 1 dimension


class IdxFormatError(InputError):
    """A Fashion-MNIST file is missing, truncated or not in the idx format."""


def split_files(data_dir: str | Path, split: str) -> tuple[Path, Path]:
    """The (images, labels) files of ``split`` (``train`` or ``test``)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, not {split!r}")
    root, prefix = Path(data_dir), SPLITS[split]
    return (
        root / f"{prefix}-images-idx3-ubyte.gz",
        root / f"{prefix}-labels-idx1-ubyte.gz",
    )


def missing_files(data_dir: str | Path) -> list[Path]:
    """The dataset files not present under ``data_dir`` (empty when all are there)."""
    wanted = [*split_files(data_dir, "train"), *split_files(data_dir, "test")]
    return [p for p in wanted if not p.is_file()]


def read_idx(path: str | Path, magic: int) -> np.ndarray:
    """Parse one gzipped (or plain) idx file of unsigned bytes; checks magic and length."""
    p = Path(path)
    try:
        raw = p.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise IdxFormatError(f"{p}: cannot read it ({exc})") from None
    if len(raw) < 4:
        raise IdxFormatError(f"{p}: too short for an idx header ({len(raw)} bytes)")
    (found,) = struct.unpack(">I", raw[:4])
    if found != magic:
        raise IdxFormatError(f"{p}: bad magic number 0x{found:08x}, expected 0x{magic:08x}")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise IdxFormatError(f"{p}: truncated header")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(dims, dtype=np.int64))
    if len(raw) - header != expected:
        raise IdxFormatError(
            f"{p}: {len(raw) - header} data bytes for dimensions {dims} ({expected} expected)"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def load(data_dir: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 [N, 28, 28], labels uint8 [N])`` of ``split`` (``train``/``test``)."""
    images_path, labels_path = split_files(data_dir, split)
    images = read_idx(images_path, IMAGES_MAGIC)
    labels = read_idx(labels_path, LABELS_MAGIC)
    if len(images) != len(labels):
        raise IdxFormatError(
            f"{images_path}: {len(images)} images but {labels_path.name} has {len(labels)} labels"
        )
    if len(labels) and int(labels.max()) >= len(CLASS_NAMES):
        raise IdxFormatError(f"{labels_path}: label {int(labels.max())} is not a class index")
    return images, labels
