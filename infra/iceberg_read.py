"""Print the rows of an Iceberg table as JSON lines, read by DuckDB offline (no catalog).

    .venv-iceberg-reader/bin/python infra/iceberg_read.py TABLE [--sql "SELECT ... FROM t ..."]

Runs in its own venv (``make iceberg-reader-env``, pinned by infra/iceberg-reader-constraints.txt):
PyPI's ``duckdb-extension-iceberg`` 1.5.5 loads only into duckdb 1.5.5, and .venv pins duckdb 2.x.
The extension is the ``.duckdb_extension`` file its wheel ships (``extensions/v<duckdb>/``), loaded
by path (``LOAD '<file>'``), after the avro extension it needs (Iceberg manifests are Avro): nothing
is downloaded, nothing is installed into ``~/.duckdb``, extension auto-install is off.

TABLE is a local table directory (``metadata/`` and ``data/``; a ``file:`` URI is accepted) or one
of its ``*.metadata.json`` files. For a directory the current metadata file is chosen as Iceberg's
Hadoop tables do: the highest ``v<N>.metadata.json`` (``metadata/version-hint.text`` only hints at
it; a commit writes ``v<N+1>`` before the hint). A directory of a catalog's table
(``<NNNNN>-<uuid>.metadata.json``, no ``v<N>`` files) gets its highest ``NNNNN``: the catalog is the
truth there, so name the metadata file to be sure. A table whose metadata names another location
(a moved or copied table) is read with ``allow_moved_paths``.

The query (``--sql``, default ``SELECT * FROM t``) reads the view ``t`` over
``iceberg_scan(...)``; rows are printed in the query's order, one JSON object a line, columns by
name: dates, times and timestamps as ISO 8601 text (TIMESTAMPTZ in UTC, with ``+00:00``), lists
as arrays, structs and maps as objects, decimals as text (exact), binary as base64, NaN and
infinities as the text ``NaN``, ``Infinity``, ``-Infinity``, NULL as null.
"""

from __future__ import annotations

import argparse
import base64
import gzip
import importlib.resources
import json
import math
import re
import sys
import uuid
from collections.abc import Iterator
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

#: The extensions loaded, in order: iceberg needs avro.
EXTENSIONS = ("avro", "iceberg")
VIEW = "t"
#: Metadata file names as Iceberg writes them (``.gz`` with write.metadata.compression-codec gzip):
#: a Hadoop table's ``v<N>``, a catalog table's ``<NNNNN>-<uuid>``. Group 1: the version as
#: ``iceberg_scan(..., version => ...)`` names it, group 2: the ordinal, group 3: compressed.
_HADOOP_VERSION = re.compile(r"^v((\d+))(\.gz)?\.metadata\.json$")
_CATALOG_VERSION = re.compile(r"^((\d+)-[0-9a-fA-F-]+)(\.gz)?\.metadata\.json$")
FETCH_ROWS = 1024


class ReadError(Exception):
    """A refusal, printed as one line."""


def local_path(location: str) -> Path:
    """The local path of ``location`` (a path or a ``file:`` URI); other schemes are refused."""
    parsed = urlparse(location)
    if parsed.scheme in ("", "file"):
        return Path(unquote(parsed.path) if parsed.scheme else location).expanduser().resolve()
    if len(parsed.scheme) == 1:  # a Windows drive letter
        return Path(location).resolve()
    raise ReadError(
        f"{location}: only local tables are read ({parsed.scheme}:// needs DuckDB's httpfs, "
        "not in this environment); copy the table directory here"
    )


def current_metadata(table: Path) -> Path:
    """The table's current metadata file (see the module's docstring)."""
    if table.is_file():
        if not table.name.endswith(".metadata.json"):
            raise ReadError(f"{table}: not an Iceberg metadata file (*.metadata.json)")
        return table
    folder = table / "metadata"
    if not folder.is_dir():
        raise ReadError(f"{table}: no such Iceberg table (no metadata/ directory)")
    for pattern in (_HADOOP_VERSION, _CATALOG_VERSION):
        versions = [
            (int(m.group(2)), p.name, p)
            for p in folder.iterdir()
            if (m := pattern.match(p.name)) and p.is_file()
        ]
        if versions:
            return max(versions)[2]
    raise ReadError(f"{table}: no *.metadata.json in {folder}")


def table_root(metadata: Path) -> Path:
    """The table directory of a metadata file (``<table>/metadata/<file>``)."""
    return metadata.parent.parent


def recorded_location(metadata: Path) -> str | None:
    """The ``location`` the metadata file records."""
    try:
        raw = metadata.read_bytes()
        data = json.loads(gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw)
    except (OSError, ValueError) as exc:
        raise ReadError(f"{metadata}: not readable as Iceberg metadata JSON ({exc})") from None
    location = data.get("location")
    return location if isinstance(location, str) else None


def moved(metadata: Path) -> bool:
    """Whether the table's metadata names another location than where it is now."""
    location = recorded_location(metadata)
    if location is None:
        return False
    try:
        return local_path(location) != table_root(metadata).resolve()
    except ReadError:  # written at s3://..., read here: moved
        return True


def extension_file(name: str, duckdb_version: str) -> Path:
    """The ``.duckdb_extension`` file the ``duckdb-extension-<name>`` wheel ships."""
    package = f"duckdb_extension_{name}"
    try:
        root = Path(str(importlib.resources.files(package)))
    except ModuleNotFoundError:
        raise ReadError(
            f"{package} is not installed: run with .venv-iceberg-reader/bin/python "
            "(make iceberg-reader-env)"
        ) from None
    path = root / "extensions" / duckdb_version / f"{name}.duckdb_extension"
    if not path.is_file():
        built = sorted(p.name for p in (root / "extensions").glob("v*"))
        raise ReadError(
            f"{package} has no build for DuckDB {duckdb_version} (it has: "
            f"{', '.join(built) or 'none'}): install infra/iceberg-reader-constraints.txt's pins"
        )
    return path


def connect() -> Any:
    """A DuckDB connection with the avro and iceberg extensions loaded from their wheels."""
    try:
        import duckdb
    except ModuleNotFoundError:
        raise ReadError(
            "duckdb is not installed: run with .venv-iceberg-reader/bin/python "
            "(make iceberg-reader-env)"
        ) from None
    con = duckdb.connect(config={"autoinstall_known_extensions": False})
    row = con.execute("PRAGMA version").fetchone()
    version = str(row[0]) if row else f"v{duckdb.__version__}"  # "v1.5.5"
    for name in EXTENSIONS:
        con.execute(f"LOAD {sql_text(str(extension_file(name, version)))}")
    con.execute("SET TimeZone = 'UTC'")
    return con


def sql_text(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def scan_sql(metadata: Path) -> str:
    """``iceberg_scan`` of the metadata file; of a moved table, its directory and version.

    ``allow_moved_paths`` takes the table's directory (not a metadata file): the metadata file
    is then named by its version, in DuckDB's default ``version_name_format``.
    """
    match = _HADOOP_VERSION.match(metadata.name) or _CATALOG_VERSION.match(metadata.name)
    gz = [] if match is None or not match.group(3) else ["metadata_compression_codec => 'gzip'"]
    if not moved(metadata):
        args = [sql_text(str(metadata)), *gz]
    elif match is None or metadata.parent.name != "metadata":
        raise ReadError(
            f"{metadata}: the table was moved (its metadata names {recorded_location(metadata)}); "
            "give its directory, <table>/metadata/<v<N> or NNNNN-uuid>.metadata.json"
        )
    else:
        root, version = table_root(metadata), match.group(1)
        args = [sql_text(str(root)), "allow_moved_paths => true", f"version => {sql_text(version)}"]
        args += gz
    return f"iceberg_scan({', '.join(args)})"


def jsonable(value: Any) -> Any:
    """A DuckDB value as JSON (see the module's docstring)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, (datetime, date, time)):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, dict):
        return {
            k if isinstance(k, str) else json.dumps(jsonable(k)): jsonable(v)
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return str(value)


def read_rows(table: str, sql: str) -> Iterator[dict[str, Any]]:
    """The rows of ``sql`` over the view ``t`` of the table, in the query's order."""
    metadata = current_metadata(local_path(table))
    con = connect()
    con.execute(f"CREATE TEMP VIEW {VIEW} AS SELECT * FROM {scan_sql(metadata)}")
    result = con.execute(sql)
    names = [d[0] for d in result.description or ()]
    while batch := result.fetchmany(FETCH_ROWS):
        for row in batch:
            yield {name: jsonable(value) for name, value in zip(names, row, strict=True)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("table", help="a table directory (or file: URI), or a *.metadata.json")
    parser.add_argument(
        "--sql", default=f"SELECT * FROM {VIEW}", help=f"the query over the view {VIEW!r}"
    )
    args = parser.parse_args(argv)
    try:
        for row in read_rows(args.table, args.sql):
            sys.stdout.write(json.dumps(row, ensure_ascii=False) + "\n")
    except ReadError as exc:
        print(f"iceberg_read: error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # DuckDB's errors (a bad query, a broken table): one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        print(f"iceberg_read: error: {type(exc).__name__}: {first}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
