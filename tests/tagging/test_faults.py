"""Storage faults through the real job: a flaky S3 is retried, a broken one becomes error rows.

The job runs as its own ``prodclf tag`` process (see ``jobproc``) whose boto3 clients reach
the loopback moto server only through ``FaultProxy``: ``AWS_ENDPOINT_URL_S3`` is the
proxy's address in that process's environment, so the driver, the JVM and every Python
worker use it, and nothing is patched. The tests' own SparkSession is not involved.
"""

from __future__ import annotations

import json
import socket
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from conftest import png_bytes
from faultproxy import HUGE, HUGE_LENGTH, SLOWDOWN, STALL, TRANSIENT_KINDS, FaultProxy
from jobproc import (
    JobProcess,
    color_products,
    job_env,
    make_bucket,
    manifests,
    outcome,
    read_partition,
    running_job,
    tag_argv,
    write_base,
    write_config,
)
from support.outputs import without_churn

from prodclf.errors import ModelBundleError
from prodclf.model.bundle import read_meta
from prodclf.storage import objects

pytestmark = pytest.mark.spark4

RUN_DATE = "2026-11-22"
RATE = 0.2
SEED = 8
GOOD = 60
#: Fixed, so that the seeded choices (a function of the request path) are the same every run.
BUCKET = "faulty-store"
MAX_ATTEMPTS = 5
READ_TIMEOUT_S = 1.0


# --- the proxy itself ----------------------------------------------------------------------


def test_fault_proxy_serves_each_fault_as_a_client_sees_it(s3_endpoint: str, s3: Any) -> None:
    """Each kind reaches boto3 as the failure it stands for (no retries, to see it raw)."""
    bucket = make_bucket(s3, "proxy")
    s3.put_object(Bucket=bucket, Key="k.png", Body=b"x" * 1000)
    path = f"/{bucket}/k.png"
    seen: dict[str, str] = {}
    for kind in (*TRANSIENT_KINDS, HUGE, None):
        with FaultProxy(s3_endpoint, rules={path: kind} if kind else {}, stall_max_s=10) as px:
            client = boto3.client(
                "s3",
                endpoint_url=px.endpoint,
                config=Config(
                    retries={"mode": "standard", "total_max_attempts": 1},
                    read_timeout=0.5,
                    connect_timeout=0.5,
                ),
            )
            try:
                resp = client.get_object(Bucket=bucket, Key="k.png")
                length = resp["ContentLength"]
                data = resp["Body"].read(2000)
                seen[str(kind)] = f"{length}:{len(data)}"
            except ClientError as exc:
                seen[str(kind)] = exc.response["Error"]["Code"]
            except BotoCoreError as exc:
                seen[str(kind)] = type(exc).__name__
            assert px.injected == (Counter({kind: 1}) if kind else Counter())
            assert px.requests_for(path) == [kind or "forwarded"]
    assert seen == {
        "slowdown": "SlowDown",
        "internal": "InternalError",
        "reset": "ConnectionClosedError",
        "stall": "ReadTimeoutError",
        "cut": "ResponseStreamingError",
        "huge": "ReadTimeoutError",  # it declared 1 TB and sent nothing
        "None": "1000:1000",
    }


def test_fault_proxy_choices_are_deterministic(s3_endpoint: str) -> None:
    a = FaultProxy(s3_endpoint, rate=0.5, seed=3)
    b = FaultProxy(s3_endpoint, rate=0.5, seed=3)
    paths = [f"/b/k{i}" for i in range(50)] * 3
    assert [a._decide("GET", p) for p in paths] == [b._decide("GET", p) for p in paths]
    assert {a._decide("GET", p) for p in paths} >= set(TRANSIENT_KINDS)
    assert a._decide("PUT", "/b/k0") is None  # only GETs are faulted by default
    for px in (a, b):
        px.stop()


# --- driver-side reads: bundles and manifests ---------------------------------------------


def deny_get(s3: Any, bucket: str, prefix: str) -> None:
    statement = {
        "Effect": "Deny",
        "Principal": "*",
        "Action": "s3:GetObject",
        "Resource": f"arn:aws:s3:::{bucket}/{prefix}*",
    }
    policy = {"Version": "2012-10-17", "Statement": [statement]}
    s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy))


def test_whole_object_reads_tell_missing_from_refused(s3: Any) -> None:
    bucket = make_bucket(s3, "driver")
    s3.put_object(Bucket=bucket, Key="private/bundle.json", Body=b"{}")
    deny_get(s3, bucket, "private/")
    with pytest.raises(FileNotFoundError, match="NoSuchKey"):
        objects.read_bytes(f"s3://{bucket}/public/bundle.json")
    with pytest.raises(FileNotFoundError, match="NoSuchBucket"):
        objects.read_bytes(f"s3://{bucket}-gone/bundle.json")
    with pytest.raises(PermissionError, match="access denied"):
        objects.read_bytes(f"s3://{bucket}/private/bundle.json")
    # And a model bundle the driver may not read is refused as such, in one line.
    with pytest.raises(ModelBundleError, match=r"cannot read bundle\.json .*access denied"):
        read_meta(f"s3://{bucket}/private")


def test_an_unreachable_store_is_an_os_error_not_a_traceback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{port}")
    objects.s3_client.cache_clear()
    try:
        with pytest.raises(OSError, match="EndpointConnectionError"):
            objects.read_bytes("s3://models/color/bundle.json")
        with pytest.raises(OSError, match="EndpointConnectionError"):
            objects.exists("s3://catalog/base")
        with pytest.raises(ModelBundleError, match=r"cannot read bundle\.json"):
            read_meta("s3://models/color")
    finally:
        objects.s3_client.cache_clear()


# --- the job through a flaky store -------------------------------------------------------


@dataclass
class FaultRun:
    job: JobProcess
    rc: int
    seconds: float
    proxy: FaultProxy
    out: Path
    expected: dict[str, tuple[str, str | None, str | None]]
    paths: dict[str, str]  # product_id -> request path on the proxy


@pytest.fixture(scope="module")
def fault_run(
    s3_endpoint: str, color_bundle: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FaultRun]:
    """One run of 60 good products under 20% transient faults, plus three broken objects."""
    tmp = tmp_path_factory.mktemp("faults")
    s3 = boto3.client("s3")
    bucket = BUCKET
    s3.create_bucket(Bucket=bucket)
    colors = color_products(s3, bucket, GOOD)
    expected: dict[str, tuple[str, str | None, str | None]] = {
        pid: ("ok", None, color) for pid, color in colors.items()
    }
    paths = {pid: f"/{bucket}/img/{pid}.png" for pid in colors}
    # Objects that exist in the store but that the proxy always breaks.
    broken = {
        "always-503": (SLOWDOWN, ("error", "fetch_failed", None)),
        "stalled": (STALL, ("error", "fetch_failed", None)),
        "huge": (HUGE, ("error", "object_too_large", None)),
    }
    for pid, (_, want) in broken.items():
        s3.put_object(Bucket=bucket, Key=f"img/{pid}.png", Body=png_bytes((200, 0, 0)))
        paths[pid] = f"/{bucket}/img/{pid}.png"
        expected[pid] = want
    base = write_base(
        tmp / "base",
        [{"product_id": pid, "image_uri": f"s3:/{path}"} for pid, path in paths.items()],
    )
    config = write_config(
        tmp / "faults.yaml",
        storage={
            "allowed_schemes": ["s3"],
            "allowed_buckets": [bucket],
            "retry_mode": "standard",
            "max_attempts": MAX_ATTEMPTS,
            "connect_timeout_s": 1.0,
            "read_timeout_s": READ_TIMEOUT_S,
            "fetch_concurrency": 4,
            "max_object_bytes": 1_000_000,
        },
        inference={"arrow_batch_size": 8, "model_batch_size": 8},
    )
    proxy = FaultProxy(
        s3_endpoint,
        rate=RATE,
        seed=SEED,
        rules={paths[pid]: kind for pid, (kind, _) in broken.items()},
        stall_max_s=30,
    ).start()
    out = tmp / "commodity"
    argv = tag_argv(base, out, color_bundle, RUN_DATE, "faulty-store", config)
    try:
        with running_job(argv, job_env(proxy.endpoint), tmp / "logs") as job:
            rc = job.wait()
            seconds = time.monotonic() - job.started
        yield FaultRun(job, rc, seconds, proxy, out, expected, paths)
    finally:
        proxy.stop()


@pytest.mark.slow
def test_transient_faults_are_retried_and_every_product_ends_ok(fault_run: FaultRun) -> None:
    run = fault_run
    assert run.rc == 0, run.job.tail()
    table = outcome(read_partition(run.out, RUN_DATE), "category")
    assert table == run.expected  # one row per product, every good one ok

    # The faults were real: every kind was injected into the good products' requests,
    # about RATE of them, and each of those products still got its image.
    broken = {run.paths[p] for p in ("always-503", "stalled", "huge")}
    good = [(path, o) for _, path, o in run.proxy.log if path not in broken]
    kinds = Counter(o for _, o in good if o != "forwarded")
    assert set(kinds) == set(TRANSIENT_KINDS), kinds
    assert all(n > 0 for n in kinds.values())
    share = sum(kinds.values()) / len(good)
    assert 0.1 < share < 0.35, (share, kinds)
    hit = {path for path, o in good if o != "forwarded"}
    assert len(hit) >= 10
    assert all("forwarded" in run.proxy.requests_for(path) for path in hit)

    manifest = manifests(run.out)["faulty-store"]
    assert manifest == without_churn(run.job.manifest_printed())
    assert manifest["products_in"] == manifest["rows_written"] == len(run.expected)
    assert manifest["ok"] == GOOD
    assert manifest["errors"] == {"fetch_failed": 2, "object_too_large": 1}


@pytest.mark.slow
def test_a_permanently_failing_object_is_a_fetch_failed_row(fault_run: FaultRun) -> None:
    run = fault_run
    row = read_partition(run.out, RUN_DATE).set_index("product_id").loc["always-503"]
    assert (row["status"], row["error_code"]) == ("error", "fetch_failed")
    assert f"SlowDown after {MAX_ATTEMPTS} attempts" in row["error_message"]
    # Exactly the configured attempts, then the product was given up, not the run.
    assert run.proxy.requests_for(run.paths["always-503"]) == [SLOWDOWN] * MAX_ATTEMPTS


@pytest.mark.slow
def test_a_stalled_read_ends_as_an_error_row_within_the_read_timeout(fault_run: FaultRun) -> None:
    run = fault_run
    row = read_partition(run.out, RUN_DATE).set_index("product_id").loc["stalled"]
    assert (row["status"], row["error_code"]) == ("error", "fetch_failed")
    assert "ReadTimeoutError" in row["error_message"]
    path = run.paths["stalled"]
    assert run.proxy.requests_for(path) == [STALL] * MAX_ATTEMPTS
    # Each stalled request was abandoned by the client at its read timeout, not waited out
    # (the proxy would have held it for 30 s).
    held = [s for p, kind, s in run.proxy.held if p == path]
    assert len(held) == MAX_ATTEMPTS
    assert all(0.8 * READ_TIMEOUT_S <= s < READ_TIMEOUT_S + 1.5 for s in held), held


@pytest.mark.slow
def test_an_object_over_the_byte_limit_is_never_read(fault_run: FaultRun) -> None:
    """The proxy declares 1 TB and sends no byte of it: reading it would hang or exhaust memory."""
    run = fault_run
    row = read_partition(run.out, RUN_DATE).set_index("product_id").loc["huge"]
    assert (row["status"], row["error_code"]) == ("error", "object_too_large")
    assert str(HUGE_LENGTH) in row["error_message"]
    path = run.paths["huge"]
    assert run.proxy.requests_for(path) == [HUGE]  # refused on its headers, not retried
    held = [s for p, _, s in run.proxy.held if p == path]
    assert len(held) == 1 and held[0] < READ_TIMEOUT_S / 2, held  # hung up at once
