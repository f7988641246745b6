"""Partitioned Parquet through Hadoop's s3a connector, on the loopback S3 server (moto).

The session gets ``hadoop-aws`` and the AWS SDK bundle from ``make s3a-jars``
(infra/fetch_s3a_jars.py) through ``PRODCLF_SPARK_JARS`` (see conftest). The commodity
library's write pattern is exercised exactly: a dynamic partition overwrite of one
``run_date``, then a read-back. Output committer: the classic FileOutputCommitter, algorithm
v1 (rename-based; why it is the right one here is in infra/README.md, "S3").
"""

from __future__ import annotations

import io
import os
import uuid
from collections.abc import Iterator
from datetime import date
from typing import Any

import pyarrow.parquet as pq
import pytest
from conftest import s3a_jars
from faultproxy import SLOWDOWN, FaultProxy
from pyspark.sql import DataFrame, SparkSession

# `make test` fetches the jars first; a bare pytest run without them skips this tier with
# the command to run, but CI (CI=true) fails instead: a missing s3a tier is never silent.
if not s3a_jars() and os.environ.get("CI"):
    raise RuntimeError("s3a jars are not cached: `make s3a-jars` must run before the tests")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not s3a_jars(), reason="s3a jars not cached: run `make s3a-jars`"),
]

D1, D2 = date(2026, 11, 20), date(2026, 11, 21)
Row = tuple[str, str, date]


def _hadoop_conf(spark: SparkSession) -> Any:
    return spark.sparkContext._jsc.hadoopConfiguration()


@pytest.fixture
def bucket(spark: SparkSession, s3: Any, s3_endpoint: str) -> Iterator[str]:
    """A fresh bucket with its own s3a settings (per-bucket keys, so no cached FS reuses them).

    Endpoint, path-style access and plain HTTP come from ``AWS_ENDPOINT_URL_S3`` through
    ``prodclf.session.s3a_settings``; credentials from the environment, as boto3's chain does
    (nothing secret in the Spark configuration).
    """
    name = f"s3a-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    conf = _hadoop_conf(spark)
    assert conf.get("fs.s3a.endpoint") == s3_endpoint
    assert conf.get("fs.s3a.path.style.access") == "true"
    assert conf.get("fs.s3a.connection.ssl.enabled") == "false"
    prefix = f"fs.s3a.bucket.{name}."
    conf.set(
        prefix + "aws.credentials.provider",
        "com.amazonaws.auth.EnvironmentVariableCredentialsProvider",
    )
    # The committer prodclf runs with on s3a (the Spark 3.5 default, made explicit).
    conf.set("mapreduce.fileoutputcommitter.algorithm.version", "1")
    # Quick retries: the fault-proxy test makes many of them.
    for key, value in {
        "retry.interval": "50ms",
        "retry.throttle.interval": "50ms",
        "attempts.maximum": "10",
        "retry.limit": "10",
        "retry.throttle.limit": "20",
        "connection.timeout": "20000",  # ms; a lost response must not hang the test
    }.items():
        conf.set(prefix + key, value)
    yield name


def frame(spark: SparkSession, rows: list[Row]) -> DataFrame:
    return spark.createDataFrame(rows, "product_id string, category string, run_date date")


def read_rows(spark: SparkSession, uri: str) -> list[Row]:
    df = spark.read.parquet(uri)
    return sorted((r.product_id, r.category, r.run_date) for r in df.collect())


def objects_under(s3: Any, bucket: str, prefix: str) -> list[str]:
    keys: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys += [o["Key"] for o in page.get("Contents", [])]
    return sorted(keys)


def rows_in_store(s3: Any, bucket: str, prefix: str) -> list[Row]:
    """Every row of every Parquet file under ``prefix``, read with boto3 + pyarrow, not s3a."""
    rows: list[Row] = []
    for key in objects_under(s3, bucket, prefix):
        if not key.endswith(".parquet"):
            continue
        run_date = date.fromisoformat(key.split("run_date=")[1].split("/")[0])
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        table = pq.read_table(io.BytesIO(body))
        rows += [
            (p, c, run_date)
            for p, c in zip(
                table["product_id"].to_pylist(), table["category"].to_pylist(), strict=True
            )
        ]
    return sorted(rows)


FIRST = [(f"p{i}", "red" if i % 2 else "blue", D1) for i in range(6)]
SECOND = [(f"p{i}", "blue", D2) for i in range(4)]
RERUN = [(f"p{i}", "red", D2) for i in range(3)]


def write_partition(df: DataFrame, uri: str) -> None:
    """How prodclf writes the commodity library: overwrite of the run's partition only."""
    df.write.mode("overwrite").partitionBy("run_date").parquet(uri)


def test_partitioned_parquet_round_trips_through_s3a(
    spark: SparkSession, s3: Any, bucket: str
) -> None:
    assert spark.conf.get("spark.sql.sources.partitionOverwriteMode") == "dynamic"
    uri = f"s3a://{bucket}/commodity/tags"
    write_partition(frame(spark, FIRST), uri)
    write_partition(frame(spark, SECOND), uri)

    assert read_rows(spark, uri) == sorted(FIRST + SECOND)
    assert rows_in_store(s3, bucket, "commodity/tags/") == sorted(FIRST + SECOND)
    keys = objects_under(s3, bucket, "commodity/tags/")
    assert any(k.startswith("commodity/tags/run_date=2026-11-20/part-") for k in keys)


def test_dynamic_overwrite_replaces_only_its_partition(
    spark: SparkSession, s3: Any, bucket: str
) -> None:
    uri = f"s3a://{bucket}/commodity/tags"
    write_partition(frame(spark, FIRST + SECOND), uri)
    before_d1 = [k for k in objects_under(s3, bucket, "commodity/tags/run_date=2026-11-20/")]

    write_partition(frame(spark, RERUN), uri)  # a rerun of D2 with fewer products

    assert read_rows(spark, uri) == sorted(FIRST + RERUN)
    assert rows_in_store(s3, bucket, "commodity/tags/") == sorted(FIRST + RERUN)
    # D1's files were not rewritten, and the commit left no staging or temporary objects.
    assert objects_under(s3, bucket, "commodity/tags/run_date=2026-11-20/") == before_d1
    leftovers = [
        k for k in objects_under(s3, bucket, "") if "_temporary" in k or ".spark-staging" in k
    ]
    assert leftovers == []


def test_transient_503s_lose_and_duplicate_no_rows(
    spark: SparkSession, s3: Any, bucket: str, s3_endpoint: str
) -> None:
    """Every kind of request (reads, writes, copies, deletes) sometimes answered SlowDown."""
    methods = ("GET", "HEAD", "PUT", "POST", "DELETE")
    with FaultProxy(s3_endpoint, rate=0.15, kinds=(SLOWDOWN,), seed=13, methods=methods) as proxy:
        _hadoop_conf(spark).set(f"fs.s3a.bucket.{bucket}.endpoint", proxy.endpoint)
        uri = f"s3a://{bucket}/commodity/tags"
        many = [(f"p{i:04d}", "red" if i % 3 else "blue", D1) for i in range(500)]
        write_partition(frame(spark, many).repartition(4), uri)
        write_partition(frame(spark, SECOND).repartition(3), uri)
        write_partition(frame(spark, RERUN).repartition(2), uri)
        expected = sorted(many + RERUN)
        assert rows_in_store(s3, bucket, "commodity/tags/") == expected  # straight from moto
        read_back = read_rows(spark, uri)
        injected = proxy.injected[SLOWDOWN]
        by_method = {m for m, _, outcome in proxy.log if outcome == SLOWDOWN}

    assert read_back == expected
    assert injected >= 10, f"only {injected} faults injected"
    assert {"GET", "HEAD", "PUT"} <= by_method, by_method
