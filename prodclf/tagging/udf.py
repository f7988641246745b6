"""Worker-side tagging, shaped like Spark's ``predict_batch_udf``.

The UDF closure carries only the model URI and two small frozen configs; on the worker,
``prodclf.model.runtime.get_predictor`` loads the model once per Python worker process.
Nothing heavy is pickled on the driver, and importing this module does not import
TensorFlow.

Per Arrow batch: references are checked, objects are fetched and decoded concurrently in
a thread pool (I/O releases the GIL, so does Pillow's decoder), the next batch is
prepared while the model runs on the current one, and the model always sees fixed-size
batches (the tail is padded) so its graph is traced once.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pandas as pd

from prodclf import requirements
from prodclf.config import InferenceConfig, StorageConfig
from prodclf.errors import ErrorCode, RowError, VersionSkew
from prodclf.images import PreparedBatch, collect_batch, start_batch
from prodclf.model.bundle import BundleMeta, calibrate
from prodclf.model.runtime import BundleChanged, PredictFn, Predictor, get_predictor
from prodclf.schemas import PREDICTION, STATUS_ERROR, STATUS_OK

log = logging.getLogger(__name__)


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


def predict_isolating(
    predict: PredictFn, x: np.ndarray, batch_size: int, classes: int, logits: bool = False
) -> tuple[np.ndarray, dict[int, str]]:
    """Probabilities for the rows of ``x``, and why the model failed on the others.

    Each model call is a fixed-size batch (``predict_fixed_batches``). A call that raises
    or answers with the wrong shape is retried on each half of its rows, recursively,
    until the rows the model fails on are isolated: only those get a message; every other
    row gets its probabilities. When one whole chunk fails row by row, the model is
    broken rather than the rows, and later failing chunks are not bisected again.
    """
    n = len(x)
    probs = np.full((n, classes), np.nan, dtype=np.float32)
    failed: dict[int, str] = {}
    broken = False

    def call(lo: int, hi: int) -> np.ndarray:
        out = predict_fixed_batches(predict, x[lo:hi], batch_size)
        _check_output(out, hi - lo, classes)
        return _softmax(out) if logits else out

    def run(lo: int, hi: int) -> int:
        """Fill rows lo..hi; returns how many of them failed."""
        try:
            probs[lo:hi] = call(lo, hi)
            return 0
        except Exception as exc:
            message = f"{type(exc).__name__}: {exc}"[:300]
            if hi - lo == 1 or broken:
                log.warning("model failed on %d row(s): %s", hi - lo, message)
                failed.update(dict.fromkeys(range(lo, hi), message))
                return hi - lo
            mid = (lo + hi) // 2
            return run(lo, mid) + run(mid, hi)

    for start in range(0, n, batch_size):
        end = min(start + batch_size, n)
        if run(start, end) == end - start > 1:
            broken = True
    return probs, failed


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
        probs, failed = predict_isolating(
            predict,
            batch.pixels,  # uint8: the predictor scales them in the model's graph
            inference.model_batch_size,
            meta.num_classes,
            logits=meta.output == "logits",
        )
        probs = calibrate(probs, meta)  # the bundle's temperature; failed rows stay NaN
        for i, message in failed.items():
            errors[int(batch.ok_rows[i])] = RowError(ErrorCode.INFERENCE_FAILED, message)
        k = min(inference.top_k, meta.num_classes)
        top = np.argsort(-np.nan_to_num(probs, nan=-1.0), axis=1, kind="stable")[:, :k]
        names = [lb.name for lb in meta.labels]
        for i, (row, p, idx) in enumerate(zip(batch.ok_rows.tolist(), probs, top, strict=True)):
            if i not in failed:
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
    """Tag a stream of Arrow batches, fetching and decoding batch i+1 while the model runs
    on batch i (two batches in flight at most)."""
    spec = predictor.meta.preprocessing
    with ThreadPoolExecutor(storage.fetch_concurrency, "prodclf-fetch") as pool:
        try:
            pending = None
            for uris in batches:
                started = start_batch(uris, spec, storage, pool)
                if pending is not None:
                    batch = collect_batch(pending, spec)
                    yield finish_batch(batch, predictor.predict, predictor.meta, inference)
                pending = started
            if pending is not None:
                batch = collect_batch(pending, spec)
                yield finish_batch(batch, predictor.predict, predictor.meta, inference)
        finally:
            # A task that stops early (failed, killed, or a limit reached downstream) does
            # not go on fetching rows nobody will read.
            pool.shutdown(cancel_futures=True)


# --- the UDF ---------------------------------------------------------------------------


def error_frame(size: int, err: RowError) -> pd.DataFrame:
    """``size`` rows, all with the same error."""
    frame = pd.DataFrame({name: [None] * size for name in PREDICTION.fieldNames()})
    frame["confidence"] = np.full(size, np.nan, dtype=np.float32)
    frame["status"] = STATUS_ERROR
    frame["error_code"] = err.code.value
    frame["error_message"] = err.message
    return frame


def tag_images_udf(
    model_uri: str, storage: StorageConfig, inference: InferenceConfig, fingerprint: str = ""
) -> Any:
    """A pandas iterator UDF: ``image_uri`` column -> ``PREDICTION`` struct column.

    ``fingerprint`` is the driver's ``BundleMeta.fingerprint``: a worker that loads another
    version of the bundle (republished meanwhile) tags none of its rows with it; they
    become ``inference_failed`` rows, which the run's error-rate check then judges. A
    worker with other prodclf code than the driver's tags nothing: ``VersionSkew``.
    """
    from pyspark.sql.functions import pandas_udf

    driver_code = requirements.code_identity()

    def tag(uris: Iterator[pd.Series]) -> Iterator[pd.DataFrame]:
        worker_code = requirements.code_identity()
        if requirements.skew(driver_code, worker_code):
            raise VersionSkew(
                f"the executors run prodclf {worker_code}, the driver {driver_code}: "
                "ship the executors an environment built from the driver's prodclf "
                "(infra/package.sh)"
            )
        try:
            predictor = get_predictor(
                model_uri, inference.use_gpu, fingerprint, inference.tf_threads, inference.engine
            )
        except BundleChanged as exc:
            err = RowError(ErrorCode.INFERENCE_FAILED, str(exc)[:300])
            for batch in uris:
                yield error_frame(len(batch), err)
            return
        yield from tag_batches(uris, predictor, storage, inference)

    # Non-deterministic so the optimizer never duplicates the call per struct field.
    return pandas_udf(tag, PREDICTION).asNondeterministic()  # type: ignore[call-overload]
