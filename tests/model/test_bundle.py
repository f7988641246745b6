"""Bundle metadata: labels carry their taxonomy path; older bundles still load (no TF)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from prodclf.errors import ModelBundleError
from prodclf.images import PreprocessSpec
from prodclf.model.bundle import META_FILE, SAVED_MODEL_DIR, BundleMeta, Label, read_meta

pytestmark = pytest.mark.spark4

SHOES = "Apparel & Accessories > Shoes"


def meta(*labels: Label) -> BundleMeta:
    return BundleMeta(
        model_name="m",
        model_version="1",
        labels=labels,
        preprocessing=PreprocessSpec(8, 8, "rgb", "unit"),
    )


def write_bundle(root: Path, data: dict[str, Any]) -> str:
    (root / SAVED_MODEL_DIR).mkdir(parents=True)
    (root / SAVED_MODEL_DIR / "saved_model.pb").write_bytes(b"graph")
    (root / META_FILE).write_text(json.dumps(data))
    return str(root)


def test_label_paths_round_trip_through_bundle_json(tmp_path: Path) -> None:
    written = meta(Label("Sneaker", "187", SHOES), Label("Bag", "3032"))
    data = json.loads(written.to_json())
    assert data["labels"] == [
        {"name": "Sneaker", "id": "187", "path": SHOES},
        {"name": "Bag", "id": "3032", "path": ""},
    ]
    assert read_meta(write_bundle(tmp_path / "b", data)) == written


def test_bundles_written_before_label_paths_still_load(tmp_path: Path) -> None:
    data = json.loads(meta(Label("red", "1001"), Label("blue", "1002")).to_json())
    data["labels"] = [{"name": "red", "id": 1001}, {"name": "blue", "id": "1002", "path": None}]
    got = read_meta(write_bundle(tmp_path / "old", data))
    assert got.labels == (Label("red", "1001", ""), Label("blue", "1002", ""))


@pytest.mark.parametrize(
    "labels",
    [
        [{"name": "red", "id": "1", "path": ["A", "B"]}, {"name": "blue", "id": "2"}],
        ["red", {"name": "blue", "id": "2"}],
    ],
)
def test_malformed_labels_are_refused(tmp_path: Path, labels: list[Any]) -> None:
    data = json.loads(meta(Label("red", "1"), Label("blue", "2")).to_json())
    data["labels"] = labels
    with pytest.raises(ModelBundleError, match=r"invalid bundle\.json"):
        BundleMeta.from_dict(data, "b")


@pytest.mark.parametrize(
    "entry",
    [
        "model.tflite",
        {"file": "model.tflite"},
        {"file": "../elsewhere.tflite", "sha256": "ab"},
        {"file": "model.tflite", "sha256": 3},
    ],
)
def test_malformed_lite_model_entries_are_refused(tmp_path: Path, entry: Any) -> None:
    data = json.loads(meta(Label("a", "1"), Label("b", "2")).to_json())
    data["lite_model"] = entry
    with pytest.raises(ModelBundleError, match="lite_model"):
        read_meta(write_bundle(tmp_path / "b", data))


def test_bundles_without_a_lite_model_load_without_one(tmp_path: Path) -> None:
    data = json.loads(meta(Label("a", "1"), Label("b", "2")).to_json())
    del data["lite_model"]
    assert read_meta(write_bundle(tmp_path / "b", data)).lite_model is None
