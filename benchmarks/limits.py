"""The machine's limit for this job, measured in the same run on the same cores.

* D: decode rate with every core busy: a process pool (one process per core) decoding the
  catalog's own JPEG bytes with the best decoder available (prodclf's draft decoder); the
  documented full decode is measured too, for reference.
* M: model-only rate: the bundle's SavedModel on uint8 batches converted to float, in one
  process with TensorFlow's default thread pools, and in one process per core with one
  thread each; M is the better of the two (both reported). With ``gpu`` the single process
  runs on the GPU.
* M_lite: the same on the bundle's LiteRT model (``model.tflite``, uint8 in, XNNPACK), which
  prodclf's CPU workers run (``inference.engine: auto``); LF_lite uses it instead of M.
* F: the client-side CPU cost of fetching an object with boto3 (GETs of the catalog's objects
  through the latency proxy, concurrent), in CPU seconds per object of a fresh process that
  does nothing else; the store runs in another process and its CPU is not counted.
  F = cores / that cost.
* LF = 1 / (1/D + 1/M + 1/F): the images per second the cores allow when each image needs
  one decode, one model row and one fetch and the three are spread perfectly over the cores.

The bench measures all of it twice, before and after the variants, and keeps each rate's
best reading (``combine``): whatever else the machine does (a shared host, a slow moment)
only lowers a reading, and a limit read low would flatter every E/LF.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any

import numpy as np


def limit_rate(d: float, m: float, f: float | None) -> float:
    """LF = 1 / (1/D + 1/M + 1/F); F absent (``file://``) counts as free."""
    if min(d, m) <= 0 or (f is not None and f <= 0):
        raise ValueError("rates must be positive")
    inv = 1.0 / d + 1.0 / m + (1.0 / f if f else 0.0)
    return 1.0 / inv


# --- D: decoding in a process pool ----------------------------------------------------------

_BLOBS: list[bytes] = []
_DECODER = "prodclf"


def _init_decoder(blobs: list[bytes], name: str) -> None:
    global _BLOBS, _DECODER
    _BLOBS, _DECODER = blobs, name
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def _decode_range(bounds: tuple[int, int]) -> int:
    from decoders import decoder

    fn = decoder(_DECODER)
    for i in range(*bounds):
        fn(_BLOBS[i % len(_BLOBS)])
    return bounds[1] - bounds[0]


def decode_rate(blobs: list[bytes], name: str, procs: int, images: int) -> float:
    """Images per second decoded by ``procs`` processes (the blobs are shipped once, untimed)."""
    ctx = mp.get_context("spawn")
    step = 16
    chunks = [(i, min(i + step, images)) for i in range(0, images, step)]
    with ProcessPoolExecutor(procs, ctx, _init_decoder, (blobs, name)) as pool:
        list(pool.map(_decode_range, [(0, 2)] * procs))  # processes up, decoder imported
        t0 = time.perf_counter()
        done = sum(pool.map(_decode_range, chunks))
        return done / (time.perf_counter() - t0)


# --- M: the model alone -------------------------------------------------------------------


def _model_worker(
    saved_model: str, threads: int, gpu: bool, batch: int, batches: int, start: Any, out: Any
) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if not gpu:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    import tensorflow as tf

    if threads:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    from decoders import to_model_input

    loaded = tf.saved_model.load(saved_model)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (batch, 224, 224, 3), dtype=np.uint8)
    for _ in range(3):  # trace and warm
        np.asarray(loaded.serve(tf.constant(to_model_input(x))))
    start.wait()
    t0 = time.perf_counter()
    for _ in range(batches):
        np.asarray(loaded.serve(tf.constant(to_model_input(x))))
    out.put(time.perf_counter() - t0)


def _rows_per_second(
    target: Callable[..., None], args: tuple[Any, ...], procs: int, images: int, batch: int
) -> float:
    """Rows per second of ``procs`` spawned processes each running ``target(*args, batch,
    batches, start, out)``: timed from a common start (models loaded and warmed) until all
    have put their time on ``out``."""
    ctx = mp.get_context("spawn")
    batches = max(1, -(-images // (batch * procs)))
    start = ctx.Barrier(procs + 1)
    out = ctx.Queue()
    workers = [
        ctx.Process(target=target, args=(*args, batch, batches, start, out)) for _ in range(procs)
    ]
    for w in workers:
        w.start()
    start.wait(timeout=600)
    t0 = time.perf_counter()
    for _ in workers:
        out.get(timeout=1800)
    wall = time.perf_counter() - t0
    for w in workers:
        w.join()
    return procs * batches * batch / wall


def model_rate(
    saved_model: str, procs: int, threads: int, images: int, batch: int = 64, gpu: bool = False
) -> float:
    """Rows per second of ``procs`` processes each running the SavedModel on uint8->float
    batches of ``batch`` (``threads`` 0: TensorFlow's default thread pools)."""
    return _rows_per_second(_model_worker, (saved_model, threads, gpu), procs, images, batch)


def _lite_worker(
    lite_model: str, threads: int, batch: int, batches: int, start: Any, out: Any
) -> None:
    from prodclf.model.lite import LitePredict

    with open(lite_model, "rb") as fh:
        predict = LitePredict(fh.read(), threads)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (batch, 224, 224, 3), dtype=np.uint8)
    for _ in range(3):
        predict(x)
    start.wait()
    t0 = time.perf_counter()
    for _ in range(batches):
        predict(x)
    out.put(time.perf_counter() - t0)


def lite_rate(lite_model: str, procs: int, threads: int, images: int, batch: int = 64) -> float:
    """Rows per second of ``procs`` processes each running the LiteRT model on uint8 batches."""
    return _rows_per_second(_lite_worker, (lite_model, threads), procs, images, batch)


# --- F: the client's CPU per fetched object -------------------------------------------------


def fetch_cost(
    uris: list[str], endpoint: str, threads: int = 16, via: str = "boto3"
) -> dict[str, float]:
    """GETs of ``uris`` (``s3://``) from ``threads`` threads: CPU s/object, wall rate.

    ``via``: ``boto3`` (``get_object``, as the issue defines F) or ``prodclf`` (the tag job's
    own fetch, ``objects.fetch_image_bytes``: its direct first GET, ``prodclf.storage.s3get``).
    """
    from s3serve import aws_env, s3_client

    from prodclf.config import StorageConfig
    from prodclf.storage import objects
    from prodclf.storage.uris import parse_uri

    if via not in ("boto3", "prodclf"):
        raise ValueError(f"via must be boto3 or prodclf, not {via!r}")
    client = s3_client(endpoint, pool=threads) if via == "boto3" else None
    refs = [u[len("s3://") :].split("/", 1) for u in uris]
    cfg = StorageConfig(fetch_concurrency=threads)

    def get(ref: list[str]) -> int:
        if client is None:
            return len(objects.fetch_image_bytes(parse_uri(f"s3://{ref[0]}/{ref[1]}"), cfg))
        return len(client.get_object(Bucket=ref[0], Key=ref[1])["Body"].read())

    with aws_env(endpoint):
        objects.s3_client.cache_clear()
        try:
            return _timed_gets(get, refs, threads)
        finally:
            objects.s3_client.cache_clear()


def fetch_cost_alone(uris: list[str], endpoint: str, via: str = "boto3") -> dict[str, float]:
    """``fetch_cost`` in a fresh process of its own.

    Its CPU is the whole process's. In the harness's own process it also counted whatever
    that process carries (its threads, a heap holding the variants' leftovers for the
    garbage collector to walk): there, the reading after the variants measured twice the
    CPU per object of the one before them.
    """
    ctx = mp.get_context("spawn")
    with ProcessPoolExecutor(1, ctx) as pool:
        return pool.submit(fetch_cost, uris, endpoint, 16, via).result()


def _timed_gets(get: Any, refs: list[list[str]], threads: int) -> dict[str, float]:
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(get, refs[: threads * 2]))  # connections open, botocore loaded
        cpu0, t0 = time.process_time(), time.perf_counter()
        nbytes = sum(pool.map(get, refs))
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
    return {
        "cpu_s_per_object": cpu / len(refs),
        "wall_objects_per_s": len(refs) / wall,
        "mean_object_bytes": nbytes / len(refs),
    }


def measure(
    blobs: list[bytes],
    saved_model: str,
    cores: int,
    images: int,
    s3: tuple[list[str], str] | None,
    gpu: bool = False,
    lite_model: str | None = None,
) -> dict[str, Any]:
    """D, M, F and LF on ``cores`` cores (``s3``: the catalog's URIs and the proxy endpoint)."""
    d = decode_rate(blobs, "prodclf", cores, images)
    d_doc = decode_rate(blobs, "documented", cores, images)
    m_default = model_rate(saved_model, 1, 0, images, gpu=gpu)
    m_procs = model_rate(saved_model, cores, 1, images) if not gpu else None
    m = max(m_default, m_procs or 0.0)
    out: dict[str, Any] = {
        "cores": cores,
        "D": d,
        "D_documented_decoder": d_doc,
        "M": m,
        "M_one_process_default_threads": m_default,
        "M_one_process_per_core_one_thread": m_procs,
        "M_device": "gpu" if gpu else "cpu",
        "F": None,
    }
    if s3 is not None:
        uris, endpoint = s3
        cost = fetch_cost_alone(uris[:images], endpoint)
        out["fetch"] = cost
        out["F"] = cores / cost["cpu_s_per_object"]
        own = fetch_cost_alone(uris[:images], endpoint, via="prodclf")
        out["fetch_prodclf"] = own
        out["F_prodclf"] = cores / own["cpu_s_per_object"]
    out["LF"] = limit_rate(d, m, out["F"])
    if lite_model and not gpu:
        one = lite_rate(lite_model, 1, cores, images)
        per_core = lite_rate(lite_model, cores, 1, images)
        out["M_lite"] = max(one, per_core)
        out["M_lite_one_process"] = one
        out["M_lite_one_process_per_core"] = per_core
        out["LF_lite"] = limit_rate(d, out["M_lite"], out["F"])
        if out.get("F_prodclf"):
            # The same limit with prodclf's own fetch in place of boto3's get_object.
            out["LF_lite_prodclf_fetch"] = limit_rate(d, out["M_lite"], out["F_prodclf"])
    return out


#: The rates ``measure`` reads; ``combine`` keeps each one's best reading.
RATES = (
    "D",
    "D_documented_decoder",
    "M",
    "M_one_process_default_threads",
    "M_one_process_per_core_one_thread",
    "F",
    "F_prodclf",
    "M_lite",
    "M_lite_one_process",
    "M_lite_one_process_per_core",
)


def combine(readings: list[dict[str, Any]]) -> dict[str, Any]:
    """One limit from several ``measure`` readings: each rate at its best over the readings,
    the limits (LF, LF_lite, ...) computed again from those; the readings are kept whole
    (the other entries, such as the fetch details, are the first reading's)."""
    if not readings:
        raise ValueError("no readings to combine")
    out = dict(readings[0])
    for key in RATES:
        values = [r[key] for r in readings if r.get(key) is not None]
        if values:
            out[key] = max(values)
    out["LF"] = limit_rate(out["D"], out["M"], out["F"])
    if out.get("M_lite"):
        out["LF_lite"] = limit_rate(out["D"], out["M_lite"], out["F"])
        if out.get("F_prodclf"):
            out["LF_lite_prodclf_fetch"] = limit_rate(out["D"], out["M_lite"], out["F_prodclf"])
    out["readings"] = readings
    return out
