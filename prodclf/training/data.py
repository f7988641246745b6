"""Training data: labelled catalog rows -> pixels decoded on the executors -> petastorm -> tf.data.

The Spark half is plain ``DataFrame -> DataFrame`` steps. Images are fetched and decoded
with the very code the tagging job uses (``prodclf.images.prepare_batch``), so a model
trains on exactly the pixels it will be tagged with. The decoded rows of each split are
materialized by petastorm's ``make_spark_converter`` and streamed into Keras with
``make_tf_dataset``: the driver never holds the training set in memory.

TensorFlow is imported inside the functions that need it.
"""

from __future__ import annotations

import logging
import math
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import BinaryType, StringType, StructField, StructType

from prodclf.config import SPLIT_ALIASES, SPLITS, StorageConfig, TrainConfig
from prodclf.errors import InputError
from prodclf.images import PreprocessSpec, prepare_batch
from prodclf.schemas import check_columns
from prodclf.storage import tables

log = logging.getLogger(__name__)

TRAIN, VALIDATION, TEST = SPLITS


#: What the executors send back per labelled product: pixels, or the reason there are none.
DECODED = StructType(
    [
        StructField("product_id", StringType()),
        StructField("label", StringType()),
        StructField("split", StringType()),
        StructField("pixels", BinaryType()),  # uint8 H*W*C bytes; null when the image failed
        StructField("error_code", StringType()),  # null when the image loaded
    ]
)

# Different salts keep the --limit sample and the split independent of each other.
_SPLIT_SALT = "prodclf-split"
_BUCKETS = 1_000_000


# --- labelled rows ----------------------------------------------------------------------


def read_labelled(spark: SparkSession, cfg: TrainConfig) -> DataFrame:
    """``product_id, image_uri, label[, split]`` from the base library (and labels table)."""
    s3 = cfg.storage.spark_s3_scheme
    split = (cfg.split_column,) if cfg.split_column else ()
    if cfg.labels is None:
        base = tables.read_base_library(spark, cfg.base_library, s3, extra=(cfg.label_column,))
        cols = ["product_id", "image_uri", cfg.label_column, *split]
        check_columns(base.schema, dict.fromkeys(split), f"base library {cfg.base_library}")
        return base.select(*cols).withColumnRenamed(cfg.label_column, "label")
    base = tables.read_base_library(spark, cfg.base_library, s3)
    labels = tables.read_dataset(spark, cfg.labels, "labels table", s3)
    required = dict.fromkeys(("product_id", cfg.label_column, *split))
    check_columns(labels.schema, required, f"labels table {cfg.labels}")
    # One label per product: the smallest, so duplicates in the labels table stay deterministic.
    per_product = labels.groupBy("product_id").agg(
        F.min(cfg.label_column).alias("label"),
        *[F.min(c).alias(c) for c in split],
    )
    return base.select("product_id", "image_uri").join(per_product, "product_id", "left")


@dataclass(frozen=True)
class LabelledCounts:
    """What happened to the labelled table's rows before any image was fetched."""

    rows: int
    null_product_ids: int
    unlabelled: int
    products: int

    @property
    def duplicate_rows(self) -> int:
        return self.rows - self.null_product_ids - self.products


def count_labelled(rows: DataFrame) -> LabelledCounts:
    r = rows.agg(
        F.count(F.lit(1)).alias("rows"),
        F.count(F.when(F.col("product_id").isNull(), 1)).alias("nulls"),
        F.countDistinct(F.when(F.col("label").isNull(), F.col("product_id"))).alias("unlabelled"),
        F.countDistinct("product_id").alias("products"),
    ).first()
    assert r is not None
    return LabelledCounts(int(r["rows"]), int(r["nulls"]), int(r["unlabelled"]), int(r["products"]))


def one_per_product(rows: DataFrame, split_column: str | None = None) -> DataFrame:
    """One row per labelled product; duplicates keep their smallest values (deterministic)."""
    extra = [F.min(split_column).alias("split_raw")] if split_column else []
    return (
        rows.where(F.col("product_id").isNotNull() & F.col("label").isNotNull())
        .groupBy("product_id")
        .agg(
            F.min("image_uri").alias("image_uri"),
            F.min(F.col("label").cast("string")).alias("label"),
            *extra,
        )
    )


def sample(rows: DataFrame, limit: int | None) -> DataFrame:
    """A stable sample: hash order, so reruns with the same limit see the same products."""
    if limit is None:
        return rows
    return rows.orderBy(F.xxhash64("product_id"), "product_id").limit(limit)


def assign_split(rows: DataFrame, validation: float, test: float) -> DataFrame:
    """``split`` from the split column when there is one, else from a hash of product_id.

    A split value that is not recognised gives a null ``split``: the row is counted in the
    training metrics as ``unknown_split`` and not used.
    """
    if "split_raw" in rows.columns:
        mapping = F.create_map(*[F.lit(x) for kv in SPLIT_ALIASES.items() for x in kv])
        value = F.lower(F.trim(F.col("split_raw").cast("string")))
        return rows.withColumn("split", mapping[value]).drop("split_raw")
    bucket = F.pmod(F.xxhash64(F.lit(_SPLIT_SALT), "product_id"), F.lit(_BUCKETS))
    v = round(validation * _BUCKETS)
    t = round((validation + test) * _BUCKETS)
    split = (
        F.when(bucket < F.lit(v), F.lit(VALIDATION))
        .when(bucket < F.lit(t), F.lit(TEST))
        .otherwise(F.lit(TRAIN))
    )
    return rows.withColumn("split", split)


# --- decoding on the executors -----------------------------------------------------------


def decode_fn(
    spec: PreprocessSpec, storage: StorageConfig
) -> Callable[[Iterator[pd.DataFrame]], Iterator[pd.DataFrame]]:
    """The ``mapInPandas`` function: fetch and decode one partition's images concurrently."""

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
                        "split": pdf["split"].to_numpy(),
                        "pixels": pixels,
                        "error_code": codes,
                    },
                    columns=DECODED.fieldNames(),
                )

    return decode


def decode_images(
    rows: DataFrame, spec: PreprocessSpec, storage: StorageConfig, partitions: int
) -> DataFrame:
    """Adds ``pixels``/``error_code``; ``partitions`` spreads the work over every core."""
    fn = decode_fn(spec, storage)
    return rows.repartition(max(1, partitions), "product_id").mapInPandas(fn, DECODED)  # type: ignore[arg-type]


# --- what there is to train on -----------------------------------------------------------


@dataclass
class DataSummary:
    """Counts per split and class, and every row that could not be used, by reason."""

    classes: list[str]
    images: dict[str, dict[str, int]]  # split -> class -> usable images
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> products

    def count(self, split: str) -> int:
        return sum(self.images.get(split, {}).values())

    def to_json(self) -> dict[str, Any]:
        return {
            "classes": len(self.classes),
            "images": {s: self.count(s) for s in SPLITS},
            "images_per_class": self.images,
            "skipped": self.skipped,
        }


def summarize_decoded(decoded: DataFrame, counts: LabelledCounts) -> DataSummary:
    """Classes are the labels with at least one usable training image, sorted."""
    rows = decoded.groupBy("split", "label", "error_code").count().collect()
    images: dict[str, Counter[str]] = {s: Counter() for s in SPLITS}
    skipped: Counter[str] = Counter()
    for r in rows:
        if r["error_code"] is not None:
            skipped[str(r["error_code"])] += r["count"]
        elif r["split"] is None:
            skipped["unknown_split"] += r["count"]
        else:
            images[r["split"]][r["label"]] += r["count"]
    classes = sorted(images[TRAIN])
    for split in (VALIDATION, TEST):
        unseen = sum(n for label, n in images[split].items() if label not in images[TRAIN])
        if unseen:
            skipped[f"{split}_label_not_in_train"] += unseen
            images[split] = Counter({k: v for k, v in images[split].items() if k in classes})
    if counts.null_product_ids:
        skipped["null_product_id"] += counts.null_product_ids
    if counts.unlabelled:
        skipped["unlabelled"] += counts.unlabelled
    if counts.duplicate_rows:
        skipped["duplicate_rows"] += counts.duplicate_rows
    return DataSummary(
        classes=classes,
        images={s: dict(sorted(c.items())) for s, c in images.items()},
        skipped=dict(sorted(skipped.items())),
    )


def check_trainable(summary: DataSummary, where: str) -> None:
    if len(summary.classes) < 2:
        raise InputError(
            f"{where}: needs usable training images of at least 2 labels, found "
            f"{len(summary.classes)} ({summary.count(TRAIN)} usable training image(s); "
            f"skipped: {summary.skipped or 'none'})"
        )


def indexed(decoded: DataFrame, classes: list[str], split: str) -> DataFrame:
    """``pixels, label`` (the class index) for one split's usable images."""
    index = F.create_map(*[F.lit(x) for i, name in enumerate(classes) for x in (name, i)])
    return decoded.where(
        (F.col("split") == F.lit(split))
        & F.col("error_code").isNull()
        & F.col("label").isin(classes)
    ).select("pixels", index[F.col("label")].cast("int").alias("label"))


# --- petastorm ---------------------------------------------------------------------------


@dataclass
class Prepared:
    """The decoded data of one training run, persisted for the converters, and its counts."""

    decoded: DataFrame
    summary: DataSummary
    input_counts: LabelledCounts
    row_bytes: int  # decoded pixels per image


def prepare(
    spark: SparkSession, cfg: TrainConfig, spec: PreprocessSpec, partitions: int | None = None
) -> Prepared:
    """Read, split and decode once; the result is persisted on the executors' disks."""
    labelled = read_labelled(spark, cfg)
    counts = count_labelled(labelled)
    rows = (
        labelled.transform(one_per_product, cfg.split_column)
        .transform(sample, cfg.limit)
        .transform(assign_split, cfg.validation_fraction, cfg.test_fraction)
    )
    parts = partitions or max(2, spark.sparkContext.defaultParallelism * 2)
    decoded = decode_images(rows, spec, cfg.storage, parts).persist(StorageLevel.DISK_ONLY)
    summary = summarize_decoded(decoded, counts)
    h, w, c = spec.shape
    return Prepared(decoded, summary, counts, h * w * c)


def cache_url(cache_dir: str | None) -> tuple[str, Callable[[], None]]:
    """petastorm's cache directory URL, and how to clean it up when we made it."""
    if cache_dir:
        if "://" in cache_dir:
            return cache_dir, lambda: None
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        return Path(cache_dir).resolve().as_uri(), lambda: None
    tmp = tempfile.TemporaryDirectory(prefix="prodclf-petastorm-")
    return Path(tmp.name).as_uri(), tmp.cleanup


@contextmanager
def converters(
    spark: SparkSession, prepared: Prepared, cache_dir: str | None
) -> Iterator[dict[str, Any]]:
    """One petastorm converter per non-empty split; their cached Parquet is deleted after."""
    from petastorm.spark import SparkDatasetConverter, make_spark_converter

    url, cleanup = cache_url(cache_dir)
    spark.conf.set(SparkDatasetConverter.PARENT_CACHE_DIR_URL_CONF, url)
    made: dict[str, Any] = {}
    try:
        for split in SPLITS:
            rows = prepared.summary.count(split)
            if rows:
                df = indexed(prepared.decoded, prepared.summary.classes, split)
                # Files of about 64 MB (petastorm reads small files slowly, and says so).
                files = max(1, math.ceil(rows * prepared.row_bytes / (64 << 20)))
                made[split] = make_spark_converter(df.coalesce(files))
        yield made
    finally:
        for conv in made.values():
            try:
                conv.delete()
            except Exception:  # cleanup must not hide the real error
                log.warning("could not delete petastorm cache %s", conv.cache_dir_url)
        cleanup()


@contextmanager
def tf_dataset(
    converter: Any,
    spec: PreprocessSpec,
    *,
    rows: int,
    batch_size: int,
    repeat: bool,
    shuffle: bool,
    workers: int,
    seed: int,
    augment: Callable[[Any], Any] | None = None,
) -> Iterator[Any]:
    """``(x, y)`` batches scaled like the tagging job scales them, augmented when asked.

    ``repeat`` gives an endless stream (use ``steps_per_epoch``); without it one pass over
    the split in a deterministic order (one reader, no shuffling), for exact evaluation.
    """
    import tensorflow as tf

    from prodclf.model.augment import scale_tf

    shape = spec.shape
    row_bytes = shape[0] * shape[1] * shape[2]
    # Row-level shuffling over the whole split, or about 256 MB of pixels when larger. The
    # buffer fills before the first batch comes out: never ask for more than the split.
    capacity = max(1, min(rows, (256 << 20) // row_bytes)) if shuffle else 0
    with converter.make_tf_dataset(
        batch_size=batch_size,
        num_epochs=None if repeat else 1,
        workers_count=workers if shuffle else 1,
        shuffling_queue_capacity=capacity,
        shuffle_row_groups=shuffle,
        seed=seed,
    ) as ds:

        def unpack(batch: Any) -> tuple[Any, Any]:
            flat = tf.io.decode_raw(batch.pixels, tf.uint8)
            x = tf.cast(tf.reshape(flat, (-1, *shape)), tf.float32)
            return x, batch.label

        out = ds.map(unpack, num_parallel_calls=tf.data.AUTOTUNE)
        if augment is not None:
            out = out.map(lambda x, y: (augment(x), y), num_parallel_calls=tf.data.AUTOTUNE)
        out = out.map(
            lambda x, y: (scale_tf(x, spec.scale), y), num_parallel_calls=tf.data.AUTOTUNE
        )
        yield out.prefetch(tf.data.AUTOTUNE)
