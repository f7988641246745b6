"""The one-writer lock of a commodity library: ``_lock.json``, changed only conditionally.

Every change names the version it read (``prodclf.storage.conditional``): the lock is
created only where none exists, and renewed, taken over and released only if it is
still the version this holder last wrote or read. So when two commands take over the
same stale lock, one write wins and the other is refused and reads the winner; a
holder whose lock was taken over learns it at its next renewal or at ``check()``.
Where the store has no conditional delete, release replaces the lock with a released
marker (conditionally), which the next command takes over like a stale lock.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

from prodclf.errors import ProdclfError
from prodclf.library.manifest import iso, now, parse_ts
from prodclf.storage import conditional

log = logging.getLogger(__name__)

#: The body of a released lock, where the store cannot delete conditionally.
RELEASED = "released"


class LockedError(ProdclfError):
    """Another command holds the library's lock."""


def parse(raw: bytes) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads(raw)
    except ValueError:
        # Not JSON: written by hand or torn. Held, owner unknown (unlock clears it).
        return {"owner": "unknown (unreadable lock)", "token": "", "expires_at": ""}
    return data


def read_lock(uri: str) -> dict[str, Any] | None:
    """The lock's content; None when unlocked (no lock, or a released one)."""
    found = conditional.read(uri)
    if found is None:
        return None
    info = parse(found.data)
    return None if info.get("state") == RELEASED else info


def stale_reason(info: dict[str, Any], at: datetime | None = None) -> str | None:
    """Why a lock no longer protects anything (its lease expired, its process is gone)."""
    if info.get("state") == RELEASED:
        return "it was released"
    expires = info.get("expires_at")
    if expires:
        try:
            if parse_ts(str(expires)) < (at or now()):
                return f"its lease expired at {expires}"
        except ValueError:
            pass
    same_host = info.get("host") == socket.gethostname() and isinstance(info.get("pid"), int)
    if same_host and not _pid_alive(int(info["pid"])):
        return f"its process {info['pid']} on this host is gone"
    return None


def describe(info: dict[str, Any]) -> str:
    return (
        f"{info.get('owner', '?')} (host {info.get('host', '?')}, pid {info.get('pid', '?')}, "
        f"since {info.get('started_at', '?')}, lease until {info.get('expires_at', '?')})"
    )


class LibraryLock:
    """The lock as held by one command. ``held`` renews its lease every ``ttl_s / 3``.

    A lock whose lease expired, or whose process is gone from this host, is stale and
    taken over by the next command (with a warning naming the old owner); ``prodclf
    unlock`` clears one by hand. ``run_id`` lets ``prodclf runs`` list the run as running.
    """

    def __init__(
        self, uri: str, location: str, owner: str, ttl_s: float = 900.0, run_id: str | None = None
    ) -> None:
        self.uri = uri
        self.location = location
        self.owner = owner
        self.run_id = run_id
        self.ttl_s = ttl_s
        self.token = uuid.uuid4().hex
        self.started_at = now()
        self.lost = False
        self._etag: str | None = None
        self._mutex = threading.Lock()  # the heartbeat and the job both renew
        self._stop = threading.Event()

    def _body(self) -> bytes:
        info = {
            "owner": self.owner,
            "run_id": self.run_id,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "token": self.token,
            "started_at": iso(self.started_at),
            "expires_at": iso(now() + timedelta(seconds=self.ttl_s)),
        }
        return (json.dumps(info, indent=2) + "\n").encode()

    def acquire(self) -> None:
        for _ in range(5):
            etag = conditional.put(self.uri, self._body(), None)
            if etag is not None:
                self._etag = etag
                return
            found = conditional.read(self.uri)
            if found is None:
                continue  # released meanwhile: create again
            info = parse(found.data)
            reason = stale_reason(info)
            if reason is None:
                refuse_if_held(self.uri, self.location)
            etag = conditional.put(self.uri, self._body(), found.etag)
            if etag is not None:
                if info.get("state") != RELEASED:
                    log.warning("taking over the stale lock of %s: %s", describe(info), reason)
                self._etag = etag
                return
            # Another command changed the lock between our read and our write: look again.
        raise LockedError(f"commodity library {self.location}: could not take its lock")

    def renew(self) -> bool:
        """Extend the lease; False (and ``lost``) when the lock is no longer ours."""
        with self._mutex:
            if self.lost or self._etag is None:
                return False
            etag = conditional.put(self.uri, self._body(), self._etag)
            if etag is None:
                self.lost = True
                return False
            self._etag = etag
            return True

    def check(self) -> None:
        """Raise unless the lock is still ours (before a commit)."""
        if not self.renew():
            raise LockedError(
                f"commodity library {self.location}: this run's lock was taken over "
                f"(now {describe(read_lock(self.uri) or {})}); nothing committed"
            )

    def release(self) -> None:
        with self._mutex:
            if self.lost or self._etag is None:
                return
            etag, self._etag = self._etag, None
            try:
                conditional.delete(self.uri, etag)
            except conditional.ConditionalDeleteUnsupported:
                conditional.put(self.uri, json.dumps({"state": RELEASED}).encode(), etag)

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                if not self.renew():
                    log.error("the library lock was taken over by someone else")
                    return
            except OSError as exc:  # a storage hiccup: the next beat tries again
                log.warning("could not renew the library lock: %s", exc)

    @contextmanager
    def held(self) -> Iterator[LibraryLock]:
        self.acquire()
        beat = threading.Thread(target=self._heartbeat, name="prodclf-lock", daemon=True)
        beat.start()
        try:
            yield self
        finally:
            self._stop.set()
            beat.join(timeout=5)
            self.release()


def refuse_if_held(uri: str, location: str) -> None:
    """Refuse now, before any work, when a live command holds the lock (the command takes
    the lock for real later; this only spares a doomed run its start-up)."""
    info = read_lock(uri)
    if info is not None and stale_reason(info) is None:
        raise LockedError(
            f"commodity library {location} is locked by {describe(info)}; wait for it to "
            f"finish, or if it is dead: prodclf unlock --commodity-library {location}"
        )


def clear_lock(uri: str, force: bool = False) -> tuple[dict[str, Any] | None, bool]:
    """(the lock found, whether it was removed). A live lock is removed only with ``force``."""
    found = conditional.read(uri)
    if found is None:
        return None, False
    info = parse(found.data)
    if info.get("state") == RELEASED:
        return None, False
    if stale_reason(info) is None and not force:
        return info, False
    try:
        removed = conditional.delete(uri, found.etag)
    except conditional.ConditionalDeleteUnsupported:
        removed = (
            conditional.put(uri, json.dumps({"state": RELEASED}).encode(), found.etag) is not None
        )
    return info, removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
