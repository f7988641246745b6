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
from prodclf.model.calibration import apply_temperature, fit_temperature, logits_of
from prodclf.model.catalog import CUSTOM, ModelOptions, architecture_info, inspect_backbone_file
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
    """Input size, colour and scaling from the flags, else from the architecture (or file)."""
    if cfg.backbone is not None:
        return _plan_custom(cfg)
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


def _plan_custom(cfg: TrainConfig) -> Plan:
    """``--backbone FILE``: the input size comes from the file, the scaling from it or --scale."""
    assert cfg.backbone is not None
    info = inspect_backbone_file(cfg.backbone)
    height = cfg.image_height or cfg.image_width or info.height
    width = cfg.image_width or cfg.image_height or info.width
    scale = cfg.scale or info.scale
    if scale is None:
        raise ConfigError(
            f"--backbone {cfg.backbone}: its input scaling cannot be read from the file (no "
            "Rescaling of 0..255 pixels first); give --scale unit, symmetric or raw"
        )
    if info.scale is not None and scale != info.scale:
        raise ConfigError(
            f"--scale {scale}: the backbone file rescales {info.scale} 0..255 pixels itself"
        )
    color = cfg.color_mode or ("rgb" if info.channels == 3 else "grayscale")
    if color == "rgb" and info.channels == 1:
        raise ConfigError(f"--backbone {cfg.backbone} takes grayscale images, not rgb")
    spec = PreprocessSpec(height, width, color, scale)
    spec.validate()
    opts = ModelOptions(
        architecture=CUSTOM,
        backbone=str(info.path),
        backbone_init=cfg.backbone_init,
        trainable_fraction=cfg.trainable_fraction,
        dropout=cfg.dropout,
        fusion=cfg.fusion,
        seed=cfg.seed,
    )
    suffix = "-gray-rgb" if cfg.fusion == "gray+rgb" else ""
    name = cfg.model_name or f"prodclf-{Path(info.path).stem.replace('_', '-')}{suffix}"
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


#: The head's peak learning rate while fine-tuning, as a share of ``learning_rate``.
FINE_TUNE_RATE = 0.3

#: ``class_weights: auto`` balances the loss when the largest training class has at least
#: this many times the images of the smallest.
SKEW_RATIO = 1.5


def class_weights(summary: DataSummary, mode: str) -> dict[int, float] | None:
    """``balanced``: n / (classes * n_c), so every class weighs the same in the loss.

    ``auto`` is ``balanced`` when the training label counts are skewed (largest/smallest
    >= ``SKEW_RATIO``), else ``none``; the choice is logged either way.
    """
    counts = summary.images[TRAIN]
    sizes = [counts[name] for name in summary.classes]
    skew = max(sizes) / max(1, min(sizes)) if sizes else 1.0
    if mode == "auto":
        mode = "balanced" if skew >= SKEW_RATIO else "none"
        log.info(
            "class weights: %s (auto: largest/smallest training class = %.1f, threshold %.1f)",
            mode,
            skew,
            SKEW_RATIO,
        )
    if mode == "none":
        return None
    total = sum(sizes)
    k = len(summary.classes)
    return {i: total / (k * counts[name]) for i, name in enumerate(summary.classes)}


#: ``--augmentation flip+shift``: pad and random-crop by this share of the side (2 px at 28).
PAD_CROP = 0.08


def augment_options(cfg: TrainConfig) -> Any:
    """The augmentation preset, plus the occlusion/clutter noise unless turned off."""
    from prodclf.model.augment import AugmentOptions

    full = AugmentOptions(seed=cfg.seed)
    if cfg.augmentation == "standard":
        opts = full
    elif cfg.augmentation in ("light", "flip", "flip+shift"):
        opts = replace(full, rotation=0.0, zoom=0.0, brightness=0.0, contrast=0.0)
        if cfg.augmentation != "light":
            opts = replace(opts, shift=0.0)
        if cfg.augmentation == "flip+shift":
            opts = replace(opts, pad_crop=PAD_CROP)
    else:
        opts = replace(full, flip=False, rotation=0.0, zoom=0.0, shift=0.0)
        opts = replace(opts, brightness=0.0, contrast=0.0)
    if not cfg.noise:
        opts = replace(opts, occlusion=0.0, clutter=0.0)
    return opts


def one_phase_schedule(cfg: TrainConfig, steps: int, monitor: str) -> tuple[Any, list[Any]]:
    """The optimizer and learning-rate callbacks of one-phase training (``lr_schedule``).

    ``plateau``: Adam at ``learning_rate``, multiplied by ``lr_factor`` after
    ``lr_patience`` epochs without a better ``monitor``. ``cosine``: Adam on a schedule
    warming up over ``warmup_epochs`` to ``learning_rate``, then decaying to 0 by the end
    of ``epochs`` (``steps`` batches each); no callback.
    """
    import keras

    from prodclf.model.builders import warmup_cosine

    if cfg.lr_schedule == "cosine":
        schedule = warmup_cosine(
            cfg.learning_rate, cfg.epochs * steps, min(cfg.warmup_epochs, cfg.epochs) * steps
        )
        log.info(
            "learning rate %.3g, warm-up %d epoch(s), cosine decay to 0 over %d epoch(s)",
            cfg.learning_rate,
            cfg.warmup_epochs,
            cfg.epochs,
        )
        return keras.optimizers.Adam(learning_rate=schedule), []
    plateau = keras.callbacks.ReduceLROnPlateau(
        monitor=monitor,
        mode="max",
        factor=cfg.lr_factor,
        patience=cfg.lr_patience,
        min_lr=cfg.min_learning_rate,
        verbose=0,
    )
    return keras.optimizers.Adam(learning_rate=cfg.learning_rate), [plateau]


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


@dataclass
class FitResult:
    """What ``fit`` did: per-epoch history (both phases) and the head-only phase's result."""

    history: dict[str, list[float]]
    # The head-only (frozen backbone) phase: its best validation accuracy, and the scored
    # split's probabilities and truth with those weights (None without a head phase).
    head_validation_accuracy: float | None = None
    head_probs: Any = None
    head_truth: Any = None
    head_seconds: float = 0.0
    # The best fine-tuned epoch's probabilities on the scored split when those weights were
    # not kept (they never beat the head-only ones on validation), for the report.
    fine_probs: Any = None
    fine_truth: Any = None
    # "head_only" when fine-tuning never beat the head phase on validation.
    kept: str = "single_phase"
    class_weights: str = "none"


def fit(
    model: Any,
    conv: dict[str, Any],
    plan_: Plan,
    cfg: TrainConfig,
    summary: DataSummary,
    checkpoint_dir: Path,
) -> FitResult:
    """Train; the weights best on validation, across both phases, are restored at the end.

    A pretrained backbone trains in two phases. (1) Head only: the backbone frozen with
    BatchNorm in inference mode; without fusion its pooled features are computed once per
    split and the head (dropout + classifier) trains on them for up to ``head_epochs``
    epochs, keeping its best epoch on validation. (2) Fine-tuning: the top
    ``trainable_fraction`` of the backbone unfrozen (BatchNorm still frozen) for
    ``epochs`` epochs over augmented pixels; the head's learning rate warms up over
    ``warmup_epochs`` to ``fine_tune_learning_rate`` and decays to 0 on a cosine, the
    backbone's is ``backbone_lr_multiplier`` times the head's. Fine-tuned weights replace
    the head-only ones only when validation accuracy improves on them, so the result is
    never below the frozen-features classifier on validation.
    Without a pretrained backbone: one phase, the learning rate halved on plateaus.
    """
    import keras

    from prodclf.model.augment import make_augmenter
    from prodclf.model.builders import (
        adam_with_multipliers,
        backbone_variables,
        crossentropy,
        feature_extractor,
        freeze_backbone,
        head_model,
        set_trainable_fraction,
        warmup_cosine,
    )

    augment = None
    opts = augment_options(cfg)
    if opts.enabled:
        augment = make_augmenter(opts, plan_.spec.shape)

    has_val = VALIDATION in conv
    monitor = "val_accuracy" if has_val else "accuracy"
    best = checkpoint_dir / "best.weights.h5"
    steps = math.ceil(summary.count(TRAIN) / cfg.batch_size)
    val_steps = math.ceil(summary.count(VALIDATION) / cfg.batch_size) if has_val else None
    weights = class_weights(summary, cfg.class_weights)
    result = FitResult(history={}, class_weights="balanced" if weights else "none")
    scored = TEST if TEST in conv else VALIDATION if has_val else TRAIN
    head_epochs = cfg.resolved_head_epochs
    total = head_epochs + cfg.epochs
    smoothing = cfg.resolved_label_smoothing
    loss = crossentropy(len(summary.classes), smoothing)
    if smoothing:
        log.info("label smoothing %.3g", smoothing)

    def record(h: dict[str, list[float]], phase: int) -> None:
        for key, values in h.items():
            result.history.setdefault(key, []).extend(float(v) for v in values)
        n = len(next(iter(h.values()), []))
        result.history.setdefault("phase", []).extend([float(phase)] * n)

    def pixels_fit(epochs: int, first: int, callbacks: list[Any]) -> dict[str, Any]:
        with _datasets(conv, plan_, cfg, summary, augment) as (train, val):
            h = model.fit(
                train,
                epochs=first + epochs,
                initial_epoch=first,
                steps_per_epoch=steps,
                validation_data=val,
                validation_steps=val_steps,
                class_weight=weights,
                callbacks=callbacks,
                shuffle=False,  # petastorm and tf.data shuffle; Keras cannot shuffle a stream
                verbose=0,
            )
        return dict(h.history)

    best_value: float | None = None
    if head_epochs:
        t_head = time.perf_counter()
        log.info("phase 1: head only, backbone frozen (%s)", freeze_backbone(model))
        extractor = feature_extractor(model)
        if extractor is not None:
            feats = {}
            for split in conv:
                t0 = time.perf_counter()
                feats[split] = predict_split(extractor, conv[split], plan_, cfg)
                log.info(
                    "frozen features of the %s split: %d image(s) in %.1fs",
                    split,
                    len(feats[split][1]),
                    time.perf_counter() - t0,
                )
            head = head_model(model)
            head.compile(
                optimizer=keras.optimizers.Adam(learning_rate=cfg.learning_rate),
                loss=loss,
                metrics=["accuracy"],
            )
            keep = keras.callbacks.EarlyStopping(
                monitor=monitor,
                mode="max",
                patience=max(cfg.early_stopping_patience, 3) or head_epochs,
                restore_best_weights=True,
            )
            x, y = feats[TRAIN]
            h = head.fit(
                x,
                y,
                validation_data=feats[VALIDATION] if has_val else None,
                epochs=head_epochs,
                batch_size=cfg.batch_size,
                class_weight=weights,
                callbacks=[epoch_logger(total), keep],
                shuffle=True,
                verbose=0,
            )
            record(h.history, 1)
            best_value = float(keep.best) if keep.best is not None else None
            result.head_probs = np.asarray(head.predict(feats[scored][0], verbose=0))
            result.head_truth = feats[scored][1]
        else:  # fusion: the grayscale stream trains on pixels, so the head phase does too
            ckpt = keras.callbacks.ModelCheckpoint(
                str(best), monitor=monitor, mode="max", save_best_only=True, save_weights_only=True
            )
            model.compile(
                optimizer=keras.optimizers.Adam(learning_rate=cfg.learning_rate),
                loss=loss,
                metrics=["accuracy"],
            )
            h = pixels_fit(head_epochs, 0, [epoch_logger(total), ckpt])
            record(h, 1)
            best_value = float(ckpt.best)
            if best.exists():
                model.load_weights(str(best))
            result.head_probs, result.head_truth = predict_split(model, conv[scored], plan_, cfg)
        result.head_validation_accuracy = best_value
        model.save_weights(str(best))
        result.kept = "head_only"
        result.head_seconds = time.perf_counter() - t_head
        log.info(
            "phase 1 done in %.1fs: best %s %.4f", result.head_seconds, monitor, best_value or 0
        )

    if cfg.epochs:
        checkpoint = keras.callbacks.ModelCheckpoint(
            str(best),
            monitor=monitor,
            mode="max",
            save_best_only=True,
            save_weights_only=True,
            initial_value_threshold=best_value,
        )
        callbacks: list[Any] = [epoch_logger(total), checkpoint]
        fine = checkpoint_dir / "fine_tuned.weights.h5"
        if head_epochs:  # the best fine-tuned epoch, kept or not, to score it beside the head
            callbacks.append(
                keras.callbacks.ModelCheckpoint(
                    str(fine),
                    monitor=monitor,
                    mode="max",
                    save_best_only=True,
                    save_weights_only=True,
                )
            )
        if cfg.early_stopping_patience:
            callbacks.append(
                keras.callbacks.EarlyStopping(
                    monitor=monitor, mode="max", patience=cfg.early_stopping_patience
                )
            )
        if head_epochs:
            share = set_trainable_fraction(model, cfg.trainable_fraction)
            peak = cfg.fine_tune_learning_rate or cfg.learning_rate * FINE_TUNE_RATE
            schedule = warmup_cosine(peak, cfg.epochs * steps, cfg.warmup_epochs * steps)
            optimizer = adam_with_multipliers(
                schedule, backbone_variables(model), cfg.backbone_lr_multiplier
            )
            log.info(
                "phase 2: fine-tuning %s; head learning rate %.3g (warm-up %d epoch(s), "
                "cosine decay), backbone x%.3g",
                share,
                peak,
                cfg.warmup_epochs,
                cfg.backbone_lr_multiplier,
            )
        else:
            if cfg.pretrained:
                share = set_trainable_fraction(model, cfg.trainable_fraction)
                log.info("one phase: fine-tuning %s", share)
            optimizer, more = one_phase_schedule(cfg, steps, monitor)
            callbacks += more
        model.compile(
            optimizer=optimizer,
            loss=loss,
            metrics=["accuracy"],
        )
        done = len(result.history.get("loss", []))
        record(pixels_fit(cfg.epochs, done, callbacks), 2 if head_epochs else 0)
        if head_epochs and checkpoint.best is not None and best_value is not None:
            if checkpoint.best > best_value:
                result.kept = "fine_tuned"
            elif fine.exists():
                model.load_weights(str(fine))
                scored_conv = conv[scored]
                result.fine_probs, result.fine_truth = predict_split(model, scored_conv, plan_, cfg)
        elif not head_epochs:
            result.kept = "single_phase"
    if best.exists():
        model.load_weights(str(best))
    phase = result.kept.replace("_", " ").removesuffix(" phase")
    log.info("kept the weights of the %s phase", phase)
    return result


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
            fitted = fit(model, conv, plan_, cfg, summary, ckpt)
            history = fitted.history
            fit_seconds = time.perf_counter() - t_fit
            scored_split = TEST if TEST in conv else VALIDATION if VALIDATION in conv else TRAIN
            raw_probs, truth = predict_split(model, conv[scored_split], plan_, cfg)
            val_acc = None
            temperature = 1.0
            calibration: dict[str, Any] | None = None
            if VALIDATION in conv:
                vp, vt = predict_split(model, conv[VALIDATION], plan_, cfg)
                val_acc = round(float(np.mean(np.argmax(vp, axis=1) == vt)), 6)
                if cfg.calibrate:
                    temperature = fit_temperature(logits_of(vp), vt)
                    calibration = {
                        "method": "temperature_scaling",
                        "temperature": round(temperature, 6),
                        "fitted_on": VALIDATION,
                        "images": len(vt),
                    }
                    log.info(
                        "calibration: temperature %.4f fitted on %d image(s)", temperature, len(vt)
                    )

        k = min(3, len(summary.classes))
        probs = apply_temperature(raw_probs, temperature) if calibration else raw_probs
        scores = m.evaluate(
            m.scored_from_probabilities(probs, truth, summary.classes, k=k),
            target_precision=cfg.target_precision,
        )
        uncalibrated = m.evaluate(
            m.scored_from_probabilities(raw_probs, truth, summary.classes, k=k),
            target_precision=cfg.target_precision,
        )
        if calibration is not None:
            calibration["expected_calibration_error"] = {
                "before": uncalibrated["expected_calibration_error"],
                "after": scores["expected_calibration_error"],
                "split": scored_split,
            }
            scores["calibration"] = calibration
        phases = _phases(cfg, fitted, uncalibrated, summary.classes, k)
        if phases:
            scores["phases"] = phases
        headline = {
            "evaluated_on": scored_split,
            "accuracy": scores["accuracy"],
            "top_k_accuracy": scores["top_k_accuracy"],
            "macro_f1": scores["macro_f1"],
            "expected_calibration_error": scores["expected_calibration_error"],
            "expected_calibration_error_uncalibrated": uncalibrated["expected_calibration_error"],
            "review_threshold": scores["review_threshold"],
            "validation_accuracy": val_acc,
            "epochs_run": len(history.get("loss", [])),
            "best_epoch": _best_epoch(history),
            "fit_seconds": round(fit_seconds, 1),
            "data": summary.to_json(),
            "architecture": plan_.model.architecture,
            "backbone": cfg.backbone,
            "fusion": cfg.fusion,
            "weights": cfg.weights,
            "class_weights": fitted.class_weights,
            "seed": cfg.seed,
            "parameters": int(model.count_params()),
            "phases": phases,
        }
        meta = BundleMeta(
            model_name=plan_.model_name,
            model_version=cfg.model_version
            or datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ"),
            labels=labels,
            preprocessing=plan_.spec,
            metrics=headline,
            calibration=calibration,
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
                "architecture": plan_.model.architecture,
                "backbone": cfg.backbone or "built in",
                "fusion": cfg.fusion,
                "weights": cfg.weights,
                "class weights": fitted.class_weights,
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


def _phases(
    cfg: TrainConfig, fitted: FitResult, final: dict[str, Any], classes: list[str], k: int
) -> dict[str, Any] | None:
    """The head-only (frozen backbone) result beside the fine-tuned one, same split.

    Both uncalibrated, so the comparison is the networks' own; None without a head phase.
    """
    if fitted.head_probs is None:
        return None
    from prodclf.evaluation import metrics as m

    head = m.evaluate(
        m.scored_from_probabilities(fitted.head_probs, fitted.head_truth, classes, k=k),
        target_precision=cfg.target_precision,
    )
    fine = [
        v
        for v, p in zip(
            fitted.history.get("val_accuracy", []), fitted.history["phase"], strict=False
        )
        if p == 2
    ]

    def row(s: dict[str, Any]) -> dict[str, Any]:
        return {
            "accuracy": s["accuracy"],
            "top_3_accuracy": s["top_k_accuracy"].get(f"top_{k}"),
            "macro_f1": s["macro_f1"],
            "expected_calibration_error": s["expected_calibration_error"],
        }

    tuned: dict[str, Any] = {
        "validation_accuracy": round(max(fine), 6) if fine else None,
        "epochs": len(fine),
    }
    if fitted.kept == "fine_tuned":
        tuned.update(row(final))
    elif fitted.fine_probs is not None:
        tuned.update(
            row(
                m.evaluate(
                    m.scored_from_probabilities(fitted.fine_probs, fitted.fine_truth, classes, k=k),
                    target_precision=cfg.target_precision,
                )
            )
        )
    return {
        "head_only": {
            **row(head),
            "validation_accuracy": fitted.head_validation_accuracy,
            "epochs": int(sum(1 for p in fitted.history["phase"] if p == 1)),
            "seconds": round(fitted.head_seconds, 1),
        },
        # The best fine-tuned epoch, scored even when its weights were not kept.
        "fine_tuned": tuned,
        "kept": fitted.kept,
    }


def _best_epoch(history: dict[str, list[float]]) -> int | None:
    key = "val_accuracy" if "val_accuracy" in history else "accuracy"
    values = history.get(key) or []
    return int(np.argmax(values)) + 1 if values else None
