"""The training job: labelled catalog images -> a fine-tuned Keras classifier -> a model bundle.

Spark fetches and decodes the images on the executors (``prodclf.training.data``), petastorm
streams each split into ``tf.data``, and Keras trains on the driver (or the GPU next to it).
The recipe is the research's: an ImageNet backbone with about 75% of its parameters
trainable, dropout before the classifier, augmentation plus occlusion/clutter noise, the
learning rate halved when validation accuracy stalls, optionally a grayscale
convolutional+recurrent stream fused with the RGB features. The run ends with the test
split scored by ``prodclf.evaluation.metrics`` and a report written into the bundle.

``train_preflight`` needs neither Spark nor TensorFlow; TensorFlow is imported in ``run_train``.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from pyspark.sql import SparkSession

from prodclf.config import TrainConfig
from prodclf.errors import ConfigError
from prodclf.images import PreprocessSpec
from prodclf.model.bundle import BundleMeta, Label, export_bundle
from prodclf.model.catalog import ModelOptions, architecture_info
from prodclf.requirements import require_training
from prodclf.storage import objects, tables
from prodclf.storage.uris import normalize_location, parse_uri
from prodclf.training.data import (
    TEST,
    TRAIN,
    VALIDATION,
    DataSummary,
    Prepared,
    check_trainable,
    converters,
    prepare,
    tf_dataset,
)

log = logging.getLogger(__name__)

REPORT_DIR = "report"


@dataclass(frozen=True)
class Plan:
    """The configuration resolved against the architecture's defaults."""

    spec: PreprocessSpec
    model: ModelOptions
    model_name: str


# --- checks that need no Spark ---------------------------------------------------------


def plan_model(cfg: TrainConfig) -> Plan:
    """Input size, colour and scaling from the flags, else from the architecture."""
    info = architecture_info(cfg.architecture)
    height = cfg.image_height or cfg.image_width or info.default_size
    width = cfg.image_width or cfg.image_height or info.default_size
    if min(height, width) < info.min_size:
        raise ConfigError(
            f"--image-size {min(height, width)}: {cfg.architecture} needs at least "
            f"{info.min_size} px"
        )
    color = cfg.color_mode or info.color_mode
    scale = cfg.scale or info.scale
    if cfg.architecture != "small_cnn" and scale != info.scale:
        raise ConfigError(
            f"--scale {scale}: the {cfg.architecture} backbone expects {info.scale} pixels"
        )
    spec = PreprocessSpec(height, width, color, scale)
    spec.validate()
    opts = ModelOptions(
        architecture=cfg.architecture,
        weights=cfg.weights,
        alpha=cfg.alpha,
        trainable_fraction=cfg.trainable_fraction,
        dropout=cfg.dropout,
        fusion=cfg.fusion,
        seed=cfg.seed,
    )
    suffix = "-gray-rgb" if cfg.fusion == "gray+rgb" else ""
    name = cfg.model_name or f"prodclf-{cfg.architecture.replace('_', '-')}{suffix}"
    return Plan(spec, opts, name)


def train_preflight(cfg: TrainConfig) -> Plan:
    """Refuse before Spark starts: training stack, locations, weights, label map."""
    require_training()
    tables.refuse_overlap(cfg.base_library, cfg.model_out, "--model-out")
    tables.require_dataset(cfg.base_library, "base library")
    if cfg.labels:
        tables.require_dataset(cfg.labels, "labels table")
    if cfg.weights not in ("none", "imagenet"):
        try:
            found = objects.exists(cfg.weights)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"--weights {cfg.weights}: cannot be read ({exc})") from None
        if not found:
            raise ConfigError(f"--weights {cfg.weights}: no such weights file")
    load_labels(cfg, None)
    return plan_model(cfg)


def load_labels(cfg: TrainConfig, names: list[str] | None) -> tuple[Label, ...]:
    """Bundle labels for ``names`` via the label map and taxonomy (checks only, when None)."""
    from prodclf import taxonomy

    tax = taxonomy.load_taxonomy(cfg.taxonomy) if cfg.taxonomy else None
    where = f"--label-map {cfg.label_map}"
    mapping = (
        taxonomy.load_mapping(cfg.label_map, tax, what="--label-map") if cfg.label_map else None
    )
    if names is None:
        return ()
    return taxonomy.labels_for(names, mapping, where)


# --- Keras ------------------------------------------------------------------------------


def epoch_logger(epochs: int) -> Any:
    """One log line per epoch, with the learning rate (Keras' bar is noise in Spark logs)."""
    import keras

    class EpochLog(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            self._t0 = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            logs = logs if logs is not None else {}
            logs["learning_rate"] = float(
                keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)
            )
            parts = [f"{k} {logs[k]:.4g}" for k in sorted(logs) if isinstance(logs[k], float)]
            log.info(
                "epoch %d/%d: %s (%.1fs)",
                epoch + 1,
                epochs,
                ", ".join(parts),
                time.perf_counter() - self._t0,
            )

    return EpochLog()


def class_weights(summary: DataSummary, mode: str) -> dict[int, float] | None:
    """``balanced``: n / (classes * n_c), so every class weighs the same in the loss."""
    if mode == "none":
        return None
    counts = summary.images[TRAIN]
    total = sum(counts.values())
    k = len(summary.classes)
    return {i: total / (k * counts[name]) for i, name in enumerate(summary.classes)}


def augment_options(cfg: TrainConfig) -> Any:
    """The augmentation preset, plus the occlusion/clutter noise unless turned off."""
    from prodclf.model.augment import AugmentOptions

    full = AugmentOptions(seed=cfg.seed)
    if cfg.augmentation == "standard":
        opts = full
    elif cfg.augmentation == "light":
        opts = replace(full, rotation=0.0, zoom=0.0, brightness=0.0, contrast=0.0)
    else:
        opts = replace(full, flip=False, rotation=0.0, zoom=0.0, shift=0.0)
        opts = replace(opts, brightness=0.0, contrast=0.0)
    if not cfg.noise:
        opts = replace(opts, occlusion=0.0, clutter=0.0)
    return opts


@contextmanager
def _datasets(
    conv: dict[str, Any], plan_: Plan, cfg: TrainConfig, summary: DataSummary, augment: Any
) -> Iterator[tuple[Any, Any]]:
    common: dict[str, Any] = {
        "batch_size": cfg.batch_size,
        "workers": cfg.reader_workers,
        "seed": cfg.seed,
    }
    with tf_dataset(
        conv[TRAIN],
        plan_.spec,
        rows=summary.count(TRAIN),
        repeat=True,
        shuffle=True,
        augment=augment,
        **common,
    ) as train:
        if VALIDATION in conv:
            rows = summary.count(VALIDATION)
            with tf_dataset(
                conv[VALIDATION], plan_.spec, rows=rows, repeat=True, shuffle=False, **common
            ) as val:
                yield train, val
        else:
            yield train, None


def fit(
    model: Any,
    conv: dict[str, Any],
    plan_: Plan,
    cfg: TrainConfig,
    summary: DataSummary,
    checkpoint_dir: Path,
) -> dict[str, list[float]]:
    """Train in one or two phases; the best epoch's weights are restored at the end."""
    import keras

    from prodclf.model.augment import make_augmenter
    from prodclf.model.builders import freeze_backbone, set_trainable_fraction

    augment = None
    opts = augment_options(cfg)
    if opts.enabled:
        augment = make_augmenter(opts, plan_.spec.shape)

    has_val = VALIDATION in conv
    monitor = "val_accuracy" if has_val else "accuracy"
    best = checkpoint_dir / "best.weights.h5"
    checkpoint = keras.callbacks.ModelCheckpoint(
        str(best), monitor=monitor, mode="max", save_best_only=True, save_weights_only=True
    )
    callbacks: list[Any] = [
        epoch_logger(cfg.epochs),
        keras.callbacks.ReduceLROnPlateau(
            monitor=monitor,
            mode="max",
            factor=cfg.lr_factor,
            patience=cfg.lr_patience,
            min_lr=cfg.min_learning_rate,
            verbose=0,
        ),
        checkpoint,
    ]
    if cfg.early_stopping_patience:
        callbacks.append(
            keras.callbacks.EarlyStopping(
                monitor=monitor, mode="max", patience=cfg.early_stopping_patience
            )
        )
    steps = math.ceil(summary.count(TRAIN) / cfg.batch_size)
    val_steps = math.ceil(summary.count(VALIDATION) / cfg.batch_size) if has_val else None
    weights = class_weights(summary, cfg.class_weights)
    # Only a pretrained backbone is frozen in part: freezing a random one would also freeze
    # its BatchNorm statistics at their initial values.
    backbone = cfg.architecture != "small_cnn" and cfg.weights != "none"

    phases: list[tuple[int, float, bool]] = []  # (last epoch, learning rate, frozen)
    if backbone and cfg.head_epochs:
        fine_lr = cfg.fine_tune_learning_rate or cfg.learning_rate / 10
        phases = [(cfg.head_epochs, cfg.learning_rate, True), (cfg.epochs, fine_lr, False)]
    else:
        phases = [(cfg.epochs, cfg.learning_rate, False)]

    history: dict[str, list[float]] = {}
    first = 0
    for last, lr, frozen in phases:
        if backbone:
            if frozen:
                freeze_backbone(model)
                log.info("phase: head only (backbone frozen), %d epoch(s)", last - first)
            else:
                share = set_trainable_fraction(model, cfg.trainable_fraction)
                log.info("phase: fine-tuning, %s", share)
        model.compile(
            optimizer=keras.optimizers.Adam(learning_rate=lr),
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
        )
        with _datasets(conv, plan_, cfg, summary, augment) as (train, val):
            h = model.fit(
                train,
                epochs=last,
                initial_epoch=first,
                steps_per_epoch=steps,
                validation_data=val,
                validation_steps=val_steps,
                class_weight=weights,
                callbacks=callbacks,
                shuffle=False,  # petastorm and tf.data shuffle; Keras cannot shuffle a stream
                verbose=0,
            )
        for key, values in h.history.items():
            history.setdefault(key, []).extend(float(v) for v in values)
        first = last  # a phase that stopped early hands over at its planned last epoch
    if best.exists():
        model.load_weights(str(best))
    return history


def predict_split(model: Any, conv: Any, plan_: Plan, cfg: TrainConfig) -> tuple[Any, Any]:
    """Probabilities and true class indices for one whole split, in a stable order."""
    probs: list[np.ndarray] = []
    truth: list[np.ndarray] = []
    with tf_dataset(
        conv,
        plan_.spec,
        rows=0,
        batch_size=cfg.batch_size,
        repeat=False,
        shuffle=False,
        workers=1,
        seed=cfg.seed,
    ) as ds:
        for x, y in ds:
            probs.append(np.asarray(model.predict_on_batch(x)))
            truth.append(y.numpy())
    return np.concatenate(probs), np.concatenate(truth).astype(np.int64)


# --- the job -----------------------------------------------------------------------------


def _weights_file(weights: str, tmp: Path) -> str:
    """Object-store weights are downloaded first; the rest goes to ``models`` as given."""
    if weights in ("none", "imagenet") or not normalize_location(weights).startswith("s3://"):
        return weights
    local = tmp / Path(parse_uri(normalize_location(weights)).key).name
    local.write_bytes(objects.read_bytes(weights))
    return str(local)


def run_train(cfg: TrainConfig, spark: SparkSession, plan_: Plan) -> BundleMeta:
    """Train on ``cfg.base_library`` and export the bundle (with its report) to ``model_out``.

    ``plan_`` is what ``train_preflight`` returned.
    """
    t0 = time.perf_counter()
    prepared: Prepared = prepare(spark, cfg, plan_.spec)
    try:
        return _train(cfg, spark, plan_, prepared, t0)
    finally:
        prepared.decoded.unpersist()


def _train(
    cfg: TrainConfig, spark: SparkSession, plan_: Plan, prepared: Prepared, t0: float
) -> BundleMeta:
    from prodclf.evaluation import metrics as m
    from prodclf.evaluation.report import write_report
    from prodclf.model.runtime import import_tensorflow

    summary = prepared.summary
    check_trainable(summary, f"base library {cfg.base_library}")
    labels = load_labels(cfg, summary.classes)
    if summary.skipped:
        log.warning(
            "not used for training: %s",
            ", ".join(f"{k} {v}" for k, v in summary.skipped.items()),
        )
    log.info(
        "data ready in %.1fs: %d train, %d validation, %d test image(s), %d class(es)",
        time.perf_counter() - t0,
        summary.count(TRAIN),
        summary.count(VALIDATION),
        summary.count(TEST),
        len(summary.classes),
    )

    import_tensorflow()  # quiet C++ logs, GPU memory growth when there is a GPU
    import keras

    from prodclf.model.builders import build_classifier

    keras.utils.set_random_seed(cfg.seed)
    with tempfile.TemporaryDirectory(prefix="prodclf-train-") as tmp_name:
        tmp = Path(tmp_name)
        opts = ModelOptions(**{**asdict(plan_.model), "weights": _weights_file(cfg.weights, tmp)})
        model = build_classifier(opts, plan_.spec.shape, len(summary.classes))
        ckpt = Path(cfg.checkpoint_dir) if cfg.checkpoint_dir else tmp / "checkpoints"
        ckpt.mkdir(parents=True, exist_ok=True)
        t_fit = time.perf_counter()
        with converters(spark, prepared, cfg.cache_dir) as conv:
            history = fit(model, conv, plan_, cfg, summary, ckpt)
            fit_seconds = time.perf_counter() - t_fit
            scored_split = TEST if TEST in conv else VALIDATION if VALIDATION in conv else TRAIN
            probs, truth = predict_split(model, conv[scored_split], plan_, cfg)
            val_acc = None
            if VALIDATION in conv:
                vp, vt = predict_split(model, conv[VALIDATION], plan_, cfg)
                val_acc = round(float(np.mean(np.argmax(vp, axis=1) == vt)), 6)

        k = min(3, len(summary.classes))
        scores = m.evaluate(
            m.scored_from_probabilities(probs, truth, summary.classes, k=k),
            target_precision=cfg.target_precision,
        )
        headline = {
            "evaluated_on": scored_split,
            "accuracy": scores["accuracy"],
            "top_k_accuracy": scores["top_k_accuracy"],
            "macro_f1": scores["macro_f1"],
            "expected_calibration_error": scores["expected_calibration_error"],
            "review_threshold": scores["review_threshold"],
            "validation_accuracy": val_acc,
            "epochs_run": len(history.get("loss", [])),
            "best_epoch": _best_epoch(history),
            "fit_seconds": round(fit_seconds, 1),
            "data": summary.to_json(),
            "architecture": cfg.architecture,
            "fusion": cfg.fusion,
            "weights": cfg.weights,
            "seed": cfg.seed,
            "parameters": int(model.count_params()),
        }
        meta = BundleMeta(
            model_name=plan_.model_name,
            model_version=cfg.model_version
            or datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ"),
            labels=labels,
            preprocessing=plan_.spec,
            metrics=headline,
        )
        report = tmp / REPORT_DIR
        write_report(
            report,
            scores,
            title=f"{meta.model_name} {meta.model_version}: {scored_split} split",
            context={
                "model": meta.model_name,
                "version": meta.model_version,
                "base library": cfg.base_library,
                "split": scored_split,
                "architecture": cfg.architecture,
                "fusion": cfg.fusion,
                "weights": cfg.weights,
                "epochs run": headline["epochs_run"],
                "seed": cfg.seed,
            },
            history=history,
        )
        (report / "history.json").write_text(json.dumps(history, indent=2))
        (report / "training_config.json").write_text(
            json.dumps(asdict(cfg), indent=2, sort_keys=True, default=str)
        )
        extra = {f"{REPORT_DIR}/{p.name}": p.read_bytes() for p in sorted(report.iterdir())}
        meta = export_bundle(model, meta, cfg.model_out, extra_files=extra)
    log.info(
        "model %s %s written to %s: %s accuracy %s, validation accuracy %s",
        meta.model_name,
        meta.model_version,
        cfg.model_out,
        scored_split,
        headline["accuracy"],
        val_acc,
    )
    return meta


def _best_epoch(history: dict[str, list[float]]) -> int | None:
    key = "val_accuracy" if "val_accuracy" in history else "accuracy"
    values = history.get(key) or []
    return int(np.argmax(values)) + 1 if values else None
