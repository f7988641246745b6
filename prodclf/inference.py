"""Worker-side inference, shaped like Spark's ``predict_batch_udf``.

The UDF closure carries only the model URI and two small frozen configs. On the worker,
``get_predictor`` imports TensorFlow, materialises the bundle and builds the predict
function once per Python worker process (Spark reuses workers across tasks), so the
model is loaded once, not per batch or per task. Nothing heavy is pickled on the driver,
and importing this module does not import TensorFlow.

Per Arrow batch: references are checked, objects are fetched and decoded concurrently in
a thread pool (I/O releases the GIL, so does Pillow's decoder), the next batch is
prepared while the model runs on the current one, and the model always sees fixed-size
batches (the tail is padded) so its graph is traced once.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from prodclf.bundle import SAVED_MODEL_DIR, BundleMeta, read_meta
from prodclf.config import InferenceConfig, StorageConfig
from prodclf.errors import ErrorCode, RowError
from prodclf.imaging import PreprocessSpec, decode_to_uint8, scale_pixels
from prodclf.schemas import PREDICTION, STATUS_ERROR, STATUS_OK
from prodclf.storage import objects
from prodclf.storage.uris import check_allowed, parse_uri

log = logging.getLogger(__name__)

PredictFn = Callable[[np.ndarray], np.ndarray]


# --- one image: reference -> pixels ----------------------------------------------------


def load_image(uri: object, spec: PreprocessSpec, storage: StorageConfig) -> np.ndarray:
    """Check, fetch and decode one reference to uint8 pixels; raises ``RowError``."""
    ref = parse_uri(uri)
    check_allowed(ref, storage.allowed_schemes, storage.allowed_buckets)
    data = objects.fetch_image_bytes(ref, storage)
    return decode_to_uint8(data, spec, storage.max_pixels)


def _load_or_error(
    uri: object, spec: PreprocessSpec, storage: StorageConfig
) -> np.ndarray | RowError:
    try:
        return load_image(uri, spec, storage)
    except RowError as err:
        return err
    except Exception as exc:
        return RowError(ErrorCode.FETCH_FAILED, f"unexpected {type(exc).__name__}: {exc}"[:300])


# --- one batch -------------------------------------------------------------------------


@dataclass
class PreparedBatch:
    """Decoded pixels of the usable rows plus the error of every other row."""

    size: int
    pixels: np.ndarray  # (n_ok, H, W, C) uint8
    ok_rows: np.ndarray  # row positions of ``pixels`` within the batch
    errors: dict[int, RowError]


def prepare_batch(
    uris: pd.Series, spec: PreprocessSpec, storage: StorageConfig, pool: Executor
) -> PreparedBatch:
    results = list(pool.map(lambda u: _load_or_error(u, spec, storage), uris.tolist()))
    ok_rows = [i for i, r in enumerate(results) if isinstance(r, np.ndarray)]
    errors = {i: r for i, r in enumerate(results) if isinstance(r, RowError)}
    if ok_rows:
        pixels = np.stack([results[i] for i in ok_rows])  # type: ignore[misc]
    else:
        pixels = np.zeros((0, *spec.shape), dtype=np.uint8)
    return PreparedBatch(len(results), pixels, np.asarray(ok_rows, dtype=np.int64), errors)


def predict_fixed_batches(predict: PredictFn, x: np.ndarray, batch_size: int) -> np.ndarray:
    """Run ``predict`` on slices of exactly ``batch_size`` rows, padding the last one."""
    n = len(x)
    outputs = []
    for start in range(0, n, batch_size):
        chunk = x[start : start + batch_size]
        if len(chunk) < batch_size:
            pad = np.zeros((batch_size - len(chunk), *x.shape[1:]), dtype=x.dtype)
            chunk = np.concatenate([chunk, pad])
        outputs.append(np.asarray(predict(chunk))[: min(batch_size, n - start)])
    return np.concatenate(outputs)


def finish_batch(
    batch: PreparedBatch,
    predict: PredictFn,
    meta: BundleMeta,
    inference: InferenceConfig,
) -> pd.DataFrame:
    """Predictions for the usable rows, error rows for the rest, in input order."""
    n = batch.size
    category: list[Any] = [None] * n
    category_id: list[Any] = [None] * n
    category_path: list[Any] = [None] * n
    confidence = np.full(n, np.nan, dtype=np.float32)
    top_cats: list[Any] = [None] * n
    top_scores: list[Any] = [None] * n
    status = [STATUS_ERROR] * n
    codes: list[Any] = [None] * n
    messages: list[Any] = [None] * n
    errors = dict(batch.errors)

    if len(batch.ok_rows):
        try:
            x = scale_pixels(batch.pixels, meta.preprocessing.scale)
            probs = predict_fixed_batches(predict, x, inference.model_batch_size)
            if meta.output == "logits":
                probs = _softmax(probs)
            _check_output(probs, len(batch.ok_rows), meta.num_classes)
        except Exception as exc:
            log.exception("inference failed on a batch of %d images", len(batch.ok_rows))
            err = RowError(ErrorCode.INFERENCE_FAILED, f"{type(exc).__name__}: {exc}"[:300])
            errors.update({int(i): err for i in batch.ok_rows})
        else:
            k = min(inference.top_k, meta.num_classes)
            top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
            names = [lb.name for lb in meta.labels]
            for row, p, idx in zip(batch.ok_rows.tolist(), probs, top, strict=True):
                best = int(idx[0])
                category[row] = names[best]
                category_id[row] = meta.labels[best].id
                category_path[row] = meta.labels[best].path or None
                confidence[row] = p[best]
                top_cats[row] = [names[int(j)] for j in idx]
                top_scores[row] = [float(p[int(j)]) for j in idx]
                status[row] = STATUS_OK

    for row, err in errors.items():
        codes[row] = err.code.value
        messages[row] = err.message
    return pd.DataFrame(
        {
            "category": category,
            "category_id": category_id,
            "category_path": category_path,
            "confidence": confidence,
            "top_k_categories": top_cats,
            "top_k_scores": top_scores,
            "status": status,
            "error_code": codes,
            "error_message": messages,
        },
        columns=PREDICTION.fieldNames(),
    )


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    out: np.ndarray = e / e.sum(axis=1, keepdims=True)
    return out


def _check_output(probs: np.ndarray, rows: int, classes: int) -> None:
    if probs.shape != (rows, classes):
        raise ValueError(f"model returned shape {probs.shape}, expected ({rows}, {classes})")


def tag_batches(
    batches: Iterator[pd.Series],
    predictor: Predictor,
    storage: StorageConfig,
    inference: InferenceConfig,
) -> Iterator[pd.DataFrame]:
    """Tag a stream of Arrow batches, preparing batch i+1 while the model runs on batch i."""
    spec = predictor.meta.preprocessing
    with (
        ThreadPoolExecutor(storage.fetch_concurrency, "prodclf-fetch") as pool,
        ThreadPoolExecutor(1, "prodclf-prefetch") as ahead,
    ):
        pending = None
        for uris in batches:
            nxt = ahead.submit(prepare_batch, uris, spec, storage, pool)
            if pending is not None:
                yield finish_batch(pending.result(), predictor.predict, predictor.meta, inference)
            pending = nxt
        if pending is not None:
            yield finish_batch(pending.result(), predictor.predict, predictor.meta, inference)


# --- the model, once per Python worker ------------------------------------------------


class Predictor:
    """A loaded bundle: metadata plus a compiled predict function."""

    def __init__(self, meta: BundleMeta, predict: PredictFn) -> None:
        self.meta = meta
        self.predict = predict


_PREDICTORS: dict[tuple[str, bool], Predictor] = {}
_LOCK = threading.Lock()


def get_predictor(model_uri: str, use_gpu: bool = True) -> Predictor:
    """The worker's predictor for ``model_uri``, loaded on first use and then reused."""
    key = (model_uri, use_gpu)
    with _LOCK:
        if key not in _PREDICTORS:
            _PREDICTORS[key] = load_predictor(model_uri, use_gpu)
        return _PREDICTORS[key]


def load_predictor(model_uri: str, use_gpu: bool = True) -> Predictor:
    gpus = task_gpu_addresses() if use_gpu else ()
    tf = import_tensorflow(gpus, use_gpu)
    local = materialize_bundle(model_uri)
    meta = read_meta(str(local))
    loaded = tf.saved_model.load(str(local / SAVED_MODEL_DIR))
    endpoint = getattr(loaded, meta.endpoint)

    def predict(x: np.ndarray) -> np.ndarray:
        out = endpoint(tf.constant(x, dtype=tf.float32))
        if isinstance(out, dict):
            out = next(iter(out.values()))
        return np.asarray(out)

    predict.__dict__["_keep_alive"] = loaded  # the endpoint needs its object graph
    log.info("loaded model %s %s on %s", meta.model_name, meta.model_version, gpus or "cpu")
    return Predictor(meta, predict)


def task_gpu_addresses() -> tuple[str, ...]:
    """GPU addresses Spark assigned to the running task (empty outside Spark or without GPUs)."""
    try:
        from pyspark import TaskContext
    except ImportError:  # pragma: no cover - pyspark is a dependency
        return ()
    ctx = TaskContext.get()
    if ctx is None:
        return ()
    info = ctx.resources().get("gpu")
    return tuple(info.addresses) if info is not None else ()


def visible_devices_env(gpus: tuple[str, ...], use_gpu: bool) -> str | None:
    """The CUDA_VISIBLE_DEVICES value for this worker, or None to leave it as it is."""
    if not use_gpu:
        return ""
    if gpus:
        return ",".join(gpus)
    return None


def import_tensorflow(gpus: tuple[str, ...] = (), use_gpu: bool = True) -> Any:
    """Import TensorFlow pinned to the task's GPUs (if any) with memory growth on."""
    env = visible_devices_env(gpus, use_gpu)
    if env is not None and "tensorflow" not in _imported():
        os.environ["CUDA_VISIBLE_DEVICES"] = env
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    for dev in tf.config.list_physical_devices("GPU"):
        # RuntimeError: already initialised by an earlier load in this process.
        with contextlib.suppress(RuntimeError):
            tf.config.experimental.set_memory_growth(dev, True)
    return tf


def _imported() -> set[str]:
    import sys

    return set(sys.modules)


def materialize_bundle(model_uri: str) -> Path:
    """A local directory holding the bundle; ``s3://`` bundles are downloaded once per host.

    The cache key includes the bundle's metadata bytes, so a bundle republished at the
    same URI (new version, new ``created_at``) is downloaded again.
    """
    if not model_uri.startswith("s3://"):
        return objects.local_path(model_uri)
    meta_bytes = objects.read_bytes(model_uri.rstrip("/") + "/bundle.json")
    digest = hashlib.sha256(model_uri.encode() + b"\0" + meta_bytes).hexdigest()[:24]
    root = Path(tempfile.gettempdir()) / "prodclf-models"
    cache = root / digest
    if (cache / "bundle.json").exists():
        return cache
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{digest}-", dir=root))
    objects.copy_tree_to_local(model_uri, staging)
    try:
        os.replace(staging, cache)  # atomic: concurrent workers on one host race safely
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
    return cache


# --- the UDF ---------------------------------------------------------------------------


def tag_images_udf(model_uri: str, storage: StorageConfig, inference: InferenceConfig) -> Any:
    """A pandas iterator UDF: ``image_uri`` column -> ``PREDICTION`` struct column."""
    from pyspark.sql.functions import pandas_udf

    def tag(uris: Iterator[pd.Series]) -> Iterator[pd.DataFrame]:
        predictor = get_predictor(model_uri, inference.use_gpu)
        yield from tag_batches(uris, predictor, storage, inference)

    # Non-deterministic so the optimizer never duplicates the call per struct field.
    return pandas_udf(tag, PREDICTION).asNondeterministic()  # type: ignore[call-overload]
