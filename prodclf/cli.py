"""The ``prodclf`` command: argument parsing, then one job function.

Each subcommand's flags are named like the configuration fields they set; the job's
configuration builds itself from them and ``--config`` (``JobConfig.from_sources``).
Then the job's preflight runs every check that needs no Spark, and only then is the
SparkSession created and the job run on it. A refusal prints one line,
``prodclf: error: ...``, and exits 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import uuid
from collections.abc import Sequence
from typing import Any

from prodclf import __version__
from prodclf.config import (
    AUGMENTATIONS,
    BACKBONE_INITS,
    CLASS_WEIGHTS,
    ICEBERG_CATALOGS,
    LR_SCHEDULES,
    MIGRATE_TARGETS,
    TABLE_FORMATS,
    EvaluateConfig,
    JobConfig,
    MigrateConfig,
    ReportConfig,
    TableFormatConfig,
    TagConfig,
    TrainConfig,
    VacuumConfig,
    load_yaml,
)
from prodclf.errors import ConfigError, ProdclfError
from prodclf.model.catalog import ARCHITECTURES, FUSIONS
from prodclf.observability.command import observe
from prodclf.observability.logs import LOG_FORMAT_ENV, LOG_FORMATS, set_context, setup_logging
from prodclf.schemas import MODES

EXIT_REFUSED = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # argparse's own messages, as one line and the same exit code as our refusals.
        self.exit(EXIT_REFUSED, f"{self.prog}: error: {message}\n")


class _Square(argparse.Action):
    """``--image-size N`` sets both ``image_height`` and ``image_width``."""

    def __call__(self, parser: Any, namespace: Any, values: Any, option: Any = None) -> None:
        namespace.image_height = namespace.image_width = values


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="prodclf", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--version", action="version", version=f"prodclf {__version__}")
    parser.add_argument("--log-level", default="INFO", help="Python log level (default INFO)")
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        # The spark-submit entries (jobs/*.py) take no global flags: the variable reaches them.
        default=os.environ.get(LOG_FORMAT_ENV) or "text",
        help=f"text (default; or ${LOG_FORMAT_ENV}) or json: one JSON object a line (ts, "
        "level, logger, message, command, run_id)",
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    tag = sub.add_parser(
        "tag",
        help="tag the products of the base library (full, incremental or backfill run)",
        description="Classify product images of the base library (all of them, the ones "
        "that need a tag, or an explicit selection), write the run into the commodity "
        "library's tags_history, update tags_current, then write the run's manifest.",
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
    tag.add_argument(
        "--mode",
        choices=MODES,
        help="full (every product, the default), incremental (new, changed, untagged by "
        "this model, retryable errors) or backfill (--products/--where/--retry-errors)",
    )
    tag.add_argument(
        "--products", metavar="URI", help="backfill: a .txt, .csv or Parquet list of product ids"
    )
    tag.add_argument(
        "--where", metavar="PREDICATE", help="backfill: Spark SQL over the base library's columns"
    )
    tag.add_argument(
        "--retry-errors",
        action="store_true",
        default=None,
        help="backfill: the products whose current tag is an error",
    )
    tag.add_argument(
        "--dry-run",
        action="store_true",
        default=None,
        help="count the products that would be tagged, by reason; write nothing",
    )
    tag.add_argument(
        "--change-column",
        metavar="NAME",
        help="incremental: a base library column whose change means a new image",
    )
    tag.add_argument(
        "--database", metavar="NAME", help="register the tables in this Spark SQL database"
    )
    tag.add_argument("--progress-interval-s", type=float, metavar="S", help="default 30")
    _common(tag)
    _table_format(tag)
    tag.add_argument("--top-k", type=int, metavar="K", help="categories kept per product")
    tag.add_argument(
        "--review-threshold",
        type=float,
        metavar="P",
        help="needs_review when confidence is below P",
    )
    tag.add_argument("--model-batch-size", type=int, metavar="N", help="images per model call")
    tag.add_argument(
        "--tf-threads",
        type=int,
        metavar="N",
        help="TensorFlow threads per Python worker (default 0: spark.task.cpus)",
    )
    tag.add_argument(
        "--engine",
        choices=("auto", "tensorflow"),
        help="auto (default): the bundle's LiteRT model on CPUs when it has one",
    )
    tag.add_argument(
        "--fetch-concurrency",
        type=int,
        metavar="N",
        help="concurrent object fetches per Python worker",
    )
    tag.add_argument(
        "--max-error-rate",
        type=float,
        metavar="F",
        help="fail the run (exit 3, nothing published) when more than this share of "
        "products are error rows (default 0.5)",
    )
    tag.add_argument(
        "--min-error-rows",
        type=int,
        metavar="N",
        help="error-rate limits apply from this many error rows on (default 10)",
    )

    train = sub.add_parser(
        "train",
        help="train a classifier on a labelled base library and write a model bundle",
        description="Fetch and decode labelled catalog images with Spark, stream them into "
        "Keras through petastorm, fine-tune a backbone (or train a small CNN), score the test "
        "split and export a model bundle, with its report, that the tag command can use.",
    )
    train.add_argument(
        "--base-library",
        required=True,
        metavar="URI",
        help="Parquet dataset with product_id, image_uri (and the label column)",
    )
    train.add_argument(
        "--model-out", required=True, metavar="URI", help="where the model bundle is written"
    )
    train.add_argument(
        "--labels", metavar="URI", help="separate Parquet labels table, joined on product_id"
    )
    train.add_argument("--label-column", metavar="NAME", help="default: label")
    train.add_argument(
        "--split-column",
        metavar="NAME",
        help="column with train/validation/test (default: a hash split of product_id)",
    )
    train.add_argument("--label-map", metavar="FILE", help="YAML/JSON mapping {label: taxonomy id}")
    train.add_argument(
        "--taxonomy", metavar="FILE", help="taxonomy file the label map is checked against"
    )
    train.add_argument(
        "--architecture",
        choices=ARCHITECTURES,
        help="default: small_cnn",
    )
    train.add_argument(
        "--weights", metavar="W", help="none (default), imagenet, or a backbone weights file"
    )
    train.add_argument(
        "--backbone",
        metavar="FILE",
        help="a Keras model file (.keras, standard layers only) as the pretrained backbone "
        "instead of --architecture; input size from the file",
    )
    train.add_argument(
        "--backbone-init",
        choices=BACKBONE_INITS,
        help="file (default): start from the --backbone file's weights; random: its "
        "architecture with freshly initialised weights, trained from scratch in one phase",
    )
    train.add_argument(
        "--scale",
        choices=("unit", "symmetric", "raw"),
        help="pixel scaling the backbone expects: [0,1], [-1,1] or 0..255 (default: the "
        "architecture's; for --backbone, raw when the file starts by rescaling 0..255)",
    )
    train.add_argument("--alpha", type=float, metavar="A", help="MobileNet width multiplier")
    train.add_argument(
        "--image-size", type=int, metavar="PX", action=_Square, help="square input size"
    )
    train.add_argument("--color-mode", choices=("rgb", "grayscale"))
    train.add_argument(
        "--trainable-fraction",
        type=float,
        metavar="F",
        help="share of backbone parameters fine-tuned (default 0.75)",
    )
    train.add_argument(
        "--head-epochs",
        type=int,
        metavar="N",
        help="pretrained backbones: N head-only epochs on frozen features first (default 30, "
        "3 with fusion), then --epochs of fine-tuning",
    )
    train.add_argument("--dropout", type=float, metavar="P", help="before the classifier (0.3)")
    train.add_argument(
        "--label-smoothing",
        type=float,
        metavar="S",
        help="label smoothing of the cross-entropy, in [0, 1) "
        "(default 0.1 with a pretrained backbone, else 0)",
    )
    train.add_argument("--fusion", choices=FUSIONS)
    train.add_argument(
        "--augmentation",
        choices=AUGMENTATIONS,
        help="standard (default; photos), light (flips, interpolated shifts), flip+shift "
        "(flips, whole-pixel pad-and-crop shifts: small thumbnails), flip (flips only) or none",
    )
    train.add_argument(
        "--no-noise",
        dest="noise",
        action="store_false",
        default=None,
        help="no occlusion/clutter noise",
    )
    train.add_argument("--epochs", type=int, metavar="N")
    train.add_argument("--batch-size", type=int, metavar="N")
    train.add_argument("--learning-rate", type=float, metavar="LR")
    train.add_argument(
        "--fine-tune-learning-rate",
        type=float,
        metavar="LR",
        help="peak head learning rate once the backbone is unfrozen (default: 0.3 x learning rate)",
    )
    train.add_argument(
        "--backbone-lr-multiplier",
        type=float,
        metavar="M",
        help="backbone learning rate = M x the head's while fine-tuning (default 0.3)",
    )
    train.add_argument(
        "--warmup-epochs", type=int, metavar="N", help="learning-rate warm-up (default 1)"
    )
    train.add_argument(
        "--lr-patience",
        type=int,
        metavar="N",
        help="halve the learning rate after N epochs without better validation accuracy",
    )
    train.add_argument("--min-learning-rate", type=float, metavar="LR", help="the floor")
    train.add_argument(
        "--lr-schedule",
        choices=LR_SCHEDULES,
        help="one-phase training: plateau (default: cut on stalls) or cosine (warm-up, then to 0)",
    )
    train.add_argument(
        "--class-weights",
        choices=CLASS_WEIGHTS,
        help="auto (default): balanced when the training labels are skewed",
    )
    train.add_argument(
        "--no-calibration",
        dest="calibrate",
        action="store_false",
        default=None,
        help="do not fit temperature scaling on the validation split",
    )
    train.add_argument("--validation-fraction", type=float, metavar="F")
    train.add_argument("--test-fraction", type=float, metavar="F")
    train.add_argument("--early-stopping-patience", type=int, metavar="N")
    train.add_argument("--limit", type=int, metavar="N", help="use at most N labelled images")
    train.add_argument("--seed", type=int)
    train.add_argument("--cache-dir", metavar="DIR", help="petastorm cache (shared on clusters)")
    train.add_argument("--checkpoint-dir", metavar="DIR")
    train.add_argument("--model-name")
    train.add_argument("--model-version")
    _common(train)

    ev = sub.add_parser(
        "evaluate",
        help="score a model bundle, or a run's tags, against known labels",
        description="Classify labelled products with a model bundle (--model), or read the "
        "tags of a commodity library run (--commodity-library, --run-date), join them with "
        "the labels and write metrics.json, report.md and plots to --out.",
    )
    ev.add_argument(
        "--labels",
        required=True,
        metavar="URI",
        help="Parquet table with product_id and the label column (and image_uri for --model)",
    )
    ev.add_argument("--out", required=True, metavar="URI", help="report folder")
    ev.add_argument("--label-column", metavar="NAME", help="default: label")
    ev.add_argument("--model", metavar="URI", help="model bundle to classify with")
    ev.add_argument("--commodity-library", metavar="URI", help="score this library's run")
    ev.add_argument("--run-date", metavar="YYYY-MM-DD")
    ev.add_argument("--run-id", metavar="ID", help="only this run of the date")
    ev.add_argument("--split-column", metavar="NAME")
    ev.add_argument("--split", metavar="NAME", help="split scored (default: test)")
    ev.add_argument(
        "--target-precision",
        type=float,
        metavar="P",
        help="precision the recommended review threshold reaches (default 0.95)",
    )
    _common(ev)
    _table_format(ev)

    runs = sub.add_parser(
        "runs",
        help="list a commodity library's runs (complete, incomplete, running)",
        description="One line per run: date, id, mode, model, products, ok, errors by "
        "code, needs_review, images/s and whether it is complete. Needs no Spark.",
    )
    runs.add_argument("--commodity-library", required=True, metavar="URI")
    runs.add_argument("--limit", type=int, default=50, metavar="N", help="newest N (50)")
    runs.add_argument("--json", action="store_true", help="the manifests as JSON")

    report = sub.add_parser(
        "report",
        help="rebuild a run's HTML report",
        description="Recompute a complete run's report (categories, confidence, errors, "
        "throughput, category churn) and write it beside its manifest (or to --out).",
    )
    report.add_argument("run_id", metavar="RUN_ID")
    report.add_argument("--commodity-library", required=True, metavar="URI")
    report.add_argument("--out", metavar="URI", help="default: _runs/<run_id>.html")
    _common(report)
    _table_format(report)

    vacuum = sub.add_parser(
        "vacuum",
        help="remove old history runs and manifests (a dry run unless --apply)",
        description="Plan the removal of the runs dated before today - N days (never "
        "one that tags_current points to), of older tags_current snapshots and of "
        "incomplete runs' rows; --apply removes them.",
    )
    vacuum.add_argument("--commodity-library", required=True, metavar="URI")
    vacuum.add_argument("--keep-days", type=int, required=True, metavar="N")
    vacuum.add_argument("--apply", action="store_true", default=None, help="remove them")
    vacuum.add_argument("--database", metavar="NAME", help="also update this database's tables")
    _common(vacuum)
    _table_format(vacuum)

    migrate = sub.add_parser(
        "migrate",
        help="upgrade a commodity library of the first layout (run_date partitions at the root), "
        "or convert a Parquet library to Iceberg (--to iceberg)",
        description="Move each date's complete run into tags_history, build tags_current "
        "and the runs table, mark the new layout, then remove the old partitions. With --to "
        "iceberg: convert a Parquet library to Iceberg tables instead.",
    )
    migrate.add_argument("--commodity-library", required=True, metavar="URI")
    migrate.add_argument("--database", metavar="NAME", help="register the tables here")
    migrate.add_argument(
        "--to",
        choices=MIGRATE_TARGETS,
        help="iceberg: convert a Parquet library to Iceberg tables (where: the --iceberg-* "
        "flags); without it, upgrade a library of the first layout",
    )
    _common(migrate)
    _table_format(migrate)

    unlock = sub.add_parser(
        "unlock",
        help="clear a stale lock of a commodity library",
        description="Remove the library's _lock.json when its lease expired or its process "
        "is gone from this host; --force removes a lock that looks alive.",
    )
    unlock.add_argument("--commodity-library", required=True, metavar="URI")
    unlock.add_argument("--force", action="store_true", help="remove even a live-looking lock")

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
    p.add_argument(
        "--conf",
        dest="spark_conf",
        metavar="KEY=VALUE",
        action="append",
        help="a Spark property, as with spark-submit (repeatable; wins over spark.conf in "
        "--config and over the launcher's)",
    )


def _table_format(p: argparse.ArgumentParser) -> None:
    """The ``library`` section's flags (dest: the field's name)."""
    defaults = TableFormatConfig()
    g = p.add_argument_group("table format (the YAML section library)")
    g.add_argument(
        "--library-format",
        dest="format",
        choices=TABLE_FORMATS,
        help=f"the commodity library's table format (default {defaults.format})",
    )
    g.add_argument(
        "--iceberg-catalog",
        dest="catalog",
        choices=ICEBERG_CATALOGS,
        help=f"the Iceberg catalog (default {defaults.catalog}: the library's own, its "
        "warehouse <commodity-library>/iceberg); hive: the metastore; glue: AWS Glue; rest",
    )
    g.add_argument(
        "--iceberg-catalog-name",
        dest="catalog_name",
        metavar="NAME",
        help=f"the Spark catalog of a hive, glue or rest catalog (default {defaults.catalog_name})",
    )
    g.add_argument(
        "--iceberg-namespace",
        dest="namespace",
        metavar="NAME",
        help=f"the namespace of the library's tables (default {defaults.namespace})",
    )
    g.add_argument(
        "--iceberg-uri",
        dest="catalog_uri",
        metavar="URI",
        help="the REST catalog's URI (rest needs it), or the Hive metastore's thrift URI",
    )
    g.add_argument(
        "--iceberg-warehouse",
        dest="warehouse",
        metavar="URI",
        help="the warehouse of a hive, glue or rest catalog (glue needs it)",
    )


CONFIGS: dict[str, type[JobConfig]] = {
    "tag": TagConfig,
    "train": TrainConfig,
    "evaluate": EvaluateConfig,
    "report": ReportConfig,
    "vacuum": VacuumConfig,
    "migrate": MigrateConfig,
}


def build_config(args: argparse.Namespace) -> Any:
    """The command's configuration: defaults < ``--config`` YAML < the flags given.

    ``--conf KEY=VALUE`` adds to (and wins over) the YAML's ``spark.conf``.
    """
    data = load_yaml(args.config)
    flags = dict(vars(args))
    pairs = flags.pop("spark_conf", None) or []
    if pairs:
        spark = dict(data.get("spark") or {})
        spark["conf"] = {**dict(spark.get("conf") or {}), **parse_conf(pairs)}
        data = {**data, "spark": spark}
    return CONFIGS[args.command].from_sources(data, flags)


def parse_conf(pairs: list[str]) -> dict[str, str]:
    """``--conf`` values: ``spark.*`` keys (or ``spark.hadoop.*``) and their values."""
    conf: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip().startswith("spark."):
            raise ConfigError(f"--conf {pair!r}: expected KEY=VALUE with a spark.* key")
        conf[key.strip()] = value
    return conf


def _run(cfg: JobConfig, preflight: Any, run: Any, arrow_batch_size: int = 256) -> Any:
    """preflight (no Spark) -> the one SparkSession -> the job, given the preflight result."""
    from prodclf.session import create_session

    checked = preflight(cfg)
    library = getattr(cfg, "library", None)
    extra = library.spark_settings() if isinstance(library, TableFormatConfig) else None
    spark = create_session(cfg.spark, arrow_batch_size, extra)
    return run(cfg, spark, checked)


def _print(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True, default=str))


def cmd_tag(args: argparse.Namespace) -> int:
    from prodclf.tagging.job import run_tag, tag_preflight

    cfg: TagConfig = build_config(args)
    with observe(cfg) as obs:
        obs.result = _run(
            cfg, obs.preflight(tag_preflight), run_tag, cfg.inference.arrow_batch_size
        )
    _print(obs.result)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from prodclf.training.job import run_train, train_preflight

    cfg: TrainConfig = build_config(args)
    with observe(cfg) as obs:
        meta = obs.model = obs.result = _run(cfg, train_preflight, run_train)
    _print(
        {
            "model_out": cfg.model_out,
            "model_name": meta.model_name,
            "model_version": meta.model_version,
            "metrics": meta.metrics,
        }
    )
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from prodclf.evaluation.job import evaluate_preflight, run_evaluate

    cfg: EvaluateConfig = build_config(args)
    with observe(cfg) as obs:
        preflight = obs.preflight(evaluate_preflight)
        result = _run(cfg, preflight, run_evaluate, cfg.inference.arrow_batch_size)
    keys = ("accuracy", "top_k_accuracy", "macro_f1", "expected_calibration_error")
    _print(
        {
            **{k: result[k] for k in keys},
            "review_threshold": result["review_threshold"],
            "coverage": result["coverage"],
            "out": cfg.out,
        }
    )
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    from prodclf.tagging.library import list_runs, runs_table_text

    runs = list_runs(args.commodity_library)[: max(0, args.limit)]
    if args.json:
        _print(runs)
    else:
        print(runs_table_text(runs))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from prodclf.tagging.library import library_preflight, run_report

    cfg: ReportConfig = build_config(args)
    with observe(cfg):
        uri = _run(cfg, library_preflight, run_report)
    _print({"run_id": cfg.run_id, "report": uri})
    return 0


def cmd_vacuum(args: argparse.Namespace) -> int:
    from prodclf.tagging.library import library_preflight, run_vacuum

    cfg: VacuumConfig = build_config(args)
    with observe(cfg) as obs:
        obs.result = _run(cfg, library_preflight, run_vacuum)
    _print(obs.result)
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from prodclf.tagging.library import migrate_preflight, run_migrate

    cfg: MigrateConfig = build_config(args)
    with observe(cfg) as obs:
        obs.result = _run(cfg, migrate_preflight, run_migrate)
    _print(obs.result)
    return 0


def cmd_unlock(args: argparse.Namespace) -> int:
    from prodclf.tagging.library import unlock

    print(unlock(args.commodity_library, args.force))
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


COMMANDS = {
    "tag": cmd_tag,
    "train": cmd_train,
    "evaluate": cmd_evaluate,
    "runs": cmd_runs,
    "report": cmd_report,
    "vacuum": cmd_vacuum,
    "migrate": cmd_migrate,
    "unlock": cmd_unlock,
    "demo": cmd_demo,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.log_format not in LOG_FORMATS:  # a default from the environment
        parser.error(f"{LOG_FORMAT_ENV}={args.log_format!r}: use {' or '.join(LOG_FORMATS)}")
    setup_logging(args.log_level, args.log_format)
    # Until a command knows better (a tag run's id, a lineage run's), its lines carry this id.
    set_context(command=args.command, run_id=str(uuid.uuid4()))
    for noisy in ("py4j", "botocore", "urllib3", "s3transfer", "openlineage"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # Spark 4 logs every failed query analysis as a JSON record on stderr, also the ones
    # prodclf catches and turns into its one-line refusal (a bad --where): errors that are
    # not caught still end the command with their own message.
    logging.getLogger("SQLQueryContextLogger").setLevel(logging.CRITICAL)
    try:
        return COMMANDS[args.command](args)
    except ProdclfError as exc:
        # One line; 2: refused before any work, 3: the run failed and published nothing.
        # With --log-format json that line is a JSON record too (same text, level ERROR).
        log = logging.getLogger(__name__)
        if args.log_format == "json" and log.isEnabledFor(logging.ERROR):
            log.error("prodclf: error: %s", exc)
        else:
            print(f"prodclf: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except Exception:
        if args.log_format != "json":
            raise
        # JSON lines only: the traceback goes into the record's exception field.
        logging.getLogger(__name__).exception("prodclf: %s failed", args.command)
        return 1
