"""The one configuration object, built from an optional YAML file and CLI flags.

Every setting lives in a frozen dataclass, so a job's configuration is a value: it is
built once on the driver, validated there, and passed explicitly to everything that
needs it (including, pickled, to the workers: it is small and has no handles in it).
Precedence: defaults < YAML file < command-line flags.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import date
from pathlib import Path
from typing import Any, TypeVar

import yaml

from prodclf.errors import ConfigError

T = TypeVar("T")

RUN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


@dataclass(frozen=True)
class StorageConfig:
    """How image objects are fetched, and the guards around it."""

    allowed_schemes: tuple[str, ...] = ("s3", "file")
    # Empty means any bucket; otherwise s3:// references to other buckets are refused per row.
    allowed_buckets: tuple[str, ...] = ()
    max_object_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 50_000_000
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 30.0
    retry_mode: str = "standard"
    max_attempts: int = 5
    # Concurrent object fetches (and decodes) per Python worker: hides storage latency.
    fetch_concurrency: int = 16
    # Spark reads/writes Parquet on S3 through Hadoop's s3a connector.
    spark_s3_scheme: str = "s3a"

    def validate(self) -> None:
        _positive(self, "max_object_bytes", "max_pixels", "max_attempts", "fetch_concurrency")
        _positive(self, "connect_timeout_s", "read_timeout_s")
        if self.retry_mode not in ("legacy", "standard", "adaptive"):
            raise ConfigError(
                f"storage.retry_mode must be legacy, standard or adaptive, not {self.retry_mode!r}"
            )
        bad = [s for s in self.allowed_schemes if s not in ("s3", "file")]
        if bad:
            raise ConfigError(f"storage.allowed_schemes: unsupported scheme(s) {', '.join(bad)}")


@dataclass(frozen=True)
class InferenceConfig:
    """Batching and tagging policy on the workers."""

    # Rows per Arrow batch handed to the UDF (spark.sql.execution.arrow.maxRecordsPerBatch).
    arrow_batch_size: int = 256
    # Fixed model batch: every call to the model has this many rows (the tail is padded),
    # so the compiled graph is traced once.
    model_batch_size: int = 64
    # Upper bound on products per inference task (more, smaller tasks retry cheaper).
    rows_per_partition: int = 2000
    top_k: int = 3
    review_threshold: float = 0.6
    # Use the GPUs Spark assigned to the task (spark.task.resource.gpu.amount).
    use_gpu: bool = True

    def validate(self) -> None:
        _positive(self, "arrow_batch_size", "model_batch_size", "top_k", "rows_per_partition")
        if not 0.0 <= self.review_threshold <= 1.0:
            raise ConfigError(
                f"inference.review_threshold must be within [0, 1], not {self.review_threshold}"
            )


@dataclass(frozen=True)
class SparkConfig:
    """Where the session runs. ``master=None`` leaves it to spark-submit (or local[*])."""

    master: str | None = None
    app_name: str = "prodclf"
    shuffle_partitions: int | None = None
    # Extra Spark properties, applied last.
    conf: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class TagConfig:
    """Everything ``prodclf tag`` needs."""

    base_library: str
    commodity_library: str
    model: str
    run_date: date
    run_id: str
    mode: str = "full"
    storage: StorageConfig = field(default_factory=StorageConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    spark: SparkConfig = field(default_factory=SparkConfig)

    def validate(self) -> None:
        for name in ("base_library", "commodity_library", "model"):
            if not getattr(self, name):
                raise ConfigError(f"--{name.replace('_', '-')} is required")
        if not RUN_ID_RE.match(self.run_id):
            raise ConfigError(
                f"--run-id {self.run_id!r}: use letters, digits, '_', '.', '-' (at most 128)"
            )
        if self.mode not in ("full",):
            raise ConfigError(f"mode {self.mode!r} is not supported (supported: full)")
        self.storage.validate()
        self.inference.validate()


def parse_run_date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except (TypeError, ValueError):
        raise ConfigError(f"--run-date {text!r} is not a date in YYYY-MM-DD form") from None


def default_run_id(run_date: date, now_compact: str) -> str:
    return f"{run_date.isoformat()}-{now_compact}"


def load_yaml(path: str | None) -> dict[str, Any]:
    """Read the optional YAML configuration file; a bad file is a ConfigError."""
    if not path:
        return {}
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--config {path}: no such file")
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--config {path}: cannot be read as text ({exc})") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"--config {path}: not valid YAML ({first})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: the top level must be a mapping")
    return data


def section(cls: type[T], data: Mapping[str, Any] | None, name: str) -> T:
    """Build a config section dataclass from a YAML mapping, refusing unknown keys."""
    data = dict(data or {})
    known = {f.name: f for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(
            f"config section {name!r}: unknown key(s) {', '.join(unknown)} "
            f"(known: {', '.join(sorted(known))})"
        )
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        default = getattr(cls(), key) if _has_defaults(cls) else None
        kwargs[key] = _coerce(value, default, f"{name}.{key}")
    return cls(**kwargs)


def with_overrides(obj: T, **overrides: Any) -> T:
    """Apply command-line flags that were actually given (None means not given)."""
    given = {k: v for k, v in overrides.items() if v is not None}
    return replace(obj, **given) if given else obj  # type: ignore[type-var]


def _has_defaults(cls: type) -> bool:
    return all(
        f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        for f in fields(cls)
    )


def _coerce(value: Any, default: Any, where: str) -> Any:
    if isinstance(default, tuple):
        if isinstance(value, Mapping):
            return tuple((str(k), str(v)) for k, v in value.items())
        if isinstance(value, (list, tuple)):
            return tuple(str(v) for v in value)
        raise ConfigError(f"{where}: expected a list, found {type(value).__name__}")
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, found {value!r}")
        return value
    if isinstance(default, (int, float)) and not isinstance(default, bool):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, found {value!r}")
        if isinstance(default, float):
            return float(value)
        if isinstance(value, float) and not value.is_integer():
            raise ConfigError(f"{where}: expected a whole number, found {value!r}")
        return int(value)
    return value


def _positive(obj: object, *names: str) -> None:
    section_name = type(obj).__name__.removesuffix("Config").lower()
    for name in names:
        value = getattr(obj, name)
        if value <= 0:
            raise ConfigError(f"{section_name}.{name} must be positive, not {value}")


@dataclass(frozen=True)
class TrainConfig:
    """Everything ``prodclf train`` needs (the minimal trainer: a small CNN)."""

    base_library: str
    model_out: str
    label_column: str = "label"
    # Optional YAML/JSON mapping {label name: taxonomy id}; without it the id is the name.
    label_map: str | None = None
    image_height: int = 28
    image_width: int = 28
    color_mode: str = "grayscale"
    scale: str = "unit"
    epochs: int = 5
    batch_size: int = 128
    learning_rate: float = 1e-3
    validation_fraction: float = 0.1
    seed: int = 42
    limit: int | None = None
    model_name: str = "prodclf-small-cnn"
    model_version: str | None = None
    storage: StorageConfig = field(default_factory=StorageConfig)
    spark: SparkConfig = field(default_factory=SparkConfig)

    def validate(self) -> None:
        if not self.base_library:
            raise ConfigError("--base-library is required")
        if not self.model_out:
            raise ConfigError("--model-out is required")
        _positive(self, "image_height", "image_width", "epochs", "batch_size", "learning_rate")
        if self.color_mode not in ("rgb", "grayscale"):
            raise ConfigError(f"--color-mode must be rgb or grayscale, not {self.color_mode!r}")
        if self.scale not in ("unit", "symmetric", "raw"):
            raise ConfigError(f"--scale must be unit, symmetric or raw, not {self.scale!r}")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ConfigError(
                f"--validation-fraction must be within [0, 1), not {self.validation_fraction}"
            )
        if self.limit is not None and self.limit <= 0:
            raise ConfigError(f"--limit must be positive, not {self.limit}")
        self.storage.validate()
