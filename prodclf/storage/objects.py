"""Reading and writing single objects on S3 (boto3) or the local filesystem.

One boto3 client per Python worker process (clients are thread-safe and hold the
connection pool), configured only through the standard AWS settings chain, so
``AWS_ENDPOINT_URL_S3``, profiles, instance roles and IRSA all work unchanged.
Per-row reads raise ``RowError`` with a code; whole-object helpers used by the driver
raise ``OSError`` subclasses that callers turn into refusals.
"""

from __future__ import annotations

import io
import os
import shutil
import stat
import threading
import time
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any, BinaryIO

from prodclf.config import StorageConfig
from prodclf.errors import ErrorCode, RowError
from prodclf.storage.uris import S3_LOCATION_SCHEMES, ObjectRef, parse_uri

_NOT_FOUND = {"NoSuchKey", "404", "NotFound", "NoSuchBucket"}
_DENIED = {
    "AccessDenied",
    "403",
    "Forbidden",
    "AllAccessDisabled",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
}
#: Answers about the credentials or the account, never about one object: the store as a
#: whole is unusable (``store_unavailable`` rows, a refused preflight probe).
CREDENTIAL_CODES = frozenset(
    {
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "ExpiredTokenException",
        "InvalidToken",
        "TokenRefreshRequired",
        "RequestTimeTooSkewed",
        "AccountProblem",
        "AllAccessDisabled",
        "InvalidSecurity",
    }
)
#: botocore exceptions meaning no request can reach the store (refused, DNS) or be signed.
_UNREACHABLE = (
    "EndpointConnectionError",
    "NoCredentialsError",
    "PartialCredentialsError",
    "CredentialRetrievalError",
)


@lru_cache(maxsize=8)
def s3_client(
    connect_timeout_s: float = 5.0,
    read_timeout_s: float = 30.0,
    retry_mode: str = "standard",
    max_attempts: int = 5,
    max_pool_connections: int = 16,
) -> Any:
    import boto3
    from botocore.config import Config

    # total_max_attempts counts the first request; botocore's "max_attempts" would not.
    retries: Any = {"mode": retry_mode, "total_max_attempts": max_attempts}
    config = Config(
        connect_timeout=connect_timeout_s,
        read_timeout=read_timeout_s,
        retries=retries,
        max_pool_connections=max_pool_connections,
    )
    client = boto3.session.Session().client("s3", config=config)
    client.meta.events.register_first("needs-retry.s3.GetObject", _deadline_guard)
    return client


# --- the fetch deadline, botocore's own retries included ------------------------------------

#: The running fetch's (deadline, seconds one attempt may take, attempts made before
#: botocore's), per thread; see _botocore_fetch.
_BUDGET = threading.local()


class _OutOfTime(Exception):
    """Raised from botocore's retry hook: the next attempt could not end before the deadline."""

    def __init__(self, attempts: int, last: str) -> None:
        super().__init__(last)
        self.attempts = attempts
        self.last = last


def _deadline_guard(
    attempts: int, response: Any = None, caught_exception: Any = None, **_: Any
) -> None:
    """botocore ``needs-retry`` hook: stop retrying a fetch that would overrun its deadline.

    botocore retries inside one ``get_object`` call (``max_attempts``, backoff up to 20 s,
    each attempt up to connect + read timeout), which alone can outlast
    ``fetch_deadline_s``. Before botocore sleeps and retries a failed attempt, this hook
    checks that the longest backoff plus one whole attempt still fits in the budget; if
    not, the call ends now.
    """
    budget = getattr(_BUDGET, "value", None)
    if budget is None:
        return None
    deadline, attempt_s, made = budget
    status = response[0].status_code if response is not None else 0
    if caught_exception is not None:
        last = type(caught_exception).__name__
    elif status >= 500 or status in (400, 429):
        err = response[1].get("Error", {}) if isinstance(response[1], dict) else {}
        last = str(err.get("Code") or status)
        if status == 400 and last not in _RETRIED_400:
            return None
    else:
        return None  # a success or a final answer (404, 403): nothing to retry
    longest_backoff = min(2.0 ** (attempts - 1), 20.0)
    if time.monotonic() + longest_backoff + attempt_s > deadline:
        raise _OutOfTime(made + attempts, last)
    return None


#: 400 answers botocore retries (throttling, timeouts).
_RETRIED_400 = {"RequestTimeout", "Throttling", "ThrottlingException", "SlowDown"}


def client_for(cfg: StorageConfig, attempts: int | None = None) -> Any:
    """The worker's client for ``cfg``; ``attempts`` overrides ``cfg.max_attempts``."""
    return s3_client(
        cfg.connect_timeout_s,
        cfg.read_timeout_s,
        cfg.retry_mode,
        cfg.max_attempts if attempts is None else attempts,
        max(cfg.fetch_concurrency, 10),
    )


def fetch_image_bytes(ref: ObjectRef, cfg: StorageConfig) -> bytes:
    """The object's bytes, or a ``RowError``; never reads more than ``max_object_bytes``."""
    if ref.scheme == "s3":
        return _fetch_s3(ref, cfg)
    return _fetch_file(ref, cfg.max_object_bytes)


def _fetch_file(ref: ObjectRef, limit: int) -> bytes:
    path = ref.key
    try:
        # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer, forever.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        raise RowError(ErrorCode.NOT_FOUND, f"no such object: {ref.uri}") from None
    except PermissionError:
        raise RowError(ErrorCode.ACCESS_DENIED, f"permission denied: {ref.uri}") from None
    except OSError as exc:
        raise RowError(ErrorCode.FETCH_FAILED, f"{type(exc).__name__}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise RowError(ErrorCode.NOT_FOUND, f"{ref.uri} is a directory, not an object")
        if not stat.S_ISREG(st.st_mode):
            # Devices, FIFOs, sockets are not objects (/dev/zero never ends, a FIFO blocks).
            raise RowError(ErrorCode.NOT_FOUND, f"{ref.uri} is not a regular file")
        if st.st_size > limit:
            raise RowError(
                ErrorCode.OBJECT_TOO_LARGE, f"{st.st_size} bytes exceeds the limit of {limit}"
            )
        with os.fdopen(fd, "rb", closefd=False) as fh:
            data = fh.read(limit + 1)
    except OSError as exc:
        raise RowError(ErrorCode.FETCH_FAILED, f"{type(exc).__name__}: {exc.strerror}") from None
    finally:
        os.close(fd)
    return _checked(data, limit)


def _fetch_s3(ref: ObjectRef, cfg: StorageConfig) -> bytes:
    deadline = time.monotonic() + cfg.fetch_deadline_s
    attempts = cfg.max_attempts
    made = 0
    # adaptive: botocore's client-side rate limiter must see every request, so all are its.
    if cfg.direct_get and attempts > 1 and cfg.retry_mode != "adaptive":
        sent, data = _direct_attempt(ref, cfg, deadline)
        if data is not None:
            return data
        made = int(sent)  # when it was sent, botocore has the attempts left
    return _botocore_fetch(ref, cfg, deadline, made)


def _direct_attempt(
    ref: ObjectRef, cfg: StorageConfig, deadline: float
) -> tuple[bool, bytes | None]:
    """The first attempt, without botocore's request pipeline (``s3get``).

    Returns (sent, bytes), raises the ``RowError`` of a final answer about the object (404,
    ``AccessDenied``, too large), or returns no bytes when this attempt decides nothing: a 5xx,
    throttling, a timeout or a cut body, which botocore retries with its own backoff; a
    redirect, a 400 or a credential error, which botocore also confirms with its own signer
    (this path is then off for the bucket, so a signing mistake here can never pass for a
    store refusing the credentials). ``sent`` is false when nothing was sent (a bucket whose
    requests botocore builds in a way ``s3get`` does not reproduce): the caller keeps every
    attempt.
    """
    from botocore.exceptions import BotoCoreError
    from urllib3.exceptions import HTTPError

    from prodclf.storage import s3get

    client = client_for(cfg)
    limit = cfg.max_object_bytes
    try:
        resp = s3get.send_get(client, ref.bucket, ref.key)
    except BotoCoreError:
        return True, None
    if resp is None:
        return False, None
    raw = resp.raw
    try:
        status = resp.status_code
        if status == 200:
            length = resp.headers.get("content-length")
            size = int(length) if length is not None and length.isdigit() else None
            if size is not None and size > limit:
                raise RowError(
                    ErrorCode.OBJECT_TOO_LARGE, f"{size} bytes exceeds the limit of {limit}"
                )
            data = _read_until(raw, limit + 1, deadline, ref.uri)
            if (size is not None and len(data) < size) or not s3get.checksum_ok(resp.headers, data):
                return True, None  # closed early or damaged: botocore retries
            return True, _checked(data, limit)
        code = s3get.error_code(_read_until(raw, 64 << 10, deadline, ref.uri))
        if code not in CREDENTIAL_CODES:
            final = _object_answer(code, status, ref)
            if final is not None:
                raise final
        if status in (301, 307, 400) or code in CREDENTIAL_CODES:
            s3get.disable(client, ref.bucket)
        return True, None
    except (HTTPError, OSError):  # the body failed mid-way (reset, read timeout)
        return True, None
    finally:
        raw.close()


def _botocore_fetch(ref: ObjectRef, cfg: StorageConfig, deadline: float, made: int) -> bytes:
    """The fetch through ``get_object``, after ``made`` attempts of the direct path."""
    from botocore.exceptions import BotoCoreError, IncompleteReadError

    attempts = cfg.max_attempts - made
    client = client_for(cfg, attempts)
    limit = cfg.max_object_bytes
    # botocore retries the request itself (attempts in all) as long as another attempt fits
    # in the deadline (_deadline_guard); only a failure while streaming the body is retried
    # here, with a new request.
    last = ""
    attempt_s = cfg.connect_timeout_s + cfg.read_timeout_s
    _BUDGET.value = (deadline, attempt_s, made)
    try:
        for attempt in range(1, attempts + 1):
            resp = _get_object(client, ref, cfg)
            body = resp["Body"]
            try:
                length = resp.get("ContentLength")
                if length is not None and length > limit:
                    raise RowError(
                        ErrorCode.OBJECT_TOO_LARGE, f"{length} bytes exceeds the limit of {limit}"
                    )
                data = _read_until(body, limit + 1, deadline, ref.uri)
                if length is not None and len(data) < length:
                    # A connection closed early: botocore does not check a sized read.
                    raise IncompleteReadError(actual_bytes=len(data), expected_bytes=length)
            except BotoCoreError as exc:
                last = f"{type(exc).__name__} while reading the object"
            else:
                return _checked(data, limit)
            finally:
                body.close()
            if attempt < attempts:
                pause = min(2.0, 0.1 * 2**attempt)
                if time.monotonic() + pause + attempt_s >= deadline:
                    break
                time.sleep(pause)
    finally:
        _BUDGET.value = None
    raise RowError(ErrorCode.FETCH_FAILED, f"{last} after {made + attempt} attempt(s): {ref.uri}")


def _object_answer(code: str, status: int, ref: ObjectRef) -> RowError | None:
    """The row error of a final S3 answer about one object or the credentials; else None."""
    if code in CREDENTIAL_CODES:
        return RowError(
            ErrorCode.STORE_UNAVAILABLE, f"the store refused the credentials ({code}): {ref.uri}"
        )
    if code in _NOT_FOUND or status == 404:
        return RowError(ErrorCode.NOT_FOUND, f"no such object: {ref.uri}")
    if code in _DENIED or status == 403:
        return RowError(ErrorCode.ACCESS_DENIED, f"access denied: {ref.uri}")
    return None


def _get_object(client: Any, ref: ObjectRef, cfg: StorageConfig) -> Any:
    """``get_object`` with its failures classified as row errors."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return client.get_object(Bucket=ref.bucket, Key=ref.key)
    except _OutOfTime as exc:
        raise RowError(
            ErrorCode.FETCH_FAILED,
            f"{exc.last} after {exc.attempts} attempt(s), no time left for another "
            f"(storage.fetch_deadline_s={cfg.fetch_deadline_s:g}): {ref.uri}",
        ) from None
    except ClientError as exc:
        err = exc.response.get("Error", {})
        code = str(err.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        final = _object_answer(code, int(status or 0), ref)
        if final is not None:
            raise final from None
        raise RowError(
            ErrorCode.FETCH_FAILED,
            f"S3 error {code or status} after {cfg.max_attempts} attempts: {ref.uri}",
        ) from None
    except BotoCoreError as exc:
        name = type(exc).__name__
        if name in _UNREACHABLE:
            raise RowError(
                ErrorCode.STORE_UNAVAILABLE, f"{name}, the store cannot be reached: {ref.uri}"
            ) from None
        raise RowError(
            ErrorCode.FETCH_FAILED, f"{name} after {cfg.max_attempts} attempts: {ref.uri}"
        ) from None


#: Body reads are chunked so that the fetch deadline is checked while a slow body streams
#: (between chunks: a trickling store can overrun it by at most one chunk's reads).
_CHUNK = 64 << 10


def _read_until(body: Any, most: int, deadline: float, uri: str) -> bytes:
    """At most ``most`` bytes of ``body``; a fetch past its deadline is ``fetch_failed``.

    ``read_timeout_s`` bounds each socket read only: a store trickling one byte just before
    each timeout would otherwise hold the product (and its task) for hours.
    """
    parts: list[bytes] = []
    got = 0
    while got < most:
        if time.monotonic() > deadline:
            raise RowError(
                ErrorCode.FETCH_FAILED,
                f"fetch deadline exceeded after {got} bytes (storage.fetch_deadline_s): {uri}",
            )
        chunk = body.read(min(_CHUNK, most - got))
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def _checked(data: bytes, limit: int) -> bytes:
    if len(data) > limit:
        raise RowError(ErrorCode.OBJECT_TOO_LARGE, f"object exceeds the limit of {limit} bytes")
    if not data:
        raise RowError(ErrorCode.EMPTY_OBJECT, "object has zero bytes")
    return data


# --- whole objects and prefixes, for the driver (bundles, manifests, demo data) -------------


def _ref(uri: str) -> ObjectRef:
    """A whole-object or prefix location: a local path, ``file://``, or any spelling of an
    S3 location (``s3://``, ``s3a://``, ``s3n://``: the same bucket and key)."""
    text = uri if "://" in uri else "file://" + os.path.abspath(uri)
    scheme, rest = text.split("://", 1)
    if scheme.lower() in S3_LOCATION_SCHEMES:
        text = "s3://" + rest
    try:
        return parse_uri(text)
    except RowError as exc:
        raise OSError(exc.message) from None


def read_bytes(uri: str) -> bytes:
    """A whole object; a missing one is ``FileNotFoundError``, a refused one ``PermissionError``."""
    ref = _ref(uri)
    if ref.scheme == "file":
        return Path(ref.key).read_bytes()
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        resp = s3_client().get_object(Bucket=ref.bucket, Key=ref.key)
        data: bytes = resp["Body"].read()
    except ClientError as exc:
        raise _os_error(uri, exc) from None
    except BotoCoreError as exc:
        raise OSError(f"{uri}: {type(exc).__name__}") from None
    return data


def _os_error(uri: str, exc: Any) -> OSError:
    """The OSError subclass for an S3 ClientError: not found, access denied, or other."""
    code = str(exc.response.get("Error", {}).get("Code", ""))
    status = str(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
    if code in _NOT_FOUND or status == "404":
        return FileNotFoundError(f"{uri}: not found ({code or status})")
    if code in _DENIED or status == "403":
        return PermissionError(f"{uri}: access denied ({code or status})")
    return OSError(f"{uri}: {code or status}")


def write_bytes(uri: str, data: bytes) -> None:
    """Write one object; local files are written to a temp name and renamed into place."""
    ref = _ref(uri)
    if ref.scheme == "file":
        path = Path(ref.key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        return
    s3_client().put_object(Bucket=ref.bucket, Key=ref.key, Body=data)


def exists(uri: str) -> bool:
    """True for an existing object, file, directory or non-empty S3 prefix."""
    ref = _ref(uri)
    if ref.scheme == "file":
        return os.path.exists(ref.key)
    from botocore.exceptions import BotoCoreError, ClientError

    prefix = ref.key.rstrip("/")
    # Two listings: keys such as "base-2/..." sort before "base/...", so one short listing
    # of Prefix=prefix can miss the directory. The exact key sorts first under its prefix.
    try:
        for pfx in (prefix, prefix + "/"):
            resp = s3_client().list_objects_v2(Bucket=ref.bucket, Prefix=pfx, MaxKeys=1)
            keys = [o["Key"] for o in resp.get("Contents", [])]
            if keys and (keys[0] == prefix or keys[0].startswith(prefix + "/")):
                return True
    except ClientError as exc:
        raise _os_error(uri, exc) from None
    except BotoCoreError as exc:
        raise OSError(f"{uri}: {type(exc).__name__}") from None
    return False


class _RangedObject(io.RawIOBase):
    """A seekable read-only view of an S3 object: each read is one ranged GET.

    For reading Parquet footers (and a column chunk or two) on the driver without
    downloading whole files.
    """

    def __init__(self, uri: str, ref: ObjectRef) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        self.uri, self.ref, self.pos = uri, ref, 0
        try:
            self.size = int(
                s3_client().head_object(Bucket=ref.bucket, Key=ref.key)["ContentLength"]
            )
        except ClientError as exc:
            raise _os_error(uri, exc) from None
        except BotoCoreError as exc:
            raise OSError(f"{uri}: {type(exc).__name__}") from None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def readinto(self, buf: Any) -> int:
        from botocore.exceptions import BotoCoreError, ClientError

        end = min(self.size, self.pos + len(buf))
        if end <= self.pos:
            return 0
        try:
            resp = s3_client().get_object(
                Bucket=self.ref.bucket, Key=self.ref.key, Range=f"bytes={self.pos}-{end - 1}"
            )
            data = resp["Body"].read()
        except ClientError as exc:
            raise _os_error(self.uri, exc) from None
        except BotoCoreError as exc:
            raise OSError(f"{self.uri}: {type(exc).__name__}") from None
        n = len(data)
        buf[:n] = data
        self.pos += n
        return n


def open_object(uri: str) -> BinaryIO:
    """A seekable binary file over an object or local file (ranged GETs on S3)."""
    ref = _ref(uri)
    if ref.scheme == "file":
        return open(ref.key, "rb")
    return io.BufferedReader(_RangedObject(uri, ref), buffer_size=256 << 10)


def list_files(uri: str) -> Iterator[tuple[str, str]]:
    """(relative path, uri) of every object below a prefix or directory; a location that
    is one file or object gives itself (its name as the relative path)."""
    ref = _ref(uri)
    if ref.scheme == "file":
        root = Path(ref.key)
        if root.is_file():
            yield root.name, "file://" + str(root)
            return
        for p in sorted(root.rglob("*")):
            if p.is_file():
                yield p.relative_to(root).as_posix(), "file://" + str(p)
        return
    key = ref.key.rstrip("/")
    prefix = key + "/"
    client = s3_client()
    found = False
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=ref.bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            rel = obj["Key"][len(prefix) :]
            if rel:
                found = True
                yield rel, f"s3://{ref.bucket}/{obj['Key']}"
    if not found and key:
        resp = client.list_objects_v2(Bucket=ref.bucket, Prefix=key, MaxKeys=1)
        if [o["Key"] for o in resp.get("Contents", [])] == [key]:
            yield key.rsplit("/", 1)[-1], f"s3://{ref.bucket}/{key}"


def local_path(uri: str) -> Path:
    """The local path of a ``file://`` URI or plain path."""
    ref = _ref(uri)
    if ref.scheme != "file":
        raise OSError(f"{uri} is not a local path")
    return Path(ref.key)


def copy_tree_to_local(uri: str, dest: Path) -> Path:
    """Materialise a directory or S3 prefix under ``dest`` (for model bundles)."""
    ref = _ref(uri)
    if ref.scheme == "file":
        return Path(ref.key)
    dest.mkdir(parents=True, exist_ok=True)
    for rel, obj_uri in list_files(uri):
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        obj = _ref(obj_uri)
        s3_client().download_file(obj.bucket, obj.key, str(target))
    return dest


def copy_tree_from_local(src: Path, uri: str) -> None:
    """Publish a local directory to a directory or S3 prefix, replacing what was there.

    A republished bundle or report must not keep files of the previous one (an old
    variables shard, a stale plot): on S3, keys under the prefix that were not just
    uploaded are deleted after the upload.
    """
    ref = _ref(uri)
    if ref.scheme == "file":
        dest = Path(ref.key)
        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(src, dest)
        return
    prefix = ref.key.rstrip("/")
    written: set[str] = set()
    client = s3_client()
    for p in sorted(src.rglob("*")):
        if p.is_file():
            key = prefix + "/" + p.relative_to(src).as_posix()
            client.upload_file(str(p), ref.bucket, key)
            written.add(key)
    stale = [
        {"Key": obj["Key"]}
        for page in client.get_paginator("list_objects_v2").paginate(
            Bucket=ref.bucket, Prefix=prefix + "/"
        )
        for obj in page.get("Contents", [])
        if obj["Key"] not in written
    ]
    for i in range(0, len(stale), 1000):
        client.delete_objects(Bucket=ref.bucket, Delete={"Objects": stale[i : i + 1000]})


def create_exclusive(uri: str, data: bytes) -> bool:
    """Create an object only if none exists: True when created, False when one was there.

    Locally ``O_CREAT | O_EXCL`` (atomic on POSIX filesystems); on S3 a conditional
    ``PutObject`` with ``If-None-Match: *`` (S3 refuses it with 412 when the key exists).
    """
    ref = _ref(uri)
    if ref.scheme == "file":
        path = Path(ref.key)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        return True
    from botocore.exceptions import ClientError

    try:
        s3_client().put_object(Bucket=ref.bucket, Key=ref.key, Body=data, IfNoneMatch="*")
    except ClientError as exc:
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if status in (409, 412) or code in ("PreconditionFailed", "ConditionalRequestConflict"):
            return False
        raise _os_error(uri, exc) from None
    return True


def delete(uri: str) -> None:
    """Delete one object or file; a missing one is not an error."""
    ref = _ref(uri)
    if ref.scheme == "file":
        Path(ref.key).unlink(missing_ok=True)
        return
    s3_client().delete_object(Bucket=ref.bucket, Key=ref.key)


def delete_tree(uri: str) -> None:
    """Delete a directory or every object under an S3 prefix; a missing one is no error."""
    ref = _ref(uri)
    if ref.scheme == "file":
        shutil.rmtree(ref.key, ignore_errors=True)
        return
    client = s3_client()
    keys = [{"Key": _ref(obj).key} for _, obj in list_files(uri)]
    for i in range(0, len(keys), 1000):
        client.delete_objects(Bucket=ref.bucket, Delete={"Objects": keys[i : i + 1000]})


def list_dirs(uri: str) -> list[str]:
    """Names of the directories (S3: common prefixes) directly below ``uri``, sorted."""
    ref = _ref(uri)
    if ref.scheme == "file":
        root = Path(ref.key)
        if not root.is_dir():
            return []
        return sorted(p.name for p in root.iterdir() if p.is_dir())
    prefix = ref.key.rstrip("/") + "/"
    names = []
    paginator = s3_client().get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=ref.bucket, Prefix=prefix, Delimiter="/"):
        for cp in page.get("CommonPrefixes", []):
            names.append(cp["Prefix"][len(prefix) :].rstrip("/"))
    return sorted(names)


def list_names(uri: str) -> list[str]:
    """Names of the objects (files) directly below ``uri``, sorted."""
    ref = _ref(uri)
    if ref.scheme == "file":
        root = Path(ref.key)
        if not root.is_dir():
            return []
        return sorted(p.name for p in root.iterdir() if p.is_file())
    prefix = ref.key.rstrip("/") + "/"
    names = []
    paginator = s3_client().get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=ref.bucket, Prefix=prefix, Delimiter="/"):
        for obj in page.get("Contents", []):
            names.append(obj["Key"][len(prefix) :])
    return sorted(n for n in names if n)
