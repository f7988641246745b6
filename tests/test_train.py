"""The minimal trainer: refusals, the Spark side, and a bundle the tagging job can use."""

from __future__ import annotations

import io
import subprocess
import sys
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from prodclf.bundle import Label, read_meta
from prodclf.config import StorageConfig, TagConfig, TrainConfig
from prodclf.errors import ConfigError, InputError, SchemaMismatch
from prodclf.imaging import PreprocessSpec
from prodclf.train import (
    decode_partition_fn,
    label_ids,
    labelled_rows,
    load_label_map,
    preflight,
    run_train,
)

ROOT = Path(__file__).resolve().parents[1]


def pattern_png(label: str, seed: int, size: int = 16) -> bytes:
    """A noisy image of one of two very different looks: red stripes or blue checks."""
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 60, size=(size, size, 3)).astype(np.int64)
    yy, xx = np.mgrid[0:size, 0:size]
    if label == "red":
        mask = (yy // 2) % 2 == 0
        img[..., 0] += np.where(mask, 190, 90)
    else:
        mask = ((yy // 4) + (xx // 4)) % 2 == 0
        img[..., 2] += np.where(mask, 190, 90)
    buf = io.BytesIO()
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB").save(buf, format="PNG")
    return buf.getvalue()


def write_library(folder: Path, columns: dict[str, list[Any]]) -> Path:
    folder.mkdir(parents=True)
    pq.write_table(
        pa.table({k: pa.array(v, pa.string()) for k, v in columns.items()}),
        folder / "part-00000.parquet",
    )
    return folder


def make_catalog(root: Path, n: int = 48) -> tuple[Path, dict[str, str]]:
    """``n`` labelled products (half red, half blue), one with a missing image, one unlabelled.

    Returns the library location and the known label of every product with an image.
    """
    images = root / "images"
    images.mkdir(parents=True)
    ids, uris, labels = [], [], []
    truth = {}
    for i in range(n):
        label = "red" if i % 2 else "blue"
        (images / f"{i}.png").write_bytes(pattern_png(label, seed=i))
        ids.append(f"p{i:03d}")
        uris.append((images / f"{i}.png").as_uri())
        labels.append(label)
        truth[f"p{i:03d}"] = label
    ids += ["p-missing", "p-unlabelled"]
    uris += [(images / "missing.png").as_uri(), (images / "0.png").as_uri()]
    labels += ["red", None]
    library = write_library(
        root / "library",
        {"product_id": ids, "image_uri": uris, "label": labels, "title": ids},
    )
    return library, truth


def train_config(library: Path, out: Path, **kw: Any) -> TrainConfig:
    defaults: dict[str, Any] = dict(
        image_height=8,
        image_width=8,
        color_mode="rgb",
        epochs=4,
        batch_size=8,
        learning_rate=3e-3,
        validation_fraction=0.2,
        model_version="test-1",
    )
    return TrainConfig(base_library=str(library), model_out=str(out), **{**defaults, **kw})


# --- the bundle a training run writes is the bundle the tagging job tags with -------------


@pytest.mark.slow
def test_trained_bundle_is_used_by_the_tagging_job(spark: Any, tmp_path: Path) -> None:
    from pyspark.sql import functions as F

    from prodclf.storage import tables
    from prodclf.tag import run_tag

    library, truth = make_catalog(tmp_path / "catalog")
    label_map = tmp_path / "labels.yaml"
    label_map.write_text("red: 1001\nblue: '1002'\n")
    out = tmp_path / "models" / "colors"
    cfg = train_config(library, out, label_map=str(label_map))
    preflight(cfg)

    meta = run_train(cfg, spark)  # type: ignore[arg-type]

    on_disk = read_meta(str(out))
    assert on_disk == meta
    assert on_disk.labels == (Label("blue", "1002"), Label("red", "1001"))  # sorted by name
    assert on_disk.preprocessing == PreprocessSpec(8, 8, "rgb", "unit")
    assert on_disk.model_version == "test-1"
    metrics = on_disk.metrics
    assert set(metrics) == {
        "train_accuracy",
        "val_accuracy",
        "train_images",
        "val_images",
        "skipped_images",
        "epochs",
        "classes",
    }
    assert metrics["skipped_images"] == 1  # p-missing; p-unlabelled is not a training row
    assert metrics["train_images"] + metrics["val_images"] == len(truth)
    assert metrics["val_images"] > 0
    assert metrics["classes"] == 2 and metrics["epochs"] == 4

    run_date = date(2026, 1, 2)
    commodity = tmp_path / "commodity"
    tag_cfg = TagConfig(
        base_library=str(library),
        commodity_library=str(commodity),
        model=str(out),
        run_date=run_date,
        run_id="train-test-1",
    )
    manifest = run_tag(tag_cfg, spark)  # type: ignore[arg-type]

    assert manifest["model_version"] == "test-1"
    assert manifest["errors"] == {"not_found": 1}
    rows = (
        tables.read_commodity_run(spark, str(commodity), run_date)  # type: ignore[arg-type]
        .where(F.col("status") == "ok")
        .select("product_id", "category", "category_id")
        .collect()
    )
    scored = [r for r in rows if r["product_id"] in truth]
    right = [r for r in scored if r["category"] == truth[r["product_id"]]]
    assert len(scored) == len(truth)
    assert len(right) >= 0.9 * len(scored), f"{len(right)}/{len(scored)} tagged correctly"
    ids = {r["category"]: r["category_id"] for r in rows}
    assert ids == {"red": "1001", "blue": "1002"}


# --- the Spark side, without training -----------------------------------------------------


def test_labelled_rows_drop_nulls_and_sample_deterministically(spark: Any, tmp_path: Path) -> None:
    n = 200
    library = write_library(
        tmp_path / "lib",
        {
            "product_id": [f"p{i}" for i in range(n)] + [None],
            "image_uri": [f"file:///x/{i}.png" for i in range(n + 1)],
            "category_name": [None if i % 10 == 0 else str(i % 3) for i in range(n)] + ["1"],
        },
    )
    base = spark.read.parquet(str(library))
    cfg = train_config(library, tmp_path / "m", label_column="category_name", limit=50)

    first = labelled_rows(base, cfg).collect()
    again = labelled_rows(base.repartition(7), cfg).collect()

    assert len(first) == 50
    assert {r["product_id"] for r in first} == {r["product_id"] for r in again}
    assert all(r["label"] is not None and r["product_id"] is not None for r in first)
    everything = labelled_rows(
        base, train_config(library, tmp_path / "m", label_column="category_name")
    ).collect()
    assert len(everything) == 180
    val = sum(r["validation"] for r in everything)
    assert 5 <= val <= 35  # about 20% of 180, by hash
    split = {r["product_id"]: r["validation"] for r in everything}
    assert all(split[r["product_id"]] == r["validation"] for r in first)


def test_decode_partition_reports_failures_per_row(tmp_path: Path) -> None:
    good = tmp_path / "good.png"
    good.write_bytes(pattern_png("red", seed=1, size=12))
    (tmp_path / "bad.png").write_bytes(b"not an image")
    spec = PreprocessSpec(8, 8, "grayscale", "unit")
    batch = pd.DataFrame(
        {
            "product_id": ["a", "b", "c"],
            "image_uri": [good.as_uri(), (tmp_path / "bad.png").as_uri(), "http://x/y.png"],
            "label": ["red", "red", "blue"],
            "validation": [False, True, False],
        }
    )

    (out,) = list(decode_partition_fn(spec, StorageConfig(fetch_concurrency=2))(iter([batch])))

    assert out["product_id"].tolist() == ["a", "b", "c"]
    assert out["validation"].tolist() == [False, True, False]
    assert out["error_code"].tolist() == [None, "undecodable_image", "uri_not_allowed"]
    pixels = np.frombuffer(out["pixels"][0], dtype=np.uint8)
    assert pixels.size == 8 * 8 * 1
    assert out["pixels"][1] is None and out["pixels"][2] is None


def test_missing_label_column_is_named(spark: Any, tmp_path: Path) -> None:
    library, _ = make_catalog(tmp_path / "catalog", n=4)
    cfg = train_config(library, tmp_path / "m", label_column="category_name")
    with pytest.raises(SchemaMismatch, match=r"missing column\(s\) category_name"):
        run_train(cfg, spark)


def test_labels_missing_from_the_label_map_are_named(spark: Any, tmp_path: Path) -> None:
    library, _ = make_catalog(tmp_path / "catalog", n=6)
    label_map = tmp_path / "labels.json"
    label_map.write_text('{"red": 1001, "green": 1003}')
    cfg = train_config(library, tmp_path / "m", label_map=str(label_map))
    with pytest.raises(ConfigError, match=r"no id for label\(s\) 'blue'"):
        run_train(cfg, spark)
    assert not (tmp_path / "m").exists()


def test_a_single_label_is_refused(spark: Any, tmp_path: Path) -> None:
    images = tmp_path / "img"
    images.mkdir()
    (images / "0.png").write_bytes(pattern_png("red", 0))
    library = write_library(
        tmp_path / "lib",
        {
            "product_id": ["a", "b"],
            "image_uri": [(images / "0.png").as_uri()] * 2,
            "label": ["x"] * 2,
        },
    )
    with pytest.raises(InputError, match="at least 2 labels"):
        run_train(train_config(library, tmp_path / "m"), spark)


# --- refusals before Spark ----------------------------------------------------------------


def test_preflight_refuses_a_missing_base_library(tmp_path: Path) -> None:
    cfg = train_config(tmp_path / "nowhere", tmp_path / "m")
    with pytest.raises(InputError, match=r"base library .*nowhere: not found"):
        preflight(cfg)


def test_preflight_refuses_model_out_inside_the_base_library(tmp_path: Path) -> None:
    library = write_library(tmp_path / "lib", {"product_id": ["a"], "image_uri": ["file:///a"]})
    with pytest.raises(ConfigError, match="inside the base library"):
        preflight(train_config(library, library / "model"))
    with pytest.raises(ConfigError, match="inside --model-out"):
        preflight(train_config(library, tmp_path))


def test_preflight_refuses_bad_config_values(tmp_path: Path) -> None:
    library = write_library(tmp_path / "lib", {"product_id": ["a"], "image_uri": ["file:///a"]})
    with pytest.raises(ConfigError, match="--color-mode"):
        preflight(train_config(library, tmp_path / "m", color_mode="cmyk"))


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "cannot be read"),
        ("red: [1001\n", "not valid YAML/JSON"),
        ("- red\n- blue\n", "non-empty mapping"),
        ("{}", "non-empty mapping"),
        ("red: {id: 1}\n", "bad entries: 'red'"),
        ("red: ''\n", "bad entries: 'red'"),
    ],
)
def test_preflight_refuses_a_bad_label_map(
    tmp_path: Path, content: str | None, message: str
) -> None:
    library = write_library(tmp_path / "lib", {"product_id": ["a"], "image_uri": ["file:///a"]})
    label_map = tmp_path / "labels.yaml"
    if content is not None:
        label_map.write_text(content)
    with pytest.raises(ConfigError, match=message):
        preflight(train_config(library, tmp_path / "m", label_map=str(label_map)))


def test_label_map_accepts_yaml_and_json(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("T-shirt/top: 212\nBag: '3032'\n")
    (tmp_path / "b.json").write_text('{"T-shirt/top": "212", "Bag": 3032}')
    expected = {"T-shirt/top": "212", "Bag": "3032"}
    assert load_label_map(str(tmp_path / "a.yaml")) == expected
    assert load_label_map(str(tmp_path / "b.json")) == expected


def test_label_ids_default_to_the_name() -> None:
    assert label_ids(["a", "b"], None, "-") == (Label("a", "a"), Label("b", "b"))
    assert label_ids(["a"], {"a": "7", "z": "9"}, "-") == (Label("a", "7"),)


def test_importing_the_trainer_does_not_import_tensorflow() -> None:
    code = "import prodclf.train, sys; assert 'tensorflow' not in sys.modules, 'tensorflow'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
