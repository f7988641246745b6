"""Configuration: YAML sections, validation refusals, run dates."""

from __future__ import annotations

from dataclasses import replace
from datetime import date
from pathlib import Path
from typing import Any

import pytest
import yaml

from prodclf.config import (
    ICEBERG_CATALOGS,
    ICEBERG_EXTENSIONS,
    TABLE_FORMATS,
    EvaluateConfig,
    InferenceConfig,
    MigrateConfig,
    ReportConfig,
    SparkConfig,
    StorageConfig,
    TableFormatConfig,
    TagConfig,
    TrainConfig,
    VacuumConfig,
    default_run_id,
    load_yaml,
    parse_run_date,
    section,
)
from prodclf.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.spark4


def test_section_builds_from_a_yaml_mapping() -> None:
    storage = section(
        StorageConfig,
        {
            "allowed_buckets": ["images", "thumbs"],
            "max_object_bytes": 1024,
            "connect_timeout_s": 2,
            "retry_mode": "adaptive",
        },
        "storage",
    )
    assert storage == StorageConfig(
        allowed_buckets=("images", "thumbs"),
        max_object_bytes=1024,
        connect_timeout_s=2.0,
        retry_mode="adaptive",
    )
    assert isinstance(storage.connect_timeout_s, float)
    spark = section(
        SparkConfig, {"master": "local[2]", "conf": {"spark.x": 1, "spark.y": "b"}}, "spark"
    )
    assert spark == SparkConfig(master="local[2]", conf=(("spark.x", "1"), ("spark.y", "b")))
    inference = section(InferenceConfig, {"use_gpu": False, "top_k": 5}, "inference")
    assert (inference.use_gpu, inference.top_k) == (False, 5)


def test_section_of_nothing_is_the_defaults() -> None:
    assert section(StorageConfig, None, "storage") == StorageConfig()
    assert section(InferenceConfig, {}, "inference") == InferenceConfig()


def test_section_refuses_unknown_keys_naming_them() -> None:
    with pytest.raises(ConfigError) as info:
        section(StorageConfig, {"max_bytes": 1, "bucket": "x", "max_pixels": 10}, "storage")
    msg = str(info.value)
    assert "config section 'storage': unknown key(s) bucket, max_bytes" in msg
    assert "max_object_bytes" in msg  # the known keys are listed


@pytest.mark.parametrize(
    ("cls", "data", "expected"),
    [
        (
            StorageConfig,
            {"max_object_bytes": "20MB"},
            "storage.max_object_bytes: expected a number",
        ),
        (StorageConfig, {"max_attempts": True}, "storage.max_attempts: expected a number"),
        (StorageConfig, {"max_attempts": 2.5}, "storage.max_attempts: expected a whole number"),
        (StorageConfig, {"allowed_buckets": "images"}, "storage.allowed_buckets: expected a list"),
        (InferenceConfig, {"use_gpu": "yes"}, "inference.use_gpu: expected true or false"),
        (InferenceConfig, {"review_threshold": "0.5"}, "inference.review_threshold: expected"),
    ],
)
def test_section_refuses_type_errors(cls: type, data: dict, expected: str) -> None:
    name = "storage" if cls is StorageConfig else "inference"
    with pytest.raises(ConfigError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        section(cls, data, name)


def test_whole_floats_are_accepted_for_int_settings() -> None:
    storage = section(StorageConfig, {"max_attempts": 3.0}, "storage")
    assert storage.max_attempts == 3
    assert isinstance(storage.max_attempts, int)


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"max_object_bytes": 0}, "storage.max_object_bytes must be positive, not 0"),
        ({"max_pixels": -1}, "storage.max_pixels must be positive, not -1"),
        ({"max_attempts": 0}, "storage.max_attempts must be positive"),
        ({"fetch_concurrency": -4}, "storage.fetch_concurrency must be positive"),
        ({"connect_timeout_s": 0.0}, "storage.connect_timeout_s must be positive"),
        ({"read_timeout_s": -1.0}, "storage.read_timeout_s must be positive"),
        ({"retry_mode": "aggressive"}, "storage.retry_mode must be legacy, standard or adaptive"),
        ({"allowed_schemes": ("s3", "http")}, "unsupported scheme(s) http"),
    ],
)
def test_storage_validate_refusals(changes: dict, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        replace(StorageConfig(), **changes).validate()
    assert expected in str(info.value)


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"arrow_batch_size": 0}, "inference.arrow_batch_size must be positive"),
        ({"model_batch_size": -1}, "inference.model_batch_size must be positive"),
        ({"top_k": 0}, "inference.top_k must be positive"),
        ({"review_threshold": 1.5}, "inference.review_threshold must be within [0, 1], not 1.5"),
        ({"review_threshold": -0.1}, "inference.review_threshold must be within [0, 1]"),
        ({"review_threshold": float("nan")}, "inference.review_threshold must be within [0, 1]"),
    ],
)
def test_inference_validate_refusals(changes: dict, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        replace(InferenceConfig(), **changes).validate()
    assert expected in str(info.value)


def test_valid_defaults_and_bounds_pass() -> None:
    StorageConfig().validate()
    InferenceConfig().validate()
    replace(InferenceConfig(), review_threshold=0.0).validate()
    replace(InferenceConfig(), review_threshold=1.0).validate()


def tag_cfg(**changes: Any) -> TagConfig:
    cfg = TagConfig(
        base_library="/data/base",
        commodity_library="/data/out",
        model="/models/m",
        run_date=date(2024, 5, 1),
        run_id="2024-05-01-nightly",
    )
    return replace(cfg, **changes)


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"model": ""}, "--model is required"),
        ({"commodity_library": ""}, "--commodity-library is required"),
        ({"run_id": "bad id"}, "--run-id 'bad id'"),
        ({"run_id": "../escape"}, "--run-id '../escape'"),
        ({"run_id": "x" * 129}, "--run-id"),
        ({"mode": "nightly"}, "--mode must be one of full, incremental, backfill"),
        ({"mode": "backfill"}, "--mode backfill needs a selection"),
        ({"where": "merchant = 'm1'"}, "--where select a backfill; add --mode backfill"),
        ({"mode": "backfill", "where": " "}, "--where is empty"),
        ({"retry_codes": ("fetch_failed", "oops")}, "unknown error code(s) oops"),
        ({"database": "prod-clf"}, "--database 'prod-clf'"),
        ({"lock_ttl_s": 0.0}, "lock_ttl_s must be positive"),
    ],
)
def test_tag_config_validate_refusals(changes: dict, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        tag_cfg(**changes).validate()
    assert expected in str(info.value)


def test_tag_config_valid() -> None:
    tag_cfg().validate()
    tag_cfg(run_id="a" * 128).validate()
    tag_cfg(mode="incremental", change_column="image_updated_at").validate()
    tag_cfg(mode="backfill", products="/ids.txt", where="merchant = 'm1'").validate()
    tag_cfg(mode="backfill", retry_errors=True).validate()


def test_a_database_turns_hive_support_on_unless_configured() -> None:
    assert tag_cfg().spark.catalog_implementation is None
    hive = TagConfig.from_sources(
        {},
        {
            "base_library": "/b",
            "commodity_library": "/c",
            "model": "/m",
            "run_date": "2026-11-21",
            "database": "prodclf",
        },
    )
    assert hive.spark.catalog_implementation == "hive"
    kept = TagConfig.from_sources(
        {"spark": {"catalog_implementation": "in-memory"}},
        {
            "base_library": "/b",
            "commodity_library": "/c",
            "model": "/m",
            "run_date": "2026-11-21",
            "database": "prodclf",
        },
    )
    assert kept.spark.catalog_implementation == "in-memory"


def test_tag_flags_set_the_mode_fields() -> None:
    cfg = TagConfig.from_sources(
        {},
        {
            "base_library": "/b",
            "commodity_library": "/c",
            "model": "/m",
            "run_date": "2026-11-21",
            "mode": "backfill",
            "products": "/ids.csv",
            "where": "merchant = 'm1'",
            "retry_errors": True,
            "dry_run": True,
        },
    )
    assert (cfg.mode, cfg.products, cfg.where, cfg.retry_errors, cfg.dry_run) == (
        "backfill",
        "/ids.csv",
        "merchant = 'm1'",
        True,
        True,
    )
    assert cfg.selection == {
        "mode": "backfill",
        "products": "/ids.csv",
        "where": "merchant = 'm1'",
        "retry_errors": True,
    }


def test_train_config_validate_refusals() -> None:
    TrainConfig(base_library="/b", model_out="/m").validate()
    cases: list[tuple[dict[str, Any], str]] = [
        ({"color_mode": "cmyk"}, "--color-mode must be rgb or grayscale"),
        ({"scale": "imagenet"}, "--scale must be unit, symmetric or raw"),
        ({"validation_fraction": 1.0}, "train.validation_fraction must be within [0, 1)"),
        ({"limit": 0}, "train.limit must be positive"),
        ({"epochs": 0}, "--epochs 0 needs a pretrained backbone"),
        ({"epochs": -1}, "train.epochs must not be negative"),
        ({"backbone": "/b.keras", "weights": "/w.h5"}, "the file carries its weights"),
        ({"backbone": "/b.keras", "architecture": "resnet50"}, "--backbone replaces"),
        ({"backbone": "/b.keras", "backbone_init": "none"}, "--backbone-init must be file or"),
        ({"backbone_init": "random"}, "--backbone-init random needs --backbone FILE"),
        ({"architecture": "custom"}, "--architecture 'custom' is not one of"),
        ({"backbone_lr_multiplier": 0.0}, "train.backbone_lr_multiplier must be positive"),
        ({"dropout": 1.0}, "train.dropout must be within [0, 1)"),
        ({"class_weights": "skewed"}, "--class-weights must be auto, none or balanced"),
        (
            {"augmentation": "heavy"},
            "--augmentation must be one of none, flip, flip+shift, light, standard",
        ),
        ({"lr_factor": 1.0}, "train.lr_factor must be within (0, 1)"),
        ({"early_stopping_patience": -1}, "train.early_stopping_patience must not be negative"),
    ]
    for changes, expected in cases:
        with pytest.raises(ConfigError) as info:
            TrainConfig(base_library="/b", model_out="/m", **changes).validate()
        assert expected in str(info.value)


TAG_FLAGS = {
    "base_library": "/b",
    "commodity_library": "/c",
    "model": "/m",
    "run_date": "2024-05-01",
    "run_id": "r1",
    "command": "tag",  # not a field: ignored
}


def test_from_sources_precedence_defaults_yaml_flags() -> None:
    data = {"inference": {"top_k": 5, "review_threshold": 0.7}, "spark": {"master": "local[1]"}}
    flags = {**TAG_FLAGS, "top_k": 2, "review_threshold": None, "master": None}
    cfg = TagConfig.from_sources(data, flags)
    assert cfg.inference == InferenceConfig(top_k=2, review_threshold=0.7)  # flag > YAML
    assert cfg.spark.master == "local[1]"  # a None flag was not given
    assert cfg.run_date == date(2024, 5, 1)
    assert cfg.spark.app_name == "prodclf-tag-r1"
    assert cfg.storage == StorageConfig()


def test_from_sources_refuses_unknown_sections_and_bad_flags() -> None:
    with pytest.raises(ConfigError, match=r"unknown section\(s\) trian \(known: checks,"):
        TagConfig.from_sources({"trian": {"epochs": 1}}, TAG_FLAGS)
    with pytest.raises(ConfigError, match=r"config section 'tag': unknown key\(s\) mdoe"):
        TagConfig.from_sources({"tag": {"mdoe": "full"}}, TAG_FLAGS)
    with pytest.raises(ConfigError, match=r"inference\.top_k must be positive"):
        TagConfig.from_sources({}, {**TAG_FLAGS, "top_k": 0})
    with pytest.raises(ConfigError, match="--run-date '2024-02-30' is not a date"):
        TagConfig.from_sources({}, {**TAG_FLAGS, "run_date": "2024-02-30"})


def test_one_file_serves_every_command_of_the_night() -> None:
    """Each command reads its sections and passes over the others' (infra's nightly file)."""
    nightly = yaml.safe_load((ROOT / "infra" / "config" / "nightly.yaml").read_text())
    assert {"tag", "inference", "checks"} <= set(nightly)
    vacuum = VacuumConfig.from_sources(nightly, {"commodity_library": "/lib"})
    assert vacuum.spark.app_name == "prodclf-nightly"
    assert vacuum.storage.spark_s3_scheme == nightly["storage"]["spark_s3_scheme"]
    ReportConfig.from_sources(nightly, {"commodity_library": "/lib", "run_id": "r1"})
    TagConfig.from_sources({**nightly, "train": {"epochs": 2}}, TAG_FLAGS)
    # A misspelt key inside a section the command uses is still refused.
    with pytest.raises(ConfigError, match=r"config section 'spark': unknown key\(s\) mastr"):
        VacuumConfig.from_sources({**nightly, "spark": {"mastr": "x"}}, {"commodity_library": "/l"})


def test_train_config_reads_its_own_section_and_flags_win() -> None:
    data = {"train": {"epochs": 7, "dropout": 0.1}, "storage": {"max_attempts": 2}}
    flags = {"base_library": "/b", "model_out": "/m", "epochs": 3, "noise": None}
    cfg = TrainConfig.from_sources(data, flags)
    assert (cfg.epochs, cfg.dropout, cfg.noise, cfg.storage.max_attempts) == (3, 0.1, True, 2)
    assert cfg.spark.app_name == "prodclf-train"
    with pytest.raises(ConfigError, match=r"section 'train': unknown key\(s\) epoch\b"):
        TrainConfig.from_sources({"train": {"epoch": 1}}, flags)


def test_configs_are_validated_when_built() -> None:
    """No config object exists unvalidated: construction and replace() both check."""
    with pytest.raises(ConfigError, match=r"storage\.max_attempts must be positive"):
        StorageConfig(max_attempts=0)
    with pytest.raises(ConfigError, match=r"inference\.top_k must be positive"):
        replace(InferenceConfig(), top_k=0)
    cfg = TagConfig("/b", "/c", "/m", date(2024, 5, 1))
    assert cfg.run_id.startswith("2024-05-01-")


def test_load_yaml(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("storage:\n  allowed_buckets: [images]\ninference:\n  top_k: 2\n")
    assert load_yaml(str(good)) == {
        "storage": {"allowed_buckets": ["images"]},
        "inference": {"top_k": 2},
    }
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_yaml(str(empty)) == {}
    assert load_yaml(None) == {}


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"storage: [unclosed\n", "not valid YAML"),
        (b"- a\n- b\n", "the top level must be a mapping"),
        (b"just a string\n", "the top level must be a mapping"),
        (b"\xff\xfe\x00\x00binary", "cannot be read as text"),
    ],
)
def test_load_yaml_refuses_bad_files(tmp_path: Path, content: bytes, expected: str) -> None:
    p = tmp_path / "bad.yaml"
    p.write_bytes(content)
    with pytest.raises(ConfigError) as info:
        load_yaml(str(p))
    msg = str(info.value)
    assert msg.startswith(f"--config {p}: ")
    assert expected in msg
    assert "\n" not in msg


def test_load_yaml_refuses_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_yaml(str(tmp_path / "missing.yaml"))
    with pytest.raises(ConfigError, match="no such file"):
        load_yaml(str(tmp_path))


def test_parse_run_date() -> None:
    assert parse_run_date("2024-02-29") == date(2024, 2, 29)
    assert default_run_id(date(2024, 2, 29), "20240301T010203Z") == "2024-02-29-20240301T010203Z"


@pytest.mark.parametrize("text", ["2023-02-29", "yesterday", "", "2024-13-01", "01/05/2024", None])
def test_parse_run_date_refuses_bad_input(text: object) -> None:
    with pytest.raises(ConfigError, match="is not a date in YYYY-MM-DD form"):
        parse_run_date(text)  # type: ignore[arg-type]


def test_yaml_values_are_checked_against_the_declared_type() -> None:
    """Fields whose default is None (``int | None`` ...) are type-checked too."""
    from dataclasses import fields

    from prodclf.config import coerce_field

    by_name = {f.name: f for f in fields(TrainConfig)}
    assert coerce_field(by_name["limit"], 5, "train.limit") == 5
    assert coerce_field(by_name["limit"], None, "train.limit") is None
    assert coerce_field(by_name["fine_tune_learning_rate"], 1, "x") == 1.0
    assert coerce_field(by_name["labels"], "s3://b/labels", "x") == "s3://b/labels"
    with pytest.raises(ConfigError, match=r"train\.limit: expected a number, found 'many'"):
        coerce_field(by_name["limit"], "many", "train.limit")
    with pytest.raises(ConfigError, match=r"train\.labels: expected text"):
        coerce_field(by_name["labels"], ["a"], "train.labels")
    with pytest.raises(ConfigError, match=r"train\.epochs: a value is required"):
        coerce_field(by_name["epochs"], None, "train.epochs")
    with pytest.raises(ConfigError, match=r"train\.noise: expected true or false"):
        coerce_field(by_name["noise"], "yes", "train.noise")


def test_library_section_defaults() -> None:
    lib = TableFormatConfig()
    assert (lib.format, lib.catalog, lib.catalog_name, lib.namespace) == (
        "parquet",
        "hadoop",
        "prodclf",
        "prodclf",
    )
    assert (lib.catalog_uri, lib.warehouse) == (None, None)
    assert (TABLE_FORMATS, ICEBERG_CATALOGS) == (
        ("parquet", "iceberg"),
        ("hadoop", "hive", "glue", "rest"),
    )
    assert section(TableFormatConfig, None, "library") == lib
    assert tag_cfg().library == lib
    for cfg in (
        VacuumConfig(commodity_library="/c"),
        MigrateConfig(commodity_library="/c"),
        ReportConfig(commodity_library="/c", run_id="r1"),
        EvaluateConfig(labels="/l", out="/o", model="/m"),
    ):
        assert cfg.library == lib, type(cfg).__name__


def test_library_section_builds_from_yaml_and_flags_win() -> None:
    data = {
        "library": {
            "format": "iceberg",
            "catalog": "rest",
            "catalog_name": "lake",
            "namespace": "tags",
            "catalog_uri": "http://catalog:8181",
            "warehouse": "s3://lake/wh",
        }
    }
    cfg = TagConfig.from_sources(data, TAG_FLAGS)
    assert cfg.library == TableFormatConfig(
        format="iceberg",
        catalog="rest",
        catalog_name="lake",
        namespace="tags",
        catalog_uri="http://catalog:8181",
        warehouse="s3://lake/wh",
    )
    flags = {**TAG_FLAGS, "catalog": "hive", "catalog_uri": "thrift://hms:9083", "namespace": None}
    over = TagConfig.from_sources(data, flags)
    assert (over.library.catalog, over.library.catalog_uri, over.library.namespace) == (
        "hive",
        "thrift://hms:9083",
        "tags",  # a None flag was not given
    )
    with pytest.raises(ConfigError, match=r"config section 'library': unknown key\(s\) type"):
        TagConfig.from_sources({"library": {"type": "iceberg"}}, TAG_FLAGS)
    with pytest.raises(ConfigError, match=r"library\.namespace: expected text"):
        TagConfig.from_sources({"library": {"namespace": ["a"]}}, TAG_FLAGS)


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"format": "delta"}, "library.format must be one of parquet, iceberg, not 'delta'"),
        (
            {"catalog": "nessie"},
            "library.catalog must be one of hadoop, hive, glue, rest, not 'nessie'",
        ),
        (
            {"catalog": "rest"},
            "library.catalog rest needs library.catalog_uri (--iceberg-uri)",
        ),
        (
            {"catalog": "glue"},
            "library.catalog glue needs library.warehouse (--iceberg-warehouse)",
        ),
        (
            {"catalog_name": "my-lake"},
            "library.catalog_name 'my-lake': use letters, digits and '_' (an identifier)",
        ),
        (
            {"catalog_name": "1lake"},
            "library.catalog_name '1lake': use letters, digits and '_' (an identifier)",
        ),
        (
            {"namespace": "prod.clf"},
            "library.namespace 'prod.clf': use letters, digits and '_' (an identifier)",
        ),
        ({"namespace": ""}, "library.namespace '': use letters, digits and '_' (an identifier)"),
        (
            {"catalog_name": "spark_catalog"},
            "library.catalog_name 'spark_catalog' is Spark's session catalog; name another",
        ),
        ({"catalog": "rest", "catalog_uri": ""}, "library.catalog_uri is empty"),
        (
            {"catalog_uri": "thrift://hms:9083"},
            "library.catalog_uri is for the hive and rest catalogs, not hadoop",
        ),
        (
            {"catalog": "glue", "warehouse": "s3://w", "catalog_uri": "http://x"},
            "library.catalog_uri is for the hive and rest catalogs, not glue",
        ),
        (
            {"warehouse": "s3://w"},
            "library.warehouse is for the hive, glue and rest catalogs: the hadoop catalog's "
            "warehouse is <commodity_library>/iceberg",
        ),
    ],
)
def test_library_validate_refusals(changes: dict, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        TableFormatConfig(**changes)
    assert str(info.value) == expected


def test_library_refusals_reach_the_jobs() -> None:
    with pytest.raises(ConfigError, match=r"^library\.format must be one of parquet, iceberg"):
        TagConfig.from_sources({}, {**TAG_FLAGS, "format": "orc"})
    with pytest.raises(ConfigError, match=r"^library\.catalog rest needs library\.catalog_uri"):
        VacuumConfig.from_sources({"library": {"catalog": "rest"}}, {"commodity_library": "/c"})


def test_library_valid_choices() -> None:
    for fmt in TABLE_FORMATS:
        TableFormatConfig(format=fmt)
    TableFormatConfig(format="iceberg", catalog="hive")
    TableFormatConfig(catalog="hive", catalog_uri="thrift://hms:9083", warehouse="s3://w")
    TableFormatConfig(catalog="glue", warehouse="s3://w", catalog_name="_Lake2")
    TableFormatConfig(catalog="rest", catalog_uri="http://catalog:8181", namespace="n_1")


ICEBERG_CATALOG_CLASS = "org.apache.iceberg.spark.SparkCatalog"


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({}, {}),
        ({"catalog": "rest", "catalog_uri": "http://c:8181"}, {}),  # parquet: nothing
        ({"format": "iceberg"}, {}),  # hadoop: the library registers its catalog itself
        (
            {"format": "iceberg", "catalog": "hive"},
            {
                "spark.sql.catalog.prodclf": ICEBERG_CATALOG_CLASS,
                "spark.sql.catalog.prodclf.type": "hive",
            },
        ),
        (
            {
                "format": "iceberg",
                "catalog": "hive",
                "catalog_name": "lake",
                "catalog_uri": "thrift://hms:9083",
                "warehouse": "s3://lake/wh",
            },
            {
                "spark.sql.catalog.lake": ICEBERG_CATALOG_CLASS,
                "spark.sql.catalog.lake.type": "hive",
                "spark.sql.catalog.lake.uri": "thrift://hms:9083",
                "spark.sql.catalog.lake.warehouse": "s3://lake/wh",
            },
        ),
        (
            {"format": "iceberg", "catalog": "glue", "warehouse": "s3://lake/wh"},
            {
                "spark.sql.catalog.prodclf": ICEBERG_CATALOG_CLASS,
                "spark.sql.catalog.prodclf.catalog-impl": "org.apache.iceberg.aws.glue.GlueCatalog",
                "spark.sql.catalog.prodclf.io-impl": "org.apache.iceberg.aws.s3.S3FileIO",
                "spark.sql.catalog.prodclf.warehouse": "s3://lake/wh",
            },
        ),
        (
            {"format": "iceberg", "catalog": "rest", "catalog_uri": "http://c:8181"},
            {
                "spark.sql.catalog.prodclf": ICEBERG_CATALOG_CLASS,
                "spark.sql.catalog.prodclf.type": "rest",
                "spark.sql.catalog.prodclf.uri": "http://c:8181",
            },
        ),
        (
            {
                "format": "iceberg",
                "catalog": "rest",
                "catalog_uri": "http://c:8181",
                "warehouse": "wh1",
            },
            {
                "spark.sql.catalog.prodclf": ICEBERG_CATALOG_CLASS,
                "spark.sql.catalog.prodclf.type": "rest",
                "spark.sql.catalog.prodclf.uri": "http://c:8181",
                "spark.sql.catalog.prodclf.warehouse": "wh1",
            },
        ),
    ],
    ids=["parquet", "parquet-rest", "hadoop", "hive", "hive-full", "glue", "rest", "rest-wh"],
)
def test_library_spark_settings(changes: dict, expected: dict) -> None:
    settings = TableFormatConfig(**changes).spark_settings()
    if changes.get("format") == "iceberg":
        expected = {"spark.sql.extensions": ICEBERG_EXTENSIONS, **expected}
    assert settings == expected
    assert ICEBERG_EXTENSIONS == "org.apache.iceberg.spark.extensions.IcebergSparkSessionExtensions"


def test_migrate_to_iceberg() -> None:
    assert MigrateConfig(commodity_library="/c").to is None
    cfg = MigrateConfig.from_sources(
        {"library": {"catalog": "glue", "warehouse": "s3://w"}},
        {"commodity_library": "/c", "to": "iceberg"},
    )
    assert cfg.to == "iceberg"
    # The library's format after the migration: the session gets Iceberg's settings.
    assert (cfg.library.format, cfg.library.catalog) == ("iceberg", "glue")
    assert cfg.library.spark_settings()["spark.sql.extensions"] == ICEBERG_EXTENSIONS
    with pytest.raises(ConfigError) as info:
        MigrateConfig.from_sources({}, {"commodity_library": "/c", "to": "delta"})
    assert str(info.value) == "--to must be one of iceberg, not 'delta'"
