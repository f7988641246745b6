"""The TensorFlow runtime on a worker: import it pinned to the task's GPUs, load a bundle once.

Shaped like the loader side of Spark's ``predict_batch_udf``: ``get_predictor`` imports
TensorFlow, materialises the bundle and builds the predict function on first use in a
Python worker process (Spark reuses workers across tasks), then serves it from a cache.
Importing this module does not import TensorFlow.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from prodclf.model.bundle import SAVED_MODEL_DIR, BundleMeta, read_meta
from prodclf.storage import objects

log = logging.getLogger(__name__)

PredictFn = Callable[[np.ndarray], np.ndarray]


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
