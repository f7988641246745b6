"""The benchmark's variants, each built once; the object warmed is the object timed.

A ``Peer`` has ``warm()`` (run on a small catalog: Python workers started, model loaded) and
``run()`` (the timed job over the whole catalog, ending in a ``noop`` write or a full
materialisation). Driver work (listing with ``binaryFile``, building DataFrames) happens when
the peer is built, outside any timer.

* ``prodclf``: ``tag_products`` with ``tag_images_udf``, the tag job's own path.
* ``predict_batch_udf/<decoder>``: Spark's ``pyspark.ml.functions.predict_batch_udf``, fed the
  image bytes (the binary column of ``binaryFile``, ``s3a://`` on S3), decoding to uint8 inside
  ``predict_fn`` as its docs allow for scalar columns. Built once: one ``predict_batch_udf``
  object (one model cache key), warmed and timed. (A pandas UDF fetching the bytes would be a
  second Python operator, so a second Python worker per task, which the warm-up cannot be sure
  to reach: Spark hands out idle workers first in, first out.)
* ``databricks/<decoder>``: the Databricks "distributed model inference" reference:
  ``binaryFile`` (``s3a://`` on S3) and an iterator pandas UDF that decodes with PIL and runs
  the model; the model is kept per Python worker (the reference loads it once per task), so the
  warm-up carries over to the timed run.
* ``ray/<decoder>``: Ray Data, in its own environment (see ``ray_peer.py``).

``<decoder>`` is ``documented`` (full decode, BICUBIC) or ``prodclf`` (``decode_to_uint8``).
``load_log``: a file each peer's model loader appends its process id to (tests count loads).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

BATCH = 64
#: Warm-up rounds. Spark hands a task the Python worker idle the longest (a FIFO queue), and
#: the queue holds every worker any earlier job started: two rounds of ``cores`` tasks reach
#: workers the first round did not, so the timed run finds the model loaded in each.
WARM_ROUNDS = 2
HERE = Path(__file__).resolve().parent


@dataclass
class Peer:
    name: str
    warm: Callable[[], Any]
    run: Callable[[], Any]
    close: Callable[[], None] = lambda: None
    #: what a reader should know about how this variant was run
    notes: dict[str, Any] = field(default_factory=dict)


def ship_modules(spark: Any) -> None:
    """Put this benchmark's modules on the Python workers' path (they are not installed): the
    UDFs refer to them by name, so their module state (models, clients) lives per worker."""
    for name in ("decoders.py", "peers.py"):
        spark.sparkContext.addPyFile(str(HERE / name))


def noop(df: Any) -> None:
    df.write.format("noop").mode("overwrite").save()


def warmer(df: Any) -> Callable[[], None]:
    def warm() -> None:
        for _ in range(WARM_ROUNDS):
            noop(df)

    return warm


def _log_load(load_log: str | None) -> None:
    if load_log:
        with open(load_log, "a") as fh:
            fh.write(f"{os.getpid()}\n")


def _load_saved_model(bundle_dir: str, load_log: str | None) -> Any:
    import tensorflow as tf

    _log_load(load_log)
    return tf.saved_model.load(os.path.join(bundle_dir, "saved_model"))


def _run_model(loaded: Any, pixels: np.ndarray) -> np.ndarray:
    import tensorflow as tf
    from decoders import to_model_input

    out = [
        np.asarray(loaded.serve(tf.constant(to_model_input(pixels[i : i + BATCH]))))
        for i in range(0, len(pixels), BATCH)
    ]
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


# --- prodclf ----------------------------------------------------------------------------------


def prodclf_peer(
    spark: Any,
    base: Any,
    warm: Any,
    bundle: str,
    partitions: int,
    use_gpu: bool = False,
    engine: str = "auto",
    direct_get: bool = True,
) -> Peer:
    """The tag job's path; ``engine`` auto runs the bundle's LiteRT model on CPUs.

    ``direct_get`` False: every GET through boto3's ``get_object`` (``prodclf/boto3``).
    """
    from prodclf.config import InferenceConfig, StorageConfig
    from prodclf.model.bundle import read_meta
    from prodclf.tagging.transforms import RunInfo, tag_products
    from prodclf.tagging.udf import tag_images_udf

    meta = read_meta(bundle)
    udf = tag_images_udf(
        bundle,
        StorageConfig(direct_get=direct_get),
        InferenceConfig(use_gpu=use_gpu, engine=engine),
        meta.fingerprint,
    )
    now = datetime.now(timezone.utc)
    run = RunInfo("bench", now.date(), meta.model_name, meta.model_version, now)

    def job(df: Any) -> Any:
        return tag_products(df, udf=udf, run=run, review_threshold=0.5, partitions=partitions)

    timed = job(base)
    warmed = job(warm)
    name = "prodclf" if engine == "auto" else f"prodclf/{engine}"
    name += "" if direct_get else "/boto3"
    notes = {"decoder": "prodclf", "engine": engine, "fetch": "direct" if direct_get else "boto3"}
    return Peer(name, warmer(warmed), lambda: noop(timed), notes=notes)


# --- predict_batch_udf ------------------------------------------------------------------------


def predict_batch_peer(
    spark: Any,
    paths: list[str],
    warm_paths: list[str],
    bundle_dir: str,
    partitions: int,
    decoder_name: str,
    load_log: str | None = None,
) -> Peer:
    """``paths``: what ``binaryFile`` reads (``s3a://`` or local paths), listed here, untimed."""
    from pyspark.ml.functions import predict_batch_udf
    from pyspark.sql import functions as F
    from pyspark.sql.types import ArrayType, FloatType

    def make_predict_fn() -> Callable[[np.ndarray], np.ndarray]:
        from decoders import decoder

        loaded = _load_saved_model(bundle_dir, load_log)
        decode = decoder(decoder_name)

        def predict(blobs: np.ndarray) -> np.ndarray:
            pixels = np.stack([decode(b) for b in blobs])
            return _run_model(loaded, pixels)

        return predict

    classify = predict_batch_udf(
        make_predict_fn, return_type=ArrayType(FloatType()), batch_size=BATCH
    )

    def job(files: list[str]) -> Any:
        images = spark.read.format("binaryFile").load(files).repartition(partitions)
        return images.select("path", F.array_max(classify("content")).alias("confidence"))

    timed, warmed = job(paths), job(warm_paths)  # listing happens here, on the driver
    return Peer(
        f"predict_batch_udf/{decoder_name}",
        warmer(warmed),
        lambda: noop(timed),
        notes={"decoder": decoder_name, "fetch": "binaryFile"},
    )


# --- Databricks reference ------------------------------------------------------------------


#: the Databricks peer's models, per Python worker
MODELS: dict[str, Any] = {}


def databricks_peer(
    spark: Any,
    paths: list[str],
    warm_paths: list[str],
    bundle_dir: str,
    partitions: int,
    decoder_name: str,
    load_log: str | None = None,
) -> Peer:
    """``paths``: what ``binaryFile`` reads (``s3a://`` or local paths), listed here, untimed."""
    from pyspark.sql.functions import col, pandas_udf
    from pyspark.sql.types import ArrayType, FloatType

    @pandas_udf(ArrayType(FloatType()))  # type: ignore[call-overload]
    def predict(content_series_iter: Iterator[pd.Series]) -> Iterator[pd.Series]:
        import peers  # the worker's module: its MODELS outlive the task
        from decoders import decoder

        if bundle_dir not in peers.MODELS:
            peers.MODELS[bundle_dir] = _load_saved_model(bundle_dir, load_log)
        loaded = peers.MODELS[bundle_dir]
        decode = decoder(decoder_name)
        for content_series in content_series_iter:
            pixels = np.stack([decode(b) for b in content_series])
            yield pd.Series(list(_run_model(loaded, pixels)))

    def job(files: list[str]) -> Any:
        images = spark.read.format("binaryFile").load(files).repartition(partitions)
        return images.select(col("path"), predict(col("content")).alias("probs"))

    timed, warmed = job(paths), job(warm_paths)  # listing happens here, on the driver
    return Peer(
        f"databricks/{decoder_name}",
        warmer(warmed),
        lambda: noop(timed),
        notes={"decoder": decoder_name, "fetch": "binaryFile"},
    )


# --- Ray Data ------------------------------------------------------------------------------


class RayPeerProcess:
    """``ray_peer.py`` under the Ray environment's Python, kept up across repetitions."""

    def __init__(self, python: str, config: dict[str, Any], env: dict[str, str], log: Path) -> None:
        root = str(HERE.parent)
        pythonpath = os.pathsep.join([str(HERE), root])
        self.log = log
        with open(log, "a") as err:  # Ray's own logging, kept out of the results' output
            self.proc = subprocess.Popen(
                [python, str(HERE / "ray_peer.py"), json.dumps(config)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                env={**env, "PYTHONPATH": pythonpath},
                text=True,
            )
        self.ready = self._read()

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("{"):
                answer: dict[str, Any] = json.loads(line)
                if "error" in answer:
                    raise RuntimeError(f"Ray peer: {answer['error']} (log: {self.log})")
                return answer
        raise RuntimeError(f"the Ray peer exited ({self.proc.wait()}); log: {self.log}")

    def ask(self, command: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(RuntimeError, OSError):
                self.ask({"cmd": "quit"})
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def ray_peers(process: RayPeerProcess, decoders: list[str]) -> list[Peer]:
    peers = []
    for name in decoders:

        def warm(name: str = name) -> Any:
            # The second warm run is the start-up cost the timed runs subtract (see ray_peer),
            # measured once Ray's worker processes exist; the first one starts them.
            return [
                process.ask({"cmd": "run", "decoder": name, "warm": True})
                for _ in range(WARM_ROUNDS)
            ]

        def run(name: str = name) -> Any:
            return process.ask({"cmd": "run", "decoder": name, "warm": False})

        notes = {"decoder": name, "fetch": "boto3 in the actor, 16 threads", **process.ready}
        peers.append(Peer(f"ray/{name}", warm, run, notes=notes))
    return peers
