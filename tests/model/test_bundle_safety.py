"""Loading a model bundle runs no code from it: the metadata is JSON, the model a graph.

The bundle under test is booby-trapped: its Keras model had a ``Lambda`` layer whose
Python function leaves a mark each time it runs, and the bundle also carries pickles
(under the names a careless loader would try: ``model.pkl``, ``model.keras``,
``saved_model/keras_metadata.pb``) that leave the same mark when unpickled. The real job
must tag with it correctly (the Lambda's computation was traced into the SavedModel
graph at export) while the mark never appears: neither the driver (which reads
``bundle.json``) nor the Python workers (which load the SavedModel) run any of it.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from conftest import COLORS, png_bytes, run_tag_job
from jobproc import outcome, read_partition
from pyspark.sql import SparkSession

from prodclf.config import InferenceConfig, TagConfig
from prodclf.images import PreprocessSpec
from prodclf.model.bundle import BundleMeta, Label, export_bundle, read_meta

pytestmark = [pytest.mark.slow, pytest.mark.spark4]


class Trap:
    """Unpickling this creates the mark directory (``os.makedirs`` is importable anywhere)."""

    def __init__(self, mark: Path) -> None:
        self.mark = mark

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.makedirs, (str(self.mark),))


def trapped_bundle(dest: Path, mark: Path) -> Path:
    import keras

    def leave_mark(x: Any) -> Any:
        mark.mkdir(exist_ok=True)  # runs while Keras traces the model, and never again
        return x

    spec = PreprocessSpec(height=8, width=8, color_mode="rgb", scale="unit")
    inputs = keras.Input(shape=spec.shape)
    marked = keras.layers.Lambda(leave_mark)(inputs)
    dense = keras.layers.Dense(2, activation="softmax")
    outputs = dense(keras.layers.GlobalAveragePooling2D()(marked))
    dense.set_weights(
        [np.array([[10.0, -10.0], [0.0, 0.0], [-10.0, 10.0]], dtype=np.float32), np.zeros(2)]
    )
    trap = pickle.dumps(Trap(mark))
    meta = BundleMeta(
        model_name="trapped",
        model_version="1",
        labels=(Label("red", "1001"), Label("blue", "1002")),
        preprocessing=spec,
    )
    export_bundle(
        keras.Model(inputs, outputs),
        meta,
        str(dest),
        extra_files={
            "model.pkl": trap,
            "model.keras": trap,
            "saved_model/keras_metadata.pb": trap,
        },
    )
    return dest


def test_a_bundle_is_loaded_without_running_code_from_it(
    spark: SparkSession, tmp_path: Path
) -> None:
    mark = tmp_path / "code-from-the-bundle-ran"
    bundle = trapped_bundle(tmp_path / "bundle", mark)
    assert mark.is_dir()  # the traps work: tracing ran the Lambda's Python...
    shutil.rmtree(mark)
    pickle.loads((bundle / "model.pkl").read_bytes())  # ...and so does unpickling
    assert mark.is_dir()
    shutil.rmtree(mark)

    # The driver side: metadata is plain JSON.
    meta = read_meta(str(bundle))
    assert json.loads((bundle / "bundle.json").read_text())["model_name"] == meta.model_name
    assert not mark.exists()

    images = tmp_path / "images"
    images.mkdir()
    rows = []
    for color in ("red", "blue"):
        (images / f"{color}.png").write_bytes(png_bytes(COLORS[color]))
        rows.append({"product_id": color, "image_uri": f"file://{images}/{color}.png"})
    base = tmp_path / "base"
    base.mkdir()
    pd.DataFrame(rows).to_parquet(base / "part-0.parquet", index=False)
    out = tmp_path / "commodity"
    cfg = TagConfig(
        base_library=str(base),
        commodity_library=str(out),
        model=str(bundle),
        run_date=date(2026, 11, 24),
        run_id="trapped",
        inference=InferenceConfig(model_batch_size=2, use_gpu=False),
    )
    run_tag_job(cfg, spark)

    got = outcome(read_partition(out, "2026-11-24"), "category")
    assert got == {"red": ("ok", None, "red"), "blue": ("ok", None, "blue")}
    assert not mark.exists()
