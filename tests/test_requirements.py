"""``prodclf train`` needs the train extra (petastorm, Spark 3.5, pyarrow<13) and says so."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

import prodclf
from prodclf import requirements
from prodclf.cli import main

pytestmark = pytest.mark.spark4

HINT = "pip install 'prodclf[tf,train]' -c constraints.txt"


def _versions(monkeypatch: pytest.MonkeyPatch, **found: str | None) -> None:
    """Pretend these distributions are installed (a version) or absent (None)."""
    real = requirements.installed_version

    def fake(dist: str) -> str | None:
        return found[dist] if dist in found else real(dist)

    monkeypatch.setattr(requirements, "installed_version", fake)


def _no_spark(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_: object, **__: object) -> None:
        raise AssertionError("a SparkSession was requested")

    monkeypatch.setattr("prodclf.session.create_session", refuse)


def _train(tmp_path: Path) -> list[str]:
    return ["train", "--base-library", str(tmp_path / "base"), "--model-out", str(tmp_path / "m")]


def test_train_without_petastorm_exits_2_with_one_line_before_spark(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _versions(monkeypatch, petastorm=None)
    _no_spark(monkeypatch)
    assert main(_train(tmp_path)) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("prodclf: error: prodclf train cannot run here: petastorm is not")
    assert HINT in lines[0]
    assert "Spark 3.5" in lines[0] and "pyarrow<13" in lines[0]


@pytest.mark.parametrize(
    ("found", "problem"),
    [
        ({"petastorm": "0.13.1", "pyspark": "4.3.0"}, "pyspark 4.3.0 is installed"),
        ({"petastorm": "0.13.1", "pyspark": "3.5.9", "pyarrow": "26.0.1"}, "pyarrow 26.0.1"),
    ],
)
def test_petastorm_beside_spark4_or_new_pyarrow_is_refused_too(
    found: dict[str, str], problem: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _versions(monkeypatch, **found)
    assert problem in (requirements.training_problem() or "")
    with pytest.raises(requirements.MissingExtra, match=r"\[tf,train\]"):
        requirements.require_training()


def test_the_training_stack_is_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    _versions(monkeypatch, petastorm="0.13.1", pyspark="3.5.9", pyarrow="12.0.1")
    assert requirements.training_problem() is None
    requirements.require_training()


def test_this_environment_is_refused_exactly_when_petastorm_is_missing(tmp_path: Path) -> None:
    """The real check, in a fresh interpreter: the Spark 4 venv has no petastorm."""
    missing = importlib.util.find_spec("petastorm") is None
    proc = subprocess.run(
        [sys.executable, "-m", "prodclf", *_train(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    # With the train extra, the run gets past the check to the missing base library.
    assert (HINT in lines[0]) is missing, lines[0]
    if not missing:
        assert "base library" in lines[0]


# --- the same code on the driver and the executors ------------------------------------------


def _package(root: Path, **files: str) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_code_identity_is_the_version_and_a_digest_of_the_sources(tmp_path: Path) -> None:
    files = {"__init__.py": "x = 1\n", "tagging/udf.py": "y = 2\n"}
    a = requirements.code_identity.__wrapped__(_package(tmp_path / "a", **files))
    b = requirements.code_identity.__wrapped__(_package(tmp_path / "b", **files))
    assert a == b and a.startswith(f"{prodclf.__version__}+")
    # Byte code and other files do not count; a changed source does.
    _package(tmp_path / "b", **{"tagging/__pycache__/udf.cpython-311.py": "z", "data.txt": "z"})
    assert requirements.code_identity.__wrapped__(tmp_path / "b") == a
    _package(tmp_path / "b", **{"tagging/udf.py": "y = 3\n"})
    assert requirements.code_identity.__wrapped__(tmp_path / "b") != a
    # A file moved to another module is other code, even with the same bytes.
    moved = _package(tmp_path / "c", **{"__init__.py": "x = 1\n", "udf.py": "y = 2\n"})
    assert requirements.code_identity.__wrapped__(moved) != a
    # Without sources (byte code only): the version alone.
    (tmp_path / "d").mkdir()
    assert requirements.code_identity.__wrapped__(tmp_path / "d") == prodclf.__version__


@pytest.mark.parametrize(
    ("driver", "worker", "skewed"),
    [
        ("0.1.0+aaa", "0.1.0+aaa", False),
        ("0.1.0+aaa", "0.1.0+bbb", True),  # same version number, other commit
        ("0.1.0+aaa", "0.2.0+aaa", True),
        ("0.1.0+aaa", "0.1.0", False),  # byte code only on one side: versions compared
        ("0.1.0", "0.2.0+aaa", True),
    ],
)
def test_skew(driver: str, worker: str, skewed: bool) -> None:
    assert requirements.skew(driver, worker) is skewed
