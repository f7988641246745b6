"""Bad images and references through the real job: one catalog, one product per case.

Every case below is also covered by a unit test of the function that detects it
(test_imaging, test_uris, test_objects); here the whole path runs (base library ->
Spark -> Python worker -> boto3 on the loopback S3 server or the local store -> Pillow ->
model -> commodity library -> manifest), and the exact ``product_id -> (status,
error_code)`` table is compared, one row per product. The model used looks at the top
half of the image only, so that an ignored EXIF orientation changes the answer.
"""

from __future__ import annotations

import io
import json
import os
import struct
import threading
import uuid
import zlib
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from conftest import COLORS, jpeg_bytes, png_bytes, run_tag_job
from jobproc import outcome, read_partition
from PIL import Image
from pyspark.sql import SparkSession

from prodclf.config import ChecksConfig, InferenceConfig, StorageConfig, TagConfig
from prodclf.errors import ErrorCode, InputError, RowError
from prodclf.storage import objects
from prodclf.storage.uris import parse_uri

pytestmark = pytest.mark.spark4

RUN_DATE = date(2026, 11, 23)
MAX_BYTES = 100_000
RED, BLUE = COLORS["red"], COLORS["blue"]

Expected = tuple[str, str | None]
OK: Expected = ("ok", None)


# --- images merchants upload, good and bad ---------------------------------------------


def encode(img: Image.Image, fmt: str, **kwargs: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def halves(size: tuple[int, int], first: tuple, second: tuple, vertical: bool) -> Image.Image:
    """Left/right (or top/bottom) halves in two colours."""
    img = Image.new("RGB", size, first)
    w, h = size
    img.paste(second, (0, h // 2, w, h) if vertical else (w // 2, 0, w, h))
    return img


def exif_jpeg(img: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(img, "JPEG", quality=95, exif=exif.tobytes())


def png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def rgb48_png(color16: tuple[int, int, int], size: tuple[int, int] = (16, 16)) -> bytes:
    """A 16-bit-per-channel RGB PNG (Pillow cannot write one)."""
    w, h = size
    rows = b"".join(b"\x00" + struct.pack(">3H", *color16) * w for _ in range(h))
    header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(rows))
        + png_chunk(b"IEND", b"")
    )


def bomb_png(width: int, height: int) -> bytes:
    """A 1x1 PNG whose header declares ``width`` x ``height`` (decompression-bomb header)."""
    data = bytearray(encode(Image.new("RGB", (1, 1), RED), "PNG"))
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    return bytes(data)


def wmf() -> bytes:
    """A placeable WMF header: Pillow identifies the format but cannot decode it here."""
    head = struct.pack("<LHhhhhHLH", 0x9AC6CDD7, 0, 0, 0, 100, 100, 1440, 0, 0)
    return head[:20] + struct.pack("<H", 0) + b"\x01\x00\x09\x00\x00\x03" + b"\x00" * 12


def palette_png_with_transparency() -> bytes:
    """Left 3/4 palette index 0 (red, fully transparent), right 1/4 index 1 (blue)."""
    img = Image.new("P", (16, 16), 0)
    img.putpalette([*RED, *BLUE] + [0] * (256 * 3 - 6))
    img.paste(1, (12, 0, 16, 16))
    return encode(img, "PNG", transparency=0)


def rgba_png() -> bytes:
    """Left 3/4 transparent red, right 1/4 opaque blue."""
    img = Image.new("RGBA", (16, 16), (*RED, 0))
    img.paste((*BLUE, 255), (12, 0, 16, 16))
    return encode(img, "PNG")


def noise_jpeg(size: tuple[int, int]) -> bytes:
    arr = np.random.default_rng(5).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return encode(Image.fromarray(arr, "RGB"), "JPEG", quality=90)


#: object key -> (bytes, expected (status, error_code), expected category or "tie")
#: "tie": a grey image, which the red/blue model rates 50/50 (decoded, not an error; which
#: label wins a tie is down to float rounding, so only the confidence is checked).
IMAGES: dict[str, tuple[bytes, Expected, str | None]] = {
    # decoded and classified
    "red.jpg": (jpeg_bytes(RED), OK, "red"),
    "blue.png": (png_bytes(BLUE), OK, "blue"),
    "large-red.jpg": (jpeg_bytes(RED, (1600, 1200)), OK, "red"),  # draft-mode decode
    "cmyk-red.jpg": (encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG"), OK, "red"),
    # Composited on white, the transparent red is neutral and the blue quarter wins; with
    # transparency ignored, the image would be three quarters red.
    "palette-transparent.png": (palette_png_with_transparency(), OK, "blue"),
    "rgba.png": (rgba_png(), OK, "blue"),
    "rgb-16bit-red.png": (rgb48_png((60000, 3000, 3000)), OK, "red"),
    "gray-16bit.png": (
        encode(Image.fromarray(np.full((16, 16), 40000, dtype=np.uint16)), "PNG"),
        OK,
        "tie",
    ),
    "grayscale.jpg": (encode(Image.new("L", (16, 16), 128), "JPEG"), OK, "tie"),
    # Shown upright, each photo has blue on top; read without its EXIF orientation the
    # top half would be red (3: stored upside down) or half red (6, 8: rotated a quarter).
    "exif-3.jpg": (exif_jpeg(halves((32, 32), RED, BLUE, vertical=True), 3), OK, "blue"),
    "exif-6.jpg": (exif_jpeg(halves((64, 32), BLUE, RED, vertical=False), 6), OK, "blue"),
    "exif-8.jpg": (exif_jpeg(halves((64, 32), RED, BLUE, vertical=False), 8), OK, "blue"),
    # error rows
    "zero-bytes.jpg": (b"", ("error", "empty_object"), None),
    "truncated.jpg": (noise_jpeg((64, 64))[:1500], ("error", "undecodable_image"), None),
    "random.jpg": (
        np.random.default_rng(9).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        ("error", "undecodable_image"),
        None,
    ),
    "error-page.jpg": (
        b"<!DOCTYPE html><html><head><title>503 Service Unavailable</title></head>"
        b"<body><h1>Service Unavailable</h1></body></html>",
        ("error", "undecodable_image"),
        None,
    ),
    "document.jpg": (
        b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\ntrailer\n%%EOF\n",
        ("error", "undecodable_image"),
        None,
    ),
    "notes.jpg": (b"product photo to follow\n", ("error", "undecodable_image"), None),
    "vector.svg": (
        b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>',
        ("error", "undecodable_image"),
        None,
    ),
    "drawing.wmf": (wmf(), ("error", "undecodable_image"), None),
    "bomb.png": (bomb_png(100_000, 100_000), ("error", "image_too_large"), None),
    "over-limit.jpg": (b"\xff\xd8\xff" + b"x" * MAX_BYTES, ("error", "object_too_large"), None),
}


@pytest.fixture(scope="module")
def top_half_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Like the colour model, but it only looks at the top half of the image."""
    import keras

    from prodclf.images import PreprocessSpec
    from prodclf.model.bundle import BundleMeta, Label, export_bundle

    spec = PreprocessSpec(height=8, width=8, color_mode="rgb", scale="unit")
    inputs = keras.Input(shape=spec.shape)
    top = keras.layers.Cropping2D(((0, 4), (0, 0)))(inputs)
    dense = keras.layers.Dense(2, activation="softmax")
    outputs = dense(keras.layers.GlobalAveragePooling2D()(top))
    dense.set_weights(
        [np.array([[10.0, -10.0], [0.0, 0.0], [-10.0, 10.0]], dtype=np.float32), np.zeros(2)]
    )
    dest = tmp_path_factory.mktemp("top-half") / "bundle"
    meta = BundleMeta(
        model_name="top-half",
        model_version="1",
        labels=(Label("red", "1001"), Label("blue", "1002")),
        preprocessing=spec,
    )
    export_bundle(keras.Model(inputs, outputs), meta, str(dest))
    return dest


def base_library(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.mkdir(parents=True)
    frame = pd.DataFrame(rows, columns=["product_id", "image_uri", "title"]).astype(
        {"product_id": "string", "image_uri": "string"}
    )
    half = len(frame) // 2
    frame.iloc[:half].to_parquet(path / "part-0.parquet", index=False)
    frame.iloc[half:].to_parquet(path / "part-1.parquet", index=False)
    return path


def run(spark: SparkSession, base: Path, out: Path, model: Path, storage: StorageConfig) -> Any:
    cfg = TagConfig(
        base_library=str(base),
        commodity_library=str(out),
        model=str(model),
        run_date=RUN_DATE,
        run_id="bad-inputs",
        storage=storage,
        inference=InferenceConfig(model_batch_size=8, use_gpu=False),
        # Mostly broken products on purpose: these runs are about each row's code.
        checks=ChecksConfig(max_error_rate=1.0),
    )
    return run_tag_job(cfg, spark)


@pytest.mark.slow
def test_every_bad_image_and_reference_on_s3_is_its_own_error_row(
    spark: SparkSession, s3: Any, top_half_bundle: Path, tmp_path: Path
) -> None:
    suffix = uuid.uuid4().hex[:10]
    bucket, denied, outside = f"bad-{suffix}", f"denied-{suffix}", f"outside-{suffix}"
    for name in (bucket, denied, outside):
        s3.create_bucket(Bucket=name)
    for key, (data, _, _) in IMAGES.items():
        s3.put_object(Bucket=bucket, Key=f"img/{key}", Body=data)
    for key in ("dup/1-blue.png", "dup/2-red.png"):
        s3.put_object(Bucket=bucket, Key=key, Body=png_bytes(BLUE if "blue" in key else RED))
    s3.put_object(Bucket=denied, Key="img/red.png", Body=png_bytes(RED))
    s3.put_bucket_policy(
        Bucket=denied,
        Policy=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Deny",
                        "Principal": "*",
                        "Action": "s3:GetObject",
                        "Resource": f"arn:aws:s3:::{denied}/*",
                    }
                ],
            }
        ),
    )
    s3.put_object(Bucket=outside, Key="img/red.png", Body=png_bytes(RED))
    no_bucket = f"gone-{suffix}"

    cases: dict[str, tuple[str | None, Expected]] = {
        key: (f"s3://{bucket}/img/{key}", want) for key, (_, want, _) in IMAGES.items()
    }
    cases.update(
        {
            "missing-key": (f"s3://{bucket}/img/nothing-here.jpg", ("error", "not_found")),
            "missing-bucket": (f"s3://{no_bucket}/img/red.png", ("error", "not_found")),
            "access-denied": (f"s3://{denied}/img/red.png", ("error", "access_denied")),
            "null-uri": (None, ("error", "invalid_uri")),
            "empty-uri": ("", ("error", "invalid_uri")),
            "blank-uri": ("   ", ("error", "invalid_uri")),
            "relative-path": ("img/red.jpg", ("error", "invalid_uri")),
            "s3-without-key": (f"s3://{bucket}", ("error", "invalid_uri")),
            "s3-one-slash": (f"s3:/{bucket}/img/red.jpg", ("error", "invalid_uri")),
            "s3-with-query": (f"s3://{bucket}/img/red.jpg?versionId=1", ("error", "invalid_uri")),
            "metadata-endpoint": (
                "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
                ("error", "uri_not_allowed"),
            ),
            "https": ("https://example.com/img/red.jpg", ("error", "uri_not_allowed")),
            "etc-passwd": ("file:///etc/passwd", ("error", "uri_not_allowed")),
            "other-bucket": (f"s3://{outside}/img/red.png", ("error", "uri_not_allowed")),
        }
    )
    rows = [{"product_id": pid, "image_uri": uri, "title": pid} for pid, (uri, _) in cases.items()]
    # Null product ids: not taggable, counted. A product listed three times: one row, with
    # the smallest non-null image_uri ("dup/1-blue.png").
    rows += [
        {"product_id": None, "image_uri": f"s3://{bucket}/img/red.jpg", "title": "orphan"},
        {"product_id": None, "image_uri": None, "title": "orphan"},
        {"product_id": "listed-3-times", "image_uri": None, "title": "a"},
        {"product_id": "listed-3-times", "image_uri": f"s3://{bucket}/dup/2-red.png", "title": "b"},
        {
            "product_id": "listed-3-times",
            "image_uri": f"s3://{bucket}/dup/1-blue.png",
            "title": "c",
        },
    ]
    expected = {pid: want for pid, (_, want) in cases.items()}
    expected["listed-3-times"] = OK
    base = base_library(tmp_path / "base", rows)
    out = tmp_path / "commodity"
    storage = StorageConfig(
        allowed_schemes=("s3",),
        allowed_buckets=(bucket, denied, no_bucket),
        max_object_bytes=MAX_BYTES,
        max_attempts=2,
    )

    manifest = run(spark, base, out, top_half_bundle, storage)

    frame = read_partition(out, RUN_DATE.isoformat())
    got = outcome(frame, "category", "confidence")
    assert {pid: (s, c) for pid, (s, c, *_) in got.items()} == expected
    ties = {k for k, (_, _, c) in IMAGES.items() if c == "tie"}
    categories = {p: c for p, (_, _, c, _) in got.items() if c is not None and p not in ties}
    want_categories = {k: c for k, (_, _, c) in IMAGES.items() if c not in (None, "tie")}
    assert categories == {**want_categories, "listed-3-times": "blue"}
    for key, (_, _, cat) in IMAGES.items():
        confidence = got[key][3]
        if cat == "tie":
            assert confidence == pytest.approx(0.5, abs=0.02), key
        elif cat is not None:
            assert confidence > 0.95, key
    errors = frame[frame["status"] == "error"]
    assert errors["error_message"].notna().all()
    assert errors["needs_review"].all()

    assert manifest["base_rows"] == len(rows)
    assert manifest["null_product_ids"] == 2
    assert manifest["duplicate_product_rows"] == 2
    assert manifest["products_in"] == manifest["rows_written"] == len(expected)
    error_codes = [code for status, code in expected.values() if status == "error"]
    assert manifest["errors"] == {c: error_codes.count(c) for c in sorted(set(error_codes))}
    assert manifest["ok"] == len(expected) - len(error_codes)


@pytest.mark.slow
def test_bad_references_in_a_local_store_are_error_rows(
    spark: SparkSession, top_half_bundle: Path, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    store.mkdir()
    (store / "red.png").write_bytes(png_bytes(RED))
    (store / "empty.png").write_bytes(b"")
    (store / "folder.png").mkdir()
    with open(store / "sparse-64gib.jpg", "wb") as fh:
        fh.truncate(64 * 2**30)  # no disk used; reading it whole would need 64 GiB
    cases: dict[str, tuple[str, Expected]] = {
        "red": (f"file://{store}/red.png", OK),
        "empty": (f"file://{store}/empty.png", ("error", "empty_object")),
        "sparse-64gib": (f"file://{store}/sparse-64gib.jpg", ("error", "object_too_large")),
        "directory": (f"file://{store}/folder.png", ("error", "not_found")),
        "missing": (f"file://{store}/nothing.png", ("error", "not_found")),
        "device": ("file:///dev/zero", ("error", "not_found")),
        "other-host": (f"file://otherhost{store}/red.png", ("error", "invalid_uri")),
        "s3-not-allowed": ("s3://images/red.png", ("error", "uri_not_allowed")),
    }
    base = base_library(
        tmp_path / "base",
        [{"product_id": pid, "image_uri": uri, "title": pid} for pid, (uri, _) in cases.items()],
    )
    out = tmp_path / "commodity"
    storage = StorageConfig(allowed_schemes=("file",), max_object_bytes=MAX_BYTES)

    manifest = run(spark, base, out, top_half_bundle, storage)

    got = outcome(read_partition(out, RUN_DATE.isoformat()))
    assert got == {pid: want for pid, (_, want) in cases.items()}
    assert manifest["rows_written"] == len(cases)


@pytest.mark.slow
def test_a_base_library_without_any_product_id_is_refused(
    spark: SparkSession, color_bundle: Path, tmp_path: Path
) -> None:
    """Nothing to key: refused, rather than an empty run that looks complete."""
    base = base_library(
        tmp_path / "base",
        [{"product_id": None, "image_uri": "file:///x.png", "title": "t"}] * 2,
    )
    out = tmp_path / "commodity"
    with pytest.raises(InputError, match="no row has a product_id"):
        run(spark, base, out, color_bundle, StorageConfig())
    assert not out.exists()


# --- the local store: things that are not regular files ---------------------------------


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    """Opening a named pipe for reading blocks until a writer comes: that must not happen."""
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    result: list[object] = []

    def fetch() -> None:
        try:
            result.append(objects.fetch_image_bytes(parse_uri(f"file://{fifo}"), StorageConfig()))
        except RowError as exc:
            result.append(exc.code)

    worker = threading.Thread(target=fetch, daemon=True)
    worker.start()
    worker.join(timeout=10)
    if worker.is_alive():  # unblock the reader so the thread can end
        with open(fifo, "wb"):
            pass
        pytest.fail("fetching a FIFO blocked")
    assert result == [ErrorCode.NOT_FOUND]
