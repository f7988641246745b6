"""Throughput benchmark: prodclf's UDF side by side with the two reference patterns.

    python benchmarks/bench.py [--images N] [--size PX] [--master local[*]] [--workdir DIR]

Variants, all classifying the same JPEG catalog with the same SavedModel (MobileNet v1
alpha 0.25 at 224x224, the shared pretrained weights when present) and all ending in a
``noop`` write so only fetch + decode + inference is timed:

* ``prodclf``: the tagging UDF (concurrent fetch, threaded draft decoding, prefetch of
  the next batch, fixed-size model batches).
* ``predict_batch_udf``: Spark's documented pattern: a pandas UDF decodes each image
  sequentially to a flat float array, then ``pyspark.ml.functions.predict_batch_udf``
  runs the model.
* ``databricks_reference``: the Databricks "distributed model inference" pattern: images
  read with Spark's ``binaryFile`` source, an iterator pandas UDF that loads the model once
  and decodes each image sequentially with PIL before ``model.predict``-style batches.

Each variant is warmed up (model loaded in the Python workers) before it is timed.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

SHARED_WEIGHTS = (
    Path(__file__).resolve().parents[2] / "shared/weights/mobilenet_2_5_224_tf_no_top.h5"
)


def make_images(root: Path, n: int, size: int, seed: int = 7) -> pd.DataFrame:
    """Synthetic product photos: coloured shapes on white, saved as JPEG (quality 90)."""
    from PIL import Image, ImageDraw

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        path = root / f"{i:06d}.jpg"
        if not path.exists():
            img = Image.new("RGB", (size, size), (255, 255, 255))
            draw = ImageDraw.Draw(img)
            for _ in range(4):
                x0, y0 = rng.integers(0, size // 2, 2)
                x1, y1 = np.array([x0, y0]) + rng.integers(size // 8, size // 2, 2)
                draw.ellipse((x0, y0, x1, y1), fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
            img.save(path, format="JPEG", quality=90)
        rows.append({"product_id": f"p{i:06d}", "image_uri": f"file://{path}"})
    return pd.DataFrame(rows)


def make_bundle(dest: Path, classes: int = 10) -> Path:
    if (dest / "bundle.json").exists():
        return dest
    import keras

    from prodclf.images import PreprocessSpec
    from prodclf.model.bundle import BundleMeta, Label, export_bundle

    keras.utils.set_random_seed(0)
    weights = str(SHARED_WEIGHTS) if SHARED_WEIGHTS.exists() else None
    backbone = keras.applications.MobileNet(
        input_shape=(224, 224, 3), alpha=0.25, include_top=False, weights=weights, pooling="avg"
    )
    out = keras.layers.Dense(classes, activation="softmax")(backbone.output)
    model = keras.Model(backbone.input, out)
    meta = BundleMeta(
        model_name="bench-mobilenet-0.25",
        model_version="1",
        labels=tuple(Label(f"class-{i}", str(i)) for i in range(classes)),
        preprocessing=PreprocessSpec(224, 224, "rgb", "symmetric"),
    )
    export_bundle(model, meta, str(dest))
    return dest


def _full_decode(data: bytes) -> np.ndarray:
    """The reference patterns' decode: full-size decode, then resize (no draft, no threads)."""
    from PIL import Image

    img = Image.open(io.BytesIO(data)).convert("RGB").resize((224, 224))
    return np.asarray(img, dtype=np.float32) / 127.5 - 1.0


def variant_prodclf(spark: Any, base: Any, bundle: str, partitions: int) -> Any:
    from prodclf.config import InferenceConfig, StorageConfig
    from prodclf.tagging.transforms import RunInfo, tag_products
    from prodclf.tagging.udf import tag_images_udf

    udf = tag_images_udf(bundle, StorageConfig(), InferenceConfig())
    now = datetime.now(timezone.utc)
    run = RunInfo("bench", now.date(), "bench", "1", now)
    return tag_products(base, udf=udf, run=run, review_threshold=0.5, partitions=partitions)


def variant_predict_batch_udf(spark: Any, base: Any, bundle: str, partitions: int) -> Any:
    from pyspark.ml.functions import predict_batch_udf
    from pyspark.sql import functions as F
    from pyspark.sql.functions import pandas_udf
    from pyspark.sql.types import ArrayType, FloatType

    @pandas_udf(ArrayType(FloatType()))  # type: ignore[call-overload]
    def decode(uris: pd.Series) -> pd.Series:
        out = []
        for uri in uris:
            with open(uri[len("file://") :], "rb") as fh:
                out.append(_full_decode(fh.read()).reshape(-1))
        return pd.Series(out)

    def make_predict_fn() -> Any:
        import tensorflow as tf

        loaded = tf.saved_model.load(os.path.join(bundle[len("file://") :], "saved_model"))

        def predict(x: np.ndarray) -> np.ndarray:
            return np.asarray(loaded.serve(tf.constant(x.reshape(-1, 224, 224, 3))))

        return predict

    classify = predict_batch_udf(
        make_predict_fn,
        return_type=ArrayType(FloatType()),
        batch_size=64,
        input_tensor_shapes=[[224 * 224 * 3]],
    )
    return (
        base.repartition(partitions)
        .withColumn("pixels", decode("image_uri"))
        .withColumn("probs", classify("pixels"))
        .select("product_id", F.array_max("probs").alias("confidence"))
    )


def variant_databricks(spark: Any, base: Any, bundle: str, partitions: int) -> Any:
    from pyspark.sql.functions import col, pandas_udf
    from pyspark.sql.types import ArrayType, FloatType

    paths = [u[len("file://") :] for u in base.select("image_uri").toPandas()["image_uri"]]
    images = spark.read.format("binaryFile").load(paths).repartition(partitions)

    @pandas_udf(ArrayType(FloatType()))  # type: ignore[call-overload]
    def predict(content_series_iter: Iterator[pd.Series]) -> Iterator[pd.Series]:
        import tensorflow as tf

        loaded = tf.saved_model.load(os.path.join(bundle[len("file://") :], "saved_model"))
        for content_series in content_series_iter:
            x = np.stack([_full_decode(b) for b in content_series])
            probs = []
            for i in range(0, len(x), 64):
                probs.extend(np.asarray(loaded.serve(tf.constant(x[i : i + 64]))).tolist())
            yield pd.Series(probs)

    return images.select(col("path"), predict(col("content")).alias("probs"))


VARIANTS = {
    "prodclf": variant_prodclf,
    "predict_batch_udf": variant_predict_batch_udf,
    "databricks_reference": variant_databricks,
}


def decode_micro(paths: list[str], n: int = 200) -> dict[str, float]:
    """Single-thread decode rate: full decode+resize vs prodclf's draft decode."""
    from prodclf.images import PreprocessSpec, decode_image

    blobs = [Path(p[len("file://") :]).read_bytes() for p in paths[:n]]
    spec = PreprocessSpec(224, 224, "rgb", "symmetric")
    t0 = time.perf_counter()
    for b in blobs:
        _full_decode(b)
    full = time.perf_counter() - t0
    t0 = time.perf_counter()
    for b in blobs:
        decode_image(b, spec, 50_000_000)
    draft = time.perf_counter() - t0
    return {"full_decode_per_s": len(blobs) / full, "draft_decode_per_s": len(blobs) / draft}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python benchmarks/bench.py", description=__doc__)
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--size", type=int, default=600, help="source JPEG side in pixels")
    ap.add_argument("--master", default="local[*]")
    ap.add_argument("--workdir", default="bench-workdir")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    args = ap.parse_args(argv)

    from prodclf.config import SparkConfig
    from prodclf.session import create_session

    work = Path(args.workdir).resolve()
    frame = make_images(work / f"images-{args.size}", args.images, args.size)
    bundle = "file://" + str(make_bundle(work / "bundle"))
    spark = create_session(SparkConfig(master=args.master, app_name="prodclf-bench"))
    cores = spark.sparkContext.defaultParallelism
    partitions = max(cores * 2, 1)
    base = spark.createDataFrame(frame).cache()
    base.count()
    warm = spark.createDataFrame(frame.head(max(cores * 64, 64)))

    results: dict[str, Any] = {
        "images": args.images,
        "source_size": args.size,
        "master": args.master,
        "cores": cores,
        "cpu": platform.processor() or platform.machine(),
        "decode_single_thread": decode_micro(frame["image_uri"].tolist()),
        "variants": {},
    }
    for name in args.variants.split(","):
        build = VARIANTS[name]
        build(spark, warm, bundle, partitions).write.format("noop").mode("overwrite").save()
        t0 = time.perf_counter()
        build(spark, base, bundle, partitions).write.format("noop").mode("overwrite").save()
        seconds = time.perf_counter() - t0
        results["variants"][name] = {
            "seconds": round(seconds, 2),
            "images_per_second": round(args.images / seconds, 1),
        }
        print(f"{name:>22}: {args.images / seconds:8.1f} images/s ({seconds:.1f} s)", flush=True)
    spark.stop()

    out = work / "results.json"
    out.write_text(json.dumps(results, indent=2))
    print("\n| variant | images/s | seconds |\n|---|---|---|")
    for name, r in results["variants"].items():
        print(f"| {name} | {r['images_per_second']} | {r['seconds']} |")
    d = results["decode_single_thread"]
    print(
        f"\nsingle-thread decode of {args.size}px JPEGs to 224x224: full "
        f"{d['full_decode_per_s']:.0f}/s, draft {d['draft_decode_per_s']:.0f}/s"
    )
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
