"""Races on the library's lock and pointer, between real processes, on the S3 server and
on local files.

Each racer is a spawned Python process (its own boto3 client, the standard AWS settings
inherited from the test's environment). A barrier inside ``conditional.read`` holds
every racer until all have read the object, so the race is the worst case every time:
all of them act on the same version.
"""

from __future__ import annotations

import json
import multiprocessing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from prodclf.library.lock import LibraryLock, LockedError
from prodclf.storage import conditional

pytestmark = pytest.mark.spark4

RACERS = 6
STALE = {
    "owner": "prodclf tag full run dead",
    "host": "gone-host",
    "pid": 1,
    "token": "dead",
    "started_at": "2026-11-20T03:00:00Z",
    "expires_at": "2026-11-20T03:15:00Z",
}


def _after_reads(barrier: Any) -> None:
    """Make the first ``conditional.read`` of this process wait for every racer's."""
    real = conditional.read
    state = {"first": True}

    def read(uri: str) -> conditional.Versioned | None:
        found = real(uri)
        if state["first"]:
            state["first"] = False
            barrier.wait(timeout=60)
        return found

    conditional.read = read  # type: ignore[assignment]


def take_over(uri: str, name: str, barrier: Any, results: Any) -> None:
    _after_reads(barrier)
    lock = LibraryLock(uri, "the library", f"racer {name}", ttl_s=600)
    try:
        lock.acquire()
        results.put((name, "won", lock.token))
    except LockedError:
        results.put((name, "refused", ""))


def race(target: Callable[..., None], args: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(len(args))
    results = ctx.Queue()
    procs = [ctx.Process(target=target, args=(*a, barrier, results)) for a in args]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    return sorted(results.get(timeout=5) for _ in procs)


@pytest.fixture(params=["s3", "local"])
def lock_uri(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "local":
        return str(tmp_path / "lib" / "_lock.json")
    s3 = request.getfixturevalue("s3")
    bucket = f"races-{abs(hash(str(tmp_path))) % 10**8}"
    s3.create_bucket(Bucket=bucket)
    return f"s3://{bucket}/lib/_lock.json"


def test_racers_taking_over_one_stale_lock_exactly_one_wins(lock_uri: str) -> None:
    assert conditional.put(lock_uri, json.dumps(STALE).encode(), None) is not None
    results = race(take_over, [(lock_uri, str(i)) for i in range(RACERS)])
    winners = [r for r in results if r[1] == "won"]
    assert len(winners) == 1, results
    assert [r[1] for r in results].count("refused") == RACERS - 1
    held = conditional.read(lock_uri)
    assert held is not None and json.loads(held.data)["token"] == winners[0][2]


def renew_or_take(uri: str, role: str, barrier: Any, results: Any) -> None:
    """``holder``: holds the lock, then renews it; ``taker``: takes the stale lock over."""
    if role == "holder":
        lock = LibraryLock(uri, "the library", "holder", ttl_s=600)
        lock.acquire()
        # Its lease has run out (a long pause): rewrite it expired, as it last renewed.
        body = json.loads(lock._body())
        body["expires_at"] = "2026-11-20T03:15:00Z"
        lock._etag = conditional.put(uri, json.dumps(body).encode(), lock._etag)
        results.put(("0-ready", "", ""))
        barrier.wait(timeout=60)  # the taker has read the expired lock
        renewed = lock.renew()
        try:
            lock.check()
            checked = "held"
        except LockedError:
            checked = "lost"
        results.put(("holder", "renewed" if renewed else "not renewed", checked))
    else:
        _after_reads(barrier)
        lock = LibraryLock(uri, "the library", "taker", ttl_s=600)
        try:
            lock.acquire()
            results.put(("taker", "won", ""))
        except LockedError:
            results.put(("taker", "refused", ""))


def test_a_renewal_racing_a_takeover_leaves_one_holder_and_the_loser_knows(
    lock_uri: str,
) -> None:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    results = ctx.Queue()
    holder = ctx.Process(target=renew_or_take, args=(lock_uri, "holder", barrier, results))
    holder.start()
    assert results.get(timeout=60)[0] == "0-ready"
    taker = ctx.Process(target=renew_or_take, args=(lock_uri, "taker", barrier, results))
    taker.start()
    for p in (holder, taker):
        p.join(timeout=120)
        assert p.exitcode == 0
    got = dict((r[0], r[1:]) for r in (results.get(timeout=5), results.get(timeout=5)))
    renewed, checked = got["holder"]
    taken = got["taker"][0]
    # Exactly one of them holds the lock, and the holder's own check says which.
    assert (renewed == "renewed") != (taken == "won"), got
    assert checked == ("held" if renewed == "renewed" else "lost")
    owner = json.loads(conditional.read(lock_uri).data)["owner"]  # type: ignore[union-attr]
    assert owner == ("holder" if renewed == "renewed" else "taker")


def test_conditional_changes_name_the_version_they_replace(lock_uri: str) -> None:
    assert conditional.read(lock_uri) is None
    first = conditional.put(lock_uri, b"one", None)
    assert first is not None
    assert conditional.put(lock_uri, b"again", None) is None  # exists: no create
    second = conditional.put(lock_uri, b"two", first)
    assert second is not None and second != first
    assert conditional.put(lock_uri, b"three", first) is None  # stale version
    assert not conditional.delete(lock_uri, first)
    found = conditional.read(lock_uri)
    assert found is not None and found.data == b"two" and found.etag == second
    assert conditional.delete(lock_uri, second)
    assert conditional.read(lock_uri) is None
    assert conditional.put(lock_uri, b"four", second) is None  # gone: no replace
