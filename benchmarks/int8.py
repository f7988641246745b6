"""What int8 or float16 would buy: a bundle's LiteRT model against its quantizations.

    python benchmarks/int8.py --bundle DIR [--data-dir ../shared/data/grocery-store/dataset]
                              [--calibration 300] [--keep-float 1,2,5,10]

The bundle's float LiteRT model (``model.tflite``, what prodclf runs on CPUs), a full-integer
quantization of the same ``serve`` endpoint (TFLite's converter, ``Optimize.DEFAULT`` with
``--calibration`` training photos as the representative set) and its float16-weights
conversion score the Grocery Store test split: accuracy against the coarse labels, top-1
agreement with the float model, and CPU ms per image on one thread. ``--keep-float``
adds int8 models with the layers quantization disturbs most left in float (TFLite's
quantization debugger ranks them), the usual remedy when int8 loses accuracy.
The issue asks to raise the model's rate "where accuracy allows"; this measures whether it
does. Nothing is written into the bundle. A trained bundle comes from
``python benchmarks/results.py --only grocery_pretrained`` (``<workdir>/models/``).
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
GROCERY = ROOT.parent / "shared" / "data" / "grocery-store" / "dataset"


def load(bundle: Path) -> tuple[Any, Any, Any]:
    """The bundle's SavedModel, its endpoint and its preprocessing; keep the first alive while
    the endpoint is used (it owns the variables)."""
    import tensorflow as tf

    from prodclf.model.bundle import read_meta

    meta = read_meta(f"file://{bundle}")
    loaded = tf.saved_model.load(str(bundle / "saved_model"))
    return loaded, getattr(loaded, meta.endpoint), meta.preprocessing


def quantize(bundle: Path, quantization: str, calibration: np.ndarray) -> bytes:
    """The bundle's endpoint, its scaling folded in, quantized (``int8`` or ``float16``)."""
    from prodclf.model.lite import endpoint_converter

    _loaded, endpoint, spec = load(bundle)
    data: bytes = endpoint_converter(endpoint, spec, quantization, calibration).convert()
    return data


def keep_float(bundle: Path, calibration: np.ndarray, counts: list[int]) -> dict[int, bytes]:
    """int8 models with the ``k`` most-disturbed layers left in float, for each ``k``.

    TFLite's quantization debugger runs the calibration photos through the float and the
    quantized model side by side; a layer's disturbance is the RMS error of its output in
    units of its quantization step (0.29 is a rounding error's own).
    """
    import csv as csv_module
    import io

    import tensorflow as tf

    from prodclf.model.lite import endpoint_converter, representative

    _loaded, endpoint, spec = load(bundle)
    int8_converter = endpoint_converter(endpoint, spec, "int8", calibration)
    sample = calibration[:50]
    debugger = tf.lite.experimental.QuantizationDebugger(
        converter=int8_converter, debug_dataset=lambda: representative(sample)
    )
    debugger.run()
    dump = io.StringIO()
    debugger.layer_statistics_dump(dump)
    dump.seek(0)
    layers = list(csv_module.DictReader(dump))
    worst = sorted(
        layers,
        key=lambda r: -(float(r["mean_squared_error"]) ** 0.5) / float(r["scale"]),
    )
    models = {}
    for k in counts:
        options = tf.lite.experimental.QuantizationDebugOptions(
            denylisted_nodes=[r["tensor_name"] for r in worst[:k]]
        )
        selective = tf.lite.experimental.QuantizationDebugger(
            converter=int8_converter,
            debug_dataset=lambda: representative(sample),
            debug_options=options,
        )
        models[k] = selective.get_nondebug_quantized_model()
    return models


def score(model: bytes, pixels: np.ndarray, labels: list[str], truth: list[str]) -> dict[str, Any]:
    """Accuracy, predictions and CPU ms per image (one thread) of a TFLite model."""
    from prodclf.model.lite import LitePredict

    predict = LitePredict(model, threads=1)
    predict(pixels[:64])  # allocation and the delegate's first run out of the timing
    t0 = time.process_time()
    probs = np.concatenate([predict(pixels[i : i + 64]) for i in range(0, len(pixels), 64)])
    cpu_ms = 1000 * (time.process_time() - t0) / len(pixels)
    predicted = [labels[i] for i in probs.argmax(axis=1)]
    accuracy = float(np.mean([p == t for p, t in zip(predicted, truth, strict=True)]))
    return {"accuracy": accuracy, "cpu_ms_per_image": cpu_ms, "predicted": predicted}


def compare(
    bundle: Path,
    calibration: np.ndarray,
    pixels: np.ndarray,
    truth: list[str],
    keep: tuple[int, ...] = (),
) -> dict[str, Any]:
    """Float, int8 and float16 on ``pixels`` (uint8, the bundle's input size), ``truth`` labels;
    and int8 with the ``keep`` most-disturbed layers in float (``int8_float<k>``)."""
    from prodclf.model.bundle import read_meta

    meta = read_meta(f"file://{bundle}")
    labels = [label.name for label in meta.labels]
    models = {
        "float": (bundle / "model.tflite").read_bytes(),
        "int8": quantize(bundle, "int8", calibration),
        "float16": quantize(bundle, "float16", calibration),
    }
    if keep:
        for k, model in keep_float(bundle, calibration, list(keep)).items():
            models[f"int8_float{k}"] = model
    out: dict[str, Any] = {}
    predicted: dict[str, list[str]] = {}
    for name, model in models.items():
        result = score(model, pixels, labels, truth)
        predicted[name] = result["predicted"]
        out[name] = {
            "accuracy": result["accuracy"],
            "cpu_ms_per_image": result["cpu_ms_per_image"],
            "model_bytes": len(model),
        }
    for name in (name for name in models if name != "float"):
        same = zip(predicted["float"], predicted[name], strict=True)
        out[name]["top1_agreement_with_float"] = float(np.mean([a == b for a, b in same]))
    out["images"] = len(pixels)
    out["calibration_images"] = len(calibration)
    return out


def grocery_split(data_dir: Path, name: str) -> list[tuple[Path, str]]:
    """(photo, coarse class name) of one of the dataset's own splits."""
    with open(data_dir / "classes.csv", newline="") as fh:
        coarse = {
            int(row["Coarse Class ID (int)"]): row["Coarse Class Name (str)"]
            for row in csv.DictReader(fh)
        }
    items = []
    for line in (data_dir / f"{name}.txt").read_text().splitlines():
        path, _, coarse_id = (part.strip() for part in line.split(","))
        items.append((data_dir / path, coarse[int(coarse_id)]))
    return items


def decode(paths: list[Path], bundle: Path) -> np.ndarray:
    from prodclf.images import decode_to_uint8
    from prodclf.model.bundle import read_meta

    spec = read_meta(f"file://{bundle}").preprocessing
    return np.stack([decode_to_uint8(p.read_bytes(), spec, 50_000_000) for p in paths])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python benchmarks/int8.py", description=__doc__)
    ap.add_argument("--bundle", required=True, type=Path, help="a bundle directory")
    ap.add_argument("--data-dir", type=Path, default=GROCERY)
    ap.add_argument("--calibration", type=int, default=300, help="training photos, seeded")
    ap.add_argument(
        "--keep-float",
        default="",
        help="comma-separated k: also int8 with the k most-disturbed layers left in float",
    )
    args = ap.parse_args(argv)
    try:
        keep = tuple(int(k) for k in args.keep_float.split(",") if k.strip())
    except ValueError:
        ap.error(f"--keep-float takes comma-separated whole numbers, not {args.keep_float!r}")
    if any(k < 1 for k in keep):
        ap.error(f"--keep-float counts must be at least 1, not {args.keep_float!r}")
    bundle = args.bundle.resolve()  # file:// URIs are absolute
    train = grocery_split(args.data_dir, "train")
    test = grocery_split(args.data_dir, "test")
    chosen = np.random.default_rng(0).choice(len(train), args.calibration, replace=False)
    calibration = decode([train[i][0] for i in chosen], bundle)
    pixels = decode([p for p, _ in test], bundle)
    result = compare(bundle, calibration, pixels, [t for _, t in test], keep)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
