"""Object references: parsing, allowlists and the mapping to Spark's filesystem URIs."""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from prodclf.errors import ErrorCode, RowError

SUPPORTED_SCHEMES = ("s3", "file")
#: Spellings of one S3 location: EMR users write ``s3://``, open-source Spark needs
#: ``s3a://`` (``s3n://`` is the connector s3a replaced). As a dataset or bundle location
#: they all name the same bucket and key: prodclf reads and writes that location's small
#: objects (pointer, lock, manifests, layout marker, bundles) with boto3 at ``s3://`` and
#: hands Spark the scheme of ``storage.spark_s3_scheme`` (``spark_location``). Image
#: references (``image_uri``) are stricter: only ``s3://`` and ``file://`` (``parse_uri``).
S3_LOCATION_SCHEMES = ("s3", "s3a", "s3n")


@dataclass(frozen=True)
class ObjectRef:
    """A parsed ``s3://bucket/key`` or ``file:///abs/path`` reference."""

    scheme: str
    bucket: str  # empty for file://
    key: str  # the S3 key, or the absolute local path

    @property
    def uri(self) -> str:
        if self.scheme == "s3":
            return f"s3://{self.bucket}/{self.key}"
        return f"file://{self.key}"

    def child(self, name: str) -> ObjectRef:
        if self.scheme == "s3":
            key = posixpath.join(self.key, name) if self.key else name
            return ObjectRef("s3", self.bucket, key)
        return ObjectRef("file", "", os.path.join(self.key, name))


def parse_uri(uri: object) -> ObjectRef:
    """Parse an image or dataset reference; raises ``RowError(INVALID_URI)``."""
    if not isinstance(uri, str) or not uri.strip():
        raise RowError(ErrorCode.INVALID_URI, "image_uri is null or empty")
    text = uri.strip()
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme == "s3":
        key = parts.path.lstrip("/")
        if not parts.netloc or not key or parts.query or parts.fragment:
            raise RowError(ErrorCode.INVALID_URI, f"malformed s3 URI {_clip(text)!r}")
        return ObjectRef("s3", parts.netloc, key)
    if scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise RowError(ErrorCode.INVALID_URI, f"malformed file URI {_clip(text)!r}")
        return ObjectRef("file", "", os.path.normpath(unquote(parts.path)))
    if not scheme:
        raise RowError(ErrorCode.INVALID_URI, f"not a URI (no scheme): {_clip(text)!r}")
    # Any other scheme is well formed but never fetched.
    raise RowError(ErrorCode.URI_NOT_ALLOWED, f"scheme {scheme!r} is not supported")


def check_allowed(
    ref: ObjectRef, allowed_schemes: tuple[str, ...], allowed_buckets: tuple[str, ...]
) -> None:
    if ref.scheme not in allowed_schemes:
        raise RowError(ErrorCode.URI_NOT_ALLOWED, f"scheme {ref.scheme!r} is not in the allowlist")
    if ref.scheme == "s3" and allowed_buckets and ref.bucket not in allowed_buckets:
        raise RowError(ErrorCode.URI_NOT_ALLOWED, f"bucket {ref.bucket!r} is not in the allowlist")


def normalize_location(location: str) -> str:
    """A dataset location as a URI: plain local paths become absolute ``file://`` URIs,
    and every spelling of an S3 location (``S3_LOCATION_SCHEMES``) becomes ``s3://``.

    Other schemes are returned as they are (and refused by ``prodclf.storage.objects``
    when used: prodclf cannot list or lock them).
    """
    if "://" in location:
        scheme = location.split("://", 1)[0].lower()
        if scheme in S3_LOCATION_SCHEMES:
            rest = location.split("://", 1)[1].rstrip("/")
            return f"s3://{rest}"
        if scheme == "file":
            return "file://" + os.path.normpath(unquote(urlsplit(location).path))
        return location.rstrip("/")
    return "file://" + os.path.abspath(location)


def spark_location(location: str, s3_scheme: str = "s3a") -> str:
    """The URI Spark's Hadoop filesystem layer understands for a dataset location."""
    uri = normalize_location(location)
    if uri.startswith("s3://"):
        return f"{s3_scheme}://" + uri[len("s3://") :]
    return uri


def is_same_or_inside(child: str, parent: str) -> bool:
    """True when dataset location ``child`` equals ``parent`` or lies below it."""
    c = normalize_location(child).rstrip("/") + "/"
    p = normalize_location(parent).rstrip("/") + "/"
    return c.startswith(p)


def _clip(text: str, n: int = 200) -> str:
    return text if len(text) <= n else text[:n] + "..."
