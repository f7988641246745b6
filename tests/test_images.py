"""Image decoding: bytes in, model-ready pixels out, or a RowError with the right code."""

from __future__ import annotations

import io
import json
import os
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from prodclf.config import StorageConfig
from prodclf.errors import ErrorCode, RowError
from prodclf.images import (
    DecodeBudget,
    PreprocessSpec,
    decode_image,
    decode_to_uint8,
    load_or_error,
    scale_pixels,
)

pytestmark = pytest.mark.spark4

RED = (255, 0, 0)
BLUE = (0, 0, 255)
WHITE = (255, 255, 255)
BIG = 10_000_000


def encode(img: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def split_image(size: tuple[int, int], left: tuple, right: tuple, mode: str = "RGB") -> Image.Image:
    """Left half one colour, right half another."""
    img = Image.new(mode, size, left)
    img.paste(right, (size[0] // 2, 0, size[0], size[1]))
    return img


def codes_of(data: bytes, spec: PreprocessSpec, max_pixels: int = BIG) -> ErrorCode:
    with pytest.raises(RowError) as info:
        decode_image(data, spec, max_pixels)
    return info.value.code


# --- shapes, dtypes, colour modes -------------------------------------------------------


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_rgb_image_decodes_to_spec_shape_and_dtype(fmt: str) -> None:
    data = encode(Image.new("RGB", (50, 30), (200, 40, 40)), fmt)
    out = decode_image(data, PreprocessSpec(16, 24, "rgb", "unit"), BIG)
    assert out.shape == (16, 24, 3)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[8, 12], np.array([200, 40, 40]) / 255.0, atol=4 / 255)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_grayscale_image_to_rgb_spec_repeats_the_channel(fmt: str) -> None:
    data = encode(Image.new("L", (20, 20), 90), fmt)
    out = decode_to_uint8(data, PreprocessSpec(10, 10, "rgb"), BIG)
    assert out.shape == (10, 10, 3)
    assert out.dtype == np.uint8
    assert np.all(np.abs(out.astype(int) - 90) <= 1)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_rgb_image_to_grayscale_spec_is_luma(fmt: str) -> None:
    data = encode(Image.new("RGB", (12, 12), RED), fmt)
    out = decode_to_uint8(data, PreprocessSpec(12, 12, "grayscale"), BIG)
    assert out.shape == (12, 12, 1)
    # ITU-R 601 luma of pure red: 0.299 * 255 = 76
    assert np.all(np.abs(out.astype(int) - 76) <= 2)


@pytest.mark.parametrize(
    ("scale", "expected"),
    [
        ("unit", [1.0, 0.0, 0.2]),
        ("symmetric", [1.0, -1.0, -0.6]),
        ("raw", [255.0, 0.0, 51.0]),
    ],
)
def test_scale_modes_give_known_values(scale: str, expected: list[float]) -> None:
    data = encode(Image.new("RGB", (4, 4), (255, 0, 51)), "PNG")
    out = decode_image(data, PreprocessSpec(4, 4, "rgb", scale), BIG)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out.reshape(-1, 3), np.tile(expected, (16, 1)), rtol=1e-6, atol=1e-6)


def test_scale_pixels_ranges_on_full_range() -> None:
    arr = np.arange(256, dtype=np.uint8).reshape(16, 16, 1)
    unit = scale_pixels(arr, "unit")
    sym = scale_pixels(arr, "symmetric")
    raw = scale_pixels(arr, "raw")
    assert (unit.min(), unit.max()) == (0.0, 1.0)
    assert (sym.min(), sym.max()) == (-1.0, 1.0)
    assert (raw.min(), raw.max()) == (0.0, 255.0)
    assert unit.dtype == sym.dtype == raw.dtype == np.float32


# --- what merchants upload -------------------------------------------------------------


def exif_rotated_jpeg(orientation: int) -> bytes:
    """A landscape 40x20 photo stored red-left/blue-right, with an EXIF Orientation tag."""
    img = split_image((40, 20), RED, BLUE)
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(img, "JPEG", quality=95, exif=exif.tobytes())


@pytest.mark.parametrize(
    ("orientation", "top", "bottom"),
    [(6, RED, BLUE), (8, BLUE, RED)],
)
def test_exif_orientation_is_applied(orientation: int, top: tuple, bottom: tuple) -> None:
    # Displayed, the photo is portrait (20 wide, 40 high): the stored left side moves to the
    # top (orientation 6, rotate 90 degrees clockwise) or to the bottom (8, counter-clockwise).
    out = decode_to_uint8(exif_rotated_jpeg(orientation), PreprocessSpec(40, 20), BIG)
    assert out.shape == (40, 20, 3)
    np.testing.assert_allclose(out[5, 10], top, atol=12)
    np.testing.assert_allclose(out[34, 10], bottom, atol=12)


def test_without_exif_orientation_the_photo_is_not_rotated() -> None:
    data = encode(split_image((40, 20), RED, BLUE), "JPEG", quality=95)
    out = decode_to_uint8(data, PreprocessSpec(20, 40), BIG)
    np.testing.assert_allclose(out[10, 5], RED, atol=12)
    np.testing.assert_allclose(out[10, 34], BLUE, atol=12)


def test_cmyk_jpeg_decodes_to_rgb() -> None:
    data = encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    rgb = decode_to_uint8(data, PreprocessSpec(8, 8, "rgb"), BIG)
    np.testing.assert_allclose(rgb[4, 4], RED, atol=6)
    gray = decode_to_uint8(data, PreprocessSpec(8, 8, "grayscale"), BIG)
    assert gray.shape == (8, 8, 1)
    assert abs(int(gray[4, 4, 0]) - 76) <= 3


def test_palette_png_with_transparency_is_composited_on_white() -> None:
    img = Image.new("P", (2, 1))
    img.putpalette([255, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 6))
    img.putpixel((0, 0), 0)  # red, but index 0 is transparent
    img.putpixel((1, 0), 1)  # blue, opaque
    data = encode(img, "PNG", transparency=0)
    assert Image.open(io.BytesIO(data)).mode == "P"
    out = decode_to_uint8(data, PreprocessSpec(1, 2, "rgb"), BIG)
    assert out[0, 0].tolist() == list(WHITE)
    assert out[0, 1].tolist() == list(BLUE)


def test_palette_png_without_transparency_keeps_its_colours() -> None:
    img = Image.new("P", (2, 1))
    img.putpalette([255, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 6))
    img.putpixel((1, 0), 1)
    out = decode_to_uint8(encode(img, "PNG"), PreprocessSpec(1, 2, "rgb"), BIG)
    assert out[0].tolist() == [list(RED), list(BLUE)]


def test_rgba_png_is_composited_on_white() -> None:
    img = Image.new("RGBA", (3, 1))
    img.putdata([(255, 0, 0, 0), (0, 0, 255, 255), (0, 0, 0, 128)])
    out = decode_to_uint8(encode(img, "PNG"), PreprocessSpec(1, 3, "rgb"), BIG)
    assert out[0, 0].tolist() == list(WHITE)  # fully transparent -> background
    assert out[0, 1].tolist() == list(BLUE)  # opaque -> unchanged
    assert np.all(np.abs(out[0, 2].astype(int) - 127) <= 1)  # half black over white


def test_la_image_is_composited_on_white() -> None:
    img = Image.new("LA", (2, 1))
    img.putdata([(0, 0), (100, 255)])
    data = encode(img, "PNG")
    assert Image.open(io.BytesIO(data)).mode == "LA"
    rgb = decode_to_uint8(data, PreprocessSpec(1, 2, "rgb"), BIG)
    assert rgb[0].tolist() == [[255, 255, 255], [100, 100, 100]]
    gray = decode_to_uint8(data, PreprocessSpec(1, 2, "grayscale"), BIG)
    assert gray[0, :, 0].tolist() == [255, 100]


def test_16_bit_grayscale_png_is_scaled_to_8_bits() -> None:
    arr = np.array([[65535, 32768, 0, 1000]], dtype=np.uint16)
    data = encode(Image.fromarray(arr), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I;16")
    out = decode_to_uint8(data, PreprocessSpec(1, 4, "grayscale"), BIG)[0, :, 0].astype(int)
    assert out[0] == 255
    assert abs(out[1] - 128) <= 1
    assert out[2] == 0
    assert out[3] == 1000 * 255 // 65535
    rgb = decode_to_uint8(data, PreprocessSpec(1, 4, "rgb"), BIG)
    assert rgb.shape == (1, 4, 3)
    assert rgb[0, :, 0].astype(int).tolist() == out.tolist()
    assert np.all(rgb[0, :, 0] == rgb[0, :, 2])


def test_bilevel_png_decodes() -> None:
    img = Image.new("1", (2, 1), 0)
    img.putpixel((1, 0), 1)
    out = decode_to_uint8(encode(img, "PNG"), PreprocessSpec(1, 2, "rgb"), BIG)
    assert out[0].tolist() == [[0, 0, 0], [255, 255, 255]]


def test_large_jpeg_decoded_in_draft_mode_has_spec_size_and_layout() -> None:
    data = encode(split_image((2400, 1600), RED, BLUE), "JPEG", quality=90)
    probe = Image.open(io.BytesIO(data))
    probe.draft("RGB", (32, 32))
    assert probe.size == (300, 200)  # Pillow does decode this one at 1/8 scale
    out = decode_to_uint8(data, PreprocessSpec(32, 32, "rgb"), BIG)
    assert out.shape == (32, 32, 3)
    np.testing.assert_allclose(out[16, 4], RED, atol=12)
    np.testing.assert_allclose(out[16, 28], BLUE, atol=12)
    gray = decode_to_uint8(data, PreprocessSpec(32, 32, "grayscale"), BIG)
    assert gray.shape == (32, 32, 1)
    assert abs(int(gray[16, 4, 0]) - 76) <= 4


# --- errors ----------------------------------------------------------------------------

SPEC = PreprocessSpec(8, 8)


def test_zero_bytes_is_empty_object() -> None:
    assert codes_of(b"", SPEC) is ErrorCode.EMPTY_OBJECT


@pytest.mark.parametrize(
    "data",
    [
        np.random.default_rng(7).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        b"<!DOCTYPE html><html><body><h1>404 Not Found</h1></body></html>",
        b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\n",
        b"just some plain text, not a picture\n",
        b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>',
    ],
    ids=["random", "html", "pdf", "text", "svg"],
)
def test_non_images_are_undecodable(data: bytes) -> None:
    assert codes_of(data, SPEC) is ErrorCode.UNDECODABLE_IMAGE


def noise(size: tuple[int, int]) -> Image.Image:
    arr = np.random.default_rng(3).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(arr, "RGB")


@pytest.mark.parametrize("spec_size", [64, 8], ids=["full-decode", "draft"])
def test_truncated_jpeg_is_undecodable(spec_size: int) -> None:
    data = encode(noise((64, 64)), "JPEG", quality=90)
    decode_image(data, PreprocessSpec(spec_size, spec_size), BIG)  # the whole file is fine
    assert codes_of(data[: len(data) // 2], PreprocessSpec(spec_size, spec_size)) is (
        ErrorCode.UNDECODABLE_IMAGE
    )


def test_truncated_png_is_undecodable() -> None:
    data = encode(noise((64, 64)), "PNG")
    assert codes_of(data[: len(data) // 2], SPEC) is ErrorCode.UNDECODABLE_IMAGE


def png_with_declared_size(width: int, height: int) -> bytes:
    """A real 1x1 PNG whose IHDR claims another size (CRC recomputed): a bomb's header."""
    data = bytearray(encode(Image.new("RGB", (1, 1), RED), "PNG"))
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    return bytes(data)


def test_declared_dimensions_beyond_max_pixels_are_refused_before_decoding() -> None:
    bomb = png_with_declared_size(100_000, 100_000)
    assert Image.open(io.BytesIO(bomb)).size == (100_000, 100_000)
    assert codes_of(bomb, SPEC, max_pixels=50_000_000) is ErrorCode.IMAGE_TOO_LARGE


def test_real_image_over_max_pixels_is_too_large_and_at_the_limit_is_fine() -> None:
    data = encode(Image.new("RGB", (100, 50), WHITE), "PNG")
    assert codes_of(data, SPEC, max_pixels=4_999) is ErrorCode.IMAGE_TOO_LARGE
    assert decode_image(data, SPEC, 5_000).shape == (8, 8, 3)


def test_format_pillow_identifies_but_cannot_decode() -> None:
    # A placeable WMF header: Pillow recognises the format but has no loader off Windows.
    wmf = struct.pack("<LHhhhhHLH", 0x9AC6CDD7, 0, 0, 0, 100, 100, 1440, 0, 0)
    wmf = wmf[:20] + struct.pack("<H", 0) + b"\x01\x00\x09\x00\x00\x03" + b"\x00" * 12
    assert Image.open(io.BytesIO(wmf)).format == "WMF"
    assert codes_of(wmf, SPEC) is ErrorCode.UNDECODABLE_IMAGE


def test_preprocess_spec_validate() -> None:
    PreprocessSpec(8, 8, "grayscale", "raw").validate()
    assert PreprocessSpec(8, 4, "grayscale").shape == (8, 4, 1)
    for bad in (
        PreprocessSpec(0, 8),
        PreprocessSpec(8, 8, "cmyk"),
        PreprocessSpec(8, 8, "rgb", "imagenet"),
    ):
        with pytest.raises(ValueError):
            bad.validate()


# --- the draft decode is real, memory is bounded, out-of-memory is not "undecodable" -------


def test_large_jpegs_are_loaded_at_draft_size_not_decoded_whole(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What Pillow decodes, seen from inside: 1/8 of 2400x1600, never the full image."""
    loaded: list[tuple[int, int]] = []
    real_load = ImageFile.ImageFile.load

    def load(self: ImageFile.ImageFile) -> object:
        loaded.append(self.size)
        return real_load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    data = encode(split_image((2400, 1600), RED, BLUE), "JPEG", quality=90)
    budget = DecodeBudget(1 << 30)
    out = decode_to_uint8(data, PreprocessSpec(32, 32, "rgb"), BIG, budget)
    assert out.shape == (32, 32, 3)
    assert loaded and loaded[0] == (300, 200), loaded
    # The reservation was sized from the draft, too: 300x200, not 2400x1600 pixels.
    assert budget.peak == len(data) + 300 * 200 * 9


def test_running_out_of_memory_while_decoding_is_not_undecodable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def load(self: ImageFile.ImageFile) -> object:
        raise MemoryError

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    data = encode(Image.new("RGB", (40, 40), RED), "PNG")
    with pytest.raises(MemoryError):
        decode_to_uint8(data, PreprocessSpec(8, 8), BIG)
    (tmp_path / "a.png").write_bytes(data)
    err = load_or_error(f"file://{tmp_path}/a.png", PreprocessSpec(8, 8), StorageConfig())
    assert isinstance(err, RowError)
    assert err.code is ErrorCode.INTERNAL_ERROR and err.message.startswith("MemoryError")


def test_the_decode_budget_holds_decodes_back_and_lets_a_huge_one_run_alone() -> None:
    import threading
    import time

    budget = DecodeBudget(100)
    inside: list[int] = []
    most = [0]
    lock = threading.Lock()

    def decode(n: int) -> None:
        with budget.hold(n):
            with lock:
                inside.append(n)
                most[0] = max(most[0], sum(inside))
            time.sleep(0.05)
            with lock:
                inside.remove(n)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(decode, [40, 40, 40, 40, 500, 10, 10, 60]))
    assert budget.used == 0
    assert budget.peak <= 100 and most[0] <= 500  # the 500 one ran alone (capped at 100)


HEADROOM = int(os.environ.get("PRODCLF_TEST_HEADROOM", 1200 << 20))
LARGE_SIDE = 7000  # 49 megapixels: 147 MB of RGB pixels each, a few hundred KB of PNG

OOM_SCRIPT = """
import json, resource, sys
from concurrent.futures import ThreadPoolExecutor
import pandas as pd
from prodclf.config import StorageConfig
from prodclf.images import PreprocessSpec, prepare_batch

headroom, budget, uris = int(sys.argv[1]), int(sys.argv[2]), json.loads(sys.argv[3])
pool = ThreadPoolExecutor(16)
list(pool.map(lambda _: None, range(256)))  # threads (and their stacks) exist before the limit
vm = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmSize"))
resource.setrlimit(resource.RLIMIT_AS, (vm + headroom, resource.RLIM_INFINITY))
storage = StorageConfig(fetch_concurrency=16, decode_memory_bytes=budget)
batch = prepare_batch(pd.Series(uris), PreprocessSpec(8, 8), storage, pool)
errors = sorted({f"{e.code.value}: {e.message}" for e in batch.errors.values()})
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss << 10
print(json.dumps({"ok": len(batch.ok_rows), "errors": errors}), peak - vm, file=sys.stderr)
print(json.dumps({"ok": len(batch.ok_rows), "errors": errors}))
"""


@pytest.mark.slow
def test_sixteen_concurrent_50_megapixel_images_decode_within_a_memory_limit(
    tmp_path: Path,
) -> None:
    """A worker limited to 1.2 GB more address space (RLIMIT_AS, as
    ``spark.executor.pyspark.memory`` sets) decodes 16 images of 147 MB of pixels each,
    all fetched at once: the budget makes them take turns instead of 2.4 GB at once."""
    import shutil
    import subprocess
    import sys

    first = tmp_path / "big-00.png"
    Image.new("RGB", (LARGE_SIDE, LARGE_SIDE), (30, 60, 200)).save(first, compress_level=1)
    uris = []
    for i in range(16):
        path = tmp_path / f"big-{i:02d}.png"
        if i:
            shutil.copyfile(first, path)
        uris.append(f"file://{path}")
    proc = subprocess.run(
        [sys.executable, "-c", OOM_SCRIPT, str(HEADROOM), str(512 << 20), json.dumps(uris)],
        # One malloc arena per thread would reserve 64 MB of address space each.
        env={**os.environ, "MALLOC_ARENA_MAX": "2"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"ok": 16, "errors": []}
