"""The commodity library as warehouse tables: layout, current pointer, lock, runs, catalog.

The layout below a commodity library root (layout 2)::

    _prodclf_layout.json                         {"layout": 2}: this layout, written first
    tags_history/run_date=D/run_id=R/*.parquet   every row of every run
    tags_current/_v/<version>-<run_id>/*.parquet immutable snapshots of the current tags
    tags_current/_CURRENT.json                   the pointer: which snapshot is current
    runs/runs.parquet                            one row per complete run (from the manifests)
    _runs/<run_id>.json                          a run's manifest: written last, marks it complete
    _runs/<run_id>.html                          a run's report
    _lock.json                                   the lock held by the command writing the library

``tags_current`` changes by writing a new snapshot directory, then replacing the pointer
with one single-object write (``os.replace`` locally, one ``PutObject`` on S3), so a
reader that resolves the pointer (``current_location``) sees the old table or the new one,
never half of one. Hive tables follow with ``ALTER TABLE ... SET LOCATION``.

The first layout (``run_date=D`` partitions and ``_runs/`` at the root, no marker) is
recognised and refused with the command that upgrades it (``prodclf migrate``).
"""

from __future__ import annotations

import io
import json
import logging
import os
import socket
import threading
import uuid
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from prodclf.errors import InputError, ProdclfError
from prodclf.schemas import COMMODITY_LIBRARY, CURRENT_TAGS, HISTORY_PARTITION_COLUMNS
from prodclf.storage import objects
from prodclf.storage.uris import normalize_location, spark_location

log = logging.getLogger(__name__)

LAYOUT_VERSION = 2
LAYOUT_MARKER = "_prodclf_layout.json"
HISTORY = "tags_history"
CURRENT = "tags_current"
SNAPSHOTS = "_v"
POINTER = "_CURRENT.json"
RUNS_TABLE = "runs"
RUNS_FILE = "runs.parquet"
MANIFESTS = "_runs"
LOCK = "_lock.json"

LAYOUT_EMPTY, LAYOUT_V1, LAYOUT_V2 = "empty", "v1", "v2"


class LockedError(ProdclfError):
    """Another command holds the library's lock."""


class LayoutError(InputError):
    """The library is in a layout this version does not write."""


# --- paths ---------------------------------------------------------------------------------


def root_uri(location: str) -> str:
    return normalize_location(location).rstrip("/")


def path(location: str, *parts: str) -> str:
    return "/".join([root_uri(location), *parts])


def history_uri(location: str) -> str:
    return path(location, HISTORY)


def history_partition_uri(location: str, run_date: date, run_id: str) -> str:
    return path(location, HISTORY, f"run_date={run_date.isoformat()}", f"run_id={run_id}")


def snapshot_name(version: int, run_id: str) -> str:
    return f"{CURRENT}/{SNAPSHOTS}/{version:06d}-{run_id}"


def manifest_uri(location: str, run_id: str) -> str:
    return path(location, MANIFESTS, f"{run_id}.json")


def report_uri(location: str, run_id: str) -> str:
    return path(location, MANIFESTS, f"{run_id}.html")


# --- layout --------------------------------------------------------------------------------


def layout_of(location: str) -> str:
    """``v2`` (this layout), ``v1`` (run_date partitions at the root) or ``empty``."""
    root = root_uri(location)
    if objects.exists(path(root, LAYOUT_MARKER)):
        return LAYOUT_V2
    if not objects.exists(root):
        return LAYOUT_EMPTY
    dirs = objects.list_dirs(root)
    if any(d.startswith("run_date=") for d in dirs) or MANIFESTS in dirs:
        return LAYOUT_V1
    return LAYOUT_EMPTY


def migrate_hint(location: str) -> str:
    return f"prodclf migrate --commodity-library {location}"


def require_layout(location: str) -> str:
    """The library's layout; the first layout is refused with the command that upgrades it."""
    try:
        found = layout_of(location)
    except OSError as exc:
        raise InputError(f"commodity library {location}: cannot be listed ({exc})") from None
    if found == LAYOUT_V1:
        raise LayoutError(
            f"commodity library {location} has the first layout (run_date partitions at its "
            f"root); upgrade it once with `{migrate_hint(location)}`"
        )
    return found


def create_layout(location: str) -> None:
    """Mark a new (or migrated) library as this layout. Idempotent."""
    marker = path(location, LAYOUT_MARKER)
    body = {"layout": LAYOUT_VERSION, "created_at": _iso(_now())}
    objects.create_exclusive(marker, (json.dumps(body) + "\n").encode())


# --- the current-tags pointer --------------------------------------------------------------


@dataclass(frozen=True)
class Pointer:
    """Which ``tags_current`` snapshot is current. ``snapshot`` is relative to the root."""

    version: int
    snapshot: str
    run_id: str
    rows: int
    updated_at: str


def read_pointer(location: str) -> Pointer | None:
    try:
        data = json.loads(objects.read_bytes(path(location, CURRENT, POINTER)))
    except FileNotFoundError:
        return None
    return Pointer(**{k: data[k] for k in Pointer.__dataclass_fields__})


def write_pointer(location: str, pointer: Pointer) -> None:
    """The commit of a new ``tags_current``: one atomic single-object write."""
    body = json.dumps(asdict(pointer), indent=2, sort_keys=True) + "\n"
    objects.write_bytes(path(location, CURRENT, POINTER), body.encode())


def current_location(location: str) -> str | None:
    """The URI of the current ``tags_current`` snapshot (a Parquet directory), or None.

    This is how pyarrow, DuckDB or pandas read the table without Spark::

        duckdb.sql(f"SELECT * FROM read_parquet('{current_location(root)}/*.parquet')")
    """
    pointer = read_pointer(location)
    return path(location, pointer.snapshot) if pointer else None


def snapshot_versions(location: str) -> list[tuple[int, str]]:
    """(version, relative path) of every snapshot directory, oldest first."""
    found = []
    for name in objects.list_dirs(path(location, CURRENT, SNAPSHOTS)):
        number = name.split("-", 1)[0]
        if number.isdigit():
            found.append((int(number), f"{CURRENT}/{SNAPSHOTS}/{name}"))
    return sorted(found)


# --- history partitions ----------------------------------------------------------------------


def history_partitions(location: str) -> list[tuple[date, str]]:
    """(run_date, run_id) of every ``tags_history`` partition directory on storage."""
    found = []
    for d in objects.list_dirs(history_uri(location)):
        if not d.startswith("run_date="):
            continue
        try:
            day = date.fromisoformat(d.removeprefix("run_date="))
        except ValueError:
            continue
        for r in objects.list_dirs(path(location, HISTORY, d)):
            if r.startswith("run_id="):
                found.append((day, r.removeprefix("run_id=")))
    return sorted(found)


# --- manifests and the runs table ------------------------------------------------------------


def write_manifest(location: str, manifest: dict[str, Any]) -> str:
    uri = manifest_uri(location, str(manifest["run_id"]))
    objects.write_bytes(uri, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
    return uri


def read_manifest(location: str, run_id: str) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads(objects.read_bytes(manifest_uri(location, run_id)))
    except FileNotFoundError:
        return None
    return data


def manifest_ids(location: str) -> list[str]:
    return [
        n.removesuffix(".json")
        for n in objects.list_names(path(location, MANIFESTS))
        if n.endswith(".json") and not n.startswith(".")
    ]


def read_manifests(location: str) -> list[dict[str, Any]]:
    """Every manifest of the library (the complete runs), oldest first."""
    ids = manifest_ids(location)
    with ThreadPoolExecutor(8) as pool:
        found = list(pool.map(lambda r: read_manifest(location, r), ids))
    manifests = [m for m in found if m is not None]
    return sorted(manifests, key=run_order)


def run_order(manifest: dict[str, Any]) -> tuple[int, str, str]:
    """Runs in commit order: the tags_current version they made, then start and id."""
    return (
        int(manifest.get("current_version") or 0),
        str(manifest.get("started_at", "")),
        str(manifest.get("run_id", "")),
    )


_INT = pa.int64()
_COUNTS = pa.map_(pa.string(), pa.int64())
#: The runs table: one row per manifest (the lists and nested fields left out).
RUNS_COLUMNS: list[tuple[str, pa.DataType, str]] = [
    ("run_id", pa.string(), "STRING"),
    ("run_date", pa.date32(), "DATE"),
    ("mode", pa.string(), "STRING"),
    ("model_name", pa.string(), "STRING"),
    ("model_version", pa.string(), "STRING"),
    ("started_at", pa.timestamp("us", tz="UTC"), "TIMESTAMP"),
    ("finished_at", pa.timestamp("us", tz="UTC"), "TIMESTAMP"),
    ("products_in", _INT, "BIGINT"),
    ("rows_written", _INT, "BIGINT"),
    ("ok", _INT, "BIGINT"),
    ("error_rows", _INT, "BIGINT"),
    ("errors", _COUNTS, "MAP<STRING,BIGINT>"),
    ("needs_review", _INT, "BIGINT"),
    ("reasons", _COUNTS, "MAP<STRING,BIGINT>"),
    ("unknown_product_ids", _INT, "BIGINT"),
    ("images_per_second", pa.float64(), "DOUBLE"),
    ("tag_seconds", pa.float64(), "DOUBLE"),
    ("base_rows", _INT, "BIGINT"),
    ("current_version", _INT, "BIGINT"),
    ("current_rows", _INT, "BIGINT"),
    ("selection", pa.string(), "STRING"),
    ("report_uri", pa.string(), "STRING"),
    ("manifest_uri", pa.string(), "STRING"),
    ("prodclf_version", pa.string(), "STRING"),
]


def runs_rows(manifests: Iterable[dict[str, Any]]) -> pa.Table:
    cols: dict[str, list[Any]] = {name: [] for name, _, _ in RUNS_COLUMNS}
    for m in manifests:
        for name, _, _ in RUNS_COLUMNS:
            value = m.get(name)
            if name == "run_date" and value is not None:
                value = date.fromisoformat(str(value))
            elif name in ("started_at", "finished_at") and value is not None:
                value = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
            elif name in ("errors", "reasons"):
                value = sorted((value or {}).items())
            elif name == "selection" and value is not None:
                value = json.dumps(value, sort_keys=True)
            cols[name].append(value)
    schema = pa.schema([(n, t) for n, t, _ in RUNS_COLUMNS])
    return pa.table({n: pa.array(cols[n], t) for n, t, _ in RUNS_COLUMNS}, schema=schema)


def write_runs_table(location: str, manifests: list[dict[str, Any]]) -> str:
    """Replace ``runs/runs.parquet`` (one object, written atomically) from the manifests."""
    buf = io.BytesIO()
    pq.write_table(runs_rows(manifests), buf, compression="zstd")
    uri = path(location, RUNS_TABLE, RUNS_FILE)
    objects.write_bytes(uri, buf.getvalue())
    return uri


# --- the lock --------------------------------------------------------------------------------


def lock_uri(location: str) -> str:
    return path(location, LOCK)


def read_lock(location: str) -> dict[str, Any] | None:
    try:
        raw = objects.read_bytes(lock_uri(location))
    except FileNotFoundError:
        return None
    try:
        data: dict[str, Any] = json.loads(raw)
    except ValueError:
        # Being written this very moment (or a torn write): held, owner unknown.
        return {"owner": "unknown (lock being written)", "token": "", "expires_at": ""}
    return data


def stale_reason(info: dict[str, Any], now: datetime | None = None) -> str | None:
    """Why a lock no longer protects anything (its lease expired, its process is gone)."""
    now = now or _now()
    expires = info.get("expires_at")
    if expires:
        try:
            if datetime.fromisoformat(str(expires).replace("Z", "+00:00")) < now:
                return f"its lease expired at {expires}"
        except ValueError:
            pass
    same_host = info.get("host") == socket.gethostname() and isinstance(info.get("pid"), int)
    if same_host and not _pid_alive(int(info["pid"])):
        return f"its process {info['pid']} on this host is gone"
    return None


def describe_lock(info: dict[str, Any]) -> str:
    return (
        f"{info.get('owner', '?')} (host {info.get('host', '?')}, pid {info.get('pid', '?')}, "
        f"since {info.get('started_at', '?')}, lease until {info.get('expires_at', '?')})"
    )


class LibraryLock:
    """The one-writer lock of a commodity library: ``_lock.json``, created exclusively.

    It records its owner, host, pid, start and lease expiry. ``held`` renews the lease
    every ``ttl_s / 3`` from a daemon thread; a lock whose lease expired, or whose
    process is gone from this host, is stale and taken over by the next command (with a
    warning naming the old owner). ``prodclf unlock`` clears one by hand.
    """

    def __init__(self, location: str, owner: str, ttl_s: float = 900.0) -> None:
        self.location = location
        self.uri = lock_uri(location)
        self.owner = owner
        self.ttl_s = ttl_s
        self.token = uuid.uuid4().hex
        self.started_at = _now()
        self.lost = False
        self._stop = threading.Event()

    def _body(self) -> bytes:
        info = {
            "owner": self.owner,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "token": self.token,
            "started_at": _iso(self.started_at),
            "expires_at": _iso(_now() + timedelta(seconds=self.ttl_s)),
        }
        return (json.dumps(info, indent=2) + "\n").encode()

    def acquire(self) -> None:
        for _ in range(3):
            if objects.create_exclusive(self.uri, self._body()):
                return
            info = read_lock(self.location)
            if info is None:
                continue  # released meanwhile: try again
            reason = stale_reason(info)
            if reason is None:
                raise LockedError(
                    f"commodity library {self.location} is locked by {describe_lock(info)}; "
                    "wait for it to finish, or if it is dead: "
                    f"prodclf unlock --commodity-library {self.location}"
                )
            log.warning("taking over the stale lock of %s: %s", describe_lock(info), reason)
            again = read_lock(self.location)
            if again is not None and again.get("token") == info.get("token"):
                objects.delete(self.uri)
        raise LockedError(f"commodity library {self.location}: could not take its lock")

    def renew(self) -> bool:
        """Extend the lease; False (and ``lost``) when the lock is no longer ours."""
        info = read_lock(self.location)
        if info is None or info.get("token") != self.token:
            self.lost = True
            return False
        objects.write_bytes(self.uri, self._body())
        return True

    def check(self) -> None:
        """Raise unless the lock is still ours (before a commit)."""
        if self.lost or not self.renew():
            raise LockedError(
                f"commodity library {self.location}: this run's lock was taken over "
                f"(now {describe_lock(read_lock(self.location) or {})}); nothing committed"
            )

    def release(self) -> None:
        info = read_lock(self.location)
        if info is not None and info.get("token") == self.token:
            objects.delete(self.uri)

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


def clear_lock(location: str, force: bool = False) -> tuple[dict[str, Any] | None, bool]:
    """(the lock found, whether it was removed). A live lock is removed only with ``force``."""
    info = read_lock(location)
    if info is None:
        return None, False
    if stale_reason(info) is None and not force:
        return info, False
    objects.delete(lock_uri(location))
    return info, True


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --- the Spark SQL catalog -------------------------------------------------------------------


def _columns_ddl(fields: Iterable[Any]) -> str:
    return ", ".join(f"`{f.name}` {f.dataType.simpleString()}" for f in fields)


def history_ddl(database: str, location: str, s3_scheme: str) -> str:
    data = [f for f in COMMODITY_LIBRARY.fields if f.name not in HISTORY_PARTITION_COLUMNS]
    parts = [f for f in COMMODITY_LIBRARY.fields if f.name in HISTORY_PARTITION_COLUMNS]
    return (
        f"CREATE EXTERNAL TABLE IF NOT EXISTS `{database}`.`tags_history` "
        f"({_columns_ddl(data)}) PARTITIONED BY ({_columns_ddl(parts)}) STORED AS PARQUET "
        f"LOCATION '{spark_location(history_uri(location), s3_scheme)}'"
    )


def register_tables(
    spark: Any,
    database: str,
    location: str,
    s3_scheme: str = "s3a",
    partitions: Iterable[tuple[date, str]] | None = None,
) -> None:
    """Create or update ``database``'s tags_history, tags_current and runs tables.

    Plain external Parquet tables (``STORED AS PARQUET``), so Hive, Trino or Athena read
    them too. ``partitions`` are added to tags_history; None synchronises them all with
    storage (``MSCK REPAIR TABLE ... SYNC PARTITIONS``, after a migration or a vacuum).
    """
    spark.sql(f"CREATE DATABASE IF NOT EXISTS `{database}`")
    spark.sql(history_ddl(database, location, s3_scheme))
    if partitions is None:
        spark.sql(f"MSCK REPAIR TABLE `{database}`.`tags_history` SYNC PARTITIONS")
    else:
        for day, run_id in partitions:
            where = spark_location(history_partition_uri(location, day, run_id), s3_scheme)
            spark.sql(
                f"ALTER TABLE `{database}`.`tags_history` ADD IF NOT EXISTS PARTITION "
                f"(run_date=DATE'{day.isoformat()}', run_id='{run_id}') LOCATION '{where}'"
            )
    current = current_location(location)
    if current is not None:
        where = spark_location(current, s3_scheme)
        spark.sql(
            f"CREATE EXTERNAL TABLE IF NOT EXISTS `{database}`.`tags_current` "
            f"({_columns_ddl(CURRENT_TAGS.fields)}) STORED AS PARQUET LOCATION '{where}'"
        )
        spark.sql(f"ALTER TABLE `{database}`.`tags_current` SET LOCATION '{where}'")
        spark.sql(f"REFRESH TABLE `{database}`.`tags_current`")
    runs_cols = ", ".join(f"`{n}` {hive}" for n, _, hive in RUNS_COLUMNS)
    runs_at = spark_location(path(location, RUNS_TABLE), s3_scheme)
    spark.sql(
        f"CREATE EXTERNAL TABLE IF NOT EXISTS `{database}`.`runs` ({runs_cols}) "
        f"STORED AS PARQUET LOCATION '{runs_at}'"
    )
    spark.sql(f"REFRESH TABLE `{database}`.`runs`")
    spark.sql(f"REFRESH TABLE `{database}`.`tags_history`")


# --- small helpers -------------------------------------------------------------------------


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


def _iso(ts: datetime) -> str:
    return ts.isoformat().replace("+00:00", "Z")
