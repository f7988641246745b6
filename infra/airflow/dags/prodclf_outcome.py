"""What a failed tag run left in its commodity library, and whether a retry can help.

In cluster mode spark-submit only says that the driver failed, not prodclf's exit code
(0 complete, 2 refused before any work, 3 failed as a whole and published nothing, other:
died). What the run left in the library tells the cases apart well enough to follow
docs/runbook.md's retry policy (checked in this order, for the run id R of date D):

=====================================  ==============================================  =====
found                                  meaning                                         retry
=====================================  ==============================================  =====
``_runs/R.json``                       complete (it died after publishing): success    --
``_runs/R.failure`` (not holding lock)  failed as a whole (exit 3), nothing published:  its
                                       the record says whether a retry can help (a     own
                                       store outage, a commit conflict) or not (the    word
                                       executors' environment: version skew, GPU)
``_lock.json`` held by run R           died holding the lock (killed, OOM, lost node)  yes
``_runs/R.json.pending``               its commit was cut short                        yes
``tags_history/run_date=D/run_id=R/``  failed after writing its rows: commit conflict,  yes
                                       read-back check, lock taken over; or died
``_lock.json`` held by another command the library was busy (LockedError)              yes
nothing of run R                       refused (exit 2), or the library's very first   no
                                       run failed (it leaves nothing at all)
=====================================  ==============================================  =====

A retry reruns the same run id: it finishes or replaces what the failed attempt left, and
takes over a dead attempt's lock once its lease (``lock_ttl_s``, 900 s) has expired.

No prodclf here (the Airflow venv has none): the few small JSON objects are read as files
(a local path or ``file://``) or through the Amazon provider's ``S3Hook`` (``s3://``,
``s3a://``, ``s3n://``; connection ``PRODCLF_AWS_CONN``, default ``aws_default``), which
the Airflow workers then need (apache-airflow-providers-amazon).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

RUNBOOK = "docs/runbook.md"


@dataclass(frozen=True)
class Outcome:
    """A failed attempt's verdict: ``complete`` (nothing failed after all), else retry or not."""

    # complete, failed, died, commit_cut_short, failed_after_writing, library_busy, nothing
    state: str
    retry: bool
    reason: str  # one line for the task log

    @property
    def complete(self) -> bool:
        return self.state == "complete"


class Files(Protocol):
    def read(self, uri: str) -> str | None:
        """The object's text; None when there is none."""

    def has_dir(self, uri: str) -> bool:
        """Whether anything lies below ``uri/``."""


class LocalFiles:
    def read(self, uri: str) -> str | None:
        try:
            return Path(_local(uri)).read_text()
        except FileNotFoundError:
            return None

    def has_dir(self, uri: str) -> bool:
        return Path(_local(uri)).is_dir()


class S3Files:
    def __init__(self, conn_id: str | None = None) -> None:
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook  # the Amazon provider

        self.hook = S3Hook(aws_conn_id=conn_id or os.environ.get("PRODCLF_AWS_CONN", "aws_default"))

    def read(self, uri: str) -> str | None:
        bucket, key = _bucket_key(uri)
        if not self.hook.check_for_key(key, bucket):
            return None
        return str(self.hook.read_key(key, bucket))

    def has_dir(self, uri: str) -> bool:
        bucket, key = _bucket_key(uri)
        return bool(self.hook.list_keys(bucket, prefix=key.rstrip("/") + "/", max_items=1))


def _local(uri: str) -> str:
    return urlparse(uri).path if uri.startswith("file:") else uri


def _bucket_key(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    return parsed.netloc, parsed.path.lstrip("/")


def files_for(library: str) -> Files:
    if urlparse(library).scheme in ("s3", "s3a", "s3n"):
        return S3Files()
    return LocalFiles()


def _lock_holder(text: str | None) -> dict[str, Any] | None:
    """The lock's content, or None when nobody holds it (no lock, or a released one)."""
    if text is None:
        return None
    try:
        info = json.loads(text)
    except ValueError:
        return {"owner": "unknown (unreadable lock)"}
    if not isinstance(info, dict) or info.get("state") == "released":
        return None
    return info


def _failure(text: str | None) -> dict[str, Any] | None:
    """The failure record of a run that failed as a whole (exit 3), when readable."""
    if text is None:
        return None
    try:
        record = json.loads(text)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def classify(library: str, run_id: str, run_date: str, files: Files | None = None) -> Outcome:
    """What run ``run_id`` (of ``run_date``) left in ``library`` after its driver failed."""
    files = files or files_for(library)
    root = library.rstrip("/")
    see = f"see {RUNBOOK}"
    if files.read(f"{root}/_runs/{run_id}.json") is not None:
        return Outcome("complete", False, f"run {run_id} is complete (its manifest exists)")
    holder = _lock_holder(files.read(f"{root}/_lock.json"))
    record = _failure(files.read(f"{root}/_runs/{run_id}.failure"))
    if record is not None and not (holder is not None and holder.get("run_id") == run_id):
        retry = bool(record.get("retryable"))
        verdict = "a retry may succeed" if retry else "not retried: a person must act first"
        return Outcome(
            "failed",
            retry,
            f"run {run_id} failed as a whole and published nothing ({verdict}): "
            f"{record.get('message', '?')} ({see})",
        )
    if holder is not None and holder.get("run_id") == run_id:
        return Outcome(
            "died",
            True,
            f"run {run_id} died holding the library's lock (killed, out of memory, lost "
            f"node); a retry takes the lock over once its lease expired ({see}, 'Died')",
        )
    if files.read(f"{root}/_runs/{run_id}.json.pending") is not None:
        return Outcome(
            "commit_cut_short",
            True,
            f"run {run_id} has a pending manifest: its commit was cut short; a retry "
            f"finishes or redoes it ({see}, 'Died')",
        )
    if files.has_dir(f"{root}/tags_history/run_date={run_date}/run_id={run_id}"):
        return Outcome(
            "failed_after_writing",
            True,
            f"run {run_id} wrote its rows but published nothing (a commit conflict, the "
            f"read-back check, its lock taken over, or it died); a retry redoes it ({see})",
        )
    if holder is not None:
        return Outcome(
            "library_busy",
            True,
            f"the library is locked by {holder.get('owner', '?')} (run "
            f"{holder.get('run_id')}): run {run_id} was refused; a retry waits for it "
            f"({see}, 'Locked')",
        )
    return Outcome(
        "nothing",
        False,
        f"run {run_id} left nothing in the library: it was refused (exit 2) or failed "
        "before writing anything (exit 3: store outage, error-rate gate, version skew, "
        "GPU unavailable); not retried. Read the driver's `prodclf: error:` line; "
        f"{see}",
    )


def run_of(args: list[str]) -> tuple[str, str, str] | None:
    """(commodity library, run id, run date) from the tag job's arguments, when all given."""
    flags = {k: v for k, v in pairwise(args) if k.startswith("--")}
    library, run_id, run_date = (
        flags.get(f) for f in ("--commodity-library", "--run-id", "--run-date")
    )
    if library and run_id and run_date:
        return library, run_id, run_date
    return None
