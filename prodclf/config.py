"""The one configuration object, built from an optional YAML file and CLI flags.

Every setting lives in a frozen dataclass, so a job's configuration is a value: it is
built once on the driver, validated as it is constructed (``__post_init__``), and passed
explicitly to everything that needs it (including, pickled, to the workers: it is small
and has no handles in it). A job's configuration builds itself from both sources with
``from_sources``: defaults < YAML file < any non-None flag named like a field.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import date, datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import yaml

from prodclf.errors import ConfigError, ErrorCode
from prodclf.model.catalog import ARCHITECTURES, CUSTOM, FUSIONS
from prodclf.schemas import MODES

T = TypeVar("T")
J = TypeVar("J", bound="JobConfig")

RUN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
DATABASE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
#: Error codes an incremental run retries by default: the store or the model failed, not
#: the image; retrying the others (not_found, undecodable_image...) needs a new image.
RETRYABLE_CODES = (ErrorCode.FETCH_FAILED.value, ErrorCode.INFERENCE_FAILED.value)
CATALOG_IMPLEMENTATIONS = ("hive", "in-memory")


class Validated:
    """A config dataclass that checks itself once, when it is constructed (or replaced)."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ConfigError`` naming the first bad value."""


@dataclass(frozen=True)
class StorageConfig(Validated):
    """How image objects are fetched, and the guards around it."""

    allowed_schemes: tuple[str, ...] = ("s3", "file")
    # Empty means any bucket; otherwise s3:// references to other buckets are refused per row.
    allowed_buckets: tuple[str, ...] = ()
    max_object_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 50_000_000
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 30.0
    # Wall-clock budget for one object, all attempts and the body included.
    fetch_deadline_s: float = 120.0
    retry_mode: str = "standard"
    max_attempts: int = 5
    # Concurrent object fetches (and decodes) per Python worker: hides storage latency.
    fetch_concurrency: int = 16
    # Memory per Python worker for images being decoded (compressed input + estimated
    # working pixels): large images wait for their share instead of decoding all at once.
    decode_memory_bytes: int = 512 * 1024 * 1024
    # Spark reads/writes Parquet on S3 through Hadoop's s3a connector.
    spark_s3_scheme: str = "s3a"
    # The first attempt of each image GET is signed by prodclf and sent on boto3's own
    # connection pool, skipping botocore's request pipeline (a third of its CPU per object);
    # retries and unusual answers always go through boto3. False: every GET through boto3
    # (as with max_attempts 1 or retry_mode adaptive).
    direct_get: bool = True

    def validate(self) -> None:
        _positive(self, "max_object_bytes", "max_pixels", "max_attempts", "fetch_concurrency")
        _positive(self, "decode_memory_bytes")
        _positive(self, "connect_timeout_s", "read_timeout_s", "fetch_deadline_s")
        if self.retry_mode not in ("legacy", "standard", "adaptive"):
            raise ConfigError(
                f"storage.retry_mode must be legacy, standard or adaptive, not {self.retry_mode!r}"
            )
        bad = [s for s in self.allowed_schemes if s not in ("s3", "file")]
        if bad:
            raise ConfigError(f"storage.allowed_schemes: unsupported scheme(s) {', '.join(bad)}")


ENGINES = ("auto", "tensorflow")


@dataclass(frozen=True)
class InferenceConfig(Validated):
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
    # TensorFlow threads per Python worker; 0: the task's CPUs (spark.task.cpus), so the
    # tasks running at once on an executor share its cores instead of oversubscribing them.
    tf_threads: int = 0
    # auto: on CPUs, the bundle's LiteRT model when it has one (prodclf.model.lite), else
    # TensorFlow; tensorflow: always the SavedModel. GPUs always run TensorFlow.
    engine: str = "auto"

    def validate(self) -> None:
        _positive(self, "arrow_batch_size", "model_batch_size", "top_k", "rows_per_partition")
        if self.engine not in ENGINES:
            raise ConfigError(
                f"inference.engine must be one of {', '.join(ENGINES)}, not {self.engine!r}"
            )
        if self.tf_threads < 0:
            raise ConfigError(
                f"inference.tf_threads must be 0 (auto) or more, not {self.tf_threads}"
            )
        if not 0.0 <= self.review_threshold <= 1.0:
            raise ConfigError(
                f"inference.review_threshold must be within [0, 1], not {self.review_threshold}"
            )


@dataclass(frozen=True)
class ChecksConfig(Validated):
    """When a run as a whole has failed: judged before anything is published.

    A run fails (exit 3, nothing written) when more than ``max_error_rate`` of its
    products are error rows, or more than a code's limit in ``max_code_rates`` carry that
    code, provided at least ``min_error_rows`` rows are concerned (so a tiny catalog is not
    judged on a handful of rows).
    """

    max_error_rate: float = 0.5
    min_error_rows: int = 10
    # error code -> largest tolerated share of products; the store failing as a whole and
    # prodclf's own bugs are not a matter of individual products.
    max_code_rates: tuple[tuple[str, float], ...] = (
        ("store_unavailable", 0.0),
        ("internal_error", 0.01),
    )
    # Sample objects of the catalog fetched before any Spark work (0: no probe).
    probe_objects: int = 3

    def validate(self) -> None:
        if not 0.0 <= self.max_error_rate <= 1.0:
            raise ConfigError(
                f"checks.max_error_rate must be within [0, 1], not {self.max_error_rate}"
            )
        if self.min_error_rows < 1:
            raise ConfigError(f"checks.min_error_rows must be positive, not {self.min_error_rows}")
        if self.probe_objects < 0:
            raise ConfigError(f"checks.probe_objects must be >= 0, not {self.probe_objects}")
        codes = {c.value for c in ErrorCode}
        rates = []
        for code, rate in self.max_code_rates:
            if code not in codes:
                raise ConfigError(f"checks.max_code_rates: unknown error code {code!r}")
            try:
                value = float(rate)
            except ValueError:
                raise ConfigError(f"checks.max_code_rates.{code}: expected a number") from None
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"checks.max_code_rates.{code} must be within [0, 1]")
            rates.append((code, value))
        object.__setattr__(self, "max_code_rates", tuple(rates))


@dataclass(frozen=True)
class SparkConfig(Validated):
    """Where the session runs. ``master=None`` leaves it to spark-submit (or local[*])."""

    master: str | None = None
    app_name: str = "prodclf"
    shuffle_partitions: int | None = None
    # The Spark SQL catalog: hive (the metastore: embedded Derby locally, the cluster's
    # metastore or Glue in production) or in-memory. None: hive when --database is given.
    catalog_implementation: str | None = None
    # Embedded Derby metastore directory (local runs); None leaves it to hive-site.xml.
    metastore_dir: str | None = None
    # spark.sql.warehouse.dir (managed tables only; prodclf's tables are external).
    warehouse_dir: str | None = None
    # Extra Spark properties, applied last.
    conf: tuple[tuple[str, str], ...] = ()

    def validate(self) -> None:
        if self.shuffle_partitions is not None:
            _positive(self, "shuffle_partitions")
        if self.catalog_implementation not in (None, *CATALOG_IMPLEMENTATIONS):
            raise ConfigError(
                "spark.catalog_implementation must be hive or in-memory, "
                f"not {self.catalog_implementation!r}"
            )


TABLE_FORMATS = ("parquet", "iceberg")
ICEBERG_CATALOGS = ("hadoop", "hive", "glue", "rest")
ICEBERG_EXTENSIONS = "org.apache.iceberg.spark.extensions.IcebergSparkSessionExtensions"
ICEBERG_SPARK_CATALOG = "org.apache.iceberg.spark.SparkCatalog"


@dataclass(frozen=True)
class TableFormatConfig(Validated):
    """The commodity library's table format (YAML section ``library``).

    ``parquet``: prodclf's own layout of Parquet files. ``iceberg``: Apache Iceberg tables
    ``tags_history``, ``tags_current`` and ``runs`` in ``namespace`` of a catalog: ``hadoop``
    (embedded: a Hadoop catalog the library registers itself, its warehouse
    ``<commodity_library>/iceberg``), ``hive`` (the Hive metastore), ``glue`` (AWS Glue; the
    job also needs Iceberg's AWS bundle jar) or ``rest`` (an Iceberg REST catalog). The
    Iceberg Spark runtime comes with the submission: ``--packages
    org.apache.iceberg:iceberg-spark-runtime-3.5_2.12:1.10.2`` (``-4.0_2.13`` on Spark 4).
    """

    format: str = "parquet"
    catalog: str = "hadoop"
    # The Spark catalog name of a hive, glue or rest catalog (spark.sql.catalog.<name>).
    catalog_name: str = "prodclf"
    # The Iceberg namespace (database) of the library's tables.
    namespace: str = "prodclf"
    # rest: the catalog's URI (required); hive: the metastore's thrift URI (default:
    # hive-site.xml's).
    catalog_uri: str | None = None
    # hive, glue, rest: the warehouse location (glue requires it).
    warehouse: str | None = None

    def validate(self) -> None:
        if self.format not in TABLE_FORMATS:
            raise ConfigError(
                f"library.format must be one of {', '.join(TABLE_FORMATS)}, not {self.format!r}"
            )
        if self.catalog not in ICEBERG_CATALOGS:
            raise ConfigError(
                f"library.catalog must be one of {', '.join(ICEBERG_CATALOGS)}, "
                f"not {self.catalog!r}"
            )
        for name in ("catalog_name", "namespace"):
            value = getattr(self, name)
            if not DATABASE_RE.match(value):
                raise ConfigError(
                    f"library.{name} {value!r}: use letters, digits and '_' (an identifier)"
                )
        if self.catalog_name == "spark_catalog":
            raise ConfigError(
                "library.catalog_name 'spark_catalog' is Spark's session catalog; name another"
            )
        for name in ("catalog_uri", "warehouse"):
            if getattr(self, name) == "":
                raise ConfigError(f"library.{name} is empty")
        if self.catalog == "rest" and not self.catalog_uri:
            raise ConfigError("library.catalog rest needs library.catalog_uri (--iceberg-uri)")
        if self.catalog == "glue" and not self.warehouse:
            raise ConfigError("library.catalog glue needs library.warehouse (--iceberg-warehouse)")
        if self.catalog_uri and self.catalog not in ("hive", "rest"):
            raise ConfigError(
                f"library.catalog_uri is for the hive and rest catalogs, not {self.catalog}"
            )
        if self.warehouse and self.catalog == "hadoop":
            raise ConfigError(
                "library.warehouse is for the hive, glue and rest catalogs: the hadoop "
                "catalog's warehouse is <commodity_library>/iceberg"
            )

    def spark_settings(self) -> dict[str, str]:
        """The static Spark settings an Iceberg library needs before the session starts.

        None for Parquet. For Iceberg: the SQL extensions (MERGE INTO, CALL), and the
        catalog of a hive, glue or rest library. The hadoop catalog is registered at run
        time by the library code (its warehouse is inside the library).
        """
        if self.format != "iceberg":
            return {}
        settings = {"spark.sql.extensions": ICEBERG_EXTENSIONS}
        if self.catalog == "hadoop":
            return settings
        prefix = f"spark.sql.catalog.{self.catalog_name}"
        settings[prefix] = ICEBERG_SPARK_CATALOG
        if self.catalog == "glue":
            settings[f"{prefix}.catalog-impl"] = "org.apache.iceberg.aws.glue.GlueCatalog"
            settings[f"{prefix}.io-impl"] = "org.apache.iceberg.aws.s3.S3FileIO"
        else:
            settings[f"{prefix}.type"] = self.catalog
            if self.catalog_uri:
                settings[f"{prefix}.uri"] = self.catalog_uri
        if self.warehouse:
            settings[f"{prefix}.warehouse"] = self.warehouse
        return settings


#: The YAML sections shared by the jobs, and the dataclass each one builds.
SECTIONS: dict[str, type[Validated]] = {
    "storage": StorageConfig,
    "inference": InferenceConfig,
    "spark": SparkConfig,
    "checks": ChecksConfig,
    "library": TableFormatConfig,
}


class JobConfig(Validated):
    """A job's whole configuration: its own fields plus the shared sections it uses.

    ``own_section`` names the YAML section holding the job's own fields (``train``), if
    any; ``command`` names the job in the Spark application name.
    """

    own_section: ClassVar[str | None] = None
    command: ClassVar[str] = ""
    if TYPE_CHECKING:  # every job has a ``spark`` section (a dataclass field of the subclass)
        spark: SparkConfig

    def __post_init__(self) -> None:
        spark = getattr(self, "spark", None)
        if isinstance(spark, SparkConfig) and spark.app_name == SparkConfig.app_name:
            object.__setattr__(self, "spark", replace(spark, app_name=self.app_name()))
        super().__post_init__()

    def app_name(self) -> str:
        return f"prodclf-{self.command}"

    @classmethod
    def from_sources(cls: type[J], data: Mapping[str, Any], flags: Mapping[str, Any]) -> J:
        """Defaults < the YAML mapping ``data`` < every non-None flag named like a field.

        A flag applies to the job's own field of that name and to the same-named field of
        every section (``master`` -> ``spark.master``, ``top_k`` -> ``inference.top_k``).
        Unknown YAML sections and keys are refused by name; values are type-checked.
        """
        given = {k: v for k, v in flags.items() if v is not None}
        own_fields = {f.name: f for f in fields(cls) if f.name not in SECTIONS}  # type: ignore[arg-type]
        sections = [f.name for f in fields(cls) if f.name in SECTIONS]  # type: ignore[arg-type]
        # One file serves every command of a schedule: the sections of other commands are
        # passed over; a section no command has is refused (a misspelt name).
        unknown = sorted(set(data) - all_sections())
        if unknown:
            raise ConfigError(
                f"configuration: unknown section(s) {', '.join(unknown)} "
                f"(known: {', '.join(sorted(all_sections()))})"
            )
        kwargs: dict[str, Any] = {
            name: section(SECTIONS[name], data.get(name), name, given) for name in sections
        }
        own = dict(data.get(cls.own_section) or {}) if cls.own_section else {}
        unknown = sorted(set(own) - set(own_fields))
        if unknown:
            raise ConfigError(
                f"config section {cls.own_section!r}: unknown key(s) {', '.join(unknown)}"
            )
        for name, f in own_fields.items():
            if name in given:
                kwargs[name] = coerce_field(f, given[name], "--" + name.replace("_", "-"))
            elif name in own:
                kwargs[name] = coerce_field(f, own[name], f"{cls.own_section}.{name}")
        return cls(**kwargs)


def all_sections() -> set[str]:
    """Every YAML section some command reads: the shared ones and each job's own."""
    found = set(SECTIONS)
    todo: list[type[JobConfig]] = [JobConfig]
    while todo:
        cls = todo.pop()
        if cls.own_section:
            found.add(cls.own_section)
        todo.extend(cls.__subclasses__())
    return found


@dataclass(frozen=True)
class TagConfig(JobConfig):
    """Everything ``prodclf tag`` needs. ``run_id`` defaults to ``<run_date>-<UTC time>``.

    ``mode`` chooses the products: ``full`` (all), ``incremental`` (those that need a tag,
    decided against ``tags_current``) or ``backfill`` (``products`` AND ``where`` AND
    ``retry_errors``, each optional, at least one given).
    """

    own_section: ClassVar[str | None] = "tag"
    command: ClassVar[str] = "tag"

    base_library: str
    commodity_library: str
    model: str
    run_date: date
    run_id: str = ""
    mode: str = "full"
    # backfill: a text (one id a line), CSV (a product_id column) or Parquet list of ids.
    products: str | None = None
    # backfill: a Spark SQL predicate over the base library's columns.
    where: str | None = None
    # backfill: products whose current tag is an error.
    retry_errors: bool = False
    # Count what would be tagged, and why; write nothing.
    dry_run: bool = False
    # Register tags_history, tags_current and runs in this Spark SQL database.
    database: str | None = None
    # incremental: a base library column whose change means a new image (image_updated_at,
    # an etag); compared as text with what the latest attempt saw.
    change_column: str | None = None
    # incremental: error codes worth retrying with the same image.
    retry_codes: tuple[str, ...] = RETRYABLE_CODES
    # Seconds between progress lines on the driver (0: none).
    progress_interval_s: float = 30.0
    # The library lock's lease; the running job renews it every lock_ttl_s / 3.
    lock_ttl_s: float = 900.0
    storage: StorageConfig = field(default_factory=StorageConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    spark: SparkConfig = field(default_factory=SparkConfig)
    checks: ChecksConfig = field(default_factory=ChecksConfig)
    library: TableFormatConfig = field(default_factory=TableFormatConfig)

    def __post_init__(self) -> None:
        if not self.run_id:
            now = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
            object.__setattr__(self, "run_id", default_run_id(self.run_date, now))
        _hive_for_database(self)
        super().__post_init__()

    def app_name(self) -> str:
        return f"prodclf-tag-{self.run_id}"

    @property
    def selection(self) -> dict[str, Any]:
        """The run's selection as the manifest records it."""
        sel: dict[str, Any] = {"mode": self.mode}
        if self.mode == "backfill":
            sel.update(products=self.products, where=self.where, retry_errors=self.retry_errors)
        if self.mode == "incremental":
            sel.update(change_column=self.change_column, retry_codes=list(self.retry_codes))
        return sel

    def validate(self) -> None:
        for name in ("base_library", "commodity_library", "model"):
            if not getattr(self, name):
                raise ConfigError(f"--{name.replace('_', '-')} is required")
        if not RUN_ID_RE.match(self.run_id):
            raise ConfigError(
                f"--run-id {self.run_id!r}: use letters, digits, '_', '.', '-' (at most 128)"
            )
        if self.mode not in MODES:
            raise ConfigError(f"--mode must be one of {', '.join(MODES)}, not {self.mode!r}")
        chosen = [
            flag
            for flag, given in (
                ("--products", self.products),
                ("--where", self.where),
                ("--retry-errors", self.retry_errors),
            )
            if given
        ]
        if self.mode == "backfill" and not chosen:
            raise ConfigError(
                "--mode backfill needs a selection: --products URI, --where PREDICATE "
                "and/or --retry-errors"
            )
        if self.mode != "backfill" and chosen:
            raise ConfigError(f"{', '.join(chosen)} select a backfill; add --mode backfill")
        if self.where is not None and not self.where.strip():
            raise ConfigError("--where is empty")
        if self.change_column is not None and not self.change_column.strip():
            raise ConfigError("--change-column is empty")
        known = {c.value for c in ErrorCode}
        bad = [c for c in self.retry_codes if c not in known]
        if bad:
            raise ConfigError(
                f"retry_codes: unknown error code(s) {', '.join(bad)} "
                f"(known: {', '.join(sorted(known))})"
            )
        _check_database(self.database)
        if self.progress_interval_s < 0:
            raise ConfigError(
                f"--progress-interval-s must not be negative, not {self.progress_interval_s}"
            )
        _positive(self, "lock_ttl_s")


def _hive_for_database(cfg: Any) -> None:
    """A database is registered in the metastore: --database turns Hive support on."""
    spark = cfg.spark
    if cfg.database and spark.catalog_implementation is None:
        object.__setattr__(cfg, "spark", replace(spark, catalog_implementation="hive"))


def _check_database(name: str | None) -> None:
    if name is not None and not DATABASE_RE.match(name):
        raise ConfigError(f"--database {name!r}: use letters, digits and '_' (a SQL identifier)")


@dataclass(frozen=True)
class LibraryConfig(JobConfig):
    """A command on a commodity library as a whole (vacuum, migrate, report)."""

    commodity_library: str
    database: str | None = None
    storage: StorageConfig = field(default_factory=StorageConfig)
    spark: SparkConfig = field(default_factory=SparkConfig)
    library: TableFormatConfig = field(default_factory=TableFormatConfig)

    def __post_init__(self) -> None:
        _hive_for_database(self)
        super().__post_init__()

    def validate(self) -> None:
        if not self.commodity_library:
            raise ConfigError("--commodity-library is required")
        _check_database(self.database)


@dataclass(frozen=True)
class VacuumConfig(LibraryConfig):
    """``prodclf vacuum``: history runs and manifests older than ``keep_days`` go."""

    command: ClassVar[str] = "vacuum"

    keep_days: int = 90
    apply: bool = False
    today: date | None = None  # default: today (UTC); for tests and replays

    def validate(self) -> None:
        super().validate()
        if self.keep_days < 0:
            raise ConfigError(f"--keep-days must not be negative, not {self.keep_days}")


MIGRATE_TARGETS = ("iceberg",)


@dataclass(frozen=True)
class MigrateConfig(LibraryConfig):
    """``prodclf migrate``: upgrade a library of the first layout in place, or, with
    ``to="iceberg"``, convert a Parquet library to Iceberg tables.

    ``to="iceberg"`` makes ``library.format`` iceberg: the rest of the ``library`` section
    (catalog, namespace...) says where the tables go, and the session gets Iceberg's settings.
    """

    command: ClassVar[str] = "migrate"

    to: str | None = None

    def __post_init__(self) -> None:
        if self.to == "iceberg" and self.library.format != "iceberg":
            object.__setattr__(self, "library", replace(self.library, format="iceberg"))
        super().__post_init__()

    def validate(self) -> None:
        super().validate()
        if self.to not in (None, *MIGRATE_TARGETS):
            raise ConfigError(f"--to must be one of {', '.join(MIGRATE_TARGETS)}, not {self.to!r}")


@dataclass(frozen=True)
class ReportConfig(LibraryConfig):
    """``prodclf report``: rebuild a run's HTML report (beside its manifest, or ``out``)."""

    command: ClassVar[str] = "report"

    run_id: str = ""
    out: str | None = None

    def validate(self) -> None:
        super().validate()
        if not RUN_ID_RE.match(self.run_id):
            raise ConfigError(f"run id {self.run_id!r} is not a valid run id")


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


def section(
    cls: type[T],
    data: Mapping[str, Any] | None,
    name: str,
    flags: Mapping[str, Any] | None = None,
) -> T:
    """A config section from a YAML mapping (unknown keys refused), then ``flags`` by name."""
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
        kwargs[key] = coerce_field(known[key], value, f"{name}.{key}")
    for key, value in (flags or {}).items():
        if key in known and value is not None:
            kwargs[key] = coerce_field(known[key], value, "--" + key.replace("_", "-"))
    return cls(**kwargs)


def coerce_field(f: dataclasses.Field[Any], value: Any, where: str) -> Any:
    """Check and convert a YAML value to the field's declared type (``int | None`` etc.)."""
    annotation = str(f.type).replace(" ", "")
    optional = annotation.endswith("|None")
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{where}: a value is required, found null")
    base = annotation.removesuffix("|None")
    if base == "date":
        return value if isinstance(value, date) else parse_run_date(value)
    samples: dict[str, Any] = {"int": 0, "float": 0.0, "bool": False, "str": ""}
    if base in samples:
        if base == "str":
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise ConfigError(f"{where}: expected text, found {value!r}")
            return str(value)
        return _coerce(value, samples[base], where)
    if base.startswith("tuple"):
        return _coerce(value, (), where)
    if f.default is not dataclasses.MISSING:
        return _coerce(value, f.default, where)
    return value


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


SPLITS = ("train", "validation", "test")
TRAIN, VALIDATION, TEST = SPLITS
#: Split values accepted in a split column, and what they mean.
SPLIT_ALIASES = {
    "train": TRAIN,
    "training": TRAIN,
    "val": VALIDATION,
    "valid": VALIDATION,
    "validation": VALIDATION,
    "dev": VALIDATION,
    "test": TEST,
    "testing": TEST,
}
AUGMENTATIONS = ("none", "flip", "flip+shift", "light", "standard")
CLASS_WEIGHTS = ("auto", "none", "balanced")
BACKBONE_INITS = ("file", "random")
LR_SCHEDULES = ("plateau", "cosine")
#: The default label smoothing of pretrained backbones (``TrainConfig.label_smoothing``).
PRETRAINED_LABEL_SMOOTHING = 0.1


@dataclass(frozen=True)
class TrainConfig(JobConfig):
    """Everything ``prodclf train`` needs; its own keys live in the YAML section ``train``.

    ``image_height``/``image_width``/``color_mode``/``scale`` left as None take the
    architecture's defaults (see ``prodclf.model.catalog.architecture_info``).
    """

    own_section: ClassVar[str | None] = "train"
    command: ClassVar[str] = "train"

    base_library: str
    model_out: str
    label_column: str = "label"
    # A separate Parquet table (product_id + label column) joined on product_id.
    labels: str | None = None
    # A column with train/validation/test per product; without it a hash split is used.
    split_column: str | None = None
    # Optional YAML/JSON mapping {label name: taxonomy id}; without it the id is the name.
    label_map: str | None = None
    # Optional taxonomy file (Google Product Taxonomy format) the label map is checked against.
    taxonomy: str | None = None
    architecture: str = "small_cnn"
    # "none", "imagenet" (downloaded by Keras) or a local weights file for the backbone.
    weights: str = "none"
    # A Keras model file (.keras, standard layers only) used as the pretrained backbone
    # instead of a built-in architecture (which is then "custom"); input size from the file.
    backbone: str | None = None
    # file: start from the backbone file's weights (pretrained); random: the file's
    # architecture with freshly initialised weights, trained from scratch in one phase,
    # every layer trainable (BatchNorm included) -- the "scratch" arm of an ablation.
    backbone_init: str = "file"
    alpha: float = 1.0
    image_height: int | None = None
    image_width: int | None = None
    color_mode: str | None = None
    scale: str | None = None
    trainable_fraction: float = 0.75
    # Pretrained backbones train in two phases: head_epochs with the backbone frozen (on
    # features computed once, unless fusion needs pixels), then `epochs` of fine-tuning.
    # None: 30 for a pretrained backbone (3 with fusion; early stopping applies), else 0.
    head_epochs: int | None = None
    # Peak learning rate of the head while fine-tuning (default: 0.3 x learning_rate),
    # reached after warmup_epochs and decayed to 0 by a cosine over the remaining epochs.
    fine_tune_learning_rate: float | None = None
    # The backbone's learning rate while fine-tuning is this times the head's.
    backbone_lr_multiplier: float = 0.3
    warmup_epochs: int = 1
    dropout: float = 0.3
    # Label smoothing of the cross-entropy (0: none): the target puts 1 - s + s/k on the
    # true class and s/k on each other one, in both phases. None: 0.1 with a pretrained
    # backbone (the Grocery Store recipe's 84.3% -> 85.2%), else 0.
    label_smoothing: float | None = None
    fusion: str = "none"
    # none; flip (horizontal flips only); flip+shift (flips and pad-and-random-crop: whole-
    # pixel shifts of up to 8% of the side, zero fill; for small centred thumbnails such as
    # Fashion-MNIST); light (flips and interpolated 10% shifts, reflected borders); standard
    # (also rotation, zoom, brightness, contrast: photos).
    augmentation: str = "standard"
    # Occlusion and background-clutter "noise images" on top of the augmentation.
    noise: bool = True
    epochs: int = 5
    batch_size: int = 128
    learning_rate: float = 1e-3
    # One-phase training (no pretrained backbone): plateau multiplies the learning rate by
    # lr_factor after lr_patience epochs without a better validation accuracy, never below
    # min_learning_rate; cosine warms up over warmup_epochs to learning_rate and decays it
    # to 0 over `epochs`. (Fine-tuning after the head-only phase always uses the cosine.)
    lr_schedule: str = "plateau"
    lr_patience: int = 2
    lr_factor: float = 0.5
    min_learning_rate: float = 1e-5
    # Stop after this many epochs without improvement (0: never); best weights are kept.
    early_stopping_patience: int = 5
    # auto: balanced when the training labels are skewed (largest/smallest count >= 1.5).
    class_weights: str = "auto"
    # Fit temperature scaling on the validation split; stored in the bundle, applied at tag time.
    calibrate: bool = True
    validation_fraction: float = 0.1
    test_fraction: float = 0.1
    seed: int = 42
    limit: int | None = None
    # Parallel Parquet readers feeding tf.data (petastorm workers).
    reader_workers: int = 2
    # Local directory for petastorm's materialized training data (default: a temp dir).
    cache_dir: str | None = None
    # Local directory for per-improvement weight checkpoints (default: inside cache_dir).
    checkpoint_dir: str | None = None
    # The needs_review threshold recommended in the test report reaches this precision.
    target_precision: float = 0.95
    model_name: str | None = None
    model_version: str | None = None
    storage: StorageConfig = field(default_factory=StorageConfig)
    spark: SparkConfig = field(default_factory=SparkConfig)

    def validate(self) -> None:
        if not self.base_library:
            raise ConfigError("--base-library is required")
        if not self.model_out:
            raise ConfigError("--model-out is required")
        _positive(self, "batch_size", "learning_rate", "alpha", "reader_workers")
        _positive(self, "lr_factor", "min_learning_rate", "backbone_lr_multiplier")
        for name in ("image_height", "image_width", "limit", "fine_tune_learning_rate"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"train.{name} must be positive, not {value}")
        if self.backbone is not None:
            if not self.backbone:
                raise ConfigError("--backbone needs a Keras model file")
            if self.architecture not in ("small_cnn", CUSTOM):
                raise ConfigError(
                    f"--backbone replaces --architecture (leave it out or say {CUSTOM}), "
                    f"not {self.architecture!r}"
                )
            if self.weights != "none":
                raise ConfigError("--backbone: the file carries its weights; leave --weights out")
        if self.backbone_init not in BACKBONE_INITS:
            raise ConfigError(f"--backbone-init must be file or random, not {self.backbone_init!r}")
        if self.backbone_init != "file" and self.backbone is None:
            raise ConfigError("--backbone-init random needs --backbone FILE")
        if self.backbone is None and self.architecture not in ARCHITECTURES:
            raise ConfigError(
                f"--architecture {self.architecture!r} is not one of {', '.join(ARCHITECTURES)}"
            )
        if self.fusion not in FUSIONS:
            raise ConfigError(f"--fusion must be none or gray+rgb, not {self.fusion!r}")
        if self.color_mode not in (None, "rgb", "grayscale"):
            raise ConfigError(f"--color-mode must be rgb or grayscale, not {self.color_mode!r}")
        if self.scale not in (None, "unit", "symmetric", "raw"):
            raise ConfigError(f"--scale must be unit, symmetric or raw, not {self.scale!r}")
        if self.augmentation not in AUGMENTATIONS:
            raise ConfigError(
                f"--augmentation must be one of {', '.join(AUGMENTATIONS)}, "
                f"not {self.augmentation!r}"
            )
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"--lr-schedule must be plateau or cosine, not {self.lr_schedule!r}")
        if self.class_weights not in CLASS_WEIGHTS:
            raise ConfigError(
                f"--class-weights must be auto, none or balanced, not {self.class_weights!r}"
            )
        if not self.weights:
            raise ConfigError("--weights must be none, imagenet or a weights file")
        if self.architecture == "small_cnn" and self.weights not in ("none",):
            raise ConfigError("--weights: small_cnn has no pretrained weights; use none")
        _fraction(self, "trainable_fraction", closed=True)
        _fraction(self, "dropout", closed=False)
        if self.label_smoothing is not None:
            _fraction(self, "label_smoothing", closed=False)
        if not 0.0 < self.lr_factor < 1.0:
            raise ConfigError(f"train.lr_factor must be within (0, 1), not {self.lr_factor}")
        if not 0.0 < self.target_precision <= 1.0:
            raise ConfigError(
                f"train.target_precision must be within (0, 1], not {self.target_precision}"
            )
        for name in ("epochs", "head_epochs", "lr_patience", "early_stopping_patience"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ConfigError(f"train.{name} must not be negative, not {value}")
        if self.warmup_epochs < 0:
            raise ConfigError(f"train.warmup_epochs must not be negative, not {self.warmup_epochs}")
        if self.epochs == 0 and not (self.pretrained and self.resolved_head_epochs):
            raise ConfigError("--epochs 0 needs a pretrained backbone and --head-epochs above 0")
        if self.split_column is None:
            for name in ("validation_fraction", "test_fraction"):
                _fraction(self, name, closed=False)
            if self.validation_fraction + self.test_fraction >= 1.0:
                raise ConfigError(
                    "--validation-fraction plus --test-fraction must leave images to train on"
                )

    @property
    def pretrained(self) -> bool:
        """A pretrained backbone: a backbone file, or weights for a built-in architecture."""
        if self.backbone is not None:
            return self.backbone_init == "file"
        return self.architecture != "small_cnn" and self.weights != "none"

    @property
    def resolved_label_smoothing(self) -> float:
        """``label_smoothing``, or its default: 0.1 with a pretrained backbone, else 0."""
        if self.label_smoothing is not None:
            return self.label_smoothing
        return PRETRAINED_LABEL_SMOOTHING if self.pretrained else 0.0

    @property
    def resolved_head_epochs(self) -> int:
        """``head_epochs``, or its default: 30 (3 with fusion) when pretrained, else 0."""
        if self.head_epochs is not None:
            return self.head_epochs if self.pretrained else 0
        if not self.pretrained:
            return 0
        return 3 if self.fusion != "none" else 30


def _fraction(obj: object, name: str, *, closed: bool) -> None:
    """``[0, 1]`` when closed, else ``[0, 1)``."""
    value = getattr(obj, name)
    ok = 0.0 <= value <= 1.0 if closed else 0.0 <= value < 1.0
    if not ok:
        interval = "[0, 1]" if closed else "[0, 1)"
        raise ConfigError(f"train.{name} must be within {interval}, not {value}")


@dataclass(frozen=True)
class EvaluateConfig(JobConfig):
    """Everything ``prodclf evaluate`` needs.

    Either ``model`` (classify the labelled products now, with the tagging job's code) or
    ``commodity_library`` + ``run_date`` (score the tags a run already wrote).
    """

    command: ClassVar[str] = "evaluate"

    labels: str
    out: str
    label_column: str = "label"
    model: str | None = None
    commodity_library: str | None = None
    run_date: date | None = None
    run_id: str | None = None
    split_column: str | None = None
    split: str = "test"
    target_precision: float = 0.95
    storage: StorageConfig = field(default_factory=StorageConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    spark: SparkConfig = field(default_factory=SparkConfig)
    # The format of --commodity-library (scoring a run's tags).
    library: TableFormatConfig = field(default_factory=TableFormatConfig)

    def validate(self) -> None:
        if not self.labels:
            raise ConfigError("--labels is required")
        if not self.out:
            raise ConfigError("--out is required")
        if (self.model is None) == (self.commodity_library is None):
            raise ConfigError("give exactly one of --model or --commodity-library")
        if self.commodity_library is not None and self.run_date is None:
            raise ConfigError("--commodity-library needs --run-date")
        if not 0.0 < self.target_precision <= 1.0:
            raise ConfigError(
                f"--target-precision must be within (0, 1], not {self.target_precision}"
            )
