"""A whole prodclf data lake on the loopback S3 server, and reading it back without Spark.

Base library (Parquet), images, the model bundle and the commodity library all live in one
bucket; Spark reaches the Parquet through ``s3a://`` (the jars from ``make s3a-jars``),
prodclf's small objects and the images go through boto3. What a run left on the store is
read here with boto3 and pyarrow only, the way a downstream consumer would.
"""

from __future__ import annotations

import io
import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from conftest import COLORS, png_bytes, s3a_jars

from prodclf.storage import objects

#: The s3a tier: slow, skipped (with the command to run) without the jars, never skipped
#: silently in CI. Not ``spark4``: hadoop-aws 3.3.1 is for pyspark 3.5's Hadoop 3.3 client.
if not s3a_jars() and os.environ.get("CI"):
    raise RuntimeError("s3a jars are not cached: `make s3a-jars` must run before the tests")
S3A_MARKS = [
    pytest.mark.slow,
    pytest.mark.skipif(not s3a_jars(), reason="s3a jars not cached: run `make s3a-jars`"),
]

#: product_id -> (status, error_code, category) a run gives it
Expected = dict[str, tuple[str, str | None, str | None]]


@dataclass
class Lake:
    """One bucket: ``base/`` (the base library), ``images/``, ``models/color``, ``commodity/``."""

    bucket: str
    expected: Expected  # what a run of the base library gives each product now

    def uri(self, prefix: str, scheme: str = "s3") -> str:
        return f"{scheme}://{self.bucket}/{prefix}"


def hadoop_conf(spark: Any) -> Any:
    return spark.sparkContext._jsc.hadoopConfiguration()


def quick_s3a_retries(spark: Any, bucket: str, endpoint: str | None = None) -> None:
    """Per-bucket s3a settings: fast retries (a fault-proxy run makes many), and optionally
    another endpoint for this bucket only (a proxy). Per-bucket keys, so no cached
    FileSystem of another bucket is affected."""
    conf = hadoop_conf(spark)
    prefix = f"fs.s3a.bucket.{bucket}."
    settings = {
        "retry.interval": "50ms",
        "retry.throttle.interval": "50ms",
        # The AWS SDK's own retries back off from 0.5 s on a 503: few of them, and s3a's
        # retry policy (50 ms, doubling) does the rest.
        "attempts.maximum": "2",
        "retry.limit": "10",
        "retry.throttle.limit": "20",
        "connection.timeout": "20000",  # ms; a lost response must not hang the test
    }
    if endpoint:
        settings["endpoint"] = endpoint
    for key, value in settings.items():
        conf.set(prefix + key, value)


def make_lake(s3: Any, bundle: Path, name: str = "lake", products: int = 6) -> Lake:
    """A bucket with the base library (two Parquet files), images and the model bundle.

    ``products`` red/blue products, plus ``p-missing`` whose image does not exist (a
    ``not_found`` error row).
    """
    bucket = f"{name}-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=bucket)
    expected: Expected = {}
    rows = []
    for i in range(products):
        color = "red" if i % 2 else "blue"
        pid = f"p{i:02d}"
        s3.put_object(Bucket=bucket, Key=f"images/{pid}.png", Body=png_bytes(COLORS[color]))
        rows.append({"product_id": pid, "image_uri": f"s3://{bucket}/images/{pid}.png"})
        expected[pid] = ("ok", None, color)
    rows.append({"product_id": "p-missing", "image_uri": f"s3://{bucket}/images/gone.png"})
    expected["p-missing"] = ("error", "not_found", None)
    write_base(s3, bucket, rows)
    objects.copy_tree_from_local(bundle, f"s3://{bucket}/models/color")
    return Lake(bucket, expected)


def write_base(s3: Any, bucket: str, rows: list[dict[str, str]], parts: int = 2) -> None:
    frame = pd.DataFrame(rows).astype("string")
    step = -(-len(frame) // parts)
    for i in range(parts):
        buf = io.BytesIO()
        frame.iloc[i * step : (i + 1) * step].to_parquet(buf, index=False)
        s3.put_object(Bucket=bucket, Key=f"base/part-{i}.parquet", Body=buf.getvalue())


def keys(s3: Any, bucket: str, prefix: str) -> dict[str, str]:
    """key -> ETag of every object under ``prefix``: 'untouched' made checkable."""
    found: dict[str, str] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        found.update({o["Key"]: o["ETag"] for o in page.get("Contents", [])})
    return dict(sorted(found.items()))


def read_json(s3: Any, bucket: str, key: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    return data


def pyarrow_fs(endpoint: str) -> pafs.S3FileSystem:
    """pyarrow's own S3 client (AWS SDK for C++), credentials from the environment."""
    return pafs.S3FileSystem(
        endpoint_override=endpoint, scheme="http", region="us-east-1", allow_bucket_creation=False
    )


def read_parquet_dir(endpoint: str, bucket: str, prefix: str) -> pa.Table:
    """Every visible Parquet file directly under ``prefix`` (not ``_``/``.`` ones), by pyarrow."""
    fs = pyarrow_fs(endpoint)
    infos = fs.get_file_info(pafs.FileSelector(f"{bucket}/{prefix}", recursive=False))
    files = sorted(
        i.path
        for i in infos
        if i.type == pafs.FileType.File and not i.base_name.startswith(("_", "."))
    )
    return pa.concat_tables([pq.read_table(f, filesystem=fs) for f in files])


def current_by_pointer(endpoint: str, s3: Any, bucket: str, library: str = "commodity") -> Any:
    """``tags_current`` as a reader without Spark sees it: pointer, then its snapshot."""
    pointer = read_json(s3, bucket, f"{library}/tags_current/_CURRENT.json")
    return read_parquet_dir(endpoint, bucket, f"{library}/{pointer['snapshot']}").to_pandas()


def complete_runs(s3: Any, bucket: str, run_date: str, library: str = "commodity") -> list[str]:
    """The rule of docs/data-contracts.md (the run manifest), on S3: a run of ``run_date``
    is readable when its manifest exists and its ``rows_written`` equals the rows in its own
    partition."""
    found = []
    for key in keys(s3, bucket, f"{library}/_runs/"):
        if not key.endswith(".json"):
            continue
        m = read_json(s3, bucket, key)
        if m["run_date"] != run_date:
            continue
        part = f"{library}/tags_history/run_date={run_date}/run_id={m['run_id']}/"
        rows = sum(
            pq.read_metadata(
                io.BytesIO(s3.get_object(Bucket=bucket, Key=k)["Body"].read())
            ).num_rows
            for k in keys(s3, bucket, part)
            if k.endswith(".parquet")
        )
        if rows == m["rows_written"]:
            found.append(str(m["run_id"]))
    return sorted(found)
