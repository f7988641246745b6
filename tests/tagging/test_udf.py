"""Worker-side inference without Spark: batching, error rows, top-k, device selection."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from conftest import COLORS, jpeg_bytes, png_bytes

from prodclf import requirements
from prodclf.config import InferenceConfig, StorageConfig
from prodclf.errors import ErrorCode, GpuUnavailable, RowError, VersionSkew
from prodclf.images import PreparedBatch, PreprocessSpec, prepare_batch
from prodclf.model import runtime
from prodclf.model.bundle import BundleMeta, Label
from prodclf.model.runtime import (
    Predictor,
    load_predictor,
    materialize_bundle,
    tf_device,
    visible_devices_env,
)
from prodclf.schemas import PREDICTION
from prodclf.storage import objects
from prodclf.tagging import udf as udf_module
from prodclf.tagging.udf import finish_batch, predict_fixed_batches, tag_batches, tag_images_udf

pytestmark = pytest.mark.spark4


class RecordingPredict:
    """A fake model: remembers the shape of every call."""

    def __init__(self, fn: Any) -> None:
        self.fn = fn
        self.shapes: list[tuple[int, ...]] = []

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.shapes.append(x.shape)
        return self.fn(x)


# --- fixed-size model batches ----------------------------------------------------------


@pytest.mark.parametrize(("n", "calls"), [(1, 1), (4, 1), (5, 2), (9, 3), (12, 3)])
def test_predict_fixed_batches_always_calls_with_batch_size_rows(n: int, calls: int) -> None:
    x = np.arange(1, n + 1, dtype=np.float32).reshape(n, 1, 1, 1)
    predict = RecordingPredict(lambda b: b.reshape(len(b), 1) * 10)
    out = predict_fixed_batches(predict, x, 4)
    assert predict.shapes == [(4, 1, 1, 1)] * calls
    np.testing.assert_array_equal(out, np.arange(1, n + 1).reshape(n, 1) * 10)


def test_predict_fixed_batches_pads_with_zeros() -> None:
    seen: list[np.ndarray] = []

    def predict(b: np.ndarray) -> np.ndarray:
        seen.append(b.copy())
        return b.reshape(len(b), -1)

    predict_fixed_batches(predict, np.ones((3, 2, 2, 1), dtype=np.float32), 4)
    assert seen[0][:3].sum() == 12
    assert seen[0][3].sum() == 0


# --- one batch: errors, top-k, order -------------------------------------------------


#: "green" has no taxonomy path (a bundle trained without a taxonomy): its rows get null.
LABELS = (
    Label("red", "1001", "Colours > Red"),
    Label("blue", "1002", "Colours > Blue"),
    Label("green", "1003"),
)


def meta(output: str = "probabilities", scale: str = "raw") -> BundleMeta:
    return BundleMeta(
        model_name="fake",
        model_version="7",
        labels=LABELS,
        preprocessing=PreprocessSpec(1, 1, "rgb", scale),
        output=output,
    )


def normalise(x: np.ndarray) -> np.ndarray:
    """A fake model whose scores are the pixel's channel shares (padding rows: uniform)."""
    flat = x.reshape(len(x), 3).astype(np.float64) + 1e-9
    return (flat / flat.sum(axis=1, keepdims=True)).astype(np.float32)


def batch_of(rows: list[tuple[int, int, int] | RowError]) -> PreparedBatch:
    ok = [i for i, r in enumerate(rows) if not isinstance(r, RowError)]
    pixels = np.array([rows[i] for i in ok], dtype=np.uint8).reshape(len(ok), 1, 1, 3)
    errors = {i: r for i, r in enumerate(rows) if isinstance(r, RowError)}
    return PreparedBatch(len(rows), pixels, np.array(ok, dtype=np.int64), errors)


def outcome(df: pd.DataFrame) -> list[tuple[Any, ...]]:
    return [
        (r.status, r.error_code, r.category, r.category_id, r.top_k_categories)
        for r in df.itertuples()
    ]


MISSING = RowError(ErrorCode.NOT_FOUND, "no such object: s3://b/gone.png")
CORRUPT = RowError(ErrorCode.UNDECODABLE_IMAGE, "not an image format Pillow reads")


def test_finish_batch_tags_ok_rows_and_keeps_error_rows_in_order() -> None:
    batch = batch_of([(50, 20, 30), MISSING, (10, 70, 20), CORRUPT, (5, 5, 90)])
    predict = RecordingPredict(normalise)
    df = finish_batch(batch, predict, meta(), InferenceConfig(model_batch_size=2, top_k=2))

    assert list(df.columns) == PREDICTION.fieldNames()
    assert predict.shapes == [(2, 1, 1, 3), (2, 1, 1, 3)]
    assert outcome(df) == [
        ("ok", None, "red", "1001", ["red", "green"]),
        ("error", "not_found", None, None, None),
        ("ok", None, "blue", "1002", ["blue", "green"]),
        ("error", "undecodable_image", None, None, None),
        ("ok", None, "green", "1003", ["green", "red"]),
    ]
    assert df["error_message"].tolist() == [None, MISSING.message, None, CORRUPT.message, None]
    assert df["category_path"].tolist() == ["Colours > Red", None, "Colours > Blue", None, None]
    assert df["confidence"].dtype == np.float32
    np.testing.assert_allclose(df["confidence"], [0.5, np.nan, 0.7, np.nan, 0.9], rtol=1e-5)
    np.testing.assert_allclose(df["top_k_scores"][0], [0.5, 0.3], rtol=1e-5)
    np.testing.assert_allclose(df["top_k_scores"][2], [0.7, 0.2], rtol=1e-5)
    np.testing.assert_allclose(df["top_k_scores"][4], [0.9, 0.05], rtol=1e-5)


def test_finish_batch_hands_the_predictor_uint8_pixels() -> None:
    """Scaling is the predictor's (in the model's graph), not a float copy made here."""
    seen: list[np.ndarray] = []

    def predict(x: np.ndarray) -> np.ndarray:
        seen.append(x)
        return np.tile([0.2, 0.5, 0.3], (len(x), 1)).astype(np.float32)

    finish_batch(
        batch_of([(255, 0, 51)]), predict, meta(scale="symmetric"), InferenceConfig(top_k=1)
    )
    assert seen[0].dtype == np.uint8
    assert seen[0][0, 0, 0].tolist() == [255, 0, 51]


def test_top_k_is_capped_at_the_number_of_labels() -> None:
    df = finish_batch(batch_of([(50, 20, 30)]), normalise, meta(), InferenceConfig(top_k=10))
    assert df["top_k_categories"][0] == ["red", "green", "blue"]
    assert df["top_k_scores"][0] == sorted(df["top_k_scores"][0], reverse=True)


def test_logits_are_softmaxed() -> None:
    logits = np.array([[2.0, 0.0, 1.0]], dtype=np.float32)
    df = finish_batch(
        batch_of([(1, 2, 3)]),
        lambda x: np.repeat(logits, len(x), axis=0),
        meta(output="logits"),
        InferenceConfig(top_k=3),
    )
    e = np.exp([2.0, 0.0, 1.0])
    probs = e / e.sum()
    assert df["top_k_categories"][0] == ["red", "green", "blue"]
    np.testing.assert_allclose(df["top_k_scores"][0], probs[[0, 2, 1]], rtol=1e-5)
    assert df["confidence"][0] == pytest.approx(probs[0], rel=1e-5)


def boom(x: np.ndarray) -> np.ndarray:
    raise RuntimeError("CUDA out of memory")


@pytest.mark.parametrize(
    "predict",
    [
        boom,
        lambda x: np.zeros((len(x), 2), dtype=np.float32),  # two classes, three labels
        lambda x: np.zeros(len(x), dtype=np.float32),  # one score per row
    ],
    ids=["raises", "wrong-classes", "wrong-rank"],
)
def test_model_failure_fails_the_ok_rows_only(predict: Any) -> None:
    batch = batch_of([(1, 2, 3), MISSING, (4, 5, 6), CORRUPT])
    df = finish_batch(batch, predict, meta(), InferenceConfig(model_batch_size=4))
    assert outcome(df) == [
        ("error", "inference_failed", None, None, None),
        ("error", "not_found", None, None, None),
        ("error", "inference_failed", None, None, None),
        ("error", "undecodable_image", None, None, None),
    ]
    assert df["error_message"][1] == MISSING.message
    assert df["confidence"].isna().all()
    assert df["category_path"].isna().all()
    if predict is boom:
        assert df["error_message"][0] == "RuntimeError: CUDA out of memory"


POISON = (13, 13, 13)


def poisoned(x: np.ndarray) -> np.ndarray:
    """A model that raises on any batch holding a poison pixel (a real model's NaN, a bad
    shape in a custom op...), else behaves."""
    if (x.reshape(len(x), 3) == 13).all(axis=1).any():
        raise ValueError("non-finite activation")
    return normalise(x)


@pytest.mark.parametrize("bad_rows", [[3], [0, 7], [5, 6, 9]])
def test_a_failing_batch_is_bisected_until_only_the_bad_rows_fail(bad_rows: list[int]) -> None:
    rows: list[tuple[int, int, int] | RowError] = [(50, 20, 30)] * 10
    for i in bad_rows:
        rows[i] = POISON
    rows[1] = MISSING
    predict = RecordingPredict(poisoned)
    df = finish_batch(batch_of(rows), predict, meta(), InferenceConfig(model_batch_size=4))
    expected = ["ok"] * 10
    for i in bad_rows:
        expected[i] = "inference_failed"
    expected[1] = "not_found"
    assert [r.error_code or r.status for r in df.itertuples()] == expected
    assert df["category"][2] == "red"
    for i in bad_rows:
        assert df["error_message"][i] == "ValueError: non-finite activation"
    assert set(predict.shapes) == {(4, 1, 1, 3)}  # halves are padded to the model batch too


def test_a_model_that_always_fails_is_not_bisected_over_and_over() -> None:
    predict = RecordingPredict(boom)
    df = finish_batch(
        batch_of([(1, 2, 3)] * 16), predict, meta(), InferenceConfig(model_batch_size=4)
    )
    assert set(df["error_code"]) == {"inference_failed"}
    # The first chunk of 4 is bisected (1 + 2 + 4 calls); the model is then known broken
    # and each later chunk costs one call.
    assert len(predict.shapes) == 7 + 3


def test_an_unexpected_exception_is_internal_error_naming_its_type(
    monkeypatch: pytest.MonkeyPatch, images: dict[str, str]
) -> None:
    def fetch(ref: Any, cfg: Any) -> bytes:
        raise KeyError("a bug")

    monkeypatch.setattr(objects, "fetch_image_bytes", fetch)
    with ThreadPoolExecutor(2) as pool:
        batch = prepare_batch(
            pd.Series([images["red"]]), PreprocessSpec(4, 4), StorageConfig(), pool
        )
    err = batch.errors[0]
    assert err.code is ErrorCode.INTERNAL_ERROR and err.message == "KeyError: 'a bug'"


def test_a_batch_of_errors_never_calls_the_model() -> None:
    predict = RecordingPredict(normalise)
    df = finish_batch(batch_of([MISSING, CORRUPT]), predict, meta(), InferenceConfig())
    assert predict.shapes == []
    assert df["error_code"].tolist() == ["not_found", "undecodable_image"]


# --- references to pixels: prepare_batch and the streaming loop -------------------------


@pytest.fixture
def images(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "red.png").write_bytes(png_bytes(COLORS["red"]))
    (tmp_path / "blue.jpg").write_bytes(jpeg_bytes(COLORS["blue"]))
    (tmp_path / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    (tmp_path / "empty.png").write_bytes(b"")
    return {
        "red": f"file://{tmp_path}/red.png",
        "blue": f"file://{tmp_path}/blue.jpg",
        "corrupt": f"file://{tmp_path}/corrupt.jpg",
        "empty": f"file://{tmp_path}/empty.png",
        "missing": f"file://{tmp_path}/missing.png",
    }


def test_prepare_batch_decodes_usable_rows_and_codes_the_others(images: dict[str, str]) -> None:
    uris = pd.Series(
        [
            images["red"],
            None,
            images["missing"],
            "https://cdn.example.com/x.png",
            images["blue"],
            images["corrupt"],
            "s3://other-bucket/x.png",
            images["empty"],
        ]
    )
    spec = PreprocessSpec(4, 4)
    storage = StorageConfig(allowed_buckets=("images",))
    with ThreadPoolExecutor(4) as pool:
        batch = prepare_batch(uris, spec, storage, pool)
    assert batch.size == 8
    assert batch.ok_rows.tolist() == [0, 4]
    assert batch.pixels.shape == (2, 4, 4, 3)
    assert batch.pixels.dtype == np.uint8
    np.testing.assert_allclose(batch.pixels[0, 2, 2], COLORS["red"], atol=2)
    np.testing.assert_allclose(batch.pixels[1, 2, 2], COLORS["blue"], atol=12)
    assert {i: e.code.value for i, e in batch.errors.items()} == {
        1: "invalid_uri",
        2: "not_found",
        3: "uri_not_allowed",
        5: "undecodable_image",
        6: "uri_not_allowed",
        7: "empty_object",
    }


def test_prepare_batch_with_no_usable_rows(images: dict[str, str]) -> None:
    with ThreadPoolExecutor(2) as pool:
        batch = prepare_batch(
            pd.Series([images["missing"], ""]), PreprocessSpec(4, 4), StorageConfig(), pool
        )
    assert batch.pixels.shape == (0, 4, 4, 3)
    assert batch.ok_rows.tolist() == []
    assert sorted(e.code.value for e in batch.errors.values()) == ["invalid_uri", "not_found"]


def colour_model(x: np.ndarray) -> np.ndarray:
    """Red vs blue by the mean of the first and third channels."""
    r = x[..., 0].reshape(len(x), -1).mean(axis=1)
    b = x[..., 2].reshape(len(x), -1).mean(axis=1)
    p_red = (r > b).astype(np.float32) * 0.8 + 0.1
    return np.stack([p_red, 1 - p_red], axis=1)


def colour_meta() -> BundleMeta:
    return BundleMeta(
        model_name="c",
        model_version="1",
        labels=(Label("red", "1"), Label("blue", "2")),
        preprocessing=PreprocessSpec(4, 4, "rgb", "unit"),
    )


def tag_colours(
    batches: list[pd.Series], predictor: Predictor, model_batch_size: int
) -> list[pd.DataFrame]:
    """``tag_batches`` over ``batches`` with two fetch threads and the top category only."""
    storage = StorageConfig(fetch_concurrency=2)
    inference = InferenceConfig(model_batch_size=model_batch_size, top_k=1)
    return list(tag_batches(iter(batches), predictor, storage, inference))


def test_tag_batches_streams_frames_in_order(images: dict[str, str]) -> None:
    predictor = Predictor(colour_meta(), RecordingPredict(colour_model))
    batches = [
        pd.Series([images["red"], images["missing"], images["blue"]]),
        pd.Series([images["blue"]]),
        pd.Series([images["corrupt"], images["red"]]),
    ]
    frames = tag_colours(batches, predictor, model_batch_size=2)
    assert [len(f) for f in frames] == [3, 1, 2]
    got = [(r.status, r.error_code, r.category) for f in frames for r in f.itertuples()]
    assert got == [
        ("ok", None, "red"),
        ("error", "not_found", None),
        ("ok", None, "blue"),
        ("ok", None, "blue"),
        ("error", "undecodable_image", None),
        ("ok", None, "red"),
    ]
    assert set(predictor.predict.shapes) == {(2, 4, 4, 3)}  # type: ignore[attr-defined]


def test_the_next_batch_is_prepared_while_the_model_runs(
    monkeypatch: pytest.MonkeyPatch, images: dict[str, str]
) -> None:
    """The model's call on batch i waits (up to 5 s) for batch i+1's preparation to start.

    With prefetch, it has started already; without it, the preparation of batch i+1 only
    starts after the model returns, and the wait times out.
    """
    import threading

    started = [threading.Event() for _ in range(3)]
    calls = iter(range(3))
    real = udf_module.start_batch

    def start(uris: pd.Series, *args: Any) -> Any:
        started[int(uris.name)].set()
        return real(uris, *args)

    overlapped: list[bool] = []

    def predict(x: np.ndarray) -> np.ndarray:
        i = next(calls)
        if i + 1 < len(started):
            overlapped.append(started[i + 1].wait(timeout=5))
        return colour_model(x)

    monkeypatch.setattr(udf_module, "start_batch", start)
    batches = [pd.Series([images[c]], name=str(i)) for i, c in enumerate(["red", "blue", "red"])]
    frames = tag_colours(batches, Predictor(colour_meta(), predict), model_batch_size=1)
    assert [f["category"][0] for f in frames] == ["red", "blue", "red"]
    assert overlapped == [True, True]


def test_the_next_batchs_rows_start_while_this_batchs_slowest_row_is_still_fetched(
    monkeypatch: pytest.MonkeyPatch, images: dict[str, str]
) -> None:
    """No barrier between batches: a thread freed by a fast row takes the next batch's row.

    The slow row of batch 0 waits (up to 5 s) for batch 1's row to begin loading; if batch 1
    were queued only once batch 0 is done, it could not begin, and the wait times out.
    """
    import threading

    import prodclf.images as images_module

    real = images_module.load_or_error
    next_began = threading.Event()
    waited: list[bool] = []

    def load(uri: object, *args: Any) -> Any:
        if uri == images["blue"]:
            next_began.set()
        if uri == images["corrupt"]:
            waited.append(next_began.wait(timeout=5))
        return real(uri, *args)

    monkeypatch.setattr(images_module, "load_or_error", load)
    batches = [pd.Series([images["corrupt"], images["red"]]), pd.Series([images["blue"]])]
    frames = tag_colours(batches, Predictor(colour_meta(), colour_model), model_batch_size=2)
    assert [(r.error_code, r.category) for f in frames for r in f.itertuples()] == [
        ("undecodable_image", None),
        (None, "red"),
        (None, "blue"),
    ]
    assert waited == [True]


def test_a_task_that_stops_early_cancels_the_rows_it_queued(
    monkeypatch: pytest.MonkeyPatch, images: dict[str, str]
) -> None:
    import prodclf.images as images_module

    real = images_module.load_or_error
    loaded: list[object] = []

    def load(uri: object, *args: Any) -> Any:
        loaded.append(uri)
        if uri == images["red"]:
            time.sleep(0.005)  # batch 1 takes a second: the cancel cannot lose the race
        return real(uri, *args)

    monkeypatch.setattr(images_module, "load_or_error", load)
    predictor = Predictor(colour_meta(), colour_model)
    many = pd.Series([images["red"]] * 200)
    frames = tag_batches(
        iter([pd.Series([images["blue"]]), many]),
        predictor,
        StorageConfig(fetch_concurrency=1),
        InferenceConfig(model_batch_size=1, top_k=1),
    )
    first = next(frames)  # batch 0 tagged; batch 1's 200 rows are queued
    assert first["category"].tolist() == ["blue"]
    frames.close()  # Spark stops reading: the task is done or failed
    assert len(loaded) < 1 + 200


def test_tag_batches_of_nothing_yields_nothing() -> None:
    bundle = meta()
    assert (
        list(tag_batches(iter([]), Predictor(bundle, boom), StorageConfig(), InferenceConfig()))
        == []
    )


# --- the model, loaded for real ---------------------------------------------------------


def test_load_predictor_runs_the_saved_model(
    color_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # restored afterwards, whatever happens
    predictor = load_predictor(str(color_bundle), use_gpu=False)
    assert [lb.name for lb in predictor.meta.labels] == ["red", "blue"]
    x = np.zeros((2, 8, 8, 3), dtype=np.uint8)
    x[0, ..., 0] = 230  # red
    x[1, ..., 2] = 230  # blue
    probs = predictor.predict(x)
    assert probs.shape == (2, 2)
    assert probs[0].argmax() == 0 and probs[1].argmax() == 1
    np.testing.assert_allclose(probs.sum(axis=1), [1.0, 1.0], rtol=1e-5)


def test_the_predictor_scales_uint8_pixels_as_the_bundle_says(
    color_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bundle says ``unit``: (255, 0, 51) is r - b = 0.8, logits +-8, so
    p(blue) = 1 / (1 + e^16). Unscaled pixels (r - b = 204) would give p(blue) = 0."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    predictor = load_predictor(str(color_bundle), use_gpu=False)
    x = np.zeros((1, 8, 8, 3), dtype=np.uint8)
    x[0, ...] = (255, 0, 51)
    probs = predictor.predict(x)
    np.testing.assert_allclose(probs[0, 1], 1 / (1 + np.exp(16.0)), rtol=1e-3)
    with pytest.raises(TypeError, match="uint8"):
        predictor.predict(x.astype(np.float32))


def test_tensorflow_threads_follow_the_task_cpus(spark: Any) -> None:
    """Inside a Spark task, 0 means spark.task.cpus; a positive count is kept."""
    got = (
        spark.sparkContext.parallelize([0, 3], 2)
        .map(lambda n: runtime.tf_thread_count(n))
        .collect()
    )
    cpus = int(spark.sparkContext.getConf().get("spark.task.cpus", "1"))
    assert got == [cpus, 3]
    assert runtime.tf_thread_count(0) == 0  # on the driver: TensorFlow's own default


def test_import_tensorflow_sizes_its_thread_pools() -> None:
    code = (
        "from prodclf.model.runtime import import_tensorflow\n"
        "tf = import_tensorflow((), False, 1)\n"
        "print(tf.config.threading.get_intra_op_parallelism_threads(),"
        " tf.config.threading.get_inter_op_parallelism_threads())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.split() == ["1", "1"]


def test_materialize_bundle_downloads_an_s3_bundle_once(
    color_bundle: Path, s3: Any, tmp_path: Path
) -> None:
    bucket = f"bundles-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    uri = f"s3://{bucket}/color"
    objects.copy_tree_from_local(color_bundle, uri)
    local = materialize_bundle(uri)
    files = sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file())
    want = sorted(
        p.relative_to(color_bundle).as_posix() for p in color_bundle.rglob("*") if p.is_file()
    )
    assert files == want
    assert json.loads((local / "bundle.json").read_text())["model_name"] == "color"
    # Cached: the second call does not download again (the objects are gone, it still works).
    s3.delete_object(Bucket=bucket, Key="color/saved_model/saved_model.pb")
    assert materialize_bundle(uri) == local
    assert materialize_bundle(str(color_bundle)) == color_bundle  # local: used in place


# --- GPU selection and import hygiene -------------------------------------------------------


@pytest.mark.parametrize(
    ("gpus", "use_gpu", "expected"),
    [
        (("1", "3"), True, None),  # every GPU stays visible: a reused worker may get another
        ((), True, None),
        ((), False, ""),
        (("1",), False, ""),
    ],
)
def test_visible_devices_env(gpus: tuple[str, ...], use_gpu: bool, expected: str | None) -> None:
    assert visible_devices_env(gpus, use_gpu) == expected


@pytest.mark.parametrize(
    ("gpus", "visible", "device"),
    [
        ((), None, None),
        (("0",), None, "/GPU:0"),
        (("3",), None, "/GPU:3"),
        (("3",), "2,3", "/GPU:1"),  # TF numbers the visible GPUs from 0
        (("1", "2"), "0,1,2", "/GPU:1"),
        (("GPU-uuid",), None, None),
    ],
)
def test_tf_device_maps_spark_addresses(
    gpus: tuple[str, ...], visible: str | None, device: str | None
) -> None:
    assert tf_device(gpus, visible) == device


@pytest.mark.parametrize(
    ("gpus", "visible", "seen", "device"),
    [
        (("0",), None, 1, "/GPU:0"),
        (("3",), "2,3", 2, "/GPU:1"),
        (("0",), None, 0, None),  # tensorflow-cpu, or no driver: soft placement = the CPU
        (("1",), None, 1, None),  # a GPU TensorFlow does not have
        (("3",), "0,1", 2, None),  # hidden from TensorFlow by CUDA_VISIBLE_DEVICES
        (("GPU-5e1f",), "GPU-5e1f", 1, "/GPU:0"),  # a UUID that CUDA_VISIBLE_DEVICES lists
        (("GPU-5e1f",), None, 1, "/GPU:0"),  # one GPU: it is the task's
        (("GPU-5e1f",), None, 0, None),
    ],
)
def test_a_gpu_tensorflow_cannot_use_is_refused(
    gpus: tuple[str, ...], visible: str | None, seen: int, device: str | None
) -> None:
    if device is not None:
        assert runtime.gpu_device(gpus, visible, seen) == device
        return
    with pytest.raises(GpuUnavailable) as info:
        runtime.gpu_device(gpus, visible, seen)
    message = str(info.value)
    assert message.startswith(f"Spark gave this task GPU {gpus[0]}, but TensorFlow")
    if seen:  # TensorFlow has GPUs, numbered otherwise than Spark's addresses
        assert f"sees {seen} GPU(s)" in message and "discovery script" in message
    else:  # TensorFlow has none: the install
        assert "sees no GPU" in message and "tensorflow[and-cuda]" in message
    assert (f"CUDA_VISIBLE_DEVICES={visible}" in message) == (visible is not None)
    assert message.endswith("; or set inference.use_gpu: false")


def test_a_gpu_address_tensorflow_cannot_number_is_refused() -> None:
    """A discovery script reporting UUIDs on a worker with several GPUs: TensorFlow numbers
    them, so the task's cannot be told apart (TensorFlow would pick one: maybe another
    task's)."""
    with pytest.raises(GpuUnavailable) as info:
        runtime.gpu_device(("GPU-5e1f",), None, 2)
    assert str(info.value).startswith(
        "Spark gave this task GPU GPU-5e1f, but TensorFlow sees 2 GPUs and that address is "
        "not one of their indices: the discovery script must report indices"
    )


# --- the per-worker predictor cache -------------------------------------------------------


@pytest.fixture
def fake_loads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, tuple[str, ...]]]:
    """``load_predictor`` replaced: records (uri, gpus) and returns a fake predictor."""
    loads: list[tuple[str, tuple[str, ...]]] = []

    def load(
        uri: str,
        use_gpu: bool = True,
        gpus: tuple[str, ...] | None = None,
        threads: int = 0,
        engine: str = "auto",
    ) -> Predictor:
        loads.append((uri, gpus or ()))
        version = uri.rsplit("/", 1)[-1]
        return Predictor(replace(meta(), model_version=version), normalise)

    monkeypatch.setattr(runtime, "load_predictor", load)
    monkeypatch.setattr(runtime, "_PREDICTORS", OrderedDict())
    return loads


def test_the_model_is_loaded_once_per_worker(
    fake_loads: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runtime, "task_gpu_addresses", lambda: ())
    fp = replace(meta(), model_version="v1").fingerprint
    first = runtime.get_predictor("s3://m/v1", True, fp)
    assert all(runtime.get_predictor("s3://m/v1", True, fp) is first for _ in range(5))
    assert fake_loads == [("s3://m/v1", ())]


def test_the_cache_is_keyed_by_the_tasks_gpus(
    fake_loads: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    gpus = iter([("0",), ("1",), ("0",)])
    monkeypatch.setattr(runtime, "task_gpu_addresses", lambda: next(gpus))
    a = runtime.get_predictor("s3://m/v1")
    b = runtime.get_predictor("s3://m/v1")  # the reused worker's next task got GPU 1
    assert runtime.get_predictor("s3://m/v1") is a
    assert b is not a
    assert fake_loads == [("s3://m/v1", ("0",)), ("s3://m/v1", ("1",))]


def test_the_cache_is_bounded(fake_loads: list[Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "task_gpu_addresses", lambda: ())
    for version in ("v1", "v2", "v3", "v1"):
        runtime.get_predictor(f"s3://m/{version}")
    assert len(runtime._PREDICTORS) == runtime.CACHE_SIZE == 2
    assert [u for u, _ in fake_loads] == ["s3://m/v1", "s3://m/v2", "s3://m/v3", "s3://m/v1"]


def test_a_worker_with_other_prodclf_code_than_the_driver_tags_nothing(
    fake_loads: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    with monkeypatch.context() as driver:
        driver.setattr(requirements, "code_identity", lambda: "0.1.0+0123456789ab")
        udf = tag_images_udf("s3://m/v1", StorageConfig(), InferenceConfig())
    with pytest.raises(VersionSkew) as info:
        list(udf.func(iter([pd.Series(["s3://b/k.jpg"])])))
    assert str(info.value) == (
        f"the executors run prodclf {requirements.code_identity()}, the driver "
        "0.1.0+0123456789ab: ship the executors an environment built from the driver's "
        "prodclf (infra/package.sh)"
    )
    assert not fake_loads  # refused before the model is loaded


def test_a_bundle_other_than_the_drivers_tags_nothing(
    fake_loads: list[Any], monkeypatch: pytest.MonkeyPatch, images: dict[str, str]
) -> None:
    monkeypatch.setattr(runtime, "task_gpu_addresses", lambda: ())
    driver_read = replace(meta(), model_version="v1").fingerprint
    with pytest.raises(runtime.BundleChanged, match="not the version the driver read"):
        runtime.get_predictor("s3://m/v2", True, driver_read)
    assert not runtime._PREDICTORS
    udf = tag_images_udf("s3://m/v2", StorageConfig(), InferenceConfig(), driver_read)
    frames = list(udf.func(iter([pd.Series([images["red"], images["blue"]]), pd.Series(["x"])])))
    assert [len(f) for f in frames] == [2, 1]
    assert {(r.status, r.error_code) for f in frames for r in f.itertuples()} == {
        ("error", "inference_failed")
    }
    assert list(frames[0].columns) == PREDICTION.fieldNames()


def test_concurrent_first_loads_download_once_and_leave_no_staging(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import tempfile
    import threading
    import time

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    meta_bytes = meta().to_json().encode()
    downloads: list[int] = []

    def copy_tree(uri: str, dest: Path) -> Path:
        downloads.append(threading.get_ident())
        time.sleep(0.3)  # every other worker arrives meanwhile
        (dest / "saved_model").mkdir(parents=True)
        (dest / "bundle.json").write_bytes(meta_bytes)
        return dest

    monkeypatch.setattr(objects, "read_bytes", lambda uri: meta_bytes)
    monkeypatch.setattr(objects, "copy_tree_to_local", copy_tree)
    with ThreadPoolExecutor(6) as pool:
        paths = list(pool.map(lambda _: materialize_bundle("s3://m/bundle"), range(6)))
    assert len(set(paths)) == 1 and (paths[0] / "bundle.json").read_bytes() == meta_bytes
    assert len(downloads) == 1
    root = tmp_path / "prodclf-models"
    assert [p.name for p in root.iterdir() if p.is_dir()] == [paths[0].name]

    def broken_copy(uri: str, dest: Path) -> Path:
        (dest / "half").write_bytes(b"x")
        raise OSError("connection reset")

    monkeypatch.setattr(objects, "read_bytes", lambda uri: meta_bytes + b" ")
    monkeypatch.setattr(objects, "copy_tree_to_local", broken_copy)
    with pytest.raises(OSError, match="connection reset"):
        materialize_bundle("s3://m/bundle")
    assert [p.name for p in root.iterdir() if p.is_dir()] == [paths[0].name]  # no staging left


def test_driver_modules_do_not_import_tensorflow() -> None:
    code = (
        "import sys, prodclf, prodclf.cli, prodclf.tagging.job, prodclf.tagging.udf\n"
        "import prodclf.model.runtime, prodclf.model.bundle, prodclf.model.catalog\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras')))\n"
        "print('pyspark' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.splitlines() == ["[]", "True"]
