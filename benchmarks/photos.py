"""The benchmark's catalog: real photos (or synthetic ones), on S3 or as ``file://`` paths.

``grocery-1000``: the Grocery Store photos of ``../shared`` (mostly 348x348) upscaled so the
longer side is 1000 px (LANCZOS, JPEG quality 90), as catalogs serve them; generated once into
the work directory's cache. ``grocery-orig``: the photos as they are. ``synthetic``: coloured
shapes on white at ``--size`` px. A catalog larger than the photos uploaded cycles over them
(distinct product ids, repeated objects: no client caches objects, so each row is a GET that
waits the store's latency, whether or not the proxy answers it from its cache).
"""

from __future__ import annotations

import contextlib
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
GROCERY = SHARED / "data/grocery-store/dataset"
SOURCES = ("grocery-1000", "grocery-orig", "synthetic")
BUCKET = "bench-catalog"


def grocery_photos(limit: int) -> list[Path]:
    """The first ``limit`` photos of the train, val and test splits, in the splits' order."""
    out: list[Path] = []
    for split in ("train", "val", "test"):
        listing = GROCERY / f"{split}.txt"
        if not listing.exists():
            continue
        for line in listing.read_text().splitlines():
            rel = line.split(",", 1)[0].strip()
            if rel:
                out.append(GROCERY / rel)
            if len(out) >= limit:
                return out
    if not out:
        raise SystemExit(f"no Grocery Store photos under {GROCERY} (see ../shared/README.md)")
    return out


def _upscale(job: tuple[str, str, int]) -> None:
    from PIL import Image

    src, dest, side = job
    with Image.open(src) as img:
        rgb = img.convert("RGB")
        scale = side / max(rgb.size)
        size = (round(rgb.size[0] * scale), round(rgb.size[1] * scale))
        rgb.resize(size, Image.Resampling.LANCZOS).save(dest, format="JPEG", quality=90)


def _synthetic(job: tuple[str, int, int]) -> None:
    from PIL import Image, ImageDraw

    dest, size, seed = job
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", (size, size), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    for _ in range(4):
        x0, y0 = rng.integers(0, size // 2, 2)
        x1, y1 = np.array([x0, y0]) + rng.integers(size // 8, size // 2, 2)
        draw.ellipse((x0, y0, x1, y1), fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
    img.save(dest, format="JPEG", quality=90)


def local_images(
    source: str, n: int, cache: Path, size: int = 1000, workers: int = 0
) -> list[Path]:
    """``n`` JPEG files of ``source`` (all there are, if fewer), generated once into ``cache``."""
    if source == "grocery-orig":
        return grocery_photos(n)
    if source == "grocery-1000":
        photos = grocery_photos(n)
        folder = cache / f"grocery-{size}"
        folder.mkdir(parents=True, exist_ok=True)
        jobs = [(str(p), str(folder / f"{i:06d}.jpg"), size) for i, p in enumerate(photos)]
        todo = [j for j in jobs if not Path(j[1]).exists()]
        if todo:
            print(f"generating {len(todo)} photos at {size} px into {folder}", flush=True)
            with ProcessPoolExecutor(workers or None) as pool:
                list(pool.map(_upscale, todo, chunksize=16))
        return [Path(j[1]) for j in jobs]
    if source == "synthetic":
        folder = cache / f"synthetic-{size}"
        folder.mkdir(parents=True, exist_ok=True)
        synth = [(str(folder / f"{i:06d}.jpg"), size, i) for i in range(n)]
        missing = [j for j in synth if not Path(j[0]).exists()]
        if missing:
            with ProcessPoolExecutor(workers or None) as pool:
                list(pool.map(_synthetic, missing, chunksize=16))
        return [Path(j[0]) for j in synth]
    raise ValueError(f"images source must be one of {SOURCES}, not {source!r}")


def upload(paths: list[Path], client: Any, bucket: str = BUCKET, prefix: str = "img") -> list[str]:
    """Put every file in ``bucket`` (created if needed); the ``s3://`` URI of each, in order."""
    with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
        client.create_bucket(Bucket=bucket)
    keys = [f"{prefix}/{i:06d}.jpg" for i in range(len(paths))]

    def put(item: tuple[Path, str]) -> None:
        client.put_object(Bucket=bucket, Key=item[1], Body=item[0].read_bytes())

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put, zip(paths, keys, strict=True)))
    return [f"s3://{bucket}/{k}" for k in keys]


def file_uris(paths: list[Path]) -> list[str]:
    return [f"file://{p.resolve()}" for p in paths]


def catalog_rows(uris: list[str], n: int) -> list[tuple[str, str]]:
    """``n`` catalog rows ``(product_id, image_uri)``, cycling over ``uris``."""
    return [(f"p{i:08d}", uris[i % len(uris)]) for i in range(n)]
