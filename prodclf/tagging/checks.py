"""Job-level checks of the tag job: is the input usable, is the store up, did the run work?

A product's failure is a row; these are the failures of the run as a whole, each one a
one-line ``ProdclfError``:

- ``preflight`` (before Spark): the base library's Parquet footers (columns, types, row
  counts, product ids from the statistics), then a probe of the image store with a few
  objects of the catalog. Unusable input is an ``InputError`` (exit 2); a store that is
  unreachable or refuses the credentials is ``StoreUnavailable`` (exit 3).
- ``gate_error_rates`` (after inference, before anything is written): implausibly many
  error rows, overall or of one code (``ChecksConfig``), fail the run (``RunFailed``).
- ``verify_read_back`` (after the write, before the manifest): the partition holds
  exactly the run's products, each once, every row with this run's ``run_id``.

The judgements are pure functions of small values (``judge_error_rates``,
``read_back_problems``, ``judge_probe``), tested without Spark or storage.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace

from pyspark import StorageLevel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from prodclf.config import ChecksConfig, StorageConfig, TagConfig
from prodclf.errors import ErrorCode, InputError, RowError, RunFailed, StoreUnavailable
from prodclf.schemas import BASE_LIBRARY_REQUIRED, STATUS_ERROR
from prodclf.storage import objects, tables
from prodclf.storage.uris import check_allowed, parse_uri

log = logging.getLogger(__name__)


# --- before Spark: the base library's footers and the image store -------------------------


def preflight(cfg: TagConfig) -> tables.FooterSummary:
    """Footer checks of the base library, then the store probe; raises a ProdclfError."""
    what = "base library"
    summary = tables.inspect_footers(
        cfg.base_library, what, dict(BASE_LIBRARY_REQUIRED), null_column="product_id"
    )
    if summary.rows == 0:
        raise InputError(f"{what} {cfg.base_library}: has no rows; nothing to tag")
    if summary.nulls is not None and summary.nulls == summary.rows:
        raise InputError(
            f"{what} {cfg.base_library}: no row has a product_id "
            f"({summary.rows} row(s)); nothing to tag"
        )
    if cfg.checks.probe_objects:
        sample = tables.sample_values(summary, "image_uri", cfg.checks.probe_objects)
        probe_store(sample, cfg.storage)
    return summary


@dataclass(frozen=True)
class ProbeResult:
    uri: str
    error: RowError | None  # None: the store answered with the object


def probe_store(
    uris: Iterable[str],
    storage: StorageConfig,
    fetch: Callable[[str, StorageConfig], None] | None = None,
) -> list[ProbeResult]:
    """Fetch sample objects until one answers; raise ``StoreUnavailable`` if the store is unusable.

    References that are invalid or outside the allowlist are skipped (they are row errors,
    never requests). ``fetch`` is ``objects.fetch_image_bytes`` on a parsed reference.
    """
    fetch = fetch or _fetch
    results: list[ProbeResult] = []
    for uri in uris:
        try:
            ref = parse_uri(uri)
            check_allowed(ref, storage.allowed_schemes, storage.allowed_buckets)
        except RowError:
            continue
        try:
            fetch(uri, storage)
            result = ProbeResult(uri, None)
        except RowError as err:
            result = ProbeResult(uri, err)
        results.append(result)
        problem = judge_probe(results, final=False)
        if problem:
            raise StoreUnavailable(problem)
        if _store_answered(result):
            return results
    problem = judge_probe(results, final=True)
    if problem:
        raise StoreUnavailable(problem)
    return results


def _fetch(uri: str, storage: StorageConfig) -> None:
    # Through boto3 alone: the verdict on the store is botocore's, one request per object.
    objects.fetch_image_bytes(parse_uri(uri), replace(storage, direct_get=False))


#: Answers that show the store works: the object, or a verdict about that object alone.
_OBJECT_VERDICTS = {
    ErrorCode.NOT_FOUND,
    ErrorCode.OBJECT_TOO_LARGE,
    ErrorCode.EMPTY_OBJECT,
    ErrorCode.UNDECODABLE_IMAGE,
    ErrorCode.IMAGE_TOO_LARGE,
}


def _store_answered(result: ProbeResult) -> bool:
    return result.error is None or result.error.code in _OBJECT_VERDICTS


def judge_probe(results: list[ProbeResult], final: bool) -> str | None:
    """The one-line reason the store is unusable, or None.

    One ``store_unavailable`` answer (refused connection, DNS, rejected credentials) is
    enough; access denied or repeated failures on *every* sampled object (``final``)
    mean the bucket or role is wrong, not the products.
    """
    for r in results:
        if r.error is not None and r.error.code is ErrorCode.STORE_UNAVAILABLE:
            return f"image store probe failed, nothing was run: {r.error.message}"
    if final and results and not any(_store_answered(r) for r in results):
        first = results[0].error
        assert first is not None
        return (
            f"image store probe failed, nothing was run: all {len(results)} sampled "
            f"object(s) failed ({first.code.value}: {first.message})"
        )
    return None


# --- after inference, before the write: error rates ---------------------------------------


def judge_error_rates(errors: Mapping[str, int], products: int, cfg: ChecksConfig) -> str | None:
    """Why this many error rows mean the run failed, in one line; None when plausible.

    Limits apply only once at least ``cfg.min_error_rows`` rows are concerned.
    """
    total = sum(errors.values())
    dominant = ", ".join(
        f"{code} {n}" for code, n in sorted(errors.items(), key=lambda kv: (-kv[1], kv[0]))[:3]
    )
    for code, limit in cfg.max_code_rates:
        n = errors.get(code, 0)
        if n >= cfg.min_error_rows and n > limit * products:
            return (
                f"{n} of {products} products are {code} rows, over the limit of "
                f"{limit:.0%} (checks.max_code_rates); errors: {dominant}"
            )
    if total >= cfg.min_error_rows and total > cfg.max_error_rate * products:
        return (
            f"{total} of {products} products are error rows, over the limit of "
            f"{cfg.max_error_rate:.0%} (checks.max_error_rate); errors: {dominant}"
        )
    return None


def error_counts(rows: DataFrame) -> dict[str, int]:
    stats = rows.where(F.col("status") == F.lit(STATUS_ERROR)).groupBy("error_code").count()
    return {str(r["error_code"]): int(r["count"]) for r in stats.collect()}


def gate_error_rates(rows: DataFrame, run_id: str, products: int, cfg: ChecksConfig) -> DataFrame:
    """The run's rows, computed once and kept (persisted) for the write, if their error
    rates are plausible; else ``RunFailed`` with the dominant codes and a sample message.

    Runs before anything is written: a failed run leaves the library as it was.
    """
    kept = rows.persist(StorageLevel.MEMORY_AND_DISK)
    errors = error_counts(kept)
    problem = judge_error_rates(errors, products, cfg)
    if problem is None:
        return kept
    code = max(errors, key=lambda c: (errors[c], c))
    sample = (
        kept.where(F.col("error_code") == F.lit(code)).select("error_message").limit(1).collect()
    )
    kept.unpersist()
    example = f"; e.g. {sample[0][0]}" if sample and sample[0][0] else ""
    raise RunFailed(f"run {run_id} failed, nothing published: {problem}{example}")


# --- after the write, before the manifest: what the manifest will promise -----------------


@dataclass(frozen=True)
class ReadBack:
    """What the written partition holds, counted back from storage."""

    rows: int
    distinct_products: int
    null_products: int
    foreign_run_rows: int  # rows whose run_id is not this run's (or null)


def read_back(written: DataFrame, run_id: str) -> ReadBack:
    row = written.agg(
        F.count(F.lit(1)).alias("rows"),
        F.countDistinct("product_id").alias("distinct"),
        F.count(F.when(F.col("product_id").isNull(), 1)).alias("nulls"),
        F.count(F.when(~F.col("run_id").eqNullSafe(F.lit(run_id)), 1)).alias("foreign"),
    ).first()
    assert row is not None
    return ReadBack(int(row["rows"]), int(row["distinct"]), int(row["nulls"]), int(row["foreign"]))


def read_back_problems(got: ReadBack, products: int) -> list[str]:
    """Every way the partition differs from one row per product of this run."""
    problems = []
    if got.rows != products:
        problems.append(f"{got.rows} rows for {products} products")
    duplicates = got.rows - got.null_products - got.distinct_products
    if duplicates:
        problems.append(f"{duplicates} duplicate product row(s)")
    if got.null_products:
        problems.append(f"{got.null_products} row(s) without product_id")
    if got.foreign_run_rows:
        problems.append(f"{got.foreign_run_rows} row(s) of another run_id")
    return problems


def verify_read_back(written: DataFrame, run_id: str, products: int) -> None:
    """``RunFailed`` unless the written partition is exactly this run's products, once each."""
    problems = read_back_problems(read_back(written, run_id), products)
    if problems:
        raise RunFailed(
            f"run {run_id}: the written partition does not read back as written "
            f"({'; '.join(problems)}); no manifest written, rerun the date"
        )
