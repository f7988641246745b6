"""``make results``: the reproducible results table on real data.

Builds base libraries for two real datasets and trains every variant through the real
training job (Spark decode -> petastorm -> Keras, test split scored by
``prodclf.evaluation.metrics``):

- Fashion-MNIST (Debian's ``dataset-fashion-mnist``): the small CNN, its own test split.
- Grocery Store (``../shared/data/grocery-store``, 43 coarse classes, its own
  train/val/test split): the pretrained MobileNet v1 0.25 against the same network from
  scratch, dropout 0.3 against none, ``gray+rgb`` fusion against RGB only.

Every number in the table is read from the bundle each run wrote; the table, the commands
and the seeds go to ``--out`` (Markdown) and ``<workdir>/results.json``.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prodclf import fashion_mnist
from prodclf.images import encode_png
from prodclf.storage.tables import write_string_table

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
GROCERY = SHARED / "data" / "grocery-store"
MOBILENET = SHARED / "weights" / "mobilenet_2_5_224_tf_no_top.h5"
EFFICIENTNET_LITE0 = SHARED / "weights" / "efficientnet_lite0_imagenet_no_top.keras"
TAXONOMY = SHARED / "taxonomy" / "google-product-taxonomy-with-ids.en-US.txt"


@dataclass(frozen=True)
class Variant:
    name: str
    dataset: str  # fashion_mnist | grocery
    what: str
    train: dict[str, Any] = field(default_factory=dict)


GROCERY_LABELS: dict[str, Any] = {
    "label_map": str(ROOT / "infra" / "config" / "grocery-taxonomy.yaml"),
    "taxonomy": str(TAXONOMY),
}
#: The default recipe (head on frozen features, then fine-tuning at a low, warmed-up,
#: cosine-decayed rate, the backbone at a fraction of the head's, label smoothing 0.1 in
#: both phases) with the shared EfficientNet-Lite0 file: its own 224 px input, raw 0..255
#: pixels.
GROCERY_LITE0: dict[str, Any] = {
    "backbone": str(EFFICIENTNET_LITE0),
    "epochs": 8,
    "batch_size": 32,
    **GROCERY_LABELS,
}
GROCERY_COMMON: dict[str, Any] = {
    "architecture": "mobilenet",
    "alpha": 0.25,
    "image_height": 160,
    "image_width": 160,
    "epochs": 20,
    "batch_size": 32,
    "early_stopping_patience": 6,
    **GROCERY_LABELS,
}

VARIANTS = (
    Variant(
        "fashion_mnist_small_cnn",
        "fashion_mnist",
        "small CNN (two 3x3 convs per block), 28x28 grayscale, horizontal flips, label "
        "smoothing 0.1, 16 epochs on a cosine",
        {
            "architecture": "small_cnn",
            "color_mode": "grayscale",
            "augmentation": "flip",
            "noise": False,
            "label_smoothing": 0.1,
            "epochs": 16,
            "batch_size": 128,
            "learning_rate": 2e-3,
            "lr_schedule": "cosine",
            "early_stopping_patience": 0,
            "label_map": str(ROOT / "infra" / "config" / "fashion-mnist-taxonomy.yaml"),
            "taxonomy": str(TAXONOMY),
        },
    ),
    Variant(
        "grocery_efficientnet_lite0",
        "grocery",
        "`--backbone` EfficientNet-Lite0 file (224 px), 75% fine-tuned, dropout 0.3, "
        "augmentation + noise, label smoothing 0.1",
        GROCERY_LITE0,
    ),
    Variant(
        "grocery_efficientnet_lite0_no_augmentation",
        "grocery",
        "the recipe before label smoothing (84.3%, #12 run 3 below), no augmentation and no "
        "noise (one arm of the augmentation ablation, 1 seed)",
        {**GROCERY_LITE0, "label_smoothing": 0.0, "augmentation": "none", "noise": False},
    ),
    Variant(
        "grocery_pretrained",
        "grocery",
        "MobileNet v1 0.25 ImageNet weights, 75% trainable, dropout 0.3, augmentation + noise",
        {**GROCERY_COMMON, "weights": str(MOBILENET)},
    ),
    Variant(
        "grocery_pretrained_no_dropout",
        "grocery",
        "pretrained, dropout 0",
        {**GROCERY_COMMON, "weights": str(MOBILENET), "dropout": 0.0},
    ),
    Variant(
        "grocery_pretrained_gray_rgb",
        "grocery",
        "pretrained + gray conv/GRU stream fused before the classifier",
        {**GROCERY_COMMON, "weights": str(MOBILENET), "fusion": "gray+rgb"},
    ),
    Variant(
        "grocery_scratch",
        "grocery",
        "the same network from random weights (all trainable, one phase)",
        {**GROCERY_COMMON, "weights": "none", "trainable_fraction": 1.0},
    ),
)


# --- base libraries ----------------------------------------------------------------------


def fashion_mnist_library(workdir: Path, data_dir: str) -> Path:
    """70,000 PNG objects and a base library with the official train/test split.

    The validation split is every tenth training image (6,000), by position.
    """
    library = workdir / "libraries" / "fashion_mnist"
    if (library / "_DONE").exists():
        return library
    images = workdir / "store" / "fashion_mnist"
    cols: dict[str, list[str]] = {"product_id": [], "image_uri": [], "label": [], "split": []}
    for part in ("train", "test"):
        pixels, labels = fashion_mnist.load(data_dir, part)
        folder = images / part
        folder.mkdir(parents=True, exist_ok=True)
        for i, (img, y) in enumerate(zip(pixels, labels, strict=True)):
            path = folder / f"{i}.png"
            path.write_bytes(encode_png(img))
            cols["product_id"].append(f"fm-{part}-{i:05d}")
            cols["image_uri"].append(path.resolve().as_uri())
            cols["label"].append(fashion_mnist.CLASS_NAMES[int(y)])
            split = "test" if part == "test" else ("validation" if i % 10 == 0 else "train")
            cols["split"].append(split)
    write_string_table(library, cols)
    (library / "_DONE").write_text("ok")
    return library


def grocery_library(workdir: Path, root: Path = GROCERY) -> Path:
    """The Grocery Store dataset's own split files as a base library (coarse labels)."""
    library = workdir / "libraries" / "grocery"
    dataset = root / "dataset"
    with open(dataset / "classes.csv", newline="") as f:
        rows = list(csv.reader(f))[1:]
    coarse = {int(r[3]): r[2] for r in rows}
    cols: dict[str, list[str]] = {
        "product_id": [],
        "image_uri": [],
        "label": [],
        "fine_label": [],
        "split": [],
    }
    fine = {int(r[1]): r[0] for r in rows}
    for split in ("train", "val", "test"):
        for i, line in enumerate((dataset / f"{split}.txt").read_text().splitlines()):
            if not line.strip():
                continue
            path, fine_id, coarse_id = (x.strip() for x in line.split(","))
            cols["product_id"].append(f"gs-{split}-{i:04d}")
            cols["image_uri"].append((dataset / path).resolve().as_uri())
            cols["label"].append(coarse[int(coarse_id)])
            cols["fine_label"].append(fine[int(fine_id)])
            cols["split"].append(split)
    write_string_table(library, cols)
    return library


# --- running the variants ----------------------------------------------------------------


def run_variant(v: Variant, library: Path, workdir: Path, spark: Any) -> dict[str, Any]:
    from prodclf.config import TrainConfig
    from prodclf.training.job import run_train, train_preflight

    out = workdir / "models" / v.name
    cfg = TrainConfig(
        base_library=str(library),
        model_out=str(out),
        split_column="split",
        model_name=f"prodclf-{v.name.replace('_', '-')}",
        model_version="results",
        cache_dir=str(workdir / "petastorm-cache"),
        **{"seed": 42, **v.train},
    )
    t0 = time.perf_counter()
    meta = run_train(cfg, spark, train_preflight(cfg))
    seconds = time.perf_counter() - t0
    m = meta.metrics
    phases = m.get("phases") or {}
    head = phases.get("head_only") or {}
    return {
        "head_only_accuracy": head.get("accuracy"),
        "head_only_macro_f1": head.get("macro_f1"),
        "head_only_validation_accuracy": head.get("validation_accuracy"),
        "fine_tuned_validation_accuracy": (phases.get("fine_tuned") or {}).get(
            "validation_accuracy"
        ),
        "kept": phases.get("kept", "single_phase"),
        "temperature": (meta.calibration or {}).get("temperature"),
        "ece_uncalibrated": m.get("expected_calibration_error_uncalibrated"),
        "class_weights": m.get("class_weights"),
        "seed": cfg.seed,
        "variant": v.name,
        "dataset": v.dataset,
        "what": v.what,
        "test_accuracy": m["accuracy"],
        "top_3_accuracy": m["top_k_accuracy"].get("top_3"),
        "macro_f1": m["macro_f1"],
        "ece": m["expected_calibration_error"],
        "validation_accuracy": m["validation_accuracy"],
        "epochs_run": m["epochs_run"],
        "best_epoch": m["best_epoch"],
        "fit_seconds": m["fit_seconds"],
        "total_seconds": round(seconds, 1),
        "test_images": m["data"]["images"]["test"],
        "train_images": m["data"]["images"]["train"],
        "parameters": m["parameters"],
        "bundle": str(out),
        "command": command(v, library, out),
        # The settings measured: the command is rewritten only while the variant still has them.
        "train": v.train,
    }


def relative(path: str | Path) -> str:
    """A path as seen from the repository root (``../shared/...``, ``results-workdir/...``)."""
    text = str(path)
    if not Path(text).is_absolute():
        return text
    return os.path.relpath(text, ROOT)


def command(v: Variant, library: Path, out: Path) -> str:
    """The equivalent ``prodclf train`` command line, run from the repository root."""
    flags = {
        "architecture": "--architecture",
        "weights": "--weights",
        "alpha": "--alpha",
        "color_mode": "--color-mode",
        "epochs": "--epochs",
        "head_epochs": "--head-epochs",
        "batch_size": "--batch-size",
        "learning_rate": "--learning-rate",
        "dropout": "--dropout",
        "label_smoothing": "--label-smoothing",
        "fusion": "--fusion",
        "trainable_fraction": "--trainable-fraction",
        "early_stopping_patience": "--early-stopping-patience",
        "label_map": "--label-map",
        "taxonomy": "--taxonomy",
        "backbone": "--backbone",
        "class_weights": "--class-weights",
    }
    paths = ("weights", "label_map", "taxonomy", "backbone")
    parts = [
        "prodclf train",
        f"--base-library {relative(library)}",
        f"--model-out {relative(out)}",
        "--split-column split",
        f"--seed {v.train.get('seed', 42)}",
    ]
    for key, value in v.train.items():
        if key == "weights" and value in ("none", "imagenet"):
            parts.append(f"--weights {value}")
        elif key in paths:
            parts.append(f"{flags[key]} {relative(value)}")
        elif key in flags:
            parts.append(f"{flags[key]} {value}")
        elif key == "image_height":
            parts.append(f"--image-size {value}")
        elif key == "augmentation":
            parts.append(f"--augmentation {value}")
        elif key == "noise" and not value:
            parts.append("--no-noise")
        elif key in (
            "fine_tune_learning_rate",
            "lr_patience",
            "lr_schedule",
            "backbone_lr_multiplier",
            "warmup_epochs",
        ):
            parts.append(f"--{key.replace('_', '-')} {value}")
    return " ".join(parts)


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


#: Earlier measurements shown below the table (each section: title, text, rows); ``make
#: results`` does not rerun them. Committed, so the table keeps its history.
HISTORY = Path(__file__).resolve().parent / "results-history.json"


def _num(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def markdown(
    results: list[dict[str, Any]],
    env: dict[str, Any],
    earlier: list[dict[str, Any]] | None = None,
    missing: list[str] | None = None,
) -> str:
    lines = [
        "# Results on real data",
        "",
        "Produced by `make results` (`python benchmarks/results.py`); every number is read from",
        "the bundle the run wrote (test split scored by `prodclf.evaluation.metrics`).",
        "Seed 42 unless the variant says otherwise. Commands run from the repository root.",
        f"Machine: {env['machine']}. Wall time includes Spark decoding and petastorm.",
        "Every run shared those 2 cores with other work (other engineers' tests and jobs), so",
        "its time is an upper bound for the machine, and runs are not bit-for-bit repeatable.",
        "The 3-seed ablations of #12 (dropout, gray+rgb, augmentation and noise, pretrained vs",
        "scratch, each as mean and spread over 3 seeds) have not been run; the one",
        "no-augmentation row below is a single seed.",
        "",
        "*head only* is the same network with its backbone frozen: the classifier trained on",
        "the pretrained features alone, measured in the same run before fine-tuning; *kept* says",
        "which phase's weights were best on validation and went into the bundle. ECE is on the",
        "test split before and after the temperature fitted on the validation split.",
        "",
        "| variant | what | test acc. | head only | top-3 | macro-F1 (head only) "
        "| ECE before → after (T) | epochs (best) | kept | train min |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        t = r.get("temperature")
        cal = f"{_num(r.get('ece_uncalibrated'))} → {_num(r['ece'])} ({_num(t, 2)})"
        if t is None:
            cal = f"{_num(r['ece'])} (not calibrated)"
        lines.append(
            f"| `{r['variant']}` | {r['what']} | **{_pct(r['test_accuracy'])}** | "
            f"{_pct(r.get('head_only_accuracy'))} | {_pct(r['top_3_accuracy'])} | "
            f"{r['macro_f1']:.3f} ({_num(r.get('head_only_macro_f1'))}) | {cal} | "
            f"{r['epochs_run']} ({r['best_epoch']}) | {str(r.get('kept', '')).replace('_', ' ')} "
            f"| {r['total_seconds'] / 60:.1f} |"
        )
    if missing:
        lines += [
            "",
            "Defined in `benchmarks/results.py` but not measured for this table (run them with "
            f"`make results RESULTS_ARGS=--only=NAME`): {', '.join(f'`{m}`' for m in missing)}.",
        ]
    lines += ["", "## Commands", ""]
    for r in results:
        lines += [f"- `{r['variant']}` ({r['test_images']} test images):", "", "  ```"]
        lines += [f"  {r['command']}", "  ```", ""]
        if r.get("curves"):
            lines += [f"  ![learning curves of {r['variant']}]({r['curves']})", ""]
    for section in earlier or []:
        lines += [f"## {section['title']}", "", *section["text"], ""]
        lines += [
            "| variant | what | test acc. | head only | top-3 | macro-F1 | ECE | epochs (best) "
            "| kept | train min |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in section["rows"]:
            lines.append(
                f"| `{r['variant']}` | {r['what']} | {_pct(r['test_accuracy'])} | "
                f"{_pct(r.get('head_only_accuracy'))} | {_pct(r['top_3_accuracy'])} | "
                f"{r['macro_f1']:.3f} | {r['ece']:.3f} | {r['epochs_run']} ({r['best_epoch']}) | "
                f"{str(r.get('kept') or 'n/a').replace('_', ' ')} | "
                f"{r['total_seconds'] / 60:.1f} |"
            )
        lines += [""]
        for r in section["rows"]:
            lines += [f"- `{r['variant']}`:", "", "  ```", f"  {r['command']}", "  ```", ""]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/results.py", description=__doc__)
    p.add_argument("--workdir", default="results-workdir")
    p.add_argument("--out", default="docs/results.md", help="Markdown table")
    p.add_argument("--only", help="comma-separated variant names (default: all)")
    p.add_argument("--data-dir", default=fashion_mnist.DEFAULT_DATA_DIR)
    p.add_argument("--master", default="local[*]")
    p.add_argument(
        "--table-only",
        action="store_true",
        help="train nothing: rewrite the table from <workdir>/results.json",
    )
    args = p.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for noisy in ("py4j", "botocore", "urllib3", "petastorm"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    chosen = [v for v in VARIANTS if not args.only or v.name in args.only.split(",")]
    unknown = set(args.only.split(",")) - {v.name for v in VARIANTS} if args.only else set()
    if unknown:
        print(f"results: error: unknown variant(s) {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2

    from prodclf.config import SparkConfig
    from prodclf.session import create_session

    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    spark = None
    if not args.table_only:
        spark = create_session(SparkConfig(master=args.master, app_name="prodclf-results"))
    saved = workdir / "results.json"
    previous = {r["variant"]: r for r in json.loads(saved.read_text())} if saved.exists() else {}
    for v in [] if args.table_only else chosen:
        library = (
            fashion_mnist_library(workdir, args.data_dir)
            if v.dataset == "fashion_mnist"
            else grocery_library(workdir)
        )
        log.info("results: training %s", v.name)
        previous[v.name] = run_variant(v, library, workdir, spark)
        saved.write_text(json.dumps(list(previous.values()), indent=2))
    ordered = [previous[v.name] for v in VARIANTS if v.name in previous]
    for v in VARIANTS:  # a row keeps the command it was measured with
        r = previous.get(v.name)
        if r is not None and r.get("train") == v.train:
            r["command"] = command(v, workdir / "libraries" / v.dataset, Path(r["bundle"]))
    env = {
        "machine": f"{platform.machine()}, {_cores()} CPU cores, Python {platform.python_version()}"
    }
    for r in ordered:  # the learning curves beside the table (head only, then fine-tuning)
        png = Path(r["bundle"]) / "report" / "learning_curves.png"
        if png.exists():
            target = Path(args.out).parent / "results" / f"{r['variant']}-learning-curves.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(png, target)
            r["curves"] = os.path.relpath(target, Path(args.out).parent)
    earlier = json.loads(HISTORY.read_text()) if HISTORY.exists() else []
    missing = [v.name for v in VARIANTS if v.name not in previous]
    text = markdown(ordered, env, earlier, missing)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)
    return 0


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


if __name__ == "__main__":
    sys.exit(main())
