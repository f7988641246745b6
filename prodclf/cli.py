"""The ``prodclf`` command: argument parsing and nothing else.

Each subcommand builds its configuration (defaults < ``--config`` YAML < flags), runs
every check that needs no Spark, and only then creates the SparkSession and calls one
library function. A refusal prints one line, ``prodclf: error: ...``, and exits 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

from prodclf import __version__
from prodclf.config import (
    InferenceConfig,
    SparkConfig,
    StorageConfig,
    TagConfig,
    TrainConfig,
    default_run_id,
    load_yaml,
    parse_run_date,
    section,
    with_overrides,
)
from prodclf.errors import ConfigError, ProdclfError

EXIT_REFUSED = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # argparse's own messages, as one line and the same exit code as our refusals.
        self.exit(EXIT_REFUSED, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="prodclf", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--version", action="version", version=f"prodclf {__version__}")
    parser.add_argument("--log-level", default="INFO", help="Python log level (default INFO)")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    tag = sub.add_parser(
        "tag",
        help="tag every product of the base library (nightly full reclassification)",
        description="Classify every product image of the base library and write one run "
        "(partition run_date) into the commodity library, then its manifest.",
    )
    tag.add_argument(
        "--base-library",
        required=True,
        metavar="URI",
        help="Parquet dataset with product_id and image_uri (read only)",
    )
    tag.add_argument(
        "--commodity-library",
        required=True,
        metavar="URI",
        help="Parquet dataset the tags are written to (outside the base library)",
    )
    tag.add_argument("--model", required=True, metavar="URI", help="model bundle directory")
    tag.add_argument(
        "--run-date",
        required=True,
        metavar="YYYY-MM-DD",
        help="the partition this run writes (a rerun replaces it)",
    )
    tag.add_argument("--run-id", metavar="ID", help="default: <run-date>-<UTC time>")
    _common(tag)
    tag.add_argument("--top-k", type=int, metavar="K", help="categories kept per product")
    tag.add_argument(
        "--review-threshold",
        type=float,
        metavar="P",
        help="needs_review when confidence is below P",
    )
    tag.add_argument("--model-batch-size", type=int, metavar="N", help="images per model call")
    tag.add_argument(
        "--fetch-concurrency",
        type=int,
        metavar="N",
        help="concurrent object fetches per Python worker",
    )

    train = sub.add_parser(
        "train",
        help="train a small CNN on a labelled base library and write a model bundle",
        description="Fetch and decode labelled catalog images with Spark, train a small CNN "
        "and export it as a model bundle the tag command can use.",
    )
    train.add_argument(
        "--base-library",
        required=True,
        metavar="URI",
        help="Parquet dataset with product_id, image_uri and a label column",
    )
    train.add_argument(
        "--model-out", required=True, metavar="URI", help="where the model bundle is written"
    )
    train.add_argument("--label-column", metavar="NAME", help="default: label")
    train.add_argument("--label-map", metavar="FILE", help="YAML/JSON mapping {label: taxonomy id}")
    train.add_argument("--image-size", type=int, metavar="PX", help="square input size")
    train.add_argument("--color-mode", choices=("rgb", "grayscale"))
    train.add_argument("--epochs", type=int, metavar="N")
    train.add_argument("--batch-size", type=int, metavar="N")
    train.add_argument("--learning-rate", type=float, metavar="LR")
    train.add_argument("--limit", type=int, metavar="N", help="use at most N labelled images")
    train.add_argument("--seed", type=int)
    train.add_argument("--model-name")
    train.add_argument("--model-version")
    _common(train)

    demo = sub.add_parser(
        "demo",
        help="end-to-end demo on Fashion-MNIST with local Spark and a local object store",
        description="Build a demo catalog from Fashion-MNIST, train a model, tag the "
        "catalog and print a summary. Reuses what an earlier run left in --workdir.",
    )
    demo.add_argument("--workdir", default="demo-workdir", metavar="DIR")
    demo.add_argument(
        "--catalog-size",
        type=int,
        default=2000,
        metavar="N",
        help="products in the demo catalog (Fashion-MNIST test images)",
    )
    demo.add_argument(
        "--train-limit",
        type=int,
        default=20000,
        metavar="N",
        help="Fashion-MNIST training images used to train",
    )
    demo.add_argument("--epochs", type=int, default=8, metavar="N")
    demo.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist", metavar="DIR")
    demo.add_argument("--master", metavar="URL", help="Spark master (default local[*])")
    return parser


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--master", metavar="URL", help="Spark master; default: spark-submit's, else local[*]"
    )
    p.add_argument("--config", metavar="FILE", help="YAML file with storage/inference/spark")


def _sections(args: argparse.Namespace) -> tuple[dict[str, Any], StorageConfig, SparkConfig]:
    data = load_yaml(args.config)
    unknown = sorted(set(data) - {"storage", "inference", "spark", "train"})
    if unknown:
        raise ConfigError(f"--config {args.config}: unknown section(s) {', '.join(unknown)}")
    storage = section(StorageConfig, data.get("storage"), "storage")
    spark = with_overrides(section(SparkConfig, data.get("spark"), "spark"), master=args.master)
    return data, storage, spark


def tag_config(args: argparse.Namespace) -> TagConfig:
    data, storage, spark = _sections(args)
    storage = with_overrides(storage, fetch_concurrency=args.fetch_concurrency)
    inference = with_overrides(
        section(InferenceConfig, data.get("inference"), "inference"),
        top_k=args.top_k,
        review_threshold=args.review_threshold,
        model_batch_size=args.model_batch_size,
    )
    run_date = parse_run_date(args.run_date)
    run_id = args.run_id or default_run_id(
        run_date, datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    )
    cfg = TagConfig(
        base_library=args.base_library,
        commodity_library=args.commodity_library,
        model=args.model,
        run_date=run_date,
        run_id=run_id,
        storage=storage,
        inference=inference,
        spark=spark
        if spark.app_name != "prodclf"
        else with_overrides(spark, app_name=f"prodclf-tag-{run_id}"),
    )
    cfg.validate()
    return cfg


def train_config(args: argparse.Namespace) -> TrainConfig:
    data, storage, spark = _sections(args)
    base = TrainConfig(
        base_library=args.base_library,
        model_out=args.model_out,
        storage=storage,
        spark=with_overrides(spark, app_name="prodclf-train"),
    )
    yaml_train = dict(data.get("train") or {})
    known = {f for f in TrainConfig.__dataclass_fields__} - {"storage", "spark"}
    unknown = sorted(set(yaml_train) - known)
    if unknown:
        raise ConfigError(f"config section 'train': unknown key(s) {', '.join(unknown)}")
    cfg = with_overrides(base, **yaml_train)
    cfg = with_overrides(
        cfg,
        label_column=args.label_column,
        label_map=args.label_map,
        image_height=args.image_size,
        image_width=args.image_size,
        color_mode=args.color_mode,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        limit=args.limit,
        seed=args.seed,
        model_name=args.model_name,
        model_version=args.model_version,
    )
    cfg.validate()
    return cfg


def cmd_tag(args: argparse.Namespace) -> int:
    from prodclf.session import create_session
    from prodclf.tag import preflight, run_tag

    cfg = tag_config(args)
    meta = preflight(cfg)
    spark = create_session(cfg.spark, cfg.inference.arrow_batch_size)
    manifest = run_tag(cfg, spark, meta)
    print(json.dumps(manifest, indent=2, sort_keys=True))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from prodclf.session import create_session
    from prodclf.train import preflight as train_preflight
    from prodclf.train import run_train

    cfg = train_config(args)
    train_preflight(cfg)
    spark = create_session(cfg.spark)
    meta = run_train(cfg, spark)
    print(
        json.dumps(
            {
                "model_out": cfg.model_out,
                "model_name": meta.model_name,
                "model_version": meta.model_version,
                "metrics": meta.metrics,
            },
            indent=2,
            sort_keys=True,
        )
    )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from prodclf.demo import DemoOptions, run_demo

    opts = DemoOptions(
        workdir=args.workdir,
        catalog_size=args.catalog_size,
        train_limit=args.train_limit,
        epochs=args.epochs,
        data_dir=args.data_dir,
        master=args.master,
    )
    return run_demo(opts)


COMMANDS = {"tag": cmd_tag, "train": cmd_train, "demo": cmd_demo}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("py4j", "botocore", "urllib3", "s3transfer"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return COMMANDS[args.command](args)
    except ProdclfError as exc:
        print(f"prodclf: error: {exc}", file=sys.stderr)
        return EXIT_REFUSED
