"""Where a decode's CPU goes, and what other JPEG decoders would save.

    python benchmarks/decode_parts.py [--images 400] [--out bench-workdir/decode-parts.json]

Decoding is the largest part of the machine's limit (D), and the issue defines D with "the
best decoder available". This times, in one thread (best of ``--reps`` passes over the same
photos, the bench's catalog at 1000 px), prodclf's decoder (``decode_to_uint8``) whole and in
its parts (open, the DCT-scaled decode, the BILINEAR resize to 224, the array), and, when they
are importable, two decoders from PyPI that are not in the pinned stack:

* ``simplejpeg``: libjpeg-turbo with the same DCT scaling, then Pillow's resize;
* ``opencv``: ``IMREAD_REDUCED_COLOR_{2,4,8}`` at the scale Pillow's draft picks, then
  OpenCV's ``INTER_LINEAR`` resize (no antialiasing filter: different pixels).

For each: ms per image and how far its 224x224 pixels are from prodclf's (mean and largest
absolute difference in 0-255 levels). Install the two into a scratch environment to measure
them (``pip install simplejpeg opencv-python-headless`` next to the project's packages).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from decoders import SIZE, prodclf_decode

ROOT = Path(__file__).resolve().parents[1]


def pillow_parts() -> dict[str, Callable[[Any], Any]]:
    """prodclf's decode split into steps, each taking the previous one's output.

    Composed, they give ``decode_to_uint8``'s pixels for a plain RGB JPEG (no EXIF rotation,
    no mode to convert): ``measure`` checks that they do, image by image.
    """
    from PIL import Image

    def opened(data: bytes) -> Any:
        img = Image.open(io.BytesIO(data))
        img.size  # noqa: B018 - the header is parsed
        return img

    def decoded(img: Any) -> Any:
        img.draft("RGB", (SIZE, SIZE))
        img.load()
        return img

    def resized(img: Any) -> Any:
        return img.resize((SIZE, SIZE), Image.Resampling.BILINEAR)

    def array(img: Any) -> np.ndarray:
        return np.array(img, dtype=np.uint8)

    return {"open": opened, "decode": decoded, "resize": resized, "array": array}


def draft_scale(width: int, height: int) -> int:
    """The DCT scale denominator (1, 2, 4 or 8) Pillow's draft picks for a 224 target."""
    scale = 1
    while scale < 8 and width // (scale * 2) >= SIZE and height // (scale * 2) >= SIZE:
        scale *= 2
    return scale


def other_decoders() -> dict[str, Callable[[bytes], np.ndarray]]:
    """The optional decoders that are importable here (none in the pinned stack)."""
    from PIL import Image

    found: dict[str, Callable[[bytes], np.ndarray]] = {}
    try:
        import simplejpeg

        def simple(data: bytes) -> np.ndarray:
            pixels = simplejpeg.decode_jpeg(
                data, colorspace="RGB", fastdct=True, fastupsample=True,
                min_width=SIZE, min_height=SIZE,
            )  # fmt: skip
            img = Image.fromarray(pixels).resize((SIZE, SIZE), Image.Resampling.BILINEAR)
            return np.asarray(img, dtype=np.uint8)

        found["simplejpeg"] = simple
    except ImportError:
        pass
    try:
        import cv2

        cv2.setNumThreads(1)
        reduced = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2}
        reduced.update({4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8})

        def opencv(data: bytes) -> np.ndarray:
            width, height = Image.open(io.BytesIO(data)).size
            flag = reduced[draft_scale(width, height)]
            bgr = cv2.imdecode(np.frombuffer(data, np.uint8), flag)
            bgr = cv2.resize(bgr, (SIZE, SIZE), interpolation=cv2.INTER_LINEAR)
            out: np.ndarray = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            return out

        found["opencv"] = opencv
    except ImportError:
        pass
    return found


def versions() -> dict[str, str]:
    """The installed versions of the decoding packages (absent ones are left out)."""
    from importlib import metadata

    found = {}
    for dist in ("pillow", "simplejpeg", "opencv-python-headless", "opencv-python"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[dist] = metadata.version(dist)
    return found


def best_ms(fn: Callable[[Any], Any], inputs: list[Any], reps: int) -> float:
    """Best pass's wall ms per input (one thread; the machine is meant to be quiet)."""
    for x in inputs[:10]:
        fn(x)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        for x in inputs:
            fn(x)
        best = min(best, time.perf_counter() - t0)
    return 1000 * best / len(inputs)


def difference(a: list[np.ndarray], b: list[np.ndarray]) -> dict[str, float]:
    """Mean and largest absolute pixel difference between two lists of images."""
    diffs = [np.abs(x.astype(np.int16) - y.astype(np.int16)) for x, y in zip(a, b, strict=True)]
    return {
        "mean_abs_diff": float(np.mean([d.mean() for d in diffs])),
        "max_abs_diff": int(max(d.max() for d in diffs)),
    }


def measure(blobs: list[bytes], reps: int = 3) -> dict[str, Any]:
    """Timings of prodclf's decoder, its parts and the other decoders on ``blobs``."""
    reference = [prodclf_decode(b) for b in blobs]
    parts = pillow_parts()
    opened, decoded, resized, array = (parts[k] for k in ("open", "decode", "resize", "array"))
    # Pillow's draft and load change an image in place, so the decode is timed on freshly
    # opened images, less the open's own time.
    stages = {"open": best_ms(opened, blobs, reps)}
    stages["decode"] = best_ms(lambda b: decoded(opened(b)), blobs, reps) - stages["open"]
    images = [decoded(opened(b)) for b in blobs]
    stages["resize"] = best_ms(resized, images, reps)
    small = [resized(img) for img in images]
    stages["array"] = best_ms(array, small, reps)
    values = [array(img) for img in small]
    out: dict[str, Any] = {
        "images": len(blobs),
        "mean_kib": sum(map(len, blobs)) / len(blobs) / 1024,
        "prodclf": {"ms": best_ms(prodclf_decode, blobs, reps), "parts_ms": stages},
        "parts_reproduce_prodclf": difference(values, reference),
        "others": {},
        "versions": versions(),
    }
    for name, fn in other_decoders().items():
        pixels = [fn(b) for b in blobs]
        out["others"][name] = {"ms": best_ms(fn, blobs, reps), **difference(pixels, reference)}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python benchmarks/decode_parts.py", description=__doc__)
    ap.add_argument("--images", type=int, default=400)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=ROOT / "bench-workdir")
    ap.add_argument("--out", type=Path, help="JSON file (default: WORKDIR/decode-parts.json)")
    args = ap.parse_args(argv)
    if args.images < 1 or args.reps < 1:
        ap.error("--images and --reps must be at least 1")
    import photos

    paths = photos.local_images("grocery-1000", args.images, args.workdir / "images")
    result = measure([p.read_bytes() for p in paths], args.reps)
    given = sys.argv[1:] if argv is None else argv
    result["command"] = " ".join(["python benchmarks/decode_parts.py", *given])
    text = json.dumps(result, indent=2)
    out = args.out or args.workdir / "decode-parts.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
