"""Named errors and the row-level error codes of the commodity library.

Three kinds of failure exist. A *refusal* (``ProdclfError`` and subclasses) stops a
command before any work starts, with one line naming what is wrong. A *row error*
(``RowError``) concerns one product: it becomes an ``status=error`` row carrying one of
the ``ErrorCode`` values below, and the run goes on. A *worker setup error*
(``WorkerSetupError``) is a worker that cannot tag at all; it fails the run (``RunFailed``).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable, Iterator
from enum import Enum


class ProdclfError(Exception):
    """A refusal: the command cannot start. ``str(err)`` is the one-line message."""

    #: The process exit status of a command that stops with this error.
    exit_code = 2


class RunFailed(ProdclfError):
    """The run failed as a whole and published nothing (no manifest, no partition change).

    A systemic failure, not a product's: the image store is down or refuses the
    credentials, implausibly many products failed, or the written rows do not read back
    as the manifest would promise. Rerun once the cause is fixed.
    """

    exit_code = 3

    def __init__(self, message: str, retryable: bool = True) -> None:
        super().__init__(message)
        #: Whether running it again, unchanged, may succeed (a store outage, a commit
        #: conflict), or a person must change something first (the workers' environment).
        self.retryable = retryable


class StoreUnavailable(RunFailed):
    """The image store cannot be used at all (unreachable, credentials refused)."""


class ConfigError(ProdclfError):
    """A bad argument or configuration value."""


class InputError(ProdclfError):
    """The base library (or another input dataset) is missing or unusable."""


class SchemaMismatch(InputError):
    """A dataset lacks columns or has them with the wrong types."""

    def __init__(
        self,
        what: str,
        missing: Iterable[str] = (),
        wrong_types: Iterable[tuple[str, str, str]] = (),
        found: Iterable[str] = (),
    ) -> None:
        self.what = what
        self.missing = sorted(missing)
        self.wrong_types = sorted(wrong_types)
        self.found = list(found)
        parts = []
        if self.missing:
            parts.append("missing column(s) " + ", ".join(self.missing))
        if self.wrong_types:
            parts.append(
                "wrong type(s) "
                + ", ".join(f"{c} (expected {e}, found {f})" for c, e, f in self.wrong_types)
            )
        found_txt = ", ".join(self.found) if self.found else "none"
        detail = f"{'; '.join(parts)} " if parts else ""
        super().__init__(f"{what}: {detail}(columns found: {found_txt})")


class ModelBundleError(ProdclfError):
    """The model bundle cannot be read or does not follow the bundle contract."""


class WorkerSetupError(RuntimeError):
    """A Python worker cannot tag anything: its environment is wrong, not a product.

    Raised on a worker, it fails the task (Spark retries it, then aborts the job) instead
    of becoming error rows; the driver finds it in the job's failure (``worker_setup_error``)
    and fails the run with its one line.
    """


class GpuUnavailable(WorkerSetupError):
    """Spark gave the task a GPU that TensorFlow in the worker cannot use.

    TensorFlow would otherwise place the model on the CPU without a word (soft placement):
    a run on a GPU cluster many times slower than planned, looking healthy.
    """


class VersionSkew(WorkerSetupError):
    """The executors run other prodclf code than the driver (a stale environment archive).

    Preprocessing, labels and row contracts live in that code: mixed versions would tag
    with a contract the driver does not know, and the run would look complete.
    """


def worker_setup_error(failure: str) -> str | None:
    """``Name: message`` of the first ``WorkerSetupError`` in a Spark job's failure text.

    A worker's exception reaches the driver only as text (the Python traceback inside the
    JVM's stage-failure message), its last line ``prodclf.errors.Name: message``.
    """
    for match in re.finditer(r"prodclf\.errors\.(\w+): ([^\n]*)", failure):
        cls = globals().get(match.group(1))
        if isinstance(cls, type) and issubclass(cls, WorkerSetupError):
            return f"{match.group(1)}: {match.group(2).strip()}"
    return None


@contextlib.contextmanager
def worker_setup_fails_run(what: str) -> Iterator[None]:
    """Turn a Spark job aborted by a ``WorkerSetupError`` into ``RunFailed`` with its line.

    The worker's exception reaches the driver inside the JVM's stage failure, with every
    task attempt's traceback; the operator needs its one line, and exit 3 (the run failed,
    nothing published), not a page of Java and Python frames. ``what``: "run R", ...
    """
    try:
        yield
    except Exception as exc:
        cause = worker_setup_error(str(exc))
        if cause is None:
            raise
        raise RunFailed(f"{what} failed, nothing published: {cause}", retryable=False) from exc


class ErrorCode(str, Enum):
    """Why a product got ``status=error``. Values are stable: downstream tables filter on them."""

    INVALID_URI = "invalid_uri"
    URI_NOT_ALLOWED = "uri_not_allowed"
    NOT_FOUND = "not_found"
    ACCESS_DENIED = "access_denied"
    OBJECT_TOO_LARGE = "object_too_large"
    EMPTY_OBJECT = "empty_object"
    FETCH_FAILED = "fetch_failed"
    UNDECODABLE_IMAGE = "undecodable_image"
    IMAGE_TOO_LARGE = "image_too_large"
    INFERENCE_FAILED = "inference_failed"
    STORE_UNAVAILABLE = "store_unavailable"
    INTERNAL_ERROR = "internal_error"


ERROR_CODE_MEANINGS: dict[ErrorCode, str] = {
    ErrorCode.INVALID_URI: "image_uri is null, empty or not a well-formed s3:// or file:// URI",
    ErrorCode.URI_NOT_ALLOWED: "the URI's scheme or bucket is outside the configured allowlist; "
    "it was never fetched",
    ErrorCode.NOT_FOUND: "no object at that URI (S3 404 / NoSuchKey, or no such file)",
    ErrorCode.ACCESS_DENIED: "the store refused access (S3 403, or file permissions)",
    ErrorCode.OBJECT_TOO_LARGE: "the object is larger than storage.max_object_bytes; "
    "it was not downloaded",
    ErrorCode.EMPTY_OBJECT: "the object exists but has zero bytes",
    ErrorCode.FETCH_FAILED: "the store kept failing after all retries (5xx, throttling, "
    "timeouts, resets)",
    ErrorCode.UNDECODABLE_IMAGE: "the bytes are not an image Pillow can decode (truncated, "
    "corrupt, HTML/PDF/text, unknown format)",
    ErrorCode.IMAGE_TOO_LARGE: "declared dimensions exceed storage.max_pixels "
    "(decompression-bomb guard); pixels were never decoded",
    ErrorCode.INFERENCE_FAILED: "the model raised (or answered with the wrong shape) on this "
    "product: a failing batch is retried in halves until the failing products are isolated",
    ErrorCode.STORE_UNAVAILABLE: "the store as a whole could not be used (connection refused, "
    "DNS failure, credentials refused: InvalidAccessKeyId, SignatureDoesNotMatch, "
    "ExpiredToken...); a store-wide failure, not this product's, judged by checks.max_code_rates",
    ErrorCode.INTERNAL_ERROR: "an unexpected exception in prodclf (its type is in the message), "
    "including running out of memory while decoding",
}


class RowError(Exception):
    """A per-product failure that becomes an error row, never a crashed task."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
