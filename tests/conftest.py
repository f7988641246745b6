"""Shared fixtures: one local SparkSession, tiny image catalogs, a tiny real model bundle."""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


@pytest.hookimpl(trylast=True)  # after -m has deselected
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Training tests are deselected where petastorm is absent (-m "not train"), never skipped."""
    from prodclf.requirements import training_problem

    problem = training_problem()
    selected = [item.nodeid for item in items if item.get_closest_marker("train")]
    if problem and selected:
        raise pytest.UsageError(
            f"{len(selected)} test(s) marked train selected, but {problem} here: "
            f'deselect them with -m "not train" (first: {selected[0]})'
        )


#: The test secret: it must never appear in any log, manifest or output of a run.
TEST_SECRET = "prodclf-test-secret-9f3c2a"


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """An S3-compatible HTTP server on loopback (moto's server mode), for the whole session.

    It starts before Spark so that Python workers inherit the standard AWS settings
    (``AWS_ENDPOINT_URL_S3``, credentials, region): the code under test uses boto3's
    ordinary settings chain, nothing is patched in-process.
    """
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    saved = {k: os.environ.get(k) for k in _AWS_ENV}
    os.environ.update(
        {
            "AWS_ENDPOINT_URL_S3": endpoint,
            "AWS_ACCESS_KEY_ID": "prodclf-test-key",
            "AWS_SECRET_ACCESS_KEY": TEST_SECRET,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        }
    )
    yield endpoint
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


_AWS_ENV = (
    "AWS_ENDPOINT_URL_S3",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_DEFAULT_REGION",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
)


@pytest.fixture
def s3(s3_endpoint: str) -> object:
    """A boto3 S3 client for arranging test data on the server (same settings chain)."""
    import boto3

    return boto3.client("s3")


#: The s3a connector jars fetched and verified by `make s3a-jars` (infra/fetch_s3a_jars.py).
S3A_JARS = tuple(
    ROOT / ".cache" / "jars" / name
    for name in ("hadoop-aws-3.3.1.jar", "aws-java-sdk-bundle-1.11.901.jar")
)


#: The Iceberg runtime stand-in built by `make iceberg-jar` (infra/build_iceberg_jar.py):
#: Spark 3.5 only (no Spark 4 runtime is on PyPI).
ICEBERG_JAR = ROOT / ".cache" / "jars" / "iceberg-spark-runtime-3.5_2.12-1.10.2-standin.jar"


def iceberg_jars() -> tuple[Path, ...]:
    """The stand-in jar when it is built and this is Spark 3.5; CI must have built it."""
    import pyspark

    if not pyspark.__version__.startswith("3.5"):
        return ()
    if not ICEBERG_JAR.exists():
        if os.environ.get("CI"):
            raise RuntimeError(f"{ICEBERG_JAR} is missing: `make iceberg-jar` must run first")
        return ()
    return (ICEBERG_JAR,)


def s3a_jars() -> tuple[Path, ...]:
    """The s3a jars when both are cached, else (): only the s3a tier needs them
    (storage/test_s3a.py, tagging/test_library_s3.py)."""
    return S3A_JARS if all(p.is_file() for p in S3A_JARS) else ()


@pytest.fixture(scope="session")
def spark(s3_endpoint: str) -> Iterator[object]:
    from prodclf.config import SparkConfig, TableFormatConfig
    from prodclf.session import create_session

    # Through the package's own hook (PRODCLF_SPARK_JARS), only while this JVM starts:
    # jobs that tests start with spark-submit must not inherit it.
    saved = os.environ.get("PRODCLF_SPARK_JARS")
    jars = [*s3a_jars(), *iceberg_jars()]
    if saved is None and jars:
        os.environ["PRODCLF_SPARK_JARS"] = ",".join(str(p) for p in jars)
    # Iceberg's SQL extensions (MERGE INTO, CALL) where its runtime is on the classpath.
    iceberg = TableFormatConfig(format="iceberg").spark_settings() if iceberg_jars() else {}
    try:
        session = create_session(
            SparkConfig(
                master="local[2]",
                app_name="prodclf-tests",
                shuffle_partitions=2,
                conf=(("spark.ui.enabled", "false"), ("spark.driver.memory", "2g")),
            ),
            arrow_batch_size=16,
            extra=iceberg,
        )
    finally:
        if saved is None:
            os.environ.pop("PRODCLF_SPARK_JARS", None)
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

    from prodclf.images import PreprocessSpec
    from prodclf.model.bundle import BundleMeta, Label, export_bundle

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


def run_tag_job(cfg: Any, spark: Any) -> dict[str, Any]:
    """The tag job as the CLI runs it: its preflight, then the run given the result."""
    from prodclf.tagging.job import run_tag, tag_preflight

    return run_tag(cfg, spark, tag_preflight(cfg))


def run_train_job(cfg: Any, spark: Any) -> Any:
    """The training job as the CLI runs it: its preflight, then the run given the result."""
    from prodclf.training.job import run_train, train_preflight

    return run_train(cfg, spark, train_preflight(cfg))
