"""The direct first GET (``prodclf.storage.s3get``): the request botocore would send.

The signer is checked against botocore's own ``S3SigV4Auth``, byte for byte; the URL and
region against what botocore's pipeline builds; the whole path against the loopback moto
server, with keys that need encoding.
"""

from __future__ import annotations

import datetime
import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from prodclf.config import StorageConfig
from prodclf.storage import objects, s3get
from prodclf.storage.uris import parse_uri

pytestmark = pytest.mark.spark4

#: Keys whose URL form differs from the key: spaces, plus, unicode, reserved characters.
AWKWARD_KEYS = [
    "img/plain.jpg",
    "img/with space.jpg",
    "img/plus+sign.jpg",
    "img/tilde~and=equals&amp.jpg",
    "img/ünïcødé-商品.jpg",
    "img/percent%41.jpg",
    "img/question?hash#.jpg",
    "img//double/slash.jpg",
    "img/semi;colon,comma:colon@at$dollar'quote(paren)*star!.jpg",
]


@pytest.mark.parametrize("key", AWKWARD_KEYS)
@pytest.mark.parametrize(
    ("url", "token"),
    [
        ("http://127.0.0.1:9000/bucket-a/", None),
        ("https://bucket-a.s3.eu-west-1.amazonaws.com/", "session-token/with+chars=="),
        ("https://s3.eu-west-1.amazonaws.com:443/bucket.with.dots/", None),
    ],
)
def test_the_signature_is_botocores(url: str, token: str | None, key: str) -> None:
    from urllib.parse import quote, urlsplit

    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    full = url + quote(key, safe="/~")
    request = AWSRequest(method="GET", url=full, headers={"x-amz-checksum-mode": "ENABLED"})
    S3SigV4Auth(Credentials("AKIDEXAMPLE", "secret/key+x", token), "s3", "eu-west-1").add_auth(
        request
    )
    when = datetime.datetime.strptime(request.headers["X-Amz-Date"], "%Y%m%dT%H%M%SZ")
    parts = urlsplit(full)
    assert parts.hostname is not None
    ours = s3get.signed_headers(
        s3get._host(parts.scheme, parts.hostname, parts.port),
        parts.path,
        "eu-west-1",
        "AKIDEXAMPLE",
        "secret/key+x",
        token,
        when,
        extra={"x-amz-checksum-mode": "ENABLED"},
    )
    assert ours["Authorization"] == request.headers["Authorization"]
    assert ours["x-amz-content-sha256"] == request.headers["X-Amz-Content-SHA256"]
    assert ours.get("x-amz-security-token") == request.headers.get("X-Amz-Security-Token")


def test_signing_keys_are_cached_and_bounded() -> None:
    keys: dict[tuple[str, str, str], bytes] = {}
    day = datetime.datetime(2026, 11, 30, 1, 2, 3)
    args = ("h", "/b/k", "us-east-1", "AK", "SK", None)
    first = s3get.signed_headers(*args, day, keys=keys)
    assert list(keys) == [("SK", "20261130", "us-east-1")]
    assert s3get.signed_headers(*args, day, keys=keys) == first == s3get.signed_headers(*args, day)
    for n in range(40):
        s3get.signed_headers("h", "/b/k", f"r{n}", "AK", "SK", None, day, keys=keys)
    assert len(keys) <= 16


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for key, value in {
        "AWS_ACCESS_KEY_ID": "fake-key",
        "AWS_SECRET_ACCESS_KEY": "fake-secret",
        "AWS_DEFAULT_REGION": "eu-west-1",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    objects.s3_client.cache_clear()
    yield
    objects.s3_client.cache_clear()


def where(client: Any, bucket: str) -> tuple[str, str, str, str, dict[str, str]] | None:
    learnt = s3get._learn(client, bucket)
    if learnt is None:
        return None
    return (learnt.url_prefix, learnt.host, learnt.path_prefix, learnt.region, learnt.extra)


def test_url_and_region_are_botocores(aws: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing is sent: botocore builds the probe request and it is stopped before sending."""
    client = objects.client_for(StorageConfig())
    checksum = {"x-amz-checksum-mode": "ENABLED"}
    regional = "https://shop-images.s3.eu-west-1.amazonaws.com"
    assert where(client, "shop-images") == (
        regional,
        "shop-images.s3.eu-west-1.amazonaws.com",
        "/",
        "eu-west-1",
        checksum,
    )
    # A dotted name cannot be a TLS host name: path style, as botocore decides.
    assert where(client, "shop.images") == (
        "https://s3.eu-west-1.amazonaws.com",
        "s3.eu-west-1.amazonaws.com",
        "/shop.images/",
        "eu-west-1",
        checksum,
    )
    assert where(client, "directory--euw1-az1--x-s3") is None  # S3 Express: not this path

    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9")
    objects.s3_client.cache_clear()
    client = objects.client_for(StorageConfig())
    assert where(client, "shop-images") == (
        "http://127.0.0.1:9",
        "127.0.0.1:9",
        "/shop-images/",
        "eu-west-1",
        checksum,
    )


def test_a_client_not_signing_with_sigv4_keeps_botocores_path(aws: None) -> None:
    import boto3
    from botocore.config import Config

    client = boto3.client("s3", config=Config(signature_version="s3"))
    assert s3get._learn(client, "shop-images") is None
    assert s3get.send_get(client, "shop-images", "x.jpg") is None


def get_object_calls(*clients: Any) -> list[str]:
    """The keys of every ``get_object`` botocore's pipeline runs on ``clients``."""
    calls: list[str] = []
    for client in clients:
        client.meta.events.register(
            "before-parameter-build.s3.GetObject",
            lambda params, **_: calls.append(params["Key"]),
        )
    return calls


def test_objects_with_awkward_keys_and_checksums_come_back_whole(s3: Any) -> None:
    bucket = f"direct-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=bucket)
    # "?" and "#" cannot appear in an s3:// reference (parse_uri refuses them per row).
    keys = [k for k in AWKWARD_KEYS if "?" not in k]
    blobs = {key: os.urandom(3000 + n) for n, key in enumerate(keys)}
    for n, (key, blob) in enumerate(blobs.items()):
        algorithm = ("CRC32", "SHA256", "SHA1")[n % 3]
        s3.put_object(Bucket=bucket, Key=key, Body=blob, ChecksumAlgorithm=algorithm)
    cfg = StorageConfig(max_attempts=3)
    objects.s3_client.cache_clear()
    try:
        # botocore's clients: after a direct attempt (2 left), and without one (3)
        botocore_calls = get_object_calls(objects.client_for(cfg, 2), objects.client_for(cfg, 3))
        for key, blob in blobs.items():
            assert objects.fetch_image_bytes(parse_uri(f"s3://{bucket}/{key}"), cfg) == blob
        assert botocore_calls == []  # every object came through the direct GET
        for botocore_only in (
            StorageConfig(max_attempts=3, direct_get=False),
            StorageConfig(max_attempts=3, retry_mode="adaptive"),  # its rate limiter sees all
            StorageConfig(max_attempts=1),  # no attempt left for botocore's verdicts
        ):
            calls = get_object_calls(objects.client_for(botocore_only))
            got = objects.fetch_image_bytes(parse_uri(f"s3://{bucket}/{keys[1]}"), botocore_only)
            assert got == blobs[keys[1]] and calls == [keys[1]]
    finally:
        objects.s3_client.cache_clear()


def test_checksum_ok() -> None:
    import base64
    import hashlib
    import zlib

    data = b"product photo"
    crc = base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()
    sha = base64.b64encode(hashlib.sha256(data).digest()).decode()
    assert s3get.checksum_ok({}, data)
    assert s3get.checksum_ok({"x-amz-checksum-crc32": crc}, data)
    assert not s3get.checksum_ok({"x-amz-checksum-crc32": crc}, data + b"!")
    assert not s3get.checksum_ok({"x-amz-checksum-sha256": sha}, data[:-1])
    assert s3get.checksum_ok({"x-amz-checksum-crc32": "AAAAAA==-3"}, data)  # multipart
