"""A run's manifest and the ``tags_current`` pointer, as typed records.

``RunManifest`` is the only way a manifest is written or read: ``to_json`` and
``from_json`` are its one serialisation, and the ``runs`` table's schema is generated
from the fields marked ``RUNS`` (in field order), so the table cannot list a column
the record does not have. Manifests written by earlier versions lack some fields; they
read as their defaults.
"""

from __future__ import annotations

import json
import types
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from datetime import date, datetime, timezone
from functools import cache
from typing import Any

import pyarrow as pa

#: Field metadata: this field is a column of the ``runs`` table.
RUNS = {"runs": True}


def now() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


def iso(ts: datetime) -> str:
    return ts.isoformat().replace("+00:00", "Z")


def parse_ts(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@dataclass(frozen=True)
class RunManifest:
    """What one complete run did. Its presence under ``_runs/`` marks the run complete."""

    run_id: str = field(metadata=RUNS)
    run_date: date = field(metadata=RUNS)
    mode: str | None = field(default=None, metadata=RUNS)
    model_name: str | None = field(default=None, metadata=RUNS)
    model_version: str | None = field(default=None, metadata=RUNS)
    started_at: datetime | None = field(default=None, metadata=RUNS)
    finished_at: datetime | None = field(default=None, metadata=RUNS)
    products_in: int | None = field(default=None, metadata=RUNS)
    rows_written: int | None = field(default=None, metadata=RUNS)
    ok: int | None = field(default=None, metadata=RUNS)
    error_rows: int | None = field(default=None, metadata=RUNS)
    errors: dict[str, int] = field(default_factory=dict, metadata=RUNS)
    needs_review: int | None = field(default=None, metadata=RUNS)
    reasons: dict[str, int] = field(default_factory=dict, metadata=RUNS)
    unknown_product_ids: int = field(default=0, metadata=RUNS)
    images_per_second: float | None = field(default=None, metadata=RUNS)
    tag_seconds: float | None = field(default=None, metadata=RUNS)
    base_rows: int | None = field(default=None, metadata=RUNS)
    current_version: int | None = field(default=None, metadata=RUNS)
    current_rows: int | None = field(default=None, metadata=RUNS)
    selection: dict[str, Any] = field(default_factory=dict, metadata=RUNS)
    report_uri: str | None = field(default=None, metadata=RUNS)
    manifest_uri: str | None = field(default=None, metadata=RUNS)
    prodclf_version: str | None = field(default=None, metadata=RUNS)
    # Kept in the manifest only.
    base_products: int | None = None
    null_product_ids: int | None = None
    duplicate_product_rows: int | None = None
    progress: list[list[float]] = field(default_factory=list)
    review_threshold: float | None = None
    current_snapshot: str | None = None
    previous_snapshot: str | None = None
    base_library: str | None = None
    commodity_library: str | None = None
    model_uri: str | None = None
    #: The library's table format when the run committed (``parquet`` or ``iceberg``).
    table_format: str = "parquet"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: dates and times as ISO text (UTC times end in ``Z``)."""
        out: dict[str, Any] = {}
        for key, value in asdict(self).items():
            if isinstance(value, datetime):
                value = iso(value)
            elif isinstance(value, date):
                value = value.isoformat()
            out[key] = value
        return out

    def to_json(self) -> bytes:
        return (json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n").encode()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunManifest:
        """From a manifest's JSON; unknown keys (a newer writer's) are ignored."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = data.get(f.name)
            kinds = _types()[f.name]
            if raw is None:
                if f.name in data and f.default_factory is not MISSING:
                    values[f.name] = f.default_factory()
                continue
            if datetime in kinds:
                raw = parse_ts(str(raw))
            elif date in kinds:
                raw = date.fromisoformat(str(raw))
            values[f.name] = raw
        return cls(**values)

    @classmethod
    def from_json(cls, raw: bytes) -> RunManifest:
        return cls.from_dict(json.loads(raw))

    def with_(self, **changes: Any) -> RunManifest:
        return replace(self, **changes)

    def order(self) -> tuple[int, str, str]:
        """Runs in commit order: the tags_current version they made, then start and id."""
        started = iso(self.started_at) if self.started_at else ""
        return (int(self.current_version or 0), started, self.run_id)


@cache
def _types() -> dict[str, tuple[Any, ...]]:
    """Each field's types: ``int | None`` gives ``(int, NoneType)``."""
    found = {}
    for name, hint in typing.get_type_hints(RunManifest).items():
        union = isinstance(hint, types.UnionType)
        found[name] = typing.get_args(hint) if union else (hint,)
    return found


_ARROW = {
    str: (pa.string(), "STRING"),
    int: (pa.int64(), "BIGINT"),
    float: (pa.float64(), "DOUBLE"),
    datetime: (pa.timestamp("us", tz="UTC"), "TIMESTAMP"),
    date: (pa.date32(), "DATE"),
}
_COUNTS = (pa.map_(pa.string(), pa.int64()), "MAP<STRING,BIGINT>")


@cache
def runs_columns() -> tuple[tuple[str, pa.DataType, str], ...]:
    """(name, Arrow type, SQL type) of the ``runs`` table, from the ``RUNS`` fields.

    A ``dict[str, int]`` field is a map of counts; any other dict is stored as JSON text.
    """
    columns = []
    for f in fields(RunManifest):
        if not f.metadata.get("runs"):
            continue
        kind = next(t for t in _types()[f.name] if t is not type(None))
        if typing.get_origin(kind) is dict:
            arrow, sql = _COUNTS if typing.get_args(kind) == (str, int) else _ARROW[str]
        else:
            arrow, sql = _ARROW[kind]
        columns.append((f.name, arrow, sql))
    return tuple(columns)


def runs_rows(manifests: list[RunManifest]) -> pa.Table:
    """The ``runs`` table: one row per manifest, in the order given."""
    cols: dict[str, list[Any]] = {name: [] for name, _, _ in runs_columns()}
    for m in manifests:
        for name, arrow, _ in runs_columns():
            value = getattr(m, name)
            if pa.types.is_map(arrow):
                value = sorted((value or {}).items())
            elif isinstance(value, dict):
                value = json.dumps(value, sort_keys=True)
            cols[name].append(value)
    schema = pa.schema([(n, t) for n, t, _ in runs_columns()])
    return pa.table({n: pa.array(cols[n], t) for n, t, _ in runs_columns()}, schema=schema)


@dataclass(frozen=True)
class Pointer:
    """Which ``tags_current`` snapshot is current, and which run committed last.

    ``snapshot`` is relative to the library's root. ``run_id`` is the last run to commit
    (a run that changed no product commits the same snapshot again).
    """

    version: int
    snapshot: str
    run_id: str
    rows: int
    updated_at: str

    def to_json(self) -> bytes:
        return (json.dumps(asdict(self), indent=2, sort_keys=True) + "\n").encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Pointer:
        data = json.loads(raw)
        return cls(**{k: data[k] for k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class Transaction:
    """A run's view of the library from ``begin`` to ``commit``.

    ``snapshot``, ``version`` and ``rows`` describe the ``tags_current`` the run selected
    against (``current``); ``token`` is the version its commit is conditional on (the
    pointer's ETag, or the Iceberg snapshot id).
    """

    run_id: str
    run_date: date
    current: Any  # a DataFrame (this module imports no Spark)
    snapshot: str | None
    version: int
    rows: int
    token: str | None
