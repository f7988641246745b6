"""The tag job's run-level checks: error rates, the read-back, the footer preflight, the probe."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from conftest import COLORS, png_bytes
from jobproc import make_bucket
from pyspark.sql import SparkSession

from prodclf.config import ChecksConfig, StorageConfig, TagConfig
from prodclf.errors import (
    ErrorCode,
    InputError,
    RowError,
    RunFailed,
    SchemaMismatch,
    StoreUnavailable,
)
from prodclf.tagging import checks
from prodclf.tagging.checks import ReadBack, judge_error_rates, read_back_problems

pytestmark = pytest.mark.spark4

CFG = ChecksConfig()  # 50%, floor of 10 rows, store_unavailable 0%, internal_error 1%


# --- error rates (pure) ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("errors", "products", "fails"),
    [
        ({}, 200, None),
        ({"fetch_failed": 100}, 200, None),  # exactly the limit
        ({"fetch_failed": 101}, 200, "101 of 200 products are error rows"),
        ({"not_found": 60, "fetch_failed": 41}, 200, "errors: not_found 60, fetch_failed 41"),
        ({"fetch_failed": 3}, 3, None),  # a tiny catalog is not judged on 3 rows
        ({"fetch_failed": 9}, 9, None),
        ({"fetch_failed": 10}, 10, "10 of 10 products are error rows"),
        ({"store_unavailable": 10}, 10_000, "10 of 10000 products are store_unavailable rows"),
        ({"store_unavailable": 9}, 10_000, None),
        ({"internal_error": 10}, 1000, None),  # 1%
        ({"internal_error": 11}, 1000, "internal_error rows, over the limit of 1%"),
    ],
)
def test_judge_error_rates(errors: dict[str, int], products: int, fails: str | None) -> None:
    verdict = judge_error_rates(errors, products, CFG)
    if fails is None:
        assert verdict is None
    else:
        assert verdict is not None and fails in verdict, verdict


def test_error_rate_limits_are_configurable() -> None:
    strict = ChecksConfig(max_error_rate=0.1, min_error_rows=1, max_code_rates=(("not_found", 0),))
    assert judge_error_rates({"fetch_failed": 2}, 10, strict) is not None
    assert "not_found" in (judge_error_rates({"not_found": 1}, 100, strict) or "")
    assert judge_error_rates({"fetch_failed": 1}, 10, strict) is None


def test_gate_fails_a_run_with_too_many_errors_naming_codes_and_a_sample(
    spark: SparkSession,
) -> None:
    rows = spark.createDataFrame(
        [
            (f"p{i}", "error", "fetch_failed", f"SlowDown after 5 attempts: s3://b/{i}")
            for i in range(12)
        ]
        + [("ok1", "ok", None, None)],
        "product_id string, status string, error_code string, error_message string",
    )
    with pytest.raises(RunFailed) as info:
        checks.gate_error_rates(rows, "r1", 13, CFG)
    line = str(info.value)
    assert "\n" not in line
    assert line.startswith("run r1 failed, nothing published: 12 of 13 products are error rows")
    assert "fetch_failed 12" in line and "e.g. SlowDown after 5 attempts: s3://b/" in line
    assert info.value.exit_code == 3

    kept = checks.gate_error_rates(rows, "r1", 13, ChecksConfig(max_error_rate=1.0))
    assert kept.count() == 13
    kept.unpersist()


# --- the read-back check --------------------------------------------------------------------


def test_read_back_problems_name_every_difference() -> None:
    assert read_back_problems(ReadBack(5, 5, 0, 0), 5) == []
    assert read_back_problems(ReadBack(6, 5, 0, 0), 5) == [
        "6 rows for 5 products",
        "1 duplicate product row(s)",
    ]
    assert read_back_problems(ReadBack(5, 5, 0, 2), 5) == ["2 row(s) of another run_id"]
    assert read_back_problems(ReadBack(4, 4, 0, 0), 5) == ["4 rows for 5 products"]


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([("a", "r1"), ("b", "r1")], None),
        ([("a", "r1"), ("a", "r1")], "1 duplicate product row(s)"),  # count matches, ids don't
        ([("a", "r1"), ("b", "old")], "1 row(s) of another run_id"),
        ([("a", "r1"), ("b", None)], "1 row(s) of another run_id"),
        ([("a", "r1")], "1 rows for 2 products"),
    ],
    ids=["good", "duplicate", "foreign run", "null run", "short"],
)
def test_verify_read_back_fails_the_run_before_the_manifest(
    spark: SparkSession, rows: list[tuple[str, str | None]], message: str | None
) -> None:
    written = spark.createDataFrame(rows, "product_id string, run_id string")
    if message is None:
        checks.verify_read_back(written, "r1", 2)
        return
    with pytest.raises(RunFailed, match="no manifest written") as info:
        checks.verify_read_back(written, "r1", 2)
    assert message in str(info.value)


# --- before Spark: footers ------------------------------------------------------------------


def tag_cfg(base: str, tmp: Path, **checks_kw: Any) -> TagConfig:
    return TagConfig(
        base_library=base,
        commodity_library=str(tmp / "out"),
        model=str(tmp / "model"),
        run_date=date(2026, 11, 21),
        storage=StorageConfig(connect_timeout_s=0.5, read_timeout_s=1.0, max_attempts=2),
        checks=ChecksConfig(**checks_kw),
    )


def write_parts(path: Path, *frames: pd.DataFrame) -> Path:
    path.mkdir(parents=True)
    for i, frame in enumerate(frames):
        frame.to_parquet(path / f"part-{i}.parquet", index=False)
    (path / "_SUCCESS").write_bytes(b"")  # hidden: never read
    return path


def strings(**cols: list[Any]) -> pd.DataFrame:
    return pd.DataFrame({k: pd.Series(v, dtype="string") for k, v in cols.items()})


@pytest.mark.parametrize(
    ("frames", "error", "message"),
    [
        (
            [strings(product_id=["a"], img=["file:///x.png"])],
            SchemaMismatch,
            "missing column(s) image_uri (columns found: product_id, img)",
        ),
        (
            # Spark would take its schema from one file and fail on the other mid-run.
            [
                strings(product_id=["a"], image_uri=["x"]),
                pd.DataFrame({"product_id": [1], "image_uri": ["y"]}),
            ],
            SchemaMismatch,
            "(part-1.parquet): wrong type(s) product_id (expected string, found bigint)",
        ),
        (
            [strings(product_id=[], image_uri=[]), strings(product_id=[], image_uri=[])],
            InputError,
            "has no rows",
        ),
        (
            [strings(product_id=[None, None], image_uri=["x", "y"])],
            InputError,
            "no row has a product_id (2 row(s))",
        ),
    ],
    ids=["missing column", "mistyped in one file", "empty", "no product id"],
)
def test_unusable_base_libraries_are_refused_from_their_footers_without_spark(
    tmp_path: Path, frames: list[pd.DataFrame], error: type[Exception], message: str
) -> None:
    base = write_parts(tmp_path / "base", *frames)
    with pytest.raises(error) as info:
        checks.preflight(tag_cfg(str(base), tmp_path, probe_objects=0))
    assert message in str(info.value)


def test_a_file_that_is_not_parquet_is_named(tmp_path: Path) -> None:
    base = write_parts(tmp_path / "base", strings(product_id=["a"], image_uri=["x"]))
    (base / "part-9.parquet").write_bytes(b"not parquet")
    with pytest.raises(InputError, match=r"part-9\.parquet is not a Parquet file"):
        checks.preflight(tag_cfg(str(base), tmp_path, probe_objects=0))


def test_footers_and_a_sample_are_read_from_s3(s3: Any, tmp_path: Path) -> None:
    bucket = make_bucket(s3, "footers")
    frame = strings(
        product_id=["a", "b", "c"],
        image_uri=["", f"s3://{bucket}/img/b.png", f"s3://{bucket}/img/c.png"],
    )
    local = write_parts(tmp_path / "local", frame, frame.iloc[:0])
    for p in sorted(local.iterdir()):
        s3.put_object(Bucket=bucket, Key=f"base/{p.name}", Body=p.read_bytes())
    s3.put_object(Bucket=bucket, Key="img/b.png", Body=png_bytes(COLORS["red"]))
    summary = checks.preflight(tag_cfg(f"s3://{bucket}/base", tmp_path))
    assert (summary.rows, summary.rows_by_file, summary.nulls) == (3, (3, 0), 0)
    assert [u.rsplit("/", 1)[-1] for u in summary.files] == ["part-0.parquet", "part-1.parquet"]
    from prodclf.storage import tables

    assert tables.sample_values(summary, "image_uri", 5) == [
        f"s3://{bucket}/img/b.png",
        f"s3://{bucket}/img/c.png",
    ]


# --- the store probe ------------------------------------------------------------------------


def scripted(answers: dict[str, RowError | None]) -> Any:
    calls: list[str] = []

    def fetch(uri: str, storage: StorageConfig) -> None:
        calls.append(uri)
        err = answers[uri]
        if err is not None:
            raise err

    fetch.calls = calls  # type: ignore[attr-defined]
    return fetch


DOWN = RowError(
    ErrorCode.STORE_UNAVAILABLE, "EndpointConnectionError, the store cannot be reached: s3://b/1"
)
DENIED = RowError(ErrorCode.ACCESS_DENIED, "access denied: s3://b/x")
GONE = RowError(ErrorCode.NOT_FOUND, "no such object: s3://b/x")


def test_the_probe_stops_at_the_first_answer_of_the_store() -> None:
    fetch = scripted({"s3://b/1": GONE, "s3://b/2": None})
    results = checks.probe_store(
        ["not a uri", "https://x/y", "s3://b/1", "s3://b/2"], StorageConfig(), fetch
    )
    assert fetch.calls == ["s3://b/1"]  # the invalid and disallowed ones are never fetched
    assert [r.uri for r in results] == ["s3://b/1"]


def test_an_unreachable_store_fails_the_probe_at_once() -> None:
    fetch = scripted({"s3://b/1": DOWN, "s3://b/2": None})
    with pytest.raises(
        StoreUnavailable, match="image store probe failed, nothing was run: EndpointConnectionError"
    ):
        checks.probe_store(["s3://b/1", "s3://b/2"], StorageConfig(), fetch)
    assert fetch.calls == ["s3://b/1"]


def test_access_denied_fails_the_probe_only_when_every_sample_is_denied() -> None:
    fetch = scripted({"s3://b/1": DENIED, "s3://b/2": None})
    checks.probe_store(["s3://b/1", "s3://b/2"], StorageConfig(), fetch)  # one private object
    fetch = scripted({"s3://b/1": DENIED, "s3://b/2": DENIED})
    with pytest.raises(StoreUnavailable, match=r"all 2 sampled object\(s\) failed \(access_denied"):
        checks.probe_store(["s3://b/1", "s3://b/2"], StorageConfig(), fetch)
    assert checks.probe_store([], StorageConfig(), fetch) == []  # nothing to probe
