"""Shared fixtures: one local SparkSession, tiny image catalogs, a tiny real model bundle."""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


@pytest.fixture(scope="session")
def spark() -> Iterator[object]:
    from prodclf.config import SparkConfig
    from prodclf.session import create_session

    session = create_session(
        SparkConfig(
            master="local[2]",
            app_name="prodclf-tests",
            shuffle_partitions=2,
            conf=(("spark.ui.enabled", "false"), ("spark.driver.memory", "2g")),
        ),
        arrow_batch_size=16,
    )
    yield session
    session.stop()


def png_bytes(color: tuple[int, int, int], size: tuple[int, int] = (32, 32)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def jpeg_bytes(color: tuple[int, int, int], size: tuple[int, int] = (32, 32)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


#: The tiny model's two classes: a red image is "red", a blue one "blue".
COLORS = {"red": (220, 20, 20), "blue": (20, 20, 220)}


@pytest.fixture(scope="session")
def color_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real SavedModel bundle that tells red from blue (exact weights, no training)."""
    import keras

    from prodclf.bundle import BundleMeta, Label, export_bundle
    from prodclf.imaging import PreprocessSpec

    spec = PreprocessSpec(height=8, width=8, color_mode="rgb", scale="unit")
    inputs = keras.Input(shape=spec.shape)
    pooled = keras.layers.GlobalAveragePooling2D()(inputs)
    dense = keras.layers.Dense(2, activation="softmax")
    outputs = dense(pooled)
    model = keras.Model(inputs, outputs)
    # logit_red = 10*(r - b), logit_blue = 10*(b - r)
    dense.set_weights(
        [np.array([[10.0, -10.0], [0.0, 0.0], [-10.0, 10.0]], dtype=np.float32), np.zeros(2)]
    )
    dest = tmp_path_factory.mktemp("bundle") / "color-model"
    meta = BundleMeta(
        model_name="color",
        model_version="1",
        labels=(Label("red", "1001"), Label("blue", "1002")),
        preprocessing=spec,
        metrics={"accuracy": 1.0},
    )
    export_bundle(model, meta, str(dest))
    return dest
