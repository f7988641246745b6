"""``prodclf demo`` on a tiny fake Fashion-MNIST: the stages, the markers, the reuse."""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from prodclf.demo import DemoOptions, Layout, is_done, mark_done, run_demo
from prodclf.model.bundle import Label, read_meta


def _idx(array: np.ndarray) -> bytes:
    header = struct.pack(f">I{array.ndim}I", 0x0800 | array.ndim, *array.shape)
    return gzip.compress(header + array.astype(np.uint8).tobytes())


def fake_fashion_mnist(root: Path, n_train: int = 40, n_test: int = 12) -> Path:
    """Two easy classes: Trouser (two vertical bars) and Bag (a filled box)."""
    rng = np.random.default_rng(0)
    root.mkdir()
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = np.where(np.arange(n) % 2 == 0, 1, 8).astype(np.uint8)
        images = rng.integers(0, 40, size=(n, 28, 28)).astype(np.uint8)
        images[labels == 1, 2:26, 8:12] = 220
        images[labels == 1, 2:26, 16:20] = 220
        images[labels == 8, 8:24, 4:24] = 200
        (root / f"{prefix}-images-idx3-ubyte.gz").write_bytes(_idx(images))
        (root / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(_idx(labels))
    return root


def test_missing_dataset_says_what_to_install(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    opts = DemoOptions(str(tmp_path / "w"), 10, 20, 1, data_dir=str(tmp_path / "none"))
    assert run_demo(opts) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "apt-get install dataset-fashion-mnist" in err
    assert not (tmp_path / "w").exists()


def test_markers_record_the_parameters(tmp_path: Path) -> None:
    marker = tmp_path / "stage" / "_DONE"
    assert not is_done(marker, {"n": 1})
    mark_done(marker, {"n": 1})
    assert is_done(marker, {"n": 1})
    assert not is_done(marker, {"n": 2})
    marker.write_text("{half")  # an interrupted write is never "done"
    assert not is_done(marker, {"n": 1})


@pytest.mark.slow
@pytest.mark.train
def test_demo_end_to_end_then_reuse(
    spark: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The demo's own session would be this one anyway (getOrCreate); patching keeps the
    # fixture's settings untouched for the tests that run after this one.
    monkeypatch.setattr("prodclf.session.create_session", lambda *a, **k: spark)
    data = fake_fashion_mnist(tmp_path / "fm")
    opts = DemoOptions(
        str(tmp_path / "work"), catalog_size=10, train_limit=40, epochs=2, data_dir=str(data)
    )
    layout = Layout(tmp_path / "work")

    assert run_demo(opts) == 0
    first = capsys.readouterr().out
    assert "trained now" in first
    assert "products           12" in first
    assert "tagged ok          10" in first
    assert "errors             2 (not_found 1, undecodable_image 1)" in first
    assert len(list((layout.images / "train").glob("*.png"))) == 40
    meta = read_meta(str(layout.model))
    assert meta.labels == (Label("Bag", "3032"), Label("Trouser", "204"))
    assert json.loads(layout.label_map.read_text())["Bag"] == "3032"
    # A full run, then an incremental run that tags only what catalog_next changed.
    manifests = list((layout.commodity / "_runs").glob("*.json"))
    assert len(manifests) == 2
    assert "incremental run" in first and "tagged 8 of 15 products" in first
    assert "(image_changed 5, new 3)" in first
    assert "tags_current" in first and ".html" in first

    assert run_demo(opts) == 0
    second = capsys.readouterr().out
    assert "reused" in second
    assert read_meta(str(layout.model)).created_at == meta.created_at
    assert len(list((layout.commodity / "_runs").glob("*.json"))) == 4
