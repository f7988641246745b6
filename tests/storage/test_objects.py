"""Single objects on the local filesystem and on S3 (the loopback moto server).

A few S3 failure modes (5xx, a body cut short, a closed port) cannot be produced by moto;
they are served by a tiny scripted HTTP server on 127.0.0.1, reached through the same
boto3 settings chain (``AWS_ENDPOINT_URL_S3``), nothing patched in-process.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import threading
import uuid
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from conftest import png_bytes

from prodclf.config import StorageConfig
from prodclf.errors import ErrorCode, RowError
from prodclf.storage import objects
from prodclf.storage.uris import parse_uri

pytestmark = pytest.mark.spark4

CFG = StorageConfig(max_object_bytes=1000, connect_timeout_s=1.0, read_timeout_s=2.0)


def fetch(uri: str, cfg: StorageConfig = CFG) -> bytes:
    return objects.fetch_image_bytes(parse_uri(uri), cfg)


def fetch_code(uri: str, cfg: StorageConfig = CFG) -> ErrorCode:
    with pytest.raises(RowError) as info:
        fetch(uri, cfg)
    return info.value.code


# --- local files -----------------------------------------------------------------------


def test_file_fetch(tmp_path: Path) -> None:
    (tmp_path / "ok.png").write_bytes(b"x" * 1000)  # exactly the limit
    (tmp_path / "big.png").write_bytes(b"x" * 1001)
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "dir").mkdir()
    base = f"file://{tmp_path}"
    assert fetch(f"{base}/ok.png") == b"x" * 1000
    assert fetch_code(f"{base}/missing.png") is ErrorCode.NOT_FOUND
    assert fetch_code(f"{base}/dir") is ErrorCode.NOT_FOUND
    assert fetch_code(f"{base}/ok.png/child.png") is ErrorCode.NOT_FOUND
    assert fetch_code(f"{base}/empty.png") is ErrorCode.EMPTY_OBJECT
    assert fetch_code(f"{base}/big.png") is ErrorCode.OBJECT_TOO_LARGE


def test_file_without_permission_is_access_denied(tmp_path: Path) -> None:
    """Root reads any file, so as root the check runs in a child that drops to 'nobody'."""
    p = tmp_path / "secret.png"
    p.write_bytes(b"x")
    p.chmod(0)
    tmp_path.chmod(0o755)
    if os.geteuid() != 0:
        assert fetch_code(f"file://{p}") is ErrorCode.ACCESS_DENIED
        return
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: unprivileged, reports the code through the pipe
        code = "crash"
        try:
            os.setgid(65534)
            os.setuid(65534)
            code = fetch_code(f"file://{p}").value
        finally:
            os.write(write, code.encode())
            os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    assert os.read(read, 100).decode() == ErrorCode.ACCESS_DENIED.value


def test_file_helpers(tmp_path: Path) -> None:
    root = tmp_path / "bundle"
    objects.write_bytes(f"file://{root}/bundle.json", b"{}")
    objects.write_bytes(str(root / "saved_model" / "saved_model.pb"), b"pb")  # plain path
    assert objects.read_bytes(f"file://{root}/bundle.json") == b"{}"
    assert objects.read_bytes(str(root / "saved_model/saved_model.pb")) == b"pb"
    assert sorted(p.name for p in root.rglob("*")) == [
        "bundle.json",
        "saved_model",
        "saved_model.pb",
    ]
    assert objects.exists(f"file://{root}")
    assert objects.exists(str(root / "bundle.json"))
    assert not objects.exists(f"file://{root}/nothing")
    assert list(objects.list_files(f"file://{root}")) == [
        ("bundle.json", f"file://{root}/bundle.json"),
        ("saved_model/saved_model.pb", f"file://{root}/saved_model/saved_model.pb"),
    ]
    assert objects.local_path(f"file://{root}") == root
    assert objects.copy_tree_to_local(f"file://{root}", tmp_path / "unused") == root
    with pytest.raises(FileNotFoundError):
        objects.read_bytes(f"file://{root}/missing.json")
    with pytest.raises(OSError):
        objects.local_path("s3://bucket/key")


def test_copy_tree_from_local_to_a_directory_replaces_it(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_bytes(b"a")
    (src / "sub" / "b.txt").write_bytes(b"b")
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "stale.txt").write_bytes(b"old")
    objects.copy_tree_from_local(src, f"file://{dest}")
    assert [rel for rel, _ in objects.list_files(str(dest))] == ["a.txt", "sub/b.txt"]
    assert (dest / "sub" / "b.txt").read_bytes() == b"b"


def test_write_bytes_replaces_and_leaves_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "m" / "run.json"
    objects.write_bytes(str(target), b"1")
    objects.write_bytes(str(target), b"2")
    assert target.read_bytes() == b"2"
    assert os.listdir(target.parent) == ["run.json"]


# --- S3 on the loopback moto server ----------------------------------------------------


@pytest.fixture
def bucket(s3: Any) -> str:
    name = f"objects-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return name


def test_s3_fetch(s3: Any, bucket: str) -> None:
    image = png_bytes((10, 20, 30))
    s3.put_object(Bucket=bucket, Key="img/ok.png", Body=image)
    s3.put_object(Bucket=bucket, Key="img/empty.png", Body=b"")
    s3.put_object(Bucket=bucket, Key="img/big.png", Body=b"x" * 1001)
    s3.put_object(Bucket=bucket, Key="img/limit.png", Body=b"x" * 1000)
    cfg = StorageConfig(max_object_bytes=max(1000, len(image)))
    assert fetch(f"s3://{bucket}/img/ok.png", cfg) == image
    assert fetch(f"s3://{bucket}/img/limit.png") == b"x" * 1000
    assert fetch_code(f"s3://{bucket}/img/missing.png") is ErrorCode.NOT_FOUND
    assert fetch_code(f"s3://no-such-bucket-{bucket}/x.png") is ErrorCode.NOT_FOUND
    assert fetch_code(f"s3://{bucket}/img/empty.png") is ErrorCode.EMPTY_OBJECT
    assert fetch_code(f"s3://{bucket}/img/big.png") is ErrorCode.OBJECT_TOO_LARGE


def test_s3_access_denied_by_bucket_policy(s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="private/x.png", Body=b"x")
    s3.put_object(Bucket=bucket, Key="public/x.png", Body=b"y")
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Deny",
                "Principal": "*",
                "Action": "s3:GetObject",
                "Resource": f"arn:aws:s3:::{bucket}/private/*",
            }
        ],
    }
    s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy))
    # moto's server answers 403 here, as S3 does.
    assert fetch_code(f"s3://{bucket}/private/x.png") is ErrorCode.ACCESS_DENIED
    assert fetch(f"s3://{bucket}/public/x.png") == b"y"


def test_s3_helpers(s3: Any, bucket: str, tmp_path: Path) -> None:
    base = f"s3://{bucket}/models/color"
    objects.write_bytes(f"{base}/bundle.json", b'{"a": 1}')
    assert objects.read_bytes(f"{base}/bundle.json") == b'{"a": 1}'
    assert s3.get_object(Bucket=bucket, Key="models/color/bundle.json")["Body"].read() == (
        b'{"a": 1}'
    )
    with pytest.raises(FileNotFoundError):
        objects.read_bytes(f"{base}/missing.json")

    src = tmp_path / "src"
    (src / "saved_model" / "variables").mkdir(parents=True)
    (src / "saved_model" / "saved_model.pb").write_bytes(b"pb")
    (src / "saved_model" / "variables" / "variables.index").write_bytes(b"idx")
    (src / "bundle.json").write_bytes(b'{"a": 2}')
    objects.write_bytes(f"{base}/saved_model/variables/old-shard", b"stale")
    objects.write_bytes(f"{base}-2/keep.json", b"a sibling prefix")
    objects.copy_tree_from_local(src, f"{base}/")
    # The prefix now holds exactly the published tree: replaced, stale keys deleted.
    assert list(objects.list_files(base)) == [
        ("bundle.json", f"{base}/bundle.json"),
        ("saved_model/saved_model.pb", f"{base}/saved_model/saved_model.pb"),
        ("saved_model/variables/variables.index", f"{base}/saved_model/variables/variables.index"),
    ]
    assert objects.read_bytes(f"{base}/bundle.json") == b'{"a": 2}'
    assert objects.read_bytes(f"{base}-2/keep.json") == b"a sibling prefix"
    assert list(objects.list_files(f"s3://{bucket}/models/col")) == []

    dest = objects.copy_tree_to_local(base, tmp_path / "copy")
    assert dest == tmp_path / "copy"
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()) == [
        "bundle.json",
        "saved_model/saved_model.pb",
        "saved_model/variables/variables.index",
    ]
    assert (dest / "saved_model" / "variables" / "variables.index").read_bytes() == b"idx"

    assert objects.exists(base)
    assert objects.exists(f"{base}/")
    assert objects.exists(f"{base}/bundle.json")
    assert objects.exists(f"{base}/saved_model")
    assert not objects.exists(f"{base}/saved")  # a key prefix is not a directory
    assert not objects.exists(f"{base}/nothing")
    assert not objects.exists(f"s3://{bucket}/models/colo")


def test_s3_exists_with_siblings_that_sort_first(s3: Any, bucket: str) -> None:
    # "base-2023/..." and "base.bak/..." sort before "base/..." in a listing.
    for key in ("base-2023/part-0.parquet", "base-2023/part-1.parquet", "base.bak/part-0"):
        s3.put_object(Bucket=bucket, Key=key, Body=b"x")
    assert not objects.exists(f"s3://{bucket}/base")
    s3.put_object(Bucket=bucket, Key="base/part-0.parquet", Body=b"x")
    assert objects.exists(f"s3://{bucket}/base")
    assert objects.exists(f"s3://{bucket}/base-2023")


def test_s3a_and_s3n_locations_name_the_same_objects_as_s3(s3: Any, bucket: str) -> None:
    """A library or bundle given as s3a:// (open-source Spark) or s3n:// is the s3:// one."""
    objects.write_bytes(f"s3a://{bucket}/lib/_CURRENT.json", b"{}")
    assert objects.read_bytes(f"s3://{bucket}/lib/_CURRENT.json") == b"{}"
    assert objects.exists(f"s3n://{bucket}/lib")
    assert objects.create_exclusive(f"s3a://{bucket}/lib/_lock.json", b"1")
    assert not objects.create_exclusive(f"s3://{bucket}/lib/_lock.json", b"2")
    assert objects.list_names(f"S3A://{bucket}/lib/") == ["_CURRENT.json", "_lock.json"]
    assert [u for _, u in objects.list_files(f"s3a://{bucket}/lib")] == [
        f"s3://{bucket}/lib/_CURRENT.json",
        f"s3://{bucket}/lib/_lock.json",
    ]
    objects.delete(f"s3n://{bucket}/lib/_lock.json")
    assert not objects.exists(f"s3://{bucket}/lib/_lock.json")


@pytest.mark.parametrize("location", ["hdfs://nn/lib", "gs://bucket/lib", "abfs://c@a/lib"])
def test_other_dataset_schemes_are_refused_in_one_line(location: str) -> None:
    with pytest.raises(OSError, match=r"^scheme '\w+' is not supported$"):
        objects.exists(location)


def test_s3_exists_on_missing_bucket_is_an_os_error(s3_endpoint: str) -> None:
    with pytest.raises(OSError, match="NoSuchBucket"):
        objects.exists(f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/x")


# --- failures moto cannot produce: a scripted server on loopback -------------------------


class FakeS3:
    """Answers GETs with scripted responses per path; the last one repeats."""

    def __init__(self) -> None:
        self.script: dict[str, list[tuple[str, Any]]] = {}
        self.hits: list[str] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                fake.hits.append(self.path)
                steps = fake.script.get(self.path) or [("error", (404, "NoSuchKey"))]
                kind, arg = steps.pop(0) if len(steps) > 1 else steps[0]
                if kind == "error":
                    status, code = arg
                    body = (
                        f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
                        f"<Message>scripted</Message></Error>"
                    ).encode()
                    self._send(status, body, len(body))
                elif kind == "cut":  # declares more bytes than it sends, then closes
                    self._send(200, arg, len(arg) * 10)
                elif kind == "damaged":  # the checksum of other bytes: damaged on the way
                    crc = zlib.crc32(arg + b"!").to_bytes(4, "big")
                    checksum = ("x-amz-checksum-crc32", base64.b64encode(crc).decode())
                    self._send(200, arg, len(arg), checksum)
                else:
                    self._send(200, arg, len(arg))

            def _send(self, status: int, body: bytes, length: int, *extra: tuple[str, str]) -> None:
                self.send_response(status)
                for name, value in extra:
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(length))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(body)
                self.close_connection = True

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"


def point_boto3_at(monkeypatch: pytest.MonkeyPatch, endpoint: str) -> None:
    for key, value in {
        "AWS_ENDPOINT_URL_S3": endpoint,
        "AWS_ACCESS_KEY_ID": "fake-key",
        "AWS_SECRET_ACCESS_KEY": "fake-secret",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }.items():
        monkeypatch.setenv(key, value)


@pytest.fixture
def fake_s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeS3]:
    fake = FakeS3()
    thread = threading.Thread(target=fake.server.serve_forever, daemon=True)
    thread.start()
    point_boto3_at(monkeypatch, fake.endpoint)
    objects.s3_client.cache_clear()  # clients are cached by config; the endpoint is not
    yield fake
    objects.s3_client.cache_clear()
    fake.server.shutdown()
    fake.server.server_close()


RETRY2 = StorageConfig(max_attempts=2, connect_timeout_s=0.5, read_timeout_s=2.0)


def test_s3_server_errors_are_fetch_failed_after_the_configured_attempts(fake_s3: FakeS3) -> None:
    fake_s3.script["/b/x.png"] = [("error", (500, "InternalError"))]
    with pytest.raises(RowError) as info:
        fetch("s3://b/x.png", RETRY2)
    assert info.value.code is ErrorCode.FETCH_FAILED
    assert "InternalError after 2 attempts" in info.value.message
    assert fake_s3.hits == ["/b/x.png", "/b/x.png"]


def test_s3_server_error_then_success_is_retried(fake_s3: FakeS3) -> None:
    fake_s3.script["/b/x.png"] = [("error", (503, "SlowDown")), ("ok", b"image")]
    assert fetch("s3://b/x.png", RETRY2) == b"image"
    assert len(fake_s3.hits) == 2


def test_s3_403_is_access_denied_without_retries(fake_s3: FakeS3) -> None:
    fake_s3.script["/b/x.png"] = [("error", (403, "AccessDenied"))]
    assert fetch_code("s3://b/x.png", RETRY2) is ErrorCode.ACCESS_DENIED
    assert fake_s3.hits == ["/b/x.png"]


def test_s3_body_cut_short_is_retried_then_fetch_failed(fake_s3: FakeS3) -> None:
    fake_s3.script["/b/cut.png"] = [("cut", b"0123456789")]
    with pytest.raises(RowError) as info:
        fetch("s3://b/cut.png", RETRY2)
    assert info.value.code is ErrorCode.FETCH_FAILED
    assert len(fake_s3.hits) == 2
    fake_s3.script["/b/once.png"] = [("cut", b"0123456789"), ("ok", b"complete")]
    assert fetch("s3://b/once.png", RETRY2) == b"complete"


def test_s3_a_damaged_body_is_never_returned(fake_s3: FakeS3) -> None:
    """The direct first GET checks the store's checksum as botocore would, then retries."""
    fake_s3.script["/b/x.png"] = [("damaged", b"image"), ("ok", b"image")]
    assert fetch("s3://b/x.png", RETRY2) == b"image"
    assert len(fake_s3.hits) == 2
    fake_s3.script["/b/y.png"] = [("damaged", b"image")]
    assert fetch_code("s3://b/y.png", RETRY2) is ErrorCode.FETCH_FAILED
    assert len(fake_s3.hits) == 4


def test_s3_not_found_takes_one_request(fake_s3: FakeS3) -> None:
    assert fetch_code("s3://b/missing.png", RETRY2) is ErrorCode.NOT_FOUND
    assert fake_s3.hits == ["/b/missing.png"]


def test_s3_an_answer_the_direct_get_may_have_caused_is_botocores_from_then_on(
    fake_s3: FakeS3,
) -> None:
    """A 400 (a region or signing mismatch) is retried by botocore, which keeps the bucket."""
    fake_s3.script["/b/x.png"] = [("error", (400, "AuthorizationHeaderMalformed")), ("ok", b"x")]
    fake_s3.script["/b/y.png"] = [("ok", b"y")]
    cfg = StorageConfig(max_attempts=3)
    calls: list[str] = []
    for attempts in (2, 3):  # botocore's clients after a direct attempt, and without one
        objects.client_for(cfg, attempts).meta.events.register(
            "before-parameter-build.s3.GetObject",
            lambda params, **_: calls.append(params["Key"]),
        )
    assert fetch("s3://b/x.png", cfg) == b"x"
    assert fetch("s3://b/y.png", cfg) == b"y"
    assert fake_s3.hits == ["/b/x.png", "/b/x.png", "/b/y.png"]
    assert calls == ["x.png", "y.png"]


def self_signed_cert(dest: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, PEM files in ``dest``."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = dest / "cert.pem", dest / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


def test_s3_over_tls_trusts_only_what_boto3_trusts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The direct GET uses boto3's own HTTP session: its CA bundle, its verification."""
    import ssl

    cert, key = self_signed_cert(tmp_path)
    fake = FakeS3()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    fake.server.socket = context.wrap_socket(fake.server.socket, server_side=True)
    thread = threading.Thread(target=fake.server.serve_forever, daemon=True)
    thread.start()
    fake.script["/b/x.png"] = [("ok", b"image")]
    point_boto3_at(monkeypatch, fake.endpoint.replace("http://", "https://"))
    cfg = StorageConfig(max_attempts=2, connect_timeout_s=2.0, read_timeout_s=2.0)
    try:
        # Not trusted (boto3's default bundle does not hold this certificate): never the bytes.
        objects.s3_client.cache_clear()
        assert fetch_code("s3://b/x.png", cfg) is ErrorCode.FETCH_FAILED
        assert fake.hits == []  # no request was ever answered over an unverified connection
        # Trusted through the standard AWS setting: the direct GET alone fetches it.
        monkeypatch.setenv("AWS_CA_BUNDLE", str(cert))
        objects.s3_client.cache_clear()
        calls: list[str] = []
        for attempts in (1, 2):
            objects.client_for(cfg, attempts).meta.events.register(
                "before-parameter-build.s3.GetObject",
                lambda params, **_: calls.append(params["Key"]),
            )
        assert fetch("s3://b/x.png", cfg) == b"image"
        assert fake.hits == ["/b/x.png"] and calls == []
    finally:
        objects.s3_client.cache_clear()
        fake.server.shutdown()
        fake.server.server_close()


def test_s3_closed_port_is_store_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    """Refused connections concern the store, not the product: never a per-product code."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    point_boto3_at(monkeypatch, f"http://127.0.0.1:{port}")
    objects.s3_client.cache_clear()
    try:
        with pytest.raises(RowError) as info:
            fetch("s3://b/x.png", RETRY2)
        assert info.value.code is ErrorCode.STORE_UNAVAILABLE
        assert "EndpointConnectionError, the store cannot be reached" in info.value.message
        # A name that does not resolve: the same (botocore reports DNS failures alike).
        point_boto3_at(monkeypatch, "http://prodclf-no-such-host.invalid:9")
        objects.s3_client.cache_clear()
        assert fetch_code("s3://b/x.png", RETRY2) is ErrorCode.STORE_UNAVAILABLE
    finally:
        objects.s3_client.cache_clear()


@pytest.mark.parametrize(
    ("status", "code"),
    [(403, "InvalidAccessKeyId"), (403, "SignatureDoesNotMatch"), (400, "ExpiredToken")],
)
def test_rejected_credentials_are_store_unavailable_not_access_denied(
    fake_s3: FakeS3, status: int, code: str
) -> None:
    fake_s3.script["/b/x.png"] = [("error", (status, code))]
    for cfg, requests in (
        (StorageConfig(max_attempts=5, direct_get=False), 1),
        # botocore's own signer confirms what the direct first attempt was told, once
        (StorageConfig(max_attempts=5), 2),
    ):
        fake_s3.hits.clear()
        objects.s3_client.cache_clear()
        with pytest.raises(RowError) as info:
            fetch("s3://b/x.png", cfg)
        assert info.value.code is ErrorCode.STORE_UNAVAILABLE
        assert f"refused the credentials ({code})" in info.value.message
        assert fake_s3.hits == ["/b/x.png"] * requests  # never retried


def test_the_fetch_deadline_bounds_botocores_own_retries(s3_endpoint: str, s3: Any) -> None:
    """Every attempt stalls until the read timeout: botocore alone would make 10 of them."""
    import time

    from faultproxy import STALL, FaultProxy

    bucket = f"stall-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="x.png", Body=b"x" * 100)
    cfg = StorageConfig(
        connect_timeout_s=0.5, read_timeout_s=1.0, max_attempts=10, fetch_deadline_s=4.0
    )
    path = f"/{bucket}/x.png"
    with FaultProxy(s3_endpoint, rules={path: STALL}, stall_max_s=20) as proxy:
        saved = os.environ["AWS_ENDPOINT_URL_S3"]
        os.environ["AWS_ENDPOINT_URL_S3"] = proxy.endpoint
        objects.s3_client.cache_clear()
        try:
            t0 = time.monotonic()
            with pytest.raises(RowError) as info:
                fetch(f"s3:/{path}", cfg)
            elapsed = time.monotonic() - t0
        finally:
            os.environ["AWS_ENDPOINT_URL_S3"] = saved
            objects.s3_client.cache_clear()
        attempts = len(proxy.requests_for(path))
    assert info.value.code is ErrorCode.FETCH_FAILED
    assert "no time left for another (storage.fetch_deadline_s=4)" in info.value.message
    assert elapsed <= cfg.fetch_deadline_s, elapsed
    assert 2 <= attempts < 10, attempts


def test_a_trickling_body_ends_at_the_fetch_deadline() -> None:
    """read_timeout_s bounds each read; the deadline bounds the whole object."""
    import time

    from prodclf.errors import ErrorCode, RowError
    from prodclf.storage.objects import _read_until

    class Trickle:
        def __init__(self) -> None:
            self.reads = 0

        def read(self, n: int) -> bytes:
            self.reads += 1
            time.sleep(0.02)
            return b"x" * min(n, 10)

    body = Trickle()
    start = time.monotonic()
    with pytest.raises(RowError) as info:
        _read_until(body, 10_000_000, time.monotonic() + 0.2, "s3://b/slow.jpg")
    assert info.value.code is ErrorCode.FETCH_FAILED
    assert "fetch deadline exceeded" in str(info.value)
    assert time.monotonic() - start < 1.0 and body.reads < 50

    class Quick:
        def __init__(self, data: bytes) -> None:
            self.data = data

        def read(self, n: int) -> bytes:
            chunk, self.data = self.data[:n], self.data[n:]
            return chunk

    assert (
        _read_until(Quick(b"abc" * 100_000), 10**9, time.monotonic() + 5, "u") == b"abc" * 100_000
    )
    assert _read_until(Quick(b"abcdef"), 4, time.monotonic() + 5, "u") == b"abcd"


def test_a_location_lists_as_a_directory_or_as_one_file_in_every_spelling(
    s3: Any, tmp_path: Path
) -> None:
    """Every location argument: a directory, one file, a trailing slash, s3/s3a/file URIs."""
    s3.create_bucket(Bucket="spellings")
    for key in ("base/part-0.parquet", "base/part-1.parquet", "one.parquet"):
        s3.put_object(Bucket="spellings", Key=key, Body=b"x")
    parts = [
        ("part-0.parquet", "s3://spellings/base/part-0.parquet"),
        ("part-1.parquet", "s3://spellings/base/part-1.parquet"),
    ]
    for spelling in ("s3://spellings/base", "s3a://spellings/base/", "s3://spellings/base/"):
        assert list(objects.list_files(spelling)) == parts, spelling
    one = [("one.parquet", "s3://spellings/one.parquet")]
    assert list(objects.list_files("s3a://spellings/one.parquet")) == one
    assert list(objects.list_files("s3://spellings/on")) == []  # a prefix of a key is nothing
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.parquet").write_bytes(b"x")
    local = [("a.parquet", f"file://{tmp_path}/d/a.parquet")]
    for spelling in (f"{tmp_path}/d", f"{tmp_path}/d/", f"file://{tmp_path}/d"):
        assert list(objects.list_files(spelling)) == local, spelling
    assert list(objects.list_files(f"file://{tmp_path}/d/a.parquet")) == local
