"""``prodclf evaluate``: score tags against known labels, and write the report.

Two sources of tags, one scoring path: either a model bundle classifies the labelled
products now (with the tagging job's own transforms and UDF, so what is scored is what
the nightly job would write), or the tags of a run already in the commodity library are
read back, so the nightly output itself is scored. Both end as commodity rows joined
with labels, collected (a few small columns) and scored by ``prodclf.evaluation.metrics``.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from prodclf.config import SPLIT_ALIASES, EvaluateConfig
from prodclf.errors import ConfigError, InputError, worker_setup_fails_run
from prodclf.library.table import CommodityLibrary
from prodclf.model.bundle import BundleMeta, read_meta
from prodclf.schemas import STATUS_OK, check_columns
from prodclf.storage import objects, tables
from prodclf.storage.uris import is_same_or_inside, normalize_location, parse_uri
from prodclf.tagging.transforms import RunInfo, plan_partitions, tag_products
from prodclf.tagging.udf import tag_images_udf

log = logging.getLogger(__name__)

SCORED_COLUMNS = ["product_id", "label", "status", "error_code", "category", "confidence", "top_k"]


def evaluate_preflight(cfg: EvaluateConfig) -> BundleMeta | None:
    """Refuse bad arguments before Spark starts; returns the bundle's metadata in model mode."""
    tables.require_dataset(cfg.labels, "labels table")
    for name, where in (("--labels", cfg.labels), ("--commodity-library", cfg.commodity_library)):
        if where and (is_same_or_inside(cfg.out, where) or is_same_or_inside(where, cfg.out)):
            raise ConfigError(f"--out {cfg.out} overlaps {name} {where}")
    if cfg.split_column and cfg.split.lower() not in SPLIT_ALIASES:
        raise ConfigError(f"--split {cfg.split!r} is not one of {', '.join(SPLIT_ALIASES)}")
    if cfg.commodity_library:
        tables.require_dataset(cfg.commodity_library, "commodity library")
        CommodityLibrary(cfg.commodity_library, table=cfg.library).require_layout()
        return None
    assert cfg.model is not None
    return read_meta(cfg.model)


def labelled(spark: SparkSession, cfg: EvaluateConfig) -> DataFrame:
    """``product_id, label`` (plus ``image_uri`` when the table has it) for the chosen split."""
    df = tables.read_dataset(spark, cfg.labels, "labels table", cfg.storage.spark_s3_scheme)
    need = ["product_id", cfg.label_column, *([cfg.split_column] if cfg.split_column else [])]
    if cfg.model:
        need.append("image_uri")
    check_columns(df.schema, dict.fromkeys(need), f"labels table {cfg.labels}")
    if cfg.split_column:
        wanted = SPLIT_ALIASES[cfg.split.lower()]
        aliases = [k for k, v in SPLIT_ALIASES.items() if v == wanted]
        df = df.where(F.lower(F.trim(F.col(cfg.split_column).cast("string"))).isin(aliases))
    cols: list[Column | str] = ["product_id", F.col(cfg.label_column).cast("string").alias("label")]
    if cfg.model:
        cols.append("image_uri")
    return df.where(F.col("product_id").isNotNull() & F.col(cfg.label_column).isNotNull()).select(
        *cols
    )


def tags_now(
    spark: SparkSession, cfg: EvaluateConfig, meta: BundleMeta, truth: DataFrame
) -> DataFrame:
    """Commodity rows for the labelled products, made by the tagging job's own steps."""
    assert cfg.model is not None
    products = truth.select("product_id", "image_uri")
    n = products.select("product_id").distinct().count()
    parts = plan_partitions(
        n, spark.sparkContext.defaultParallelism, cfg.inference.rows_per_partition
    )
    now = datetime.now(timezone.utc).replace(microsecond=0)
    run = RunInfo("evaluate", now.date(), meta.model_name, meta.model_version, now)
    udf = tag_images_udf(normalize_location(cfg.model), cfg.storage, cfg.inference)
    return tag_products(
        products,
        udf=udf,
        run=run,
        review_threshold=cfg.inference.review_threshold,
        partitions=parts,
    )


def tags_of_run(spark: SparkSession, cfg: EvaluateConfig) -> DataFrame:
    """The rows of ``run_id``, or of the date's complete runs (a product tagged by several
    runs that day, a nightly and a backfill, counts with its latest row)."""
    assert cfg.commodity_library is not None and cfg.run_date is not None
    library = CommodityLibrary(cfg.commodity_library, cfg.storage.spark_s3_scheme, cfg.library)
    rows = library.read_history(spark, cfg.run_date, cfg.run_id)
    if cfg.run_id:
        return rows
    complete = set(library.manifest_ids())
    latest = Window.partitionBy("product_id").orderBy(F.desc("tagged_at"), F.desc("run_id"))
    return (
        rows.where(F.col("run_id").isin(sorted(complete)))
        .withColumn("_n", F.row_number().over(latest))
        .where(F.col("_n") == 1)
        .drop("_n")
    )


def collect_scored(tags: DataFrame, truth: DataFrame) -> tuple[pd.DataFrame, int]:
    """Labelled products with their tag; and how many labelled products had no tag row."""
    one_label = truth.groupBy("product_id").agg(F.min("label").alias("label"))
    joined = one_label.join(tags.drop("label"), "product_id", "left")
    pdf: pd.DataFrame = joined.select(*SCORED_COLUMNS).toPandas()
    untagged = int(pdf["status"].isna().sum())
    return pdf.loc[pdf["status"].notna()].reset_index(drop=True), untagged


def score_tags(
    pdf: pd.DataFrame, classes: list[str] | None, target_precision: float
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Metrics over the ok rows, and the coverage counts (errors, untagged) beside them."""
    from prodclf.evaluation import metrics as m

    ok = pdf.loc[pdf["status"] == STATUS_OK].sort_values("product_id").reset_index(drop=True)
    errors = pdf.loc[pdf["status"] != STATUS_OK, "error_code"].fillna("unknown")
    coverage = {
        "labelled_products": len(pdf),
        "scored": len(ok),
        "error_rows": dict(sorted(errors.value_counts().to_dict().items())),
    }
    if ok.empty:
        raise InputError("no labelled product has an ok tag; nothing to score")
    names = list(classes) if classes else []
    # Labels the model cannot predict still count: they are always wrong.
    ranked = {e["category"] for t in ok["top_k"] for e in list(t)}
    names += sorted((set(ok["label"]) | set(ok["category"]) | ranked) - set(names))
    index = {n: i for i, n in enumerate(names)}
    # Rows of one run carry the same number of categories; pad (never a hit) if not.
    k = max(len(t) for t in ok["top_k"])
    top_k = np.full((len(ok), k), -1, dtype=np.int64)
    for row, t in enumerate(ok["top_k"]):
        for col, entry in enumerate(list(t)):
            top_k[row, col] = index[entry["category"]]
    scored = m.Scored(
        labels=names,
        y_true=ok["label"].map(index).to_numpy(dtype=np.int64),
        y_pred=ok["category"].map(index).to_numpy(dtype=np.int64),
        confidence=ok["confidence"].to_numpy(dtype=np.float64),
        top_k=top_k,
    )
    return m.evaluate(scored, target_precision=target_precision), coverage


def run_evaluate(
    cfg: EvaluateConfig, spark: SparkSession, meta: BundleMeta | None
) -> dict[str, Any]:
    """Score the tags and write ``metrics.json``, ``report.md`` and the plots to ``cfg.out``.

    ``meta`` is what ``evaluate_preflight`` returned: the bundle's metadata in model mode.
    """
    from prodclf.evaluation.report import write_report

    truth = labelled(spark, cfg)
    tags = tags_now(spark, cfg, meta, truth) if meta is not None else tags_of_run(spark, cfg)
    with worker_setup_fails_run("evaluation"):
        pdf, untagged = collect_scored(tags, truth)
    classes = [label.name for label in meta.labels] if meta is not None else None
    scores, coverage = score_tags(pdf, classes, cfg.target_precision)
    coverage["untagged"] = untagged
    result = {**scores, "coverage": coverage}
    context: dict[str, Any] = {"labels": cfg.labels}
    if cfg.split_column:
        context["split"] = cfg.split
    if meta is not None:
        context.update(model=meta.model_name, version=meta.model_version, source=cfg.model)
        title = f"{meta.model_name} {meta.model_version}"
    else:
        context.update(
            source=cfg.commodity_library,
            run_date=str(cfg.run_date),
            run_id=cfg.run_id or "(all runs of the date)",
        )
        title = f"commodity run {cfg.run_date}"
    context.update({f"scored/{k}": v for k, v in coverage.items() if k != "error_rows"})
    context["error rows"] = coverage["error_rows"] or "none"
    _write(
        cfg.out, lambda d: write_report(d, result, title=f"Evaluation: {title}", context=context)
    )
    log.info(
        "evaluated %d product(s): accuracy %s, macro-F1 %s; report in %s",
        coverage["scored"],
        scores["accuracy"],
        scores["macro_f1"],
        cfg.out,
    )
    return result


def _write(out: str, write: Any) -> None:
    """Write into a local folder, then copy it to ``out`` (a path or an object-store prefix)."""
    if parse_uri(normalize_location(out)).scheme == "file":
        folder = objects.local_path(out)
        folder.mkdir(parents=True, exist_ok=True)
        write(folder)
        return
    tmp = Path(tempfile.mkdtemp(prefix="prodclf-eval-"))
    try:
        write(tmp)
        objects.copy_tree_from_local(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
