"""The two decoders every peer is run with, and the model's input transform.

``documented``: what the peers' documentation does: decode the whole JPEG, convert to RGB,
resize with BICUBIC. ``prodclf``: ``prodclf.images.decode_to_uint8`` (JPEG draft mode, i.e.
DCT scaling straight to about the model's size, then BILINEAR), the tag job's decoder.
Both return uint8 (224, 224, 3); ``to_model_input`` scales to [-1, 1] float32 like the tag
job does for the bench bundle (``symmetric``).
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np

SIZE = 224
DECODERS = ("documented", "prodclf")


def documented_decode(data: bytes) -> np.ndarray:
    from PIL import Image

    img = Image.open(io.BytesIO(data)).convert("RGB").resize((SIZE, SIZE), Image.Resampling.BICUBIC)
    return np.asarray(img, dtype=np.uint8)


def prodclf_decode(data: bytes) -> np.ndarray:
    from prodclf.images import PreprocessSpec, decode_to_uint8

    return decode_to_uint8(data, PreprocessSpec(SIZE, SIZE, "rgb", "symmetric"), 50_000_000)


def decoder(name: str) -> Callable[[bytes], np.ndarray]:
    if name == "documented":
        return documented_decode
    if name == "prodclf":
        return prodclf_decode
    raise ValueError(f"decoder must be one of {DECODERS}, not {name!r}")


def to_model_input(pixels: np.ndarray) -> np.ndarray:
    out: np.ndarray = pixels.astype(np.float32) / 127.5 - 1.0
    return out
