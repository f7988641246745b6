"""Compare-and-swap on one object: the primitive under the library's lock and pointer.

A read returns the object's bytes with its version tag (the ETag). Every change then
names the version it expects, and the store refuses it when someone else changed the
object in between, so two writers can never both think they won:

- S3: ``PutObject`` with ``If-None-Match: *`` (create) or ``If-Match: <ETag>`` (replace),
  ``DeleteObject`` with ``If-Match``. A refused precondition is 412 (or 409 when two
  conditional writes cross); the caller gets ``None`` / ``False``, never an exception.
- Local files: the new bytes go to a temporary file that is hard-linked into place
  (create: fails when the name exists, like ``O_EXCL``) or renamed over it (replace).
  The check of the current version and the rename happen under an exclusive ``flock``
  of the object's directory, which the kernel releases when the process dies. The ETag
  is the bytes' sha256.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prodclf.storage.objects import _os_error, _ref, s3_client

#: S3 answers meaning "the precondition does not hold" (or the object is gone).
_REFUSED = {"PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey"}
#: S3 answers of a store that has no conditional delete.
_UNSUPPORTED = {"NotImplemented", "InvalidArgument"}


class ConditionalDeleteUnsupported(OSError):
    """The store cannot delete conditionally (callers replace the object instead)."""


@dataclass(frozen=True)
class Versioned:
    """An object's bytes and the version tag a conditional change must name."""

    data: bytes
    etag: str


def local_etag(data: bytes) -> str:
    return '"' + hashlib.sha256(data).hexdigest() + '"'


def read(uri: str) -> Versioned | None:
    """The object and its ETag, or None when there is none."""
    ref = _ref(uri)
    if ref.scheme == "file":
        try:
            data = Path(ref.key).read_bytes()
        except FileNotFoundError:
            return None
        return Versioned(data, local_etag(data))
    from botocore.exceptions import ClientError

    try:
        resp = s3_client().get_object(Bucket=ref.bucket, Key=ref.key)
        return Versioned(resp["Body"].read(), str(resp["ETag"]))
    except ClientError as exc:
        err = _os_error(uri, exc)
        if isinstance(err, FileNotFoundError):
            return None
        raise err from None


def put(uri: str, data: bytes, etag: str | None) -> str | None:
    """Write ``data`` if the object is still at ``etag`` (None: if there is no object).

    Returns the new ETag, or None when the precondition failed (nothing was written).
    """
    ref = _ref(uri)
    if ref.scheme == "file":
        return _put_local(Path(ref.key), data, etag)
    from botocore.exceptions import ClientError

    cond: dict[str, str] = {"IfMatch": etag} if etag is not None else {"IfNoneMatch": "*"}
    try:
        resp = s3_client().put_object(Bucket=ref.bucket, Key=ref.key, Body=data, **cond)
    except ClientError as exc:
        if _refused(exc):
            return None
        raise _os_error(uri, exc) from None
    return str(resp["ETag"])


def delete(uri: str, etag: str) -> bool:
    """Delete the object if it is still at ``etag``; False when it was not (or is gone).

    ``ConditionalDeleteUnsupported`` when the store has no conditional delete.
    """
    ref = _ref(uri)
    if ref.scheme == "file":
        path = Path(ref.key)
        with _cas_guard(path):
            if _local_etag_of(path) != etag:
                return False
            path.unlink()
            return True
    from botocore.exceptions import ClientError

    try:
        s3_client().delete_object(Bucket=ref.bucket, Key=ref.key, IfMatch=etag)
    except ClientError as exc:
        if _refused(exc):
            return False
        if str(exc.response.get("Error", {}).get("Code", "")) in _UNSUPPORTED:
            raise ConditionalDeleteUnsupported(f"{uri}: no conditional delete") from None
        raise _os_error(uri, exc) from None
    return True


def _refused(exc: Any) -> bool:
    code = str(exc.response.get("Error", {}).get("Code", ""))
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code in _REFUSED or status in (409, 412)


def _local_etag_of(path: Path) -> str | None:
    try:
        return local_etag(path.read_bytes())
    except FileNotFoundError:
        return None


@contextmanager
def _cas_guard(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` of ``path``'s directory, for one check-and-change.

    The directory itself is locked, so no lock file is left beside the object.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the flock


def _put_local(path: Path, data: bytes, etag: str | None) -> str | None:
    with _cas_guard(path):
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            if etag is None:
                try:
                    os.link(tmp, path)  # fails when the name exists: a create, like O_EXCL
                except FileExistsError:
                    return None
            else:
                if _local_etag_of(path) != etag:
                    return None
                os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    return local_etag(data)
