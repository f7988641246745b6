"""One object GET, signed here and sent on the boto3 client's own connection pool.

Why: botocore's ``get_object`` pipeline (parameter validation, endpoint rules, event hooks,
response parsing) costs about 1.1 ms of CPU per 140 kB photo, this path about 0.35 ms; on a
tagging worker that is the largest cost after decoding and the model (docs/benchmarks.md,
"Where the CPU goes").

Nothing that decides *what* is sent *where* is decided here. The object's URL and the
signing region are learnt once per bucket from botocore itself: a ``get_object`` on a twin
client, stopped just before it is sent (so virtual-host or path style, custom endpoints,
FIPS and dual-stack follow botocore's rules); the
credentials are the client's (botocore refreshes them); the connection pool, TLS
verification, proxies and timeouts are the client's HTTP session. The request is the one
botocore would send for ``get_object``: SigV4 over ``host``, ``x-amz-checksum-mode`` (when
botocore asks for checksums), ``x-amz-content-sha256`` (the empty payload's hash) and
``x-amz-date`` (and the session token), which ``tests/storage/test_s3get.py`` checks against
botocore's signer, byte for byte. A checksum the store returns is verified here as botocore
would (CRC32, SHA-1, SHA-256 of the whole object; others are left to TLS and the length).

``prodclf.storage.objects`` makes only the first attempt of a fetch this way and decides
what an answer means; anything unusual goes to botocore with the attempts left.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import re
import threading
import weakref
from typing import Any, cast
from urllib.parse import quote, urlsplit

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
_PROBE_KEY = "prodclf-probe"
_CODE = re.compile(rb"<Code>([^<]{1,128})</Code>")


class _Bucket:
    """What every GET in one bucket shares: where objects live and how requests are signed."""

    def __init__(
        self, url_prefix: str, host: str, path_prefix: str, region: str, extra: dict[str, str]
    ) -> None:
        self.url_prefix = url_prefix  # scheme://netloc
        self.host = host  # the Host header, as botocore signs it
        self.path_prefix = path_prefix  # the URL path before the key (``/bucket/`` or ``/``)
        self.region = region
        self.extra = extra  # signed headers botocore adds (x-amz-checksum-mode)


class _State:
    """Per client: the buckets learnt so far (None: this bucket goes through botocore)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.learner: Any = None
        self.buckets: dict[str, _Bucket | None] = {}
        self.keys: dict[tuple[str, str, str], bytes] = {}  # (secret, day, region) -> key


_STATES: weakref.WeakKeyDictionary[Any, _State] = weakref.WeakKeyDictionary()
_STATES_LOCK = threading.Lock()


def _state(client: Any) -> _State:
    with _STATES_LOCK:
        state = _STATES.get(client)
        if state is None:
            state = _STATES[client] = _State()
        return state


def disable(client: Any, bucket: str) -> None:
    """Every later GET in ``bucket`` through this client goes through botocore."""
    state = _state(client)
    with state.lock:
        state.buckets[bucket] = None


class _Captured(Exception):
    """Raised from ``before-send``: the request botocore would have sent, not sent."""

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        super().__init__(url)
        self.url = url
        self.headers = headers


def _capture(request: Any, **_: Any) -> None:
    headers = {
        k.lower(): v.decode() if isinstance(v, bytes) else str(v)
        for k, v in request.headers.items()
    }
    raise _Captured(request.url, headers)


def _learner(client: Any) -> Any:
    """A client configured like ``client`` whose ``get_object`` stops before sending."""
    import boto3

    learner = boto3.session.Session().client(
        "s3", region_name=client.meta.region_name, config=client.meta.config
    )
    learner.meta.events.register("before-send.s3.GetObject", _capture)
    return learner


#: The signed headers this module writes itself, and those it copies from botocore's request.
_OWN = {"host", "x-amz-content-sha256", "x-amz-date", "x-amz-security-token"}
_EXTRA = {"x-amz-checksum-mode"}
_SIGV4 = re.compile(r"^AWS4-HMAC-SHA256 Credential=[^/]+/\d{8}/([^/]+)/s3/aws4_request,")


def _learn(client: Any, bucket: str) -> _Bucket | None:
    """The bucket's URL and signing region, as botocore's own ``get_object`` would use them.

    A ``get_object`` of a probe key goes through botocore's whole pipeline (endpoint rules,
    addressing style, signer) on a twin client and is stopped just before it is sent. None
    when the request is not one this module reproduces (not SigV4 for ``s3``, extra
    signed headers, a query string).
    """
    if bucket.endswith("--x-s3"):  # S3 Express directory buckets sign with session auth
        return None
    state = _state(client)
    try:
        with state.lock:
            if state.learner is None:
                state.learner = _learner(client)
        state.learner.get_object(Bucket=bucket, Key=_PROBE_KEY)
    except _Captured as seen:
        url, headers = seen.url, seen.headers
    except Exception:
        return None
    else:
        return None
    parts = urlsplit(url)
    authorization = headers.get("authorization", "")
    region = _SIGV4.match(authorization)
    signed = set(authorization.partition("SignedHeaders=")[2].partition(",")[0].split(";"))
    extra = {k: headers[k] for k in signed & _EXTRA if k in headers}
    if (
        region is None
        or not signed <= _OWN | _EXTRA
        or headers.get("x-amz-content-sha256") != EMPTY_SHA256
        or parts.query
        or not parts.path.endswith("/" + _PROBE_KEY)
        or parts.hostname is None
    ):
        return None
    return _Bucket(
        url_prefix=f"{parts.scheme}://{parts.netloc}",
        host=_host(parts.scheme, parts.hostname, parts.port),
        path_prefix=parts.path[: -len(_PROBE_KEY)],
        region=region.group(1),
        extra=extra,
    )


def _host(scheme: str, hostname: str, port: int | None) -> str:
    """The Host header botocore signs: no default port, IPv6 in brackets."""
    host = f"[{hostname}]" if ":" in hostname else hostname
    if port is not None and port != {"http": 80, "https": 443}.get(scheme):
        host = f"{host}:{port}"
    return host


def _bucket(client: Any, bucket: str) -> _Bucket | None:
    state = _state(client)
    if bucket in state.buckets:
        return state.buckets[bucket]
    learnt = _learn(client, bucket)
    with state.lock:
        return state.buckets.setdefault(bucket, learnt)


def signed_headers(
    host: str,
    path: str,
    region: str,
    access_key: str,
    secret_key: str,
    token: str | None,
    now: datetime.datetime,
    extra: dict[str, str] | None = None,
    keys: dict[tuple[str, str, str], bytes] | None = None,
) -> dict[str, str]:
    """SigV4 headers of a bodiless S3 GET of ``path`` (already URL-encoded), as botocore's.

    ``extra``: more headers to send and sign (lower-case names); ``keys`` caches signing keys.
    """
    amz_date = now.strftime("%Y%m%dT%H%M%SZ")
    day = amz_date[:8]
    headers = {
        **(extra or {}),
        "host": host,
        "x-amz-content-sha256": EMPTY_SHA256,
        "x-amz-date": amz_date,
    }
    if token:
        headers["x-amz-security-token"] = token
    names = sorted(headers)
    lines = ["GET", path, "", *(f"{n}:{headers[n]}" for n in names), "", ";".join(names)]
    canonical = "\n".join([*lines, EMPTY_SHA256])
    scope = f"{day}/{region}/s3/aws4_request"
    to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()]
    )
    signing_key = keys.get((secret_key, day, region)) if keys is not None else None
    if signing_key is None:
        signing_key = ("AWS4" + secret_key).encode()
        for part in (day, region, "s3", "aws4_request"):
            signing_key = hmac.new(signing_key, part.encode(), hashlib.sha256).digest()
        if keys is not None:
            if len(keys) >= 16:  # a new day or rotated credentials: the old keys are dead
                keys.clear()
            keys[(secret_key, day, region)] = signing_key
    signature = hmac.new(signing_key, to_sign.encode(), hashlib.sha256).hexdigest()
    del headers["host"]  # the HTTP client sends it, from the URL
    headers["Authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={access_key}/{scope}, "
        f"SignedHeaders={';'.join(names)}, Signature={signature}"
    )
    return headers


def send_get(client: Any, bucket: str, key: str) -> Any:
    """The answer (botocore ``AWSResponse``, body unread) or None: use botocore for this one.

    Raises botocore's own exceptions for a request that got no answer (refused, timed out).
    """
    from botocore.awsrequest import AWSPreparedRequest

    where = _bucket(client, bucket)
    if where is None:
        return None
    creds = client._get_credentials()
    if creds is None:
        return None  # botocore's path reports NoCredentialsError, as a store failure
    frozen = creds.get_frozen_credentials()
    path = where.path_prefix + quote(key, safe="/~")
    state = _state(client)
    headers = signed_headers(
        where.host,
        path,
        where.region,
        frozen.access_key,
        frozen.secret_key,
        frozen.token,
        datetime.datetime.now(datetime.timezone.utc),
        where.extra,
        state.keys,
    )
    # A plain dict, as urllib3 wants (botocore's HTTPHeaders has no ``copy``).
    request = AWSPreparedRequest(
        "GET", where.url_prefix + path, cast(Any, headers), None, stream_output=True, context={}
    )
    return client._endpoint.http_session.send(request)


def error_code(body: bytes) -> str:
    """The ``<Code>`` of an S3 XML error body, or ''."""
    match = _CODE.search(body)
    return match.group(1).decode("utf-8", "replace") if match else ""


def checksum_ok(headers: Any, data: bytes) -> bool:
    """False when the store sent a whole-object checksum that ``data`` does not match."""
    import base64
    import zlib

    for name, digest in (
        ("x-amz-checksum-crc32", lambda d: zlib.crc32(d).to_bytes(4, "big")),
        ("x-amz-checksum-sha256", lambda d: hashlib.sha256(d).digest()),
        ("x-amz-checksum-sha1", lambda d: hashlib.sha1(d).digest()),
    ):
        sent = headers.get(name)
        if sent and "-" not in sent:  # "-N": a multipart composite, not the object's own
            return bool(base64.b64encode(digest(data)).decode() == sent)
    return True
