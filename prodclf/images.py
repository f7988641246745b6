"""Images: a reference in, model-ready pixels out; shared by tagging and training.

``decode_*`` are plain functions on bytes (no I/O); ``load_image`` and ``prepare_batch``
check a reference, fetch it through ``prodclf.storage`` and decode it, turning every
failure into a ``RowError`` so one bad image never fails its batch.

Handles what merchants upload: EXIF-rotated phone photos, CMYK JPEGs, palette and
alpha images (composited on white, the catalogue background), 16-bit and grayscale
images. Declared dimensions are checked before any pixel is decoded (decompression
bombs), and large JPEGs are decoded in draft mode (DCT scaling) straight to about the
model's input size, which is several times cheaper than a full decode.
"""

from __future__ import annotations

import contextlib
import io
import threading
import warnings
from collections.abc import Iterable, Iterator
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from prodclf.config import StorageConfig
from prodclf.errors import ErrorCode, RowError
from prodclf.storage import objects
from prodclf.storage.uris import check_allowed, parse_uri

# Truncated files are errors, never silently padded with grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False
# Pillow's global bomb limit is replaced by ours (storage.max_pixels, per call), which is
# checked on the declared size before any pixel is decoded (see decode_to_uint8).
Image.MAX_IMAGE_PIXELS = None

COLOR_MODES = ("rgb", "grayscale")
SCALES = ("unit", "symmetric", "raw")
WHITE = (255, 255, 255)


@dataclass(frozen=True)
class PreprocessSpec:
    """How the model expects its input: part of the model bundle contract.

    ``scale``: ``unit`` maps pixels to [0, 1], ``symmetric`` to [-1, 1] (MobileNet,
    Inception), ``raw`` keeps 0..255.
    """

    height: int
    width: int
    color_mode: str = "rgb"
    scale: str = "unit"

    @property
    def channels(self) -> int:
        return 3 if self.color_mode == "rgb" else 1

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.height, self.width, self.channels)

    def validate(self) -> None:
        if self.height <= 0 or self.width <= 0:
            raise ValueError(f"input size must be positive, not {self.height}x{self.width}")
        if self.color_mode not in COLOR_MODES:
            raise ValueError(f"color_mode must be one of {COLOR_MODES}, not {self.color_mode!r}")
        if self.scale not in SCALES:
            raise ValueError(f"scale must be one of {SCALES}, not {self.scale!r}")


class DecodeBudget:
    """Bytes a Python worker may hold for images being decoded: input plus pixels.

    Each decode reserves its compressed input and an estimate of its working pixels
    (``decode_cost``) before any pixel is decoded, and waits while the reservations of
    the decodes in progress would exceed ``limit``; one image larger than the whole
    budget runs alone. So ``fetch_concurrency`` large images are decoded one after the
    other, not all at once.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.peak = 0
        self._cond = threading.Condition()

    @contextlib.contextmanager
    def hold(self, nbytes: int) -> Iterator[None]:
        n = min(max(nbytes, 0), self.limit)
        with self._cond:
            self._cond.wait_for(lambda: self.used == 0 or self.used + n <= self.limit)
            self.used += n
            self.peak = max(self.peak, self.used)
        try:
            yield
        finally:
            with self._cond:
                self.used -= n
                self._cond.notify_all()


@lru_cache(maxsize=4)
def worker_budget(limit: int) -> DecodeBudget:
    """The Python worker's one budget for ``limit`` (shared by all its decoding threads)."""
    return DecodeBudget(limit)


_WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def decode_cost(img: Image.Image) -> int:
    """Bytes a decode of ``img`` (opened, draft applied) may hold at its peak, estimated.

    The decoded image, one converted or transposed copy and the output; 16-bit and float
    images go through 64-bit numpy working arrays (see ``to_mode``).
    """
    width, height = img.size
    per_pixel = 32 if img.mode in _WIDE_MODES else 3 * max(len(img.getbands()), 3)
    return width * height * per_pixel


def decode_image(data: bytes, spec: PreprocessSpec, max_pixels: int) -> np.ndarray:
    """Decode, orient, convert and resize to ``spec.shape`` as float32; or raise RowError."""
    return scale_pixels(decode_to_uint8(data, spec, max_pixels), spec.scale)


def decode_to_uint8(
    data: bytes, spec: PreprocessSpec, max_pixels: int, budget: DecodeBudget | None = None
) -> np.ndarray:
    """Like ``decode_image`` but stops at uint8 pixels (H, W, C): 4x smaller to move around.

    With a ``budget``, the decode waits for its share of it before decoding any pixel.
    Running out of memory anyway is a ``MemoryError`` (an ``internal_error`` row), never
    ``undecodable_image``: the bytes may be fine.
    """
    if not data:
        raise RowError(ErrorCode.EMPTY_OBJECT, "object has zero bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img: Image.Image = Image.open(io.BytesIO(data))
            width, height = img.size
            if width * height > max_pixels:
                raise RowError(
                    ErrorCode.IMAGE_TOO_LARGE,
                    f"declared size {width}x{height} exceeds the limit of {max_pixels} pixels",
                )
            target_mode = "RGB" if spec.color_mode == "rgb" else "L"
            if img.format == "JPEG" and img.mode in ("RGB", "L", "YCbCr"):
                img.draft(target_mode, (spec.width, spec.height))
            reserved = budget.hold(len(data) + decode_cost(img)) if budget else None
            with reserved or contextlib.nullcontext():
                img.load()
                ImageOps.exif_transpose(img, in_place=True)
                img = to_mode(img, target_mode)
                if img.size != (spec.width, spec.height):
                    img = img.resize((spec.width, spec.height), Image.Resampling.BILINEAR)
                arr = np.array(img, dtype=np.uint8)
                del img
    except (RowError, MemoryError):
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise RowError(ErrorCode.IMAGE_TOO_LARGE, str(exc)[:200]) from None
    except UnidentifiedImageError:
        raise RowError(ErrorCode.UNDECODABLE_IMAGE, "not an image format Pillow reads") from None
    except Exception as exc:  # anything else Pillow raises means "not decodable"
        raise RowError(
            ErrorCode.UNDECODABLE_IMAGE, f"{type(exc).__name__}: {str(exc)[:200]}"
        ) from None
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return arr


def to_mode(img: Image.Image, target: str) -> Image.Image:
    """Convert any Pillow mode to ``RGB`` or ``L``: alpha on white, 16-bit scaled, CMYK mapped."""
    mode = img.mode
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.int64)
        peak = 65535 if mode.startswith("I;16") or arr.max(initial=0) > 255 else 255
        img = Image.fromarray((np.clip(arr, 0, peak) * 255 // peak).astype(np.uint8), "L")
        mode = "L"
    elif mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        hi = float(arr.max(initial=1.0)) or 1.0
        img = Image.fromarray(np.clip(arr / hi * 255, 0, 255).astype(np.uint8), "L")
        mode = "L"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*WHITE, 255))
        img = Image.alpha_composite(background, rgba).convert("RGB")
        mode = "RGB"
    if mode != target:
        img = img.convert(target)  # CMYK, YCbCr, 1, L<->RGB
    return img


def scale_pixels(arr: np.ndarray, scale: str) -> np.ndarray:
    out = arr.astype(np.float32)
    if scale == "unit":
        out /= 255.0
    elif scale == "symmetric":
        out = out / 127.5 - 1.0
    return out


# --- references -> pixels, shared by tagging and training -----------------------------


def load_image(uri: object, spec: PreprocessSpec, storage: StorageConfig) -> np.ndarray:
    """Check, fetch and decode one reference to uint8 pixels; raises ``RowError``.

    Decodes share the worker's ``storage.decode_memory_bytes`` budget.
    """
    ref = parse_uri(uri)
    check_allowed(ref, storage.allowed_schemes, storage.allowed_buckets)
    data = objects.fetch_image_bytes(ref, storage)
    budget = worker_budget(storage.decode_memory_bytes)
    return decode_to_uint8(data, spec, storage.max_pixels, budget)


def load_or_error(
    uri: object, spec: PreprocessSpec, storage: StorageConfig
) -> np.ndarray | RowError:
    """``load_image``, with any failure as the row's error: an unexpected exception is
    ``internal_error`` naming its type (a bug or exhausted memory, not the product's fault)."""
    try:
        return load_image(uri, spec, storage)
    except RowError as err:
        return err
    except Exception as exc:
        return RowError(ErrorCode.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}"[:300])


@dataclass
class PreparedBatch:
    """Decoded pixels of the usable rows plus the error of every other row."""

    size: int
    pixels: np.ndarray  # (n_ok, H, W, C) uint8
    ok_rows: np.ndarray  # row positions of ``pixels`` within the batch
    errors: dict[int, RowError]


def prepare_batch(
    uris: Iterable[object], spec: PreprocessSpec, storage: StorageConfig, pool: Executor
) -> PreparedBatch:
    """Fetch and decode a batch on ``pool`` and wait for all of it."""
    return collect_batch(start_batch(uris, spec, storage, pool), spec)


def start_batch(
    uris: Iterable[object], spec: PreprocessSpec, storage: StorageConfig, pool: Executor
) -> list[Future[np.ndarray | RowError]]:
    """Queue every row's fetch and decode on ``pool`` now; ``collect_batch`` waits for them.

    A batch started before the previous one is collected queues behind its rows, so the
    pool's threads go on to the next batch's rows while the last slow fetches of this one
    finish, instead of idling until the whole batch is done.
    """
    return [pool.submit(load_or_error, u, spec, storage) for u in uris]


def collect_batch(
    futures: list[Future[np.ndarray | RowError]], spec: PreprocessSpec
) -> PreparedBatch:
    """The started batch's pixels and errors, in row order, once every row is done."""
    results = [f.result() for f in futures]
    ok_rows = [i for i, r in enumerate(results) if isinstance(r, np.ndarray)]
    errors = {i: r for i, r in enumerate(results) if isinstance(r, RowError)}
    if ok_rows:
        pixels = np.stack([results[i] for i in ok_rows])  # type: ignore[misc]
    else:
        pixels = np.zeros((0, *spec.shape), dtype=np.uint8)
    return PreparedBatch(len(results), pixels, np.asarray(ok_rows, dtype=np.int64), errors)


def encode_png(pixels: np.ndarray) -> bytes:
    """PNG bytes of a uint8 ``(H, W)`` grayscale or ``(H, W, 3)`` RGB array (demo catalogs)."""
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()
