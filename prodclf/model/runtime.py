"""The TensorFlow runtime on a worker: import it pinned to the task's GPUs, load a bundle once.

Shaped like the loader side of Spark's ``predict_batch_udf``: ``get_predictor`` imports
TensorFlow, materialises the bundle and builds the predict function on first use in a
Python worker process (Spark reuses workers across tasks), then serves it from a cache.
Importing this module does not import TensorFlow.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import shutil
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from prodclf.errors import GpuUnavailable
from prodclf.model.augment import scale_tf
from prodclf.model.bundle import SAVED_MODEL_DIR, BundleMeta, read_meta
from prodclf.storage import objects

log = logging.getLogger(__name__)

PredictFn = Callable[[np.ndarray], np.ndarray]


class Predictor:
    """A loaded bundle: metadata plus a compiled predict function.

    ``predict`` takes model-ready uint8 pixels ``(N, H, W, C)``: the bundle's scaling runs
    inside the model's graph, fused and multithreaded, rather than as numpy passes over
    float copies four times the size (and uint8 is what crosses to a GPU).
    """

    def __init__(self, meta: BundleMeta, predict: PredictFn) -> None:
        self.meta = meta
        self.predict = predict


class BundleChanged(RuntimeError):
    """The bundle a worker loaded is not the version the driver read (republished)."""


#: How many predictors a Python worker keeps (least recently used first out), like the
#: model cache behind Spark's ``predict_batch_udf``: a model can hold gigabytes.
CACHE_SIZE = 2

_PREDICTORS: OrderedDict[tuple[str, bool, tuple[str, ...], str, str], Predictor] = OrderedDict()
_LOCK = threading.Lock()


def get_predictor(
    model_uri: str,
    use_gpu: bool = True,
    fingerprint: str = "",
    threads: int = 0,
    engine: str = "auto",
) -> Predictor:
    """The worker's predictor for ``model_uri``, loaded on first use and then reused.

    Keyed by everything that changes it: the bundle and its version (``fingerprint``, the
    driver's ``BundleMeta.fingerprint``), whether GPUs are used, and the GPU addresses
    Spark gave this task (a reused worker given another GPU gets a predictor placed on
    it), and the engine. ``threads`` sizes TensorFlow's thread pools when this load is the
    process's first (see ``tf_thread_count``). A loaded bundle whose fingerprint differs
    from the driver's raises ``BundleChanged``: rows never mix one version's labels with
    another's.
    """
    gpus = task_gpu_addresses() if use_gpu else ()
    key = (model_uri, use_gpu, gpus, fingerprint, engine)
    with _LOCK:
        if key in _PREDICTORS:
            _PREDICTORS.move_to_end(key)
            return _PREDICTORS[key]
        predictor = load_predictor(model_uri, use_gpu, gpus, threads, engine)
        if fingerprint and predictor.meta.fingerprint != fingerprint:
            raise BundleChanged(
                f"model bundle {model_uri} is {predictor.meta.model_version} "
                f"({predictor.meta.fingerprint}), not the version the driver read "
                f"({fingerprint}): republished during the run?"
            )
        _PREDICTORS[key] = predictor
        while len(_PREDICTORS) > CACHE_SIZE:
            _PREDICTORS.popitem(last=False)
        return predictor


def load_predictor(
    model_uri: str,
    use_gpu: bool = True,
    gpus: tuple[str, ...] | None = None,
    threads: int = 0,
    engine: str = "auto",
) -> Predictor:
    """The bundle's predictor: on a GPU through TensorFlow; on CPUs, with ``engine`` auto,
    through the bundle's LiteRT model when it has one (about twice as fast), else
    TensorFlow; ``tensorflow`` always runs the SavedModel."""
    if gpus is None:
        gpus = task_gpu_addresses() if use_gpu else ()
    threads = tf_thread_count(threads)
    local = materialize_bundle(model_uri)
    meta = read_meta(str(local))
    if engine == "auto" and not (use_gpu and gpus) and meta.lite_model:
        # A CPU task: LiteRT's interpreter, and TensorFlow is never imported (where the
        # ai-edge-litert package is installed): less memory, a faster first batch.
        lite = load_lite(local, meta, threads)
        if lite is not None:
            log.info("loaded model %s %s on cpu (LiteRT)", meta.model_name, meta.model_version)
            return Predictor(meta, lite)
    tf = import_tensorflow(gpus, use_gpu, threads)
    device = None  # no GPU from Spark: TensorFlow's choice (a visible GPU, else the CPU)
    if use_gpu and gpus:
        seen = len(tf.config.list_physical_devices("GPU"))
        device = gpu_device(gpus, os.environ.get("CUDA_VISIBLE_DEVICES"), seen)
    with tf.device(device) if device else contextlib.nullcontext():
        loaded = tf.saved_model.load(str(local / SAVED_MODEL_DIR))
    endpoint = getattr(loaded, meta.endpoint)
    scale = meta.preprocessing.scale

    @tf.function(
        input_signature=[tf.TensorSpec([None, *meta.preprocessing.shape], tf.uint8)],
        jit_compile=False,
    )
    def serve(pixels: Any) -> Any:
        out = endpoint(scale_tf(pixels, scale))
        return next(iter(out.values())) if isinstance(out, dict) else out

    def predict(x: np.ndarray) -> np.ndarray:
        if x.dtype != np.uint8:
            raise TypeError(f"the model takes uint8 pixels, not {x.dtype}")
        with tf.device(device) if device else contextlib.nullcontext():
            return np.asarray(serve(tf.constant(x)))

    predict.__dict__["_keep_alive"] = loaded  # the endpoint needs its object graph
    log.info("loaded model %s %s on %s", meta.model_name, meta.model_version, device or "cpu")
    return Predictor(meta, predict)


def load_lite(local: Path, meta: BundleMeta, threads: int) -> PredictFn | None:
    """The bundle's LiteRT predict function, or None when its file does not match."""
    from prodclf.model.lite import LitePredict

    assert meta.lite_model is not None
    data = (local / meta.lite_model["file"]).read_bytes()
    if hashlib.sha256(data).hexdigest() != meta.lite_model["sha256"]:
        log.warning("%s does not match its sha256 in bundle.json: running the SavedModel", local)
        return None
    return LitePredict(data, threads or (os.cpu_count() or 1))


def tf_device(gpus: tuple[str, ...], visible: str | None) -> str | None:
    """The TensorFlow device for the task's first GPU address, or None (TF's choice).

    TensorFlow numbers the GPUs it sees from 0 in ``CUDA_VISIBLE_DEVICES`` order; Spark's
    addresses are the GPUs' ids, which are positions in that list when it is set.
    """
    if not gpus:
        return None
    address = gpus[0]
    if visible:
        ids = [v.strip() for v in visible.split(",")]
        if address in ids:
            return f"/GPU:{ids.index(address)}"
    return f"/GPU:{address}" if address.isdigit() else None


def gpu_device(gpus: tuple[str, ...], visible: str | None, seen: int) -> str:
    """The TensorFlow device of the GPU Spark gave the task; ``GpuUnavailable`` when
    TensorFlow (which sees ``seen`` GPUs) cannot place the model on it.

    Without this check TensorFlow's soft placement would run the model on the CPU.
    """
    device = tf_device(gpus, visible)
    if device is None and seen == 1:
        device = "/GPU:0"  # the worker's only GPU is the task's, whatever its address
    if device is not None and int(device.rsplit(":", 1)[1]) < seen:
        return device
    shown = f" of CUDA_VISIBLE_DEVICES={visible}" if visible else ""
    if seen == 0:
        problem = (
            f"TensorFlow in the worker sees no GPU{shown}: the executors need "
            "tensorflow[and-cuda] and an NVIDIA driver (infra/package.sh --gpu)"
        )
    elif device is None:
        problem = (
            f"TensorFlow sees {seen} GPUs and that address is not one of their indices: the "
            "discovery script must report indices (as infra/spark/gpu-discovery.sh does) or "
            "CUDA_VISIBLE_DEVICES list the address"
        )
    else:
        problem = (
            f"TensorFlow in the worker sees {seen} GPU(s){shown}, so no {device}: the "
            "discovery script must number the GPUs as the worker's CUDA does"
        )
    raise GpuUnavailable(
        f"Spark gave this task GPU {','.join(gpus)}, but {problem}; or set inference.use_gpu: false"
    )


def tf_thread_count(threads: int) -> int:
    """TensorFlow's pool size for this worker: ``threads``, or with 0 the task's CPUs.

    Spark runs ``cores / spark.task.cpus`` tasks (so Python workers) per executor at once;
    each TensorFlow sizing its pools to every core of the machine oversubscribes the
    cores, and its idle pool threads spin on them. Outside a task, 0: TensorFlow's default.
    """
    if threads > 0:
        return threads
    try:
        from pyspark import TaskContext
    except ImportError:  # pragma: no cover - pyspark is a dependency
        return 0
    ctx = TaskContext.get()
    return int(ctx.cpus()) if ctx is not None else 0


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
    """The CUDA_VISIBLE_DEVICES value for this worker, or None to leave it as it is.

    With GPUs, every GPU of the executor stays visible: a Python worker is reused across
    tasks that Spark may give different GPUs, and TensorFlow fixes its devices at import.
    Each predictor is placed on its task's GPU instead (``tf_device``), with memory
    growth on, so the other GPUs are not filled.
    """
    if not use_gpu:
        return ""
    return None


def import_tensorflow(gpus: tuple[str, ...] = (), use_gpu: bool = True, threads: int = 0) -> Any:
    """Import TensorFlow (GPUs hidden unless used) with memory growth on.

    ``threads`` > 0 sizes its intra- and inter-op pools, which only the first
    initialisation in a process can do (a reused worker keeps its first size).
    """
    env = visible_devices_env(gpus, use_gpu)
    if env is not None and "tensorflow" not in _imported():
        os.environ["CUDA_VISIBLE_DEVICES"] = env
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    if threads > 0:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(threads)
        except RuntimeError:  # already initialised in this process: its pools stay
            log.debug("TensorFlow already initialised; thread pools left as they are")

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
    # One download per host: the first worker takes the lock file, the others wait for it
    # and find the bundle in place. A staging folder is removed whatever happens.
    with open(root / f".{digest}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (cache / "bundle.json").exists():
            return cache
        staging = Path(tempfile.mkdtemp(prefix=f".{digest}-", dir=root))
        try:
            objects.copy_tree_to_local(model_uri, staging)
            if (staging / "bundle.json").read_bytes() != meta_bytes:
                raise BundleChanged(f"model bundle {model_uri} changed while it was downloaded")
            os.replace(staging, cache)  # atomic: readers never see a half-copied bundle
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return cache
