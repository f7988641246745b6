"""The training job: the Spark side, the petastorm path end to end, and refusals."""

from __future__ import annotations

import io
import json
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
from conftest import run_tag_job, run_train_job
from PIL import Image

from prodclf.config import StorageConfig, TagConfig, TrainConfig
from prodclf.errors import ConfigError, InputError, SchemaMismatch
from prodclf.images import PreprocessSpec
from prodclf.library.table import CommodityLibrary
from prodclf.model.bundle import Label, read_meta
from prodclf.training.data import (
    DataSummary,
    assign_split,
    decode_fn,
    one_per_product,
    sample,
)
from prodclf.training.job import class_weights, one_phase_schedule, plan_model, train_preflight

# Training needs the train extra (petastorm): Spark 3.5 only.
pytestmark = pytest.mark.train

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared"
MOBILENET = SHARED / "weights" / "mobilenet_2_5_224_tf_no_top.h5"
EFFICIENTNET = SHARED / "weights" / "efficientnet_lite0_imagenet_no_top.keras"


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


def make_catalog(root: Path, n: int = 64, size: int = 16) -> tuple[Path, dict[str, str]]:
    """``n`` labelled products (half red, half blue), one with a missing image, one unlabelled.

    Returns the library location and the known label of every product with an image.
    """
    images = root / "images"
    images.mkdir(parents=True)
    ids, uris, labels = [], [], []
    truth = {}
    for i in range(n):
        label = "red" if i % 2 else "blue"
        (images / f"{i}.png").write_bytes(pattern_png(label, seed=i, size=size))
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
        image_height=16,
        image_width=16,
        color_mode="rgb",
        epochs=4,
        batch_size=8,
        learning_rate=3e-3,
        validation_fraction=0.2,
        test_fraction=0.2,
        reader_workers=1,
        model_version="test-1",
    )
    return TrainConfig(base_library=str(library), model_out=str(out), **{**defaults, **kw})


def tag(spark: Any, library: Path, model: Path, out: Path, run_id: str) -> list[Any]:

    run_date = date(2026, 1, 2)
    cfg = TagConfig(
        base_library=str(library),
        commodity_library=str(out),
        model=str(model),
        run_date=run_date,
        run_id=run_id,
    )
    manifest = run_tag_job(cfg, spark)
    assert manifest["errors"] == {"not_found": 1}
    return (
        CommodityLibrary(str(out))
        .read_history(spark, run_date)
        .where("status = 'ok'")
        .select("product_id", "category", "category_id", "category_path")
        .collect()
    )


# --- end to end through petastorm: the bundle a training run writes is tagged with -------


@pytest.mark.slow
def test_training_through_petastorm_writes_a_bundle_the_tagging_job_uses(
    spark: Any, tmp_path: Path
) -> None:
    library, truth = make_catalog(tmp_path / "catalog")
    label_map = tmp_path / "labels.yaml"
    label_map.write_text("red: 1001\nblue: '1002'\n")
    out = tmp_path / "models" / "colors"
    cache = tmp_path / "petastorm"
    cfg = train_config(library, out, label_map=str(label_map), cache_dir=str(cache))

    meta = run_train_job(cfg, spark)

    on_disk = read_meta(str(out))
    assert on_disk == meta
    assert [(lb.name, lb.id) for lb in on_disk.labels] == [("blue", "1002"), ("red", "1001")]
    assert on_disk.preprocessing == PreprocessSpec(16, 16, "rgb", "unit")
    m = on_disk.metrics
    data = m["data"]
    # p-missing cannot be decoded, p-unlabelled has no label: both counted, neither trained on.
    assert data["skipped"] == {"not_found": 1, "unlabelled": 1}
    assert sum(data["images"].values()) == len(truth)
    assert data["images"]["validation"] > 0 and data["images"]["test"] > 0
    assert m["evaluated_on"] == "test" and m["epochs_run"] == 4
    assert m["accuracy"] >= 0.9, m
    # The report travels with the bundle.
    report = out / "report"
    names = {p.name for p in report.iterdir()}
    assert {"metrics.json", "report.md", "confusion.png", "learning_curves.png"} <= names
    assert {"history.json", "training_config.json", "reliability.png"} <= names
    history = json.loads((report / "history.json").read_text())
    assert len(history["loss"]) == 4 and len(history["learning_rate"]) == 4
    assert "val_accuracy" in history
    scores = json.loads((report / "metrics.json").read_text())
    assert scores["accuracy"] == m["accuracy"]
    assert sum(map(sum, scores["confusion_matrix"])) == data["images"]["test"]
    # petastorm's materialized data is removed once training is over.
    assert not any(cache.rglob("*.parquet"))

    rows = tag(spark, library, out, tmp_path / "commodity", "train-test-1")
    right = [r for r in rows if r["category"] == truth.get(r["product_id"])]
    assert len(rows) == len(truth) + 1  # p-unlabelled is tagged too (same image as p000)
    assert len(right) >= 0.9 * len(truth), f"{len(right)}/{len(truth)} tagged correctly"
    assert {r["category"]: r["category_id"] for r in rows} == {"red": "1001", "blue": "1002"}


@pytest.mark.slow
def test_pretrained_mobilenet_two_phase_with_labels_table_and_split_column(
    spark: Any, tmp_path: Path
) -> None:
    """The real ImageNet MobileNet file, the head-first schedule, a separate labels table."""
    library, truth = make_catalog(tmp_path / "catalog", n=24, size=40)
    labels_dir = tmp_path / "labels"
    ids = sorted(truth)
    splits = ["test" if i % 4 == 0 else "VAL" if i % 4 == 1 else "train" for i in range(len(ids))]
    splits[2] = "holdout"  # not a split name: counted, not used
    write_library(labels_dir, {"product_id": ids, "y": [truth[i] for i in ids], "s": splits})
    out = tmp_path / "m"
    cfg = train_config(
        library,
        out,
        labels=str(labels_dir),
        label_column="y",
        split_column="s",
        architecture="mobilenet",
        alpha=0.25,
        weights=str(MOBILENET),
        image_height=32,
        image_width=32,
        color_mode=None,
        epochs=1,
        head_epochs=1,
        fusion="gray+rgb",
    )
    assert plan_model(cfg).spec == PreprocessSpec(32, 32, "rgb", "symmetric")

    meta = run_train_job(cfg, spark)

    data = meta.metrics["data"]
    # p-missing and p-unlabelled are not in the labels table: unlabelled, never fetched.
    assert data["skipped"] == {"unknown_split": 1, "unlabelled": 2}
    assert data["images"] == {"train": 11, "validation": 6, "test": 6}
    assert meta.metrics["epochs_run"] == 2
    assert meta.model_name == "prodclf-mobilenet-gray-rgb"
    history = json.loads((out / "report" / "history.json").read_text())
    assert len(history["loss"]) == 2 and history["phase"] == [1, 2]
    # With fusion the head phase trains on pixels; both phases are still reported.
    assert meta.metrics["phases"]["head_only"]["epochs"] == 1
    assert meta.metrics["phases"]["fine_tuned"]["epochs"] == 1
    rows = tag(spark, library, out, tmp_path / "commodity", "mobilenet-1")
    assert len(rows) == len(truth) + 1


@pytest.mark.slow
def test_a_backbone_file_and_fine_tuning_never_ends_below_the_frozen_features_head(
    spark: Any, tmp_path: Path
) -> None:
    """The recipe's guarantee, with fine-tuning made destructive on purpose.

    ``--backbone`` with the shared EfficientNet-Lite0 file (rebuilt at 32 px to keep the test
    short): the head trains on frozen features first; then fine-tuning at a learning rate
    of 0.5 for every layer wrecks the network. The bundle must hold the head-only weights
    (best on validation across both phases), report both phases, and be calibrated.
    """
    library, _ = make_catalog(tmp_path / "catalog", n=48)
    out = tmp_path / "m"
    cfg = train_config(
        library,
        out,
        backbone=str(EFFICIENTNET),
        image_height=32,
        image_width=32,
        color_mode=None,
        head_epochs=10,
        epochs=2,
        fine_tune_learning_rate=0.5,
        backbone_lr_multiplier=1.0,
        warmup_epochs=0,
        augmentation="none",
        noise=False,
    )
    plan = plan_model(cfg)
    assert plan.spec == PreprocessSpec(32, 32, "rgb", "raw")  # raw: the file rescales itself
    assert plan.model.architecture == "custom"

    meta = run_train_job(cfg, spark)

    m = meta.metrics
    phases = m["phases"]
    head, tuned = phases["head_only"], phases["fine_tuned"]
    assert head["epochs"] >= 1 and tuned["epochs"] == 2
    assert head["validation_accuracy"] >= 0.75, phases
    assert phases["kept"] == "head_only", phases
    # The kept model is the head-only one: same validation and test results.
    assert m["validation_accuracy"] == pytest.approx(head["validation_accuracy"], abs=1e-6)
    assert m["accuracy"] == pytest.approx(head["accuracy"], abs=1e-6)
    # The wrecked weights are scored beside the kept ones.
    assert "accuracy" in tuned and tuned["validation_accuracy"] <= head["validation_accuracy"]
    assert m["architecture"] == "custom" and m["backbone"] == str(EFFICIENTNET)
    # Calibrated: the temperature is in bundle.json and the report shows ECE before/after.
    stored = json.loads((out / "bundle.json").read_text())["calibration"]
    assert stored["temperature"] > 0 and stored["fitted_on"] == "validation"
    assert meta.calibration == stored
    report = (out / "report" / "report.md").read_text()
    assert "Head only (frozen backbone) vs fine-tuned" in report
    assert "Temperature scaling: T =" in report
    scores = json.loads((out / "report" / "metrics.json").read_text())
    assert set(scores["calibration"]["expected_calibration_error"]) == {"before", "after", "split"}
    history = json.loads((out / "report" / "history.json").read_text())
    assert history["phase"] == [1] * head["epochs"] + [2] * 2


# --- the Spark side, without training -----------------------------------------------------


def test_one_per_product_sample_and_hash_split_are_deterministic(
    spark: Any, tmp_path: Path
) -> None:
    n = 400
    rows = [(f"p{i}", f"file:///x/{i}.png", None if i % 10 == 0 else str(i % 3)) for i in range(n)]
    rows += [(None, "file:///x/n.png", "1"), ("p1", "file:///x/0-dup.png", "1")]
    df = spark.createDataFrame(rows, "product_id string, image_uri string, label string")

    def pipeline(frame: Any, limit: int | None) -> dict[str, tuple[str, str, str]]:
        out = (
            frame.transform(one_per_product)
            .transform(sample, limit)
            .transform(assign_split, 0.2, 0.1)
        )
        return {r["product_id"]: (r["image_uri"], r["label"], r["split"]) for r in out.collect()}

    everything = pipeline(df, None)
    assert len(everything) == 360  # 40 unlabelled, the null id and the duplicate are gone
    assert everything["p1"] == ("file:///x/0-dup.png", "1", everything["p1"][2])  # min uri
    counts = pd.Series([v[2] for v in everything.values()]).value_counts().to_dict()
    assert 40 <= counts["validation"] <= 105 and 15 <= counts["test"] <= 60
    assert pipeline(df.repartition(5), None) == everything

    small = pipeline(df, 50)
    assert len(small) == 50 and pipeline(df.repartition(3), 50) == small
    assert all(everything[k] == v for k, v in small.items())  # same split in a sample


def test_split_column_values_are_normalised(spark: Any) -> None:
    rows = [("a", "TRAIN"), ("b", " val "), ("c", "Validation"), ("d", "test"), ("e", "dev")]
    rows += [("f", "holdout"), ("g", None)]
    df = spark.createDataFrame(rows, "product_id string, split_raw string")
    got = {r["product_id"]: r["split"] for r in assign_split(df, 0.1, 0.1).collect()}
    assert got == {
        "a": "train",
        "b": "validation",
        "c": "validation",
        "d": "test",
        "e": "validation",
        "f": None,
        "g": None,
    }


def test_decode_reports_failures_per_row(tmp_path: Path) -> None:
    good = tmp_path / "good.png"
    good.write_bytes(pattern_png("red", seed=1, size=12))
    (tmp_path / "bad.png").write_bytes(b"not an image")
    spec = PreprocessSpec(8, 8, "grayscale", "unit")
    batch = pd.DataFrame(
        {
            "product_id": ["a", "b", "c"],
            "image_uri": [good.as_uri(), (tmp_path / "bad.png").as_uri(), "http://x/y.png"],
            "label": ["red", "red", "blue"],
            "split": ["train", "validation", "test"],
        }
    )

    (out,) = list(decode_fn(spec, StorageConfig(fetch_concurrency=2))(iter([batch])))

    assert out["product_id"].tolist() == ["a", "b", "c"]
    assert out["split"].tolist() == ["train", "validation", "test"]
    assert out["error_code"].tolist() == [None, "undecodable_image", "uri_not_allowed"]
    pixels = np.frombuffer(out["pixels"][0], dtype=np.uint8)
    assert pixels.size == 8 * 8 * 1
    assert out["pixels"][1] is None and out["pixels"][2] is None


def test_balanced_class_weights(caplog: Any) -> None:
    summary = DataSummary(classes=["a", "b", "c"], images={"train": {"a": 6, "b": 3, "c": 1}})
    # n / (k * n_c) = 10 / (3 * n_c)
    balanced = pytest.approx({0: 10 / 18, 1: 10 / 9, 2: 10 / 3})
    assert class_weights(summary, "balanced") == balanced
    assert class_weights(summary, "none") is None
    # auto (the default): balanced when skewed, and the log says so.
    assert TrainConfig(base_library="/b", model_out="/m").class_weights == "auto"
    with caplog.at_level("INFO", logger="prodclf.training.job"):
        assert class_weights(summary, "auto") == balanced
    assert "class weights: balanced (auto: largest/smallest training class = 6.0" in caplog.text
    even = DataSummary(classes=["a", "b"], images={"train": {"a": 10, "b": 8}})
    assert class_weights(even, "auto") is None


def test_missing_label_column_is_named(spark: Any, tmp_path: Path) -> None:
    library, _ = make_catalog(tmp_path / "catalog", n=4)
    cfg = train_config(library, tmp_path / "m", label_column="category_name")
    with pytest.raises(SchemaMismatch, match=r"missing column\(s\) category_name"):
        run_train_job(cfg, spark)


def test_a_single_label_is_refused(spark: Any, tmp_path: Path) -> None:
    images = tmp_path / "img"
    images.mkdir()
    (images / "0.png").write_bytes(pattern_png("red", 0))
    library = write_library(
        tmp_path / "lib",
        {
            "product_id": ["a", "b", "c"],
            "image_uri": [(images / "0.png").as_uri()] * 3,
            "label": ["x"] * 3,
        },
    )
    with pytest.raises(InputError, match="at least 2 labels"):
        run_train_job(train_config(library, tmp_path / "m", validation_fraction=0.0), spark)
    assert not (tmp_path / "m").exists()


# --- refusals before Spark ----------------------------------------------------------------


def test_preflight_refuses_a_missing_base_library(tmp_path: Path) -> None:
    cfg = train_config(tmp_path / "nowhere", tmp_path / "m")
    with pytest.raises(InputError, match=r"base library .*nowhere: not found"):
        train_preflight(cfg)


def test_preflight_refuses_model_out_inside_the_base_library(tmp_path: Path) -> None:
    library = write_library(tmp_path / "lib", {"product_id": ["a"], "image_uri": ["file:///a"]})
    with pytest.raises(ConfigError, match="inside the base library"):
        train_preflight(train_config(library, library / "model"))
    with pytest.raises(ConfigError, match="inside --model-out"):
        train_preflight(train_config(library, tmp_path))


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"color_mode": "cmyk"}, "--color-mode"),
        ({"architecture": "vgg16"}, "--architecture 'vgg16'"),
        ({"weights": "imagenet"}, "small_cnn has no pretrained weights"),
        ({"architecture": "mobilenet", "weights": "/no/such.h5"}, "no such weights file"),
        ({"architecture": "mobilenet", "image_height": 16}, "needs at least"),
        (
            {"architecture": "mobilenet", "image_height": 32, "image_width": 32, "scale": "unit"},
            "expects symmetric",
        ),
        ({"fusion": "rgb+depth"}, "--fusion"),
        ({"epochs": 0}, "--epochs 0 needs a pretrained backbone"),
        ({"backbone": str(MOBILENET)}, "not a Keras model file"),
        ({"backbone": "/no/such.keras"}, "--backbone /no/such.keras: no such file"),
        ({"backbone": str(EFFICIENTNET), "scale": "unit"}, "rescales raw 0..255 pixels itself"),
        ({"trainable_fraction": 1.5}, "trainable_fraction must be within"),
        ({"label_smoothing": 1.0}, "label_smoothing must be within"),
        ({"lr_schedule": "step"}, "--lr-schedule must be plateau or cosine"),
        ({"label_smoothing": -0.1}, "label_smoothing must be within"),
        ({"validation_fraction": 0.5, "test_fraction": 0.5}, "leave images to train on"),
        ({"labels": "/no/labels"}, "labels table /no/labels: not found"),
    ],
)
def test_preflight_refuses_bad_settings(
    tmp_path: Path, changes: dict[str, Any], message: str
) -> None:
    library = write_library(tmp_path / "lib", {"product_id": ["a"], "image_uri": ["file:///a"]})
    with pytest.raises((ConfigError, InputError), match=message):
        train_preflight(train_config(library, tmp_path / "m", **changes))


def test_preflight_checks_the_label_map_against_the_taxonomy(tmp_path: Path) -> None:
    library = write_library(tmp_path / "lib", {"product_id": ["a"], "image_uri": ["file:///a"]})
    taxonomy = tmp_path / "taxonomy.txt"
    taxonomy.write_text("# Google_Product_Taxonomy_Version: test\n1 - Food\n2 - Food > Fruit\n")
    label_map = tmp_path / "labels.yaml"
    label_map.write_text("apple: 2\npear: 99999\n")
    cfg = train_config(library, tmp_path / "m", label_map=str(label_map), taxonomy=str(taxonomy))
    with pytest.raises(ConfigError, match="99999"):
        train_preflight(cfg)
    label_map.write_text("apple: 2\npear: 2\n")
    train_preflight(cfg)


def test_label_smoothing_defaults_to_0_1_with_a_pretrained_backbone_only() -> None:
    def cfg(**kw: Any) -> TrainConfig:
        return TrainConfig(base_library="/b", model_out="/m", **kw)

    assert cfg().resolved_label_smoothing == 0.0  # small_cnn from scratch
    assert cfg(backbone=str(EFFICIENTNET)).resolved_label_smoothing == 0.1
    assert cfg(architecture="mobilenet", weights="imagenet").resolved_label_smoothing == 0.1
    assert cfg(architecture="mobilenet").resolved_label_smoothing == 0.0  # weights none
    assert cfg(backbone=str(EFFICIENTNET), label_smoothing=0.0).resolved_label_smoothing == 0.0
    assert cfg(label_smoothing=0.2).resolved_label_smoothing == 0.2


def test_one_phase_learning_rate_schedules(tmp_path: Path) -> None:
    import keras

    base = {"learning_rate": 2e-3, "epochs": 10, "warmup_epochs": 1}
    cfg = train_config(tmp_path / "lib", tmp_path / "m", lr_patience=3, **base)
    optimizer, callbacks = one_phase_schedule(cfg, 100, "val_accuracy")
    assert float(optimizer.learning_rate) == pytest.approx(2e-3)
    [plateau] = callbacks
    assert isinstance(plateau, keras.callbacks.ReduceLROnPlateau)
    assert (plateau.patience, plateau.factor, plateau.monitor) == (3, 0.5, "val_accuracy")

    cfg = train_config(tmp_path / "lib", tmp_path / "m", lr_schedule="cosine", **base)
    optimizer, callbacks = one_phase_schedule(cfg, 100, "val_accuracy")
    assert callbacks == []
    rates = []
    for step in (0, 100, 550, 1000):
        optimizer.iterations.assign(step)
        rates.append(float(optimizer.learning_rate))
    assert rates[0] < 1e-5  # warming up over the first epoch
    assert rates[1] == pytest.approx(2e-3)
    assert rates[2] == pytest.approx(1e-3, rel=1e-3)  # half-way through the cosine
    assert rates[3] == pytest.approx(0.0, abs=1e-9)


def test_backbone_init_random_trains_from_scratch_in_one_phase() -> None:
    scratch = TrainConfig(
        base_library="/b", model_out="/m", backbone="/b.keras", backbone_init="random"
    )
    assert not scratch.pretrained
    assert scratch.resolved_head_epochs == 0 and scratch.resolved_label_smoothing == 0.0
    file = TrainConfig(base_library="/b", model_out="/m", backbone="/b.keras")
    assert file.pretrained and file.resolved_head_epochs == 30


def test_augmentation_presets() -> None:
    from prodclf.training.job import augment_options

    def cfg(**kw: Any) -> TrainConfig:
        return TrainConfig(base_library="/b", model_out="/m", **kw)

    standard = augment_options(cfg())
    assert standard.flip and standard.rotation and standard.brightness and standard.occlusion
    light = augment_options(cfg(augmentation="light", noise=False))
    assert light.flip and light.shift and light.enabled
    assert not (light.rotation or light.zoom or light.brightness or light.contrast)
    assert not (light.occlusion or light.clutter)
    flip = augment_options(cfg(augmentation="flip", noise=False))
    assert flip.flip and flip.enabled
    assert not (flip.shift or flip.rotation or flip.zoom or flip.brightness or flip.contrast)
    assert not (flip.occlusion or flip.clutter)
    shift = augment_options(cfg(augmentation="flip+shift", noise=False))
    assert shift.flip and shift.pad_crop_pixels(28, 28) == 2
    assert not (shift.shift or shift.rotation or shift.zoom or shift.brightness)
    assert not (shift.contrast or shift.occlusion or shift.clutter)
    assert not flip.pad_crop and not light.pad_crop and not standard.pad_crop
    assert not augment_options(cfg(augmentation="none", noise=False)).enabled
    noise_only = augment_options(cfg(augmentation="none"))
    assert noise_only.occlusion and not noise_only.flip


def test_plan_takes_the_architecture_defaults(tmp_path: Path) -> None:
    cfg = TrainConfig(base_library="/b", model_out="/m", architecture="mobilenet_v2")
    assert plan_model(cfg).spec == PreprocessSpec(224, 224, "rgb", "symmetric")
    assert plan_model(cfg).model_name == "prodclf-mobilenet-v2"
    small = TrainConfig(base_library="/b", model_out="/m", color_mode="grayscale")
    assert plan_model(small).spec.color_mode == "grayscale"


def test_bundle_labels_default_to_the_name(tmp_path: Path) -> None:
    from prodclf.training.job import load_labels

    cfg = TrainConfig(base_library="/b", model_out="/m")
    assert load_labels(cfg, ["a", "b"]) == (Label("a", "a"), Label("b", "b"))


def test_importing_the_trainer_does_not_import_tensorflow() -> None:
    code = (
        "import prodclf.training.job, prodclf.evaluation.job, prodclf.cli, sys; "
        "assert 'tensorflow' not in sys.modules, 'tensorflow'; "
        "assert 'keras' not in sys.modules, 'keras'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
