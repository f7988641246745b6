"""The tagging job with images and the model bundle on S3 (the loopback moto server).

The base and commodity libraries stay local Parquet directories here, so that this test
needs no s3a jars and also runs in the Spark 4 tier (the cached hadoop-aws 3.3.1 is for
Spark 3.5's Hadoop 3.3). The whole job with the libraries on S3 too, through Spark's s3a
connector (``make s3a-jars``), is ``tagging/test_library_s3.py``.
"""

from __future__ import annotations

import logging
import os
import uuid
from datetime import date
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from conftest import COLORS, TEST_SECRET, jpeg_bytes, png_bytes, run_tag_job
from pyspark.sql import SparkSession
from support.outputs import without_churn

from prodclf.config import InferenceConfig, StorageConfig, TagConfig
from prodclf.library.table import CommodityLibrary
from prodclf.storage import objects

pytestmark = [pytest.mark.slow, pytest.mark.spark4]

RUN_DATE = date(2026, 11, 20)


def ensure_bucket(s3: Any, name: str) -> None:
    existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
    if name not in existing:
        s3.create_bucket(Bucket=name)


def test_tag_with_images_and_model_on_s3(
    spark: SparkSession,
    s3: Any,
    color_bundle: Path,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    for name in (None, "prodclf", "botocore", "py4j"):
        caplog.set_level(logging.DEBUG, logger=name)
    assert os.environ["AWS_SECRET_ACCESS_KEY"] == TEST_SECRET  # what the run signs with

    suffix = uuid.uuid4().hex[:10]
    images, private = f"images-{suffix}", f"private-{suffix}"
    for bucket in (images, private, "models"):
        ensure_bucket(s3, bucket)
    objects.copy_tree_from_local(color_bundle, "s3://models/color/")

    put = {
        "red1.jpg": jpeg_bytes(COLORS["red"]),
        "red2.png": png_bytes(COLORS["red"], (40, 24)),
        "blue1.jpg": jpeg_bytes(COLORS["blue"], (16, 48)),
        "blue2.png": png_bytes(COLORS["blue"]),
        "corrupt.jpg": b"\xff\xd8\xff\xe0 this is not a jpeg at all",
        "empty.png": b"",
    }
    for key, body in put.items():
        s3.put_object(Bucket=images, Key=f"catalog/{key}", Body=body)
    # A perfectly good image, but in a bucket outside the allowlist: never fetched.
    s3.put_object(Bucket=private, Key="catalog/red.png", Body=png_bytes(COLORS["red"]))

    products = {
        "p-red-1": (f"s3://{images}/catalog/red1.jpg", ("ok", None, "red")),
        "p-red-2": (f"s3://{images}/catalog/red2.png", ("ok", None, "red")),
        "p-blue-1": (f"s3://{images}/catalog/blue1.jpg", ("ok", None, "blue")),
        "p-blue-2": (f"s3://{images}/catalog/blue2.png", ("ok", None, "blue")),
        "p-missing": (f"s3://{images}/catalog/gone.png", ("error", "not_found", None)),
        "p-corrupt": (f"s3://{images}/catalog/corrupt.jpg", ("error", "undecodable_image", None)),
        "p-empty": (f"s3://{images}/catalog/empty.png", ("error", "empty_object", None)),
        "p-outside": (f"s3://{private}/catalog/red.png", ("error", "uri_not_allowed", None)),
    }
    base = tmp_path / "base"
    base.mkdir()
    frame = pd.DataFrame(
        [{"product_id": pid, "image_uri": uri, "title": pid} for pid, (uri, _) in products.items()]
    )
    frame.iloc[:4].to_parquet(base / "part-0.parquet", index=False)
    frame.iloc[4:].to_parquet(base / "part-1.parquet", index=False)
    out = tmp_path / "commodity"

    cfg = TagConfig(
        base_library=str(base),
        commodity_library=str(out),
        model="s3://models/color",
        run_date=RUN_DATE,
        run_id="s3-run-1",
        storage=StorageConfig(allowed_buckets=(images,), max_attempts=2, connect_timeout_s=2.0),
        inference=InferenceConfig(model_batch_size=4, use_gpu=False),
    )
    manifest = run_tag_job(cfg, spark)

    rows = CommodityLibrary(str(out)).read_history(spark, RUN_DATE)
    got = sorted(
        tuple(r) for r in rows.select("product_id", "status", "error_code", "category").collect()
    )
    assert got == sorted((pid, *want) for pid, (_, want) in products.items())
    ids = {
        r["product_id"]: r["category_id"]
        for r in rows.where("status = 'ok'").select("product_id", "category_id").collect()
    }
    assert ids == {"p-red-1": "1001", "p-red-2": "1001", "p-blue-1": "1002", "p-blue-2": "1002"}

    assert manifest["products_in"] == 8
    assert manifest["base_rows"] == 8
    assert manifest["rows_written"] == 8
    assert manifest["ok"] == 4
    assert manifest["errors"] == {
        "empty_object": 1,
        "not_found": 1,
        "undecodable_image": 1,
        "uri_not_allowed": 1,
    }
    assert manifest["error_rows"] == 4
    assert manifest["needs_review"] == 0  # the colour model is sure of every ok image
    assert manifest["model_name"] == "color" and manifest["model_version"] == "1"
    assert manifest["model_uri"] == "s3://models/color"
    stored = CommodityLibrary(str(out)).manifest("s3-run-1")
    assert stored is not None and stored.to_dict() == without_churn(manifest)

    # The secret key is nowhere: not in any output file, any row, any log line or output.
    files = [p for p in out.rglob("*") if p.is_file()]
    assert any(p.name == "s3-run-1.json" for p in files)
    assert any(p.suffix == ".parquet" for p in files)
    secret = TEST_SECRET.encode()
    assert [p for p in files if secret in p.read_bytes()] == []
    # Parquet pages are compressed: look at the decoded values of every table too.
    values = []
    for where in (out / "tags_history", out / "runs", next((out / "tags_current").glob("_v/*"))):
        table: pd.DataFrame = spark.read.parquet(str(where)).toPandas()
        values += table.astype(str).to_numpy().ravel().tolist()
    assert values and not [v for v in values if TEST_SECRET in v]
    captured = capfd.readouterr()
    # The capture works: the run logged, down to py4j's commands to the JVM.
    assert any(r.name.startswith("py4j") for r in caplog.records)
    assert any(r.name.startswith("botocore") for r in caplog.records)
    for text in (captured.out, captured.err, caplog.text):
        assert TEST_SECRET not in text
    assert not [r for r in caplog.records if TEST_SECRET in str(r.args) + str(r.msg)]
    assert not [kv for kv in spark.sparkContext.getConf().getAll() if TEST_SECRET in str(kv)]
