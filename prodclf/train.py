"""The minimal trainer: a small CNN trained on a labelled base library, exported as a bundle.

Images are fetched and decoded on the executors with the very code the tagging job uses
(``prodclf.inference.prepare_batch``), so training sees exactly the pixels tagging will
see. The decoded pixels are then collected to the driver and trained on in memory: fine
for tens of thousands of small images, and the reason this trainer is "minimal" (a
streaming, petastorm-based trainer replaces it for real catalogs).

``preflight`` needs neither Spark nor TensorFlow; TensorFlow/Keras are imported inside
``run_train`` only, so importing this module stays cheap.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pandas as pd
import yaml
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import BinaryType, BooleanType, StringType, StructField, StructType

from prodclf.bundle import BundleMeta, Label, export_bundle
from prodclf.config import StorageConfig, TrainConfig
from prodclf.errors import ConfigError, InputError
from prodclf.imaging import PreprocessSpec, scale_pixels
from prodclf.inference import import_tensorflow, prepare_batch
from prodclf.storage import objects, tables

log = logging.getLogger(__name__)

#: What the executors send back per labelled row: pixels, or the reason there are none.
DECODED = StructType(
    [
        StructField("product_id", StringType()),
        StructField("label", StringType()),
        StructField("validation", BooleanType()),
        StructField("pixels", BinaryType()),  # uint8 H*W*C bytes; null when the image failed
        StructField("error_code", StringType()),  # null when the image loaded
    ]
)

# Different salts keep the --limit sample and the validation split independent.
_SPLIT_SALT = "prodclf-validation"
_SPLIT_BUCKETS = 1_000_000


@dataclass
class Examples:
    """The decoded training data on the driver, in product_id order."""

    product_ids: list[str]
    labels: list[str]
    validation: np.ndarray  # bool [N]
    pixels: np.ndarray  # uint8 [N, H, W, C]
    skipped: dict[str, int]  # error code -> rows whose image could not be used


# --- checks that need no Spark ---------------------------------------------------------


def preflight(cfg: TrainConfig) -> None:
    """Refuse bad arguments before Spark starts: config, locations, the label map."""
    cfg.validate()
    tables.refuse_overlap(cfg.base_library, cfg.model_out, "--model-out")
    tables.require_dataset(cfg.base_library, "base library")
    if cfg.label_map:
        load_label_map(cfg.label_map)


def load_label_map(location: str) -> dict[str, str]:
    """Read a YAML/JSON mapping ``{label name: category id}``; ids become strings."""
    try:
        raw = objects.read_bytes(location)
    except OSError as exc:
        raise ConfigError(f"--label-map {location}: cannot be read ({exc})") from None
    try:
        data = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"--label-map {location}: not valid YAML/JSON ({first})") from None
    if not isinstance(data, dict) or not data:
        raise ConfigError(f"--label-map {location}: must be a non-empty mapping {{label: id}}")
    bad = [
        repr(k)
        for k, v in data.items()
        if not isinstance(k, (str, int))
        or isinstance(k, bool)
        or not isinstance(v, (str, int))
        or isinstance(v, bool)
        or not str(v).strip()
    ]
    if bad:
        raise ConfigError(
            f"--label-map {location}: every entry must map a label to a string or integer id "
            f"(bad entries: {', '.join(bad[:5])})"
        )
    return {str(k): str(v).strip() for k, v in data.items()}


def label_ids(names: list[str], label_map: dict[str, str] | None, where: str) -> tuple[Label, ...]:
    """The bundle labels in output order; every label must be in the map when there is one."""
    if label_map is None:
        return tuple(Label(name=n, id=n) for n in names)
    missing = [n for n in names if n not in label_map]
    if missing:
        raise ConfigError(
            f"--label-map {where}: no id for label(s) {', '.join(repr(m) for m in missing)}"
        )
    return tuple(Label(name=n, id=label_map[n]) for n in names)


# --- the Spark part: labelled rows -> decoded pixels on the driver ---------------------


def preprocess_spec(cfg: TrainConfig) -> PreprocessSpec:
    return PreprocessSpec(cfg.image_height, cfg.image_width, cfg.color_mode, cfg.scale)


def labelled_rows(base: DataFrame, cfg: TrainConfig) -> DataFrame:
    """``product_id, image_uri, label, validation``: usable rows, optionally a stable sample."""
    rows = base.where(F.col("product_id").isNotNull() & F.col(cfg.label_column).isNotNull()).select(
        "product_id",
        "image_uri",
        F.col(cfg.label_column).cast("string").alias("label"),
    )
    if cfg.limit is not None:
        # A hash order, not the file order: the sample does not depend on how the library
        # was written, and reruns with the same --limit see the same products.
        rows = rows.orderBy(F.xxhash64("product_id"), "product_id").limit(cfg.limit)
    bucket = F.pmod(F.xxhash64(F.lit(_SPLIT_SALT), "product_id"), F.lit(_SPLIT_BUCKETS))
    threshold = round(cfg.validation_fraction * _SPLIT_BUCKETS)
    return rows.withColumn("validation", bucket < F.lit(threshold))


def decode_partition_fn(
    spec: PreprocessSpec, storage: StorageConfig
) -> Callable[[Iterator[pd.DataFrame]], Iterator[pd.DataFrame]]:
    """The ``mapInPandas`` function: fetch and decode one partition's images, concurrently."""

    def decode(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        with ThreadPoolExecutor(storage.fetch_concurrency, "prodclf-train-fetch") as pool:
            for pdf in batches:
                batch = prepare_batch(pdf["image_uri"], spec, storage, pool)
                pixels: list[bytes | None] = [None] * batch.size
                for pos, row in enumerate(batch.ok_rows.tolist()):
                    pixels[row] = batch.pixels[pos].tobytes()
                codes: list[str | None] = [None] * batch.size
                for row, err in batch.errors.items():
                    codes[row] = err.code.value
                yield pd.DataFrame(
                    {
                        "product_id": pdf["product_id"].to_numpy(),
                        "label": pdf["label"].to_numpy(),
                        "validation": pdf["validation"].to_numpy(dtype=bool),
                        "pixels": pixels,
                        "error_code": codes,
                    },
                    columns=DECODED.fieldNames(),
                )

    return decode


def collect_examples(spark: SparkSession, cfg: TrainConfig, spec: PreprocessSpec) -> Examples:
    """Decode every labelled image on the executors and bring the pixels to the driver.

    Memory bound: the driver holds N*H*W*C bytes of uint8 pixels (plus about 4x that as
    float32 while training), e.g. 20,000 28x28 grayscale images are 16 MB, and Spark's
    collect needs about the same again transiently (``spark.driver.maxResultSize``).
    """
    base = tables.read_base_library(
        spark, cfg.base_library, cfg.storage.spark_s3_scheme, extra=(cfg.label_column,)
    )
    rows = labelled_rows(base, cfg)
    # Spread the fetch+decode over every core even when the library is one file.
    rows = rows.repartition(max(1, spark.sparkContext.defaultParallelism))
    decoded = rows.mapInPandas(decode_partition_fn(spec, cfg.storage), DECODED)  # type: ignore[arg-type]
    pdf: pd.DataFrame = decoded.toPandas()
    pdf = pdf.sort_values("product_id", kind="stable").reset_index(drop=True)

    failed = pdf["error_code"].notna()
    skipped = dict(sorted(Counter(pdf.loc[failed, "error_code"].astype(str)).items()))
    good = pdf.loc[~failed]
    if len(good):
        flat = np.frombuffer(b"".join(good["pixels"].tolist()), dtype=np.uint8)
        pixels = flat.reshape(len(good), *spec.shape)
    else:
        pixels = np.zeros((0, *spec.shape), dtype=np.uint8)
    return Examples(
        product_ids=good["product_id"].astype(str).tolist(),
        labels=good["label"].astype(str).tolist(),
        validation=good["validation"].to_numpy(dtype=bool),
        pixels=pixels,
        skipped=skipped,
    )


# --- the Keras part ---------------------------------------------------------------------


def build_model(spec: PreprocessSpec, num_classes: int) -> Any:
    """A small CNN: (Conv-BN-ReLU, max-pool) blocks, dropout, Dense softmax.

    Input is ``spec.shape`` already scaled per ``spec.scale`` (the tagging job scales
    outside the model), so the exported graph is plain layers: no Lambda, no Python.
    Two blocks for small inputs, three above 32 px; the head flattens small feature maps
    (position matters for clothing silhouettes) and global-average-pools large ones.
    BatchNorm's moving statistics use momentum 0.9, not Keras' 0.99: a small catalog gives
    only a few hundred steps, too few for 0.99 to settle (validation accuracy lags badly).
    """
    import keras
    from keras import layers

    inputs = keras.Input(shape=spec.shape, name="pixels")
    x = inputs
    filters = (32, 64, 128) if max(spec.height, spec.width) > 32 else (32, 64)
    for i, f in enumerate(filters):
        x = layers.Conv2D(f, 3, padding="same", use_bias=False, name=f"conv{i + 1}")(x)
        x = layers.BatchNormalization(momentum=0.9, name=f"bn{i + 1}")(x)
        x = layers.ReLU(name=f"relu{i + 1}")(x)
        x = layers.MaxPooling2D(padding="same", name=f"pool{i + 1}")(x)
    x = layers.Dropout(0.1, name="drop_features")(x)
    _, h, w, _ = x.shape
    if h * w <= 64:
        x = layers.Flatten(name="flatten")(x)
    else:
        x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dense(128, activation="relu", name="dense")(x)
    x = layers.Dropout(0.3, name="drop_dense")(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="prodclf_small_cnn")


def progress_callback(epochs: int) -> Any:
    """A Keras callback logging one line per epoch (Keras' own bar is noise in Spark logs)."""
    import keras

    class EpochLog(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            self._t0 = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            logs = logs or {}
            parts = [f"{k} {logs[k]:.4f}" for k in sorted(logs) if isinstance(logs[k], float)]
            log.info(
                "epoch %d/%d: %s (%.1fs)",
                epoch + 1,
                epochs,
                ", ".join(parts),
                time.perf_counter() - self._t0,
            )

    return EpochLog()


def _accuracy(model: Any, x: np.ndarray, y: np.ndarray) -> float | None:
    if len(x) == 0:
        return None
    probs = model.predict(x, batch_size=512, verbose=0)
    return round(float(np.mean(np.argmax(probs, axis=1) == y)), 4)


def run_train(cfg: TrainConfig, spark: SparkSession) -> BundleMeta:
    """Train the small CNN on ``cfg.base_library`` and export it to ``cfg.model_out``."""
    spec = preprocess_spec(cfg)
    label_map = load_label_map(cfg.label_map) if cfg.label_map else None
    t0 = time.perf_counter()
    ex = collect_examples(spark, cfg, spec)
    n_skipped = sum(ex.skipped.values())
    if n_skipped:
        log.warning(
            "skipped %d labelled row(s) whose image could not be used: %s",
            n_skipped,
            ", ".join(f"{code} {n}" for code, n in ex.skipped.items()),
        )
    names = sorted(set(ex.labels))
    if len(names) < 2:
        raise InputError(
            f"base library {cfg.base_library}: needs images of at least 2 labels in column "
            f"{cfg.label_column!r}, found {len(names)} ({len(ex.labels)} usable image(s))"
        )
    labels = label_ids(names, label_map, str(cfg.label_map))
    index = {n: i for i, n in enumerate(names)}
    y = np.array([index[n] for n in ex.labels], dtype=np.int64)
    x = scale_pixels(ex.pixels, spec.scale)
    val = ex.validation
    if not (~val).any():
        raise InputError(
            f"base library {cfg.base_library}: every usable image fell in the validation "
            "split; lower --validation-fraction or add images"
        )
    x_train, y_train, x_val, y_val = x[~val], y[~val], x[val], y[val]
    log.info(
        "decoded %d image(s) in %.1fs: %d train, %d validation, %d class(es)",
        len(x),
        time.perf_counter() - t0,
        len(x_train),
        len(x_val),
        len(names),
    )

    import_tensorflow()  # quiet C++ logs, GPU memory growth when there is a GPU
    import keras

    keras.utils.set_random_seed(cfg.seed)
    model = build_model(spec, len(names))
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=cfg.learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    model.fit(
        x_train,
        y_train,
        batch_size=cfg.batch_size,
        epochs=cfg.epochs,
        validation_data=(x_val, y_val) if len(x_val) else None,
        shuffle=True,
        verbose=0,
        callbacks=[progress_callback(cfg.epochs)],
    )
    metrics: dict[str, Any] = {
        "train_accuracy": _accuracy(model, x_train, y_train),
        "val_accuracy": _accuracy(model, x_val, y_val),
        "train_images": len(x_train),
        "val_images": len(x_val),
        "skipped_images": n_skipped,
        "epochs": cfg.epochs,
        "classes": len(names),
    }
    meta = BundleMeta(
        model_name=cfg.model_name,
        model_version=cfg.model_version or datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ"),
        labels=labels,
        preprocessing=spec,
        metrics=metrics,
    )
    meta = export_bundle(model, meta, cfg.model_out)
    log.info(
        "model %s %s written to %s: train accuracy %s, validation accuracy %s",
        meta.model_name,
        meta.model_version,
        cfg.model_out,
        metrics["train_accuracy"],
        metrics["val_accuracy"],
    )
    return meta
