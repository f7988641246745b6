"""The library's layout, its pointer, its runs table and its lock (no Spark)."""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from prodclf.library import layout
from prodclf.library.lock import LockedError
from prodclf.library.manifest import Pointer, RunManifest
from prodclf.library.table import CommodityLibrary, LayoutError
from prodclf.storage import objects

pytestmark = pytest.mark.spark4


def test_layouts_are_told_apart(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    library = CommodityLibrary(str(lib))
    assert library.layout_version() == "empty"
    (lib / "run_date=2026-11-20").mkdir(parents=True)
    assert library.layout_version() == "v1"
    with pytest.raises(LayoutError) as info:
        library.require_layout()
    assert str(info.value).endswith(f"`prodclf migrate --commodity-library {lib}`")
    assert "\n" not in str(info.value)
    library.create_layout()
    assert library.layout_version() == "v2"


def write_pointer(lib: Path, pointer: Pointer) -> None:
    """A pointer as a committed run leaves it (the library writes it only in a commit)."""
    (lib / "tags_current").mkdir(parents=True, exist_ok=True)
    (lib / "tags_current" / "_CURRENT.json").write_bytes(pointer.to_json())


def test_the_pointer_names_the_current_snapshot(tmp_path: Path) -> None:
    library = CommodityLibrary(str(tmp_path / "lib"))
    assert library.pointer() is None and library.current_location() is None
    pointer = Pointer(3, layout.snapshot_name(3, "r3"), "r3", 10, "t")
    write_pointer(tmp_path / "lib", pointer)
    assert library.pointer() == pointer
    assert library.current_location() == f"file://{tmp_path}/lib/tags_current/_v/000003-r3"


def test_a_second_writer_is_refused_with_the_owner_and_the_way_out(tmp_path: Path) -> None:
    lib = str(tmp_path / "lib")
    first = CommodityLibrary(lib).lock("prodclf tag full run r1", run_id="r1")
    with first.held():
        info = json.loads((tmp_path / "lib" / "_lock.json").read_text())
        assert info["owner"] == "prodclf tag full run r1" and info["run_id"] == "r1"
        assert info["host"] == socket.gethostname() and info["pid"] > 0
        assert info["started_at"] <= info["expires_at"]
        with pytest.raises(LockedError) as refused:
            CommodityLibrary(lib).lock("prodclf tag incremental run r2").acquire()
        msg = str(refused.value)
        assert "is locked by prodclf tag full run r1 (host" in msg
        assert f"prodclf unlock --commodity-library {lib}" in msg
        first.check()  # still ours
    assert not (tmp_path / "lib" / "_lock.json").exists()


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def write_lock(lib: Path, **info: Any) -> None:
    lib.mkdir(parents=True, exist_ok=True)
    body = {
        "owner": "prodclf tag full run old",
        "host": socket.gethostname(),
        "pid": 1,
        "token": "old",
        "started_at": "2026-11-20T03:00:00Z",
        "expires_at": "2999-01-01T00:00:00Z",
        **info,
    }
    (lib / "_lock.json").write_text(json.dumps(body))


@pytest.mark.parametrize(
    "stale",
    [{"pid": "dead"}, {"expires_at": "2026-01-01T00:00:00Z", "host": "elsewhere"}],
    ids=["process gone", "lease expired"],
)
def test_a_stale_lock_is_taken_over(
    tmp_path: Path, stale: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    lib = tmp_path / "lib"
    write_lock(lib, **{k: (dead_pid() if v == "dead" else v) for k, v in stale.items()})
    lock = CommodityLibrary(str(lib)).lock("prodclf tag full run new")
    lock.acquire()
    assert json.loads((lib / "_lock.json").read_text())["token"] == lock.token
    assert "taking over the stale lock of prodclf tag full run old" in caplog.text
    lock.release()


def test_a_live_lock_on_another_host_is_respected_until_forced(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    write_lock(lib, host="other-host", pid=4242)
    with pytest.raises(LockedError):
        CommodityLibrary(str(lib)).lock("prodclf vacuum").acquire()
    assert CommodityLibrary(str(lib)).clear_lock()[1] is False
    info, removed = CommodityLibrary(str(lib)).clear_lock(force=True)
    assert removed and info is not None and info["host"] == "other-host"
    assert CommodityLibrary(str(lib)).read_lock() is None


def test_a_lock_taken_over_is_noticed_before_the_commit(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    lock = CommodityLibrary(str(lib)).lock("prodclf tag full run slow")
    lock.acquire()
    write_lock(lib, token="someone-else")
    with pytest.raises(LockedError) as info:
        lock.check()
    assert "taken over" in str(info.value)


def test_exclusive_creation_on_s3(s3: Any) -> None:
    s3.create_bucket(Bucket="locks")
    uri = "s3://locks/lib/_lock.json"
    assert objects.create_exclusive(uri, b"one")
    assert not objects.create_exclusive(uri, b"two")
    assert objects.read_bytes(uri) == b"one"
    objects.delete(uri)
    assert objects.create_exclusive(uri, b"three")


def test_runs_table_has_one_row_per_manifest(tmp_path: Path) -> None:
    library = CommodityLibrary(str(tmp_path / "lib"))
    manifests = [
        RunManifest.from_dict(
            {
                "run_id": "r1",
                "run_date": "2026-11-20",
                "mode": "full",
                "started_at": "2026-11-20T03:00:00Z",
                "errors": {"not_found": 2},
                "reasons": {"full": 5, "new": 1},
                "selection": {"mode": "full"},
                "products_in": 6,
                "current_version": 1,
            }
        ),
        # A first-layout manifest: fields missing.
        RunManifest.from_dict({"run_id": "old", "run_date": "2026-11-19"}),
    ]
    uri = library.write_runs_table(manifests)
    table = pq.read_table(objects.local_path(uri)).to_pylist()
    assert [r["run_id"] for r in table] == ["r1", "old"]
    assert table[0]["errors"] == [("not_found", 2)] and table[0]["products_in"] == 6
    assert table[0]["selection"] == '{"mode": "full"}'
    assert table[1]["mode"] is None


def test_a_locked_library_refuses_every_writer_before_spark_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from prodclf import session
    from prodclf.cli import main

    def no_spark(*_: object, **__: object) -> None:
        raise AssertionError("a Spark session was started")

    monkeypatch.setattr(session, "create_session", no_spark)
    lib = tmp_path / "lib"
    CommodityLibrary(str(lib)).create_layout()
    write_lock(lib, host="other-host", pid=4242)  # live: its lease runs until 2999
    base = tmp_path / "base"
    base.mkdir()
    commands = [
        [
            "tag",
            "--base-library",
            str(base),
            "--model",
            str(tmp_path / "m"),
            "--run-date",
            "2026-11-20",
        ],
        ["vacuum", "--keep-days", "3", "--apply"],
        ["migrate", "--to", "iceberg"],
    ]
    for argv in commands:
        assert main([*argv, "--commodity-library", str(lib)]) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "is locked by prodclf tag full run old" in err[0], argv
