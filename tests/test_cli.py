"""The command line: help, refusals (one line, exit 2, nothing written) and the job entry."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from catalog import build_catalog
from pyspark.sql import SparkSession

from prodclf.cli import EXIT_REFUSED, main

pytestmark = pytest.mark.spark4

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "command", ["tag", "train", "demo", "runs", "report", "vacuum", "migrate", "unlock"]
)
def test_every_subcommand_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: prodclf " + command in capsys.readouterr().out


def run_refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own refusals
        code = exc.code  # type: ignore[assignment]
    err = capsys.readouterr().err
    assert code == EXIT_REFUSED, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("prodclf: error: ") or lines[0].startswith("prodclf tag: error: ")
    return lines[0]


@pytest.fixture
def layout(tmp_path: Path, color_bundle: Path) -> dict[str, Path]:
    cat = build_catalog(tmp_path / "catalog", n_ok=2)
    return {"base": cat.base, "out": tmp_path / "commodity", "model": color_bundle, "tmp": tmp_path}


def tag_args(layout: dict[str, Path], **override: object) -> list[str]:
    args = {
        "--base-library": layout["base"],
        "--commodity-library": layout["out"],
        "--model": layout["model"],
        "--run-date": "2026-11-21",
        **override,
    }
    argv = ["tag"]
    for key, value in args.items():
        if value is not None:
            argv += [key] if value == "" else [key, str(value)]  # "": a switch
    return argv


def write_yaml(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


REFUSALS = {
    "bad date": ({"--run-date": "2026-13-01"}, "--run-date '2026-13-01' is not a date"),
    "bad run id": ({"--run-id": "../escape"}, "--run-id '../escape'"),
    "missing base library": ({"--base-library": "{tmp}/nowhere"}, "base library"),
    "commodity inside base": ({"--commodity-library": "{base}/tags"}, "is inside the base library"),
    "commodity equals base": ({"--commodity-library": "{base}"}, "is inside the base library"),
    "model missing": ({"--model": "{tmp}/no-model"}, "cannot read bundle.json"),
    "model without savedmodel": ({"--model": "{tmp}/half-model"}, "no saved_model/saved_model.pb"),
    "model metadata not json": ({"--model": "{tmp}/junk-model"}, "bundle.json is not JSON"),
    "negative top-k": ({"--top-k": "-1"}, "inference.top_k must be positive"),
    "threshold out of range": ({"--review-threshold": "1.5"}, "review_threshold must be within"),
    "unknown config key": ({"--config": "{tmp}/bad.yaml"}, "unknown key(s) max_bytes"),
    "missing config file": ({"--config": "{tmp}/none.yaml"}, "no such file"),
    "missing required flag": ({"--model": None}, "the following arguments are required: --model"),
    "backfill without selection": ({"--mode": "backfill"}, "--mode backfill needs a selection"),
    "selection without backfill": ({"--retry-errors": ""}, "add --mode backfill"),
    "missing products list": (
        {"--mode": "backfill", "--products": "{tmp}/ids.txt"},
        "--products list",
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_bad_arguments_are_refused_before_any_work(
    case: str, layout: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    tmp = layout["tmp"]
    (tmp / "half-model").mkdir()
    (tmp / "half-model" / "bundle.json").write_text((layout["model"] / "bundle.json").read_text())
    (tmp / "junk-model").mkdir()
    (tmp / "junk-model" / "bundle.json").write_text("{not json")
    write_yaml(tmp / "bad.yaml", "storage:\n  max_bytes: 10\n")
    override, message = REFUSALS[case]
    fmt = {k: str(v) for k, v in layout.items()}
    resolved = {k: (v.format(**fmt) if isinstance(v, str) else v) for k, v in override.items()}

    line = run_refused(tag_args(layout, **resolved), capsys)

    assert message in line
    assert not layout["out"].exists()
    assert not (layout["base"] / "tags").exists()


def write_base(path: Path, frame: pd.DataFrame) -> Path:
    path.mkdir(parents=True)
    frame.to_parquet(path / "part-0.parquet", index=False)
    return path


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (
            pd.DataFrame({"product_id": ["a"], "img": ["file:///x.png"]}),
            "missing column(s) image_uri (columns found: product_id, img)",
        ),
        (
            pd.DataFrame({"product_id": [1], "image_uri": ["file:///x.png"]}),
            "wrong type(s) product_id (expected string, found bigint)",
        ),
        (
            pd.DataFrame(
                {
                    "product_id": pd.Series([], dtype="string"),
                    "image_uri": pd.Series([], dtype="string"),
                }
            ),
            "has no rows; nothing to tag",
        ),
    ],
    ids=["missing column", "wrong type", "empty"],
)
def test_unusable_base_library_is_refused_naming_the_problem(
    spark: SparkSession,
    frame: pd.DataFrame,
    message: str,
    layout: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    base = write_base(layout["tmp"] / "bad-base", frame)
    line = run_refused(tag_args(layout, **{"--base-library": str(base)}), capsys)
    assert message in line
    assert not layout["out"].exists()


def test_spark_submit_entry_refuses_in_one_line_without_starting_spark(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "jobs" / "tag_catalog.py"),
            "--base-library",
            str(tmp_path / "base"),
            "--commodity-library",
            str(tmp_path / "out"),
            "--model",
            str(tmp_path / "m"),
            "--run-date",
            "yesterday",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == EXIT_REFUSED
    assert proc.stderr.strip().splitlines() == [
        "prodclf: error: --run-date 'yesterday' is not a date in YYYY-MM-DD form"
    ]
    assert not (tmp_path / "out").exists()


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).parent / "prodclf"
    proc = subprocess.run([str(script), "--version"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0 and proc.stdout.startswith("prodclf ")


def test_example_config_file_is_valid_and_applied(layout: dict[str, Path]) -> None:
    from prodclf.cli import build_config, build_parser

    args = build_parser().parse_args(
        tag_args(layout, **{"--config": ROOT / "infra" / "config" / "nightly.yaml", "--top-k": 5})
    )
    cfg = build_config(args)
    assert cfg.storage.allowed_buckets == ("catalog-images",)
    assert cfg.storage.allowed_schemes == ("s3",)
    assert cfg.inference.top_k == 5  # the flag wins over the file
    assert cfg.inference.review_threshold == 0.6
    assert dict(cfg.spark.conf) == {"spark.sql.shuffle.partitions": "400"}
    assert cfg.spark.app_name == "prodclf-nightly"
    assert cfg.checks.max_error_rate == 0.5 and cfg.checks.min_error_rows == 10
    assert dict(cfg.checks.max_code_rates) == {"store_unavailable": 0.0, "internal_error": 0.01}
    assert cfg.storage.decode_memory_bytes == 512 << 20
    assert cfg.retry_codes == ("fetch_failed", "inference_failed")  # the tag section
    assert (cfg.progress_interval_s, cfg.lock_ttl_s) == (30.0, 900.0)
    assert cfg.mode == "full" and cfg.spark.catalog_implementation is None
    assert cfg.library.format == "parquet" and cfg.library.spark_settings() == {}


def test_example_training_config_loads_and_applies(tmp_path: Path) -> None:
    """infra/config/train-grocery.yaml is valid and every key in it takes effect."""
    import yaml

    from prodclf.cli import build_config, build_parser

    example = Path(__file__).resolve().parents[1] / "infra" / "config" / "train-grocery.yaml"
    args = build_parser().parse_args(
        ["train", "--base-library", "/b", "--model-out", "/m", "--config", str(example)]
    )
    cfg = build_config(args)
    expected = yaml.safe_load(example.read_text())["train"]
    for key, value in expected.items():
        assert getattr(cfg, key) == value, key
    assert cfg.storage.fetch_concurrency == 16
    base = ["train", "--base-library", "/b", "--model-out", "/m", "--config", str(example)]
    flags = ["--epochs", "9", "--fusion", "gray+rgb", "--augmentation", "light", "--no-noise"]
    flags += ["--backbone-lr-multiplier", "0.5", "--no-calibration", "--class-weights", "none"]
    flags += ["--backbone", "/other.keras", "--scale", "raw", "--warmup-epochs", "0"]
    flags += ["--label-smoothing", "0.2", "--lr-schedule", "cosine"]
    flagged = build_parser().parse_args([*base, *flags])
    over = build_config(flagged)
    assert (over.epochs, over.fusion, over.augmentation, over.noise) == (
        9,
        "gray+rgb",
        "light",
        False,
    )
    assert (over.backbone_lr_multiplier, over.calibrate, over.class_weights) == (0.5, False, "none")
    assert (over.backbone, over.scale, over.warmup_epochs) == ("/other.keras", "raw", 0)
    assert (over.label_smoothing, over.lr_schedule) == (0.2, "cosine")


def test_a_bad_backfill_predicate_is_refused_before_anything_is_written(
    spark: SparkSession, layout: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    argv = tag_args(layout, **{"--mode": "backfill", "--where": "no_such_column = 1"})
    tracker = spark.sparkContext.statusTracker()
    jobs = set(tracker.getJobIdsForGroup(None))
    line = run_refused(argv, capsys)
    assert "--where 'no_such_column = 1' is not a predicate over the base library's columns" in line
    assert not layout["out"].exists()
    # Refused before the base library is counted: no Spark job ran but the one Spark's
    # Parquet schema inference runs.
    assert len(set(tracker.getJobIdsForGroup(None)) - jobs) <= 1


#: The smallest valid command line of each command with a ``library`` section.
LIBRARY_COMMANDS = {
    "tag": [
        *("tag", "--base-library", "/b", "--commodity-library", "/c", "--model", "/m"),
        *("--run-date", "2026-11-21"),
    ],
    "evaluate": [
        *("evaluate", "--labels", "/l", "--out", "/o", "--commodity-library", "/c"),
        *("--run-date", "2026-11-21"),
    ],
    "report": ["report", "r1", "--commodity-library", "/c"],
    "vacuum": ["vacuum", "--commodity-library", "/c", "--keep-days", "7"],
    "migrate": ["migrate", "--commodity-library", "/c"],
}
TABLE_FORMAT_FLAGS = {
    "--library-format": "iceberg",
    "--iceberg-catalog": "rest",
    "--iceberg-catalog-name": "lake",
    "--iceberg-namespace": "tags",
    "--iceberg-uri": "http://catalog:8181",
    "--iceberg-warehouse": "s3://lake/wh",
}


def _config(argv: list[str]) -> Any:
    from prodclf.cli import build_config, build_parser

    return build_config(build_parser().parse_args(argv))


@pytest.mark.parametrize("command", sorted(LIBRARY_COMMANDS))
def test_table_format_flags_reach_the_config(command: str, tmp_path: Path) -> None:
    from prodclf.config import TableFormatConfig

    base = LIBRARY_COMMANDS[command]
    assert _config(base).library == TableFormatConfig()
    flags = [part for item in TABLE_FORMAT_FLAGS.items() for part in item]
    assert _config([*base, *flags]).library == TableFormatConfig(
        format="iceberg",
        catalog="rest",
        catalog_name="lake",
        namespace="tags",
        catalog_uri="http://catalog:8181",
        warehouse="s3://lake/wh",
    )
    config = write_yaml(
        tmp_path / "lib.yaml", "library:\n  format: iceberg\n  catalog: hive\n  namespace: n1\n"
    )
    cfg = _config([*base, "--config", str(config), "--iceberg-namespace", "n2"])
    assert cfg.library == TableFormatConfig(format="iceberg", catalog="hive", namespace="n2")


@pytest.mark.parametrize("command", sorted(LIBRARY_COMMANDS))
def test_table_format_flags_are_in_the_help(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        main([command, "--help"])
    out = capsys.readouterr().out
    for flag in TABLE_FORMAT_FLAGS:
        assert flag in out, flag
    assert "{parquet,iceberg}" in out and "{hadoop,hive,glue,rest}" in out
    assert ("--to {iceberg}" in out) == (command == "migrate")


def test_migrate_to_iceberg_flag() -> None:
    base = LIBRARY_COMMANDS["migrate"]
    assert _config(base).to is None
    cfg = _config(
        [*base, "--to", "iceberg", "--iceberg-catalog", "glue", "--iceberg-warehouse", "w"]
    )
    assert (cfg.to, cfg.library.format, cfg.library.catalog) == ("iceberg", "iceberg", "glue")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            [*LIBRARY_COMMANDS["vacuum"], "--iceberg-catalog", "rest"],
            "prodclf: error: library.catalog rest needs library.catalog_uri (--iceberg-uri)",
        ),
        (
            [*LIBRARY_COMMANDS["migrate"], "--to", "iceberg", "--iceberg-catalog", "glue"],
            "prodclf: error: library.catalog glue needs library.warehouse (--iceberg-warehouse)",
        ),
        (
            [*LIBRARY_COMMANDS["report"], "--iceberg-namespace", "prod-clf"],
            "prodclf: error: library.namespace 'prod-clf': use letters, digits and '_' "
            "(an identifier)",
        ),
        (
            [*LIBRARY_COMMANDS["migrate"], "--to", "delta"],
            "prodclf migrate: error: argument --to: invalid choice: 'delta' (choose from "
            "'iceberg')",
        ),
        (
            [*LIBRARY_COMMANDS["vacuum"], "--library-format", "orc"],
            "prodclf vacuum: error: argument --library-format: invalid choice: 'orc' "
            "(choose from 'parquet', 'iceberg')",
        ),
    ],
    ids=["rest without uri", "glue without warehouse", "bad namespace", "bad --to", "bad format"],
)
def test_table_format_refusals_exit_2_in_one_line_before_spark(
    argv: list[str],
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def refuse(*_: object, **__: object) -> None:
        raise AssertionError("a SparkSession was requested")

    monkeypatch.setattr("prodclf.session.create_session", refuse)
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own refusals
        code = exc.code
    captured = capsys.readouterr()
    assert code == EXIT_REFUSED
    assert captured.err.splitlines() == [message]


def test_the_session_gets_the_library_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """``_run`` hands ``library.spark_settings()`` to create_session (nothing without it)."""
    from prodclf import cli
    from prodclf.config import ICEBERG_EXTENSIONS

    calls: list[tuple[object, ...]] = []
    monkeypatch.setattr("prodclf.session.create_session", lambda *a: calls.append(a) or "spark")
    flags = [part for item in TABLE_FORMAT_FLAGS.items() for part in item]
    for argv in (LIBRARY_COMMANDS["vacuum"], [*LIBRARY_COMMANDS["tag"], *flags]):
        cfg = _config(argv)
        result = cli._run(cfg, lambda c: "checked", lambda c, s, checked: (s, checked), 16)
        assert result == ("spark", "checked")
        assert calls[-1] == (cfg.spark, 16, cfg.library.spark_settings())
    assert calls[0][2] == {}
    assert calls[1][2] == {
        "spark.sql.extensions": ICEBERG_EXTENSIONS,
        "spark.sql.catalog.lake": "org.apache.iceberg.spark.SparkCatalog",
        "spark.sql.catalog.lake.type": "rest",
        "spark.sql.catalog.lake.uri": "http://catalog:8181",
        "spark.sql.catalog.lake.warehouse": "s3://lake/wh",
    }
    train = _config(["train", "--base-library", "/b", "--model-out", "/m"])
    cli._run(train, lambda c: None, lambda c, s, checked: None)
    assert calls[-1] == (train.spark, 256, None)
