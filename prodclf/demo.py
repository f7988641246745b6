"""``prodclf demo``: the whole pipeline on Fashion-MNIST, on one machine, in minutes.

This is the embedded default: local Spark, and a local directory standing in for the
object store. Everything goes through the same code as production, only with
``file://`` URIs where production has ``s3://`` ones: the training job fetches and
decodes images on the executors, the tagging job writes a commodity-library run and its
manifest. Layout of ``--workdir``::

    store/images/{train,catalog}/<i>.png   the "object store" (Fashion-MNIST as PNGs)
    libraries/training/                    base library with labels (training input)
    libraries/catalog/                     base library to tag (no labels; 2 broken rows)
    libraries/catalog_truth/               the catalog's known labels, for scoring only
    libraries/catalog_next/                the catalog a day later: a few products changed
    label_map.json                         class name -> Google Product Taxonomy id
    models/fashion-cnn/                    the model bundle
    commodity/                             the commodity library the tagging job writes:
                                           tags_history/, tags_current/, runs/, _runs/

Each demo run tags the catalog twice: a ``full`` run, then an ``incremental`` run over
``catalog_next`` that tags only the products the demo changed (new photos, new products).

A second run reuses the images, libraries and model. Each stage writes a ``_DONE``-style
marker last, holding the parameters it was built with, so an interrupted stage (or one
built with other parameters) is rebuilt rather than mistaken for complete.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from prodclf import fashion_mnist
from prodclf.config import SparkConfig, TagConfig, TrainConfig, default_run_id
from prodclf.errors import ModelBundleError
from prodclf.images import encode_png
from prodclf.model.bundle import BundleMeta, read_meta
from prodclf.storage import objects
from prodclf.storage.tables import write_string_table

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_REFUSED = 2
DATA_FORMAT = 1  # bump when the demo's images or libraries change shape
MODEL_NAME = "fashion-mnist-cnn"
CORRUPT_ID = "sku-broken-corrupt"
MISSING_ID = "sku-broken-missing"
#: What changes between the catalog and catalog_next: new photos, and new products.
CHANGED_PHOTOS = 5
NEW_PRODUCTS = 3


@dataclass(frozen=True)
class DemoOptions:
    workdir: str
    catalog_size: int
    train_limit: int
    epochs: int
    data_dir: str = fashion_mnist.DEFAULT_DATA_DIR
    master: str | None = None


@dataclass(frozen=True)
class Layout:
    """Every path of the demo's working directory."""

    root: Path

    @property
    def images(self) -> Path:
        return self.root / "store" / "images"

    @property
    def libraries(self) -> Path:
        return self.root / "libraries"

    @property
    def training(self) -> Path:
        return self.libraries / "training"

    @property
    def catalog(self) -> Path:
        return self.libraries / "catalog"

    @property
    def truth(self) -> Path:
        return self.libraries / "catalog_truth"

    @property
    def catalog_next(self) -> Path:
        return self.libraries / "catalog_next"

    @property
    def label_map(self) -> Path:
        return self.root / "label_map.json"

    @property
    def model(self) -> Path:
        return self.root / "models" / "fashion-cnn"

    @property
    def model_marker(self) -> Path:
        # Beside the bundle, not in it: exporting replaces the bundle directory wholesale.
        return self.root / "models" / "fashion-cnn._DONE"

    @property
    def commodity(self) -> Path:
        return self.root / "commodity"


class Dataset:
    """Fashion-MNIST, read on first use only (a fully reused run never decompresses it)."""

    def __init__(self, data_dir: str) -> None:
        self.data_dir = data_dir

    @cached_property
    def train(self) -> tuple[np.ndarray, np.ndarray]:
        return fashion_mnist.load(self.data_dir, "train")

    @cached_property
    def test(self) -> tuple[np.ndarray, np.ndarray]:
        return fashion_mnist.load(self.data_dir, "test")


# --- stage markers ----------------------------------------------------------------------


def is_done(marker: Path, params: dict[str, Any]) -> bool:
    """True when ``marker`` exists and records exactly ``params``."""
    try:
        return bool(json.loads(marker.read_text()) == params)
    except (OSError, ValueError):
        return False


def mark_done(marker: Path, params: dict[str, Any]) -> None:
    """Write the marker atomically (temp file, then rename): the last step of a stage."""
    objects.write_bytes(str(marker), json.dumps(params, sort_keys=True).encode())


# --- stage 1: the object store ----------------------------------------------------------


def build_store(layout: Layout, opts: DemoOptions, data: Dataset) -> dict[str, Any]:
    """PNG objects for the training images and the catalog, plus one corrupt object."""
    params = {
        "format": DATA_FORMAT,
        "train": opts.train_limit,
        "catalog": opts.catalog_size,
        "data_dir": str(Path(opts.data_dir).resolve()),
    }
    marker = layout.images / "_DONE"
    if is_done(marker, params):
        log.info("reusing the demo object store %s", layout.images)
        return params
    marker.unlink(missing_ok=True)
    shutil.rmtree(layout.images, ignore_errors=True)
    t0 = time.perf_counter()
    for name, images, n in (
        ("train", data.train[0], opts.train_limit),
        ("catalog", data.test[0], opts.catalog_size),
    ):
        folder = layout.images / name
        folder.mkdir(parents=True)
        for i in range(n):
            (folder / f"{i}.png").write_bytes(encode_png(images[i]))
    # A truncated PNG: the tagging job must report it as undecodable_image, not crash.
    whole = encode_png(data.test[0][0])
    (layout.images / "catalog" / "corrupt.png").write_bytes(whole[: len(whole) // 2])
    mark_done(marker, params)
    log.info(
        "wrote %d PNG objects under %s in %.1fs",
        opts.train_limit + opts.catalog_size + 1,
        layout.images,
        time.perf_counter() - t0,
    )
    return params


# --- stage 2: the base libraries --------------------------------------------------------


def build_libraries(
    layout: Layout, opts: DemoOptions, data: Dataset, store: dict[str, Any]
) -> dict[str, Any]:
    """The training library (with labels), the catalog (without) and the catalog's truth."""
    params = {**store, "store": layout.images.resolve().as_uri()}
    marker = layout.libraries / "_DONE"
    if is_done(marker, params):
        log.info("reusing the demo base libraries under %s", layout.libraries)
        if not layout.catalog_next.exists():  # a workdir from before incremental runs
            write_catalog_next(layout, opts)
        return params
    marker.unlink(missing_ok=True)
    names = fashion_mnist.CLASS_NAMES
    uri = layout.images.resolve().as_uri()

    train_labels = data.train[1][: opts.train_limit]
    write_string_table(
        layout.training,
        {
            "product_id": [f"fm-train-{i:05d}" for i in range(opts.train_limit)],
            "title": [f"{names[c]} (training image {i})" for i, c in enumerate(train_labels)],
            "image_uri": [f"{uri}/train/{i}.png" for i in range(opts.train_limit)],
            "label": [names[c] for c in train_labels],
        },
    )

    test_labels = data.test[1][: opts.catalog_size]
    ids = [f"sku-{i:05d}" for i in range(opts.catalog_size)]
    write_string_table(
        layout.catalog,
        {
            "product_id": [*ids, CORRUPT_ID, MISSING_ID],
            "title": [f"Demo product {i}" for i in range(opts.catalog_size)]
            + ["Broken product (corrupt image)", "Broken product (missing image)"],
            "image_uri": [f"{uri}/catalog/{i}.png" for i in range(opts.catalog_size)]
            + [f"{uri}/catalog/corrupt.png", f"{uri}/catalog/missing.png"],
        },
    )
    write_string_table(
        layout.truth,
        {
            "product_id": ids,
            "label": [names[c] for c in test_labels],
            "label_id": [fashion_mnist.TAXONOMY_IDS[names[c]] for c in test_labels],
        },
    )
    write_catalog_next(layout, opts)
    mark_done(marker, params)
    log.info("wrote the base libraries under %s", layout.libraries)
    return params


def write_catalog_next(layout: Layout, opts: DemoOptions) -> None:
    """The catalog a day later: the first products have new photos (another catalog
    image each), and a few products are new. The rest is unchanged."""
    n = opts.catalog_size
    uri = layout.images.resolve().as_uri()
    ids = [f"sku-{i:05d}" for i in range(n)]
    changed = min(CHANGED_PHOTOS, n)
    image = [f"{uri}/catalog/{i}.png" for i in range(n)]
    for i in range(changed):
        image[i] = f"{uri}/catalog/{(i + changed) % n}.png"
    new_ids = [f"sku-new-{i}" for i in range(NEW_PRODUCTS)]
    write_string_table(
        layout.catalog_next,
        {
            "product_id": [*ids, CORRUPT_ID, MISSING_ID, *new_ids],
            "title": [f"Demo product {i}" for i in range(n)]
            + ["Broken product (corrupt image)", "Broken product (missing image)"]
            + [f"New product {i}" for i in range(NEW_PRODUCTS)],
            "image_uri": [*image, f"{uri}/catalog/corrupt.png", f"{uri}/catalog/missing.png"]
            + [f"{uri}/catalog/{(i + 2 * changed) % n}.png" for i in range(NEW_PRODUCTS)],
        },
    )


# --- stage 3: the model -----------------------------------------------------------------


def train_model(
    layout: Layout, opts: DemoOptions, spark: Any, libraries: dict[str, Any]
) -> tuple[BundleMeta, bool]:
    """The bundle: reused when its marker matches, else trained. Returns (meta, trained)."""
    from prodclf.training.job import run_train, train_preflight

    label_map = dict(fashion_mnist.TAXONOMY_IDS)
    objects.write_bytes(str(layout.label_map), json.dumps(label_map, indent=2).encode())
    params = {**libraries, "epochs": opts.epochs, "label_map": label_map, "trainer": 3}
    if is_done(layout.model_marker, params):
        try:
            meta = read_meta(str(layout.model))
        except ModelBundleError as exc:
            log.warning("retraining: the existing bundle is unusable (%s)", exc)
        else:
            log.info("reusing the model bundle %s", layout.model)
            return meta, False
    layout.model_marker.unlink(missing_ok=True)
    cfg = TrainConfig(
        base_library=str(layout.training),
        model_out=str(layout.model),
        label_map=str(layout.label_map),
        image_height=28,
        image_width=28,
        color_mode="grayscale",
        scale="unit",
        epochs=opts.epochs,
        # Augmentation and occlusion/clutter noise are for photos: on centred 28x28
        # silhouettes they only slow a short training down (see docs/results.md).
        augmentation="none",
        noise=False,
        model_name=MODEL_NAME,
    )
    meta = run_train(cfg, spark, train_preflight(cfg))
    mark_done(layout.model_marker, params)
    return meta, True


# --- stage 4: tagging and scoring -------------------------------------------------------


def tag_catalog(
    layout: Layout, spark: Any, master: str | None, mode: str = "full"
) -> dict[str, Any]:
    """One tagging run for today's date: ``full`` over the catalog, or ``incremental``
    over the catalog a day later (only what changed is tagged)."""
    from prodclf.library.layout import LAYOUT_V1
    from prodclf.library.table import CommodityLibrary
    from prodclf.tagging.job import run_tag, tag_preflight

    if CommodityLibrary(str(layout.commodity)).layout_version() == LAYOUT_V1:
        from prodclf.config import MigrateConfig
        from prodclf.tagging.library import run_migrate

        log.info("upgrading the demo's commodity library to the current layout")
        run_migrate(MigrateConfig(commodity_library=str(layout.commodity)), spark)
    now = datetime.now(timezone.utc)
    run_date = now.date()
    stamp = now.strftime("%Y%m%dT%H%M%S%fZ")
    cfg = TagConfig(
        base_library=str(layout.catalog if mode == "full" else layout.catalog_next),
        commodity_library=str(layout.commodity),
        model=str(layout.model),
        run_date=run_date,
        run_id=default_run_id(run_date, stamp) + ("" if mode == "full" else "-incremental"),
        mode=mode,
        spark=SparkConfig(master=master or "local[*]", app_name="prodclf-demo"),
    )
    meta = tag_preflight(cfg)
    return run_tag(cfg, spark, meta)


def demo_accuracy(layout: Layout, spark: Any, manifest: dict[str, Any]) -> dict[str, Any]:
    """Accuracy of this run's ok rows against the known labels (class and taxonomy id)."""
    from pyspark.sql import functions as F

    from prodclf.library.table import CommodityLibrary
    from prodclf.schemas import STATUS_OK
    from prodclf.storage.uris import spark_location

    run_date = datetime.strptime(manifest["run_date"], "%Y-%m-%d").date()
    library = CommodityLibrary(str(layout.commodity))
    rows = library.read_history(spark, run_date, manifest["run_id"]).where(
        F.col("status") == STATUS_OK
    )
    truth = spark.read.parquet(spark_location(str(layout.truth)))
    per_class = (
        rows.join(truth, "product_id")
        .groupBy("label")
        .agg(
            F.count(F.lit(1)).alias("n"),
            F.sum((F.col("category") == F.col("label")).cast("int")).alias("right"),
            F.sum((F.col("category_id") == F.col("label_id")).cast("int")).alias("right_id"),
        )
        .collect()
    )
    n = sum(r["n"] for r in per_class)
    return {
        "scored": n,
        "accuracy": sum(r["right"] for r in per_class) / n if n else None,
        "taxonomy_accuracy": sum(r["right_id"] for r in per_class) / n if n else None,
        "per_class": {r["label"]: r["right"] / r["n"] for r in sorted(per_class, key=_label)},
    }


def _label(row: Any) -> str:
    return str(row["label"])


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def print_summary(
    layout: Layout,
    manifest: dict[str, Any],
    scores: dict[str, Any],
    meta: BundleMeta,
    trained: bool,
    seconds: float,
    incremental: dict[str, Any] | None = None,
) -> None:
    errors = manifest["errors"]
    by_code = ", ".join(f"{code} {n}" for code, n in errors.items()) or "none"
    worst = sorted(scores["per_class"].items(), key=lambda kv: kv[1])[:3]
    lines = [
        "",
        f"prodclf demo: finished in {seconds:.0f}s",
        f"  model              {meta.model_name} {meta.model_version} "
        f"({'trained now' if trained else 'reused'}; validation accuracy "
        f"{_pct(meta.metrics.get('validation_accuracy'))}, held-out test accuracy "
        f"{_pct(meta.metrics.get('accuracy'))}; report in {layout.model / 'report'})",
        f"  products           {manifest['products_in']}",
        f"  tagged ok          {manifest['ok']}",
        f"  errors             {manifest['error_rows']} ({by_code})",
        f"  accuracy           {_pct(scores['accuracy'])} of {scores['scored']} ok products "
        f"against the known labels ({_pct(scores['taxonomy_accuracy'])} on taxonomy id)",
        "  hardest classes    " + ", ".join(f"{name} {_pct(acc)}" for name, acc in worst),
        f"  images per second  {manifest['images_per_second']}",
        f"  needs_review       {manifest['needs_review']} ok products below the review "
        f"threshold, plus the {manifest['error_rows']} error rows",
        f"  full run           {manifest['run_id']}: manifest {manifest['manifest_uri']}",
    ]
    if incremental is not None:
        reasons = ", ".join(f"{k} {v}" for k, v in incremental["reasons"].items()) or "none"
        lines.append(
            f"  incremental run    {incremental['run_id']}: tagged {incremental['products_in']} "
            f"of {incremental['base_products']} products ({reasons}), "
            f"{incremental['ok']} ok"
        )
    root = manifest["commodity_library"]
    lines += [
        f"  commodity library  {root}",
        f"    tags_history     {root}/tags_history (run_date=/run_id= partitions)",
        f"    tags_current     {root}/tags_current (current snapshot: "
        f"{root}/{(incremental or manifest)['current_snapshot']})",
        f"    runs             {root}/runs (or: prodclf runs --commodity-library {root})",
        f"    report           {(incremental or manifest)['report_uri']}",
        f"  workdir            {layout.root} (a second run reuses images, libraries, model)",
    ]
    print("\n".join(lines), flush=True)


# --- the command ------------------------------------------------------------------------


def check_options(opts: DemoOptions) -> str | None:
    """The one-line reason the demo cannot start, or None."""
    missing = fashion_mnist.missing_files(opts.data_dir)
    if missing:
        return (
            f"Fashion-MNIST not found in {opts.data_dir} (no {missing[0].name}); "
            "install it with `apt-get install dataset-fashion-mnist`"
        )
    if not 0 < opts.catalog_size <= 10_000:
        return f"--catalog-size must be within 1..10000, not {opts.catalog_size}"
    if not 10 <= opts.train_limit <= 60_000:
        return f"--train-limit must be within 10..60000, not {opts.train_limit}"
    if opts.epochs <= 0:
        return f"--epochs must be positive, not {opts.epochs}"
    return None


def run_demo(opts: DemoOptions) -> int:
    """Build (or reuse) the demo data and model, tag the catalog, print a summary."""
    problem = check_options(opts)
    if problem:
        print(f"prodclf: error: {problem}", file=sys.stderr)
        return EXIT_REFUSED
    from pyspark.sql import SparkSession

    from prodclf.session import create_session

    t0 = time.perf_counter()
    layout = Layout(Path(opts.workdir).resolve())
    data = Dataset(opts.data_dir)
    store = build_store(layout, opts, data)
    libraries = build_libraries(layout, opts, data, store)

    owned = SparkSession.getActiveSession() is None
    spark = create_session(SparkConfig(master=opts.master or "local[*]", app_name="prodclf-demo"))
    try:
        meta, trained = train_model(layout, opts, spark, libraries)
        manifest = tag_catalog(layout, spark, opts.master)
        scores = demo_accuracy(layout, spark, manifest)
        incremental = tag_catalog(layout, spark, opts.master, mode="incremental")
    finally:
        if owned:
            spark.stop()
    seconds = time.perf_counter() - t0
    print_summary(layout, manifest, scores, meta, trained, seconds, incremental)
    return EXIT_OK
