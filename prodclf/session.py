"""The one place a SparkSession is created; everything else receives it as an argument."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping

import pyspark
from pyspark.sql import SparkSession

from prodclf.config import SparkConfig

log = logging.getLogger(__name__)

#: Spark 4.0+ also caps each Arrow batch in bytes, beside maxRecordsPerBatch
#: (``spark.conf`` in --config overrides it; see infra/spark/spark-defaults.conf).
ARROW_MAX_BYTES_PER_BATCH = "64m"
#: A list setting: a job's extensions are added to those already set, never replace them.
EXTENSIONS = "spark.sql.extensions"

#: What prodclf's correctness needs, whatever the launcher says (``--conf`` still wins;
#: a launcher value that differs is logged, then replaced). Why each:
REQUIRED = {
    # The tagging UDFs are pandas UDFs: their input and output are Arrow batches.
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    # v2 can publish a failed task's output. On S3 the v1 job commit is a non-atomic copy +
    # delete; safe because a run's files are published only by its commit (docs/library.md).
    "spark.hadoop.mapreduce.fileoutputcommitter.algorithm.version": "1",
    # An overwrite of a partitioned write replaces only the partitions it writes, never
    # other runs' (prodclf's history write also says so itself).
    "spark.sql.sources.partitionOverwriteMode": "dynamic",
    # run_date, tagged_at and every time in the library are UTC.
    "spark.sql.session.timeZone": "UTC",
}
#: prodclf's preferences: applied only where neither the launcher nor --config sets the key.
DEFAULTS = {
    "spark.sql.parquet.compression.codec": "zstd",
    "spark.ui.showConsoleProgress": "false",
    # One Python worker per core, kept: the model loads once per worker.
    "spark.python.worker.reuse": "true",
}
#: Settings whose values are lists: prodclf's items are appended to the launcher's.
LISTS = {EXTENSIONS: ",", "spark.jars": ",", "spark.driver.extraJavaOptions": " "}


def create_session(
    cfg: SparkConfig, arrow_batch_size: int = 256, extra: Mapping[str, str] | None = None
) -> SparkSession:
    """Build (or join) the session, leaving the cluster's own settings in place.

    Under spark-submit the master, resources and every ``--conf`` / ``spark-defaults.conf``
    value come from the launcher; run as a plain command with no ``--master``, it is local
    Spark on all cores (the embedded default). prodclf then sets only ``REQUIRED`` (and the
    Arrow batch size the job asks for), fills in ``DEFAULTS`` the launcher left unset,
    appends its items to list settings (``LISTS``), and applies what the command's
    configuration asks for explicitly (``extra``: the table format's; ``cfg``); ``--conf``
    (``cfg.conf``) wins over everything.
    """
    under_submit = "PYSPARK_GATEWAY_PORT" in os.environ
    master = cfg.master or (None if under_submit else "local[*]")
    if master and master.startswith("local"):
        # Local Python workers must run this interpreter, with prodclf and its pins.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    launcher = launcher_conf(under_submit)
    if launcher.get("spark.app.name") == os.path.basename(sys.argv[0] or ""):
        # spark-submit without --name names the application after its script: not a choice.
        launcher = {k: v for k, v in launcher.items() if k != "spark.app.name"}
    settings = resolve(launcher, own_settings(cfg, arrow_batch_size, master), extra or {})
    settings.update(dict(cfg.conf))
    builder = SparkSession.builder
    for key, value in settings.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    level = os.environ.get("PRODCLF_SPARK_LOG_LEVEL") or (None if under_submit else "WARN")
    if level:  # under spark-submit the cluster's log4j configuration is left alone
        spark.sparkContext.setLogLevel(level)
    return spark


def own_settings(cfg: SparkConfig, arrow_batch_size: int, master: str | None) -> dict[str, str]:
    """What this command's configuration asks for (beside REQUIRED and DEFAULTS)."""
    own = {
        "spark.app.name": cfg.app_name,
        # The UDFs' memory is sized for this many rows a batch.
        "spark.sql.execution.arrow.maxRecordsPerBatch": str(arrow_batch_size),
    }
    if master:
        own["spark.master"] = master
    if cfg.shuffle_partitions:
        own["spark.sql.shuffle.partitions"] = str(cfg.shuffle_partitions)
    own.update(catalog_settings(cfg))
    if os.environ.get("PRODCLF_SPARK_JARS"):  # jars for a session that starts its JVM
        own["spark.jars"] = os.environ["PRODCLF_SPARK_JARS"]  # (hadoop-aws, Iceberg, local)
    return own


def resolve(
    launcher: Mapping[str, str], own: Mapping[str, str], extra: Mapping[str, str]
) -> dict[str, str]:
    """The settings prodclf gives the builder, given what the launcher already set."""
    by_version = version_settings(pyspark.__version__)
    defaults = {**DEFAULTS, **s3a_settings(os.environ)}
    required = dict(REQUIRED)
    if "spark.api.mode" in by_version:
        required["spark.api.mode"] = by_version.pop("spark.api.mode")
    defaults.update(by_version)
    settings = {k: v for k, v in defaults.items() if k not in launcher}
    own = dict(own)
    app = own.pop("spark.app.name", None)
    if app and "spark.app.name" not in launcher:  # spark-submit --name wins
        settings["spark.app.name"] = app
    for key, value in required.items():
        if launcher.get(key, value) != value:
            log.warning(
                "prodclf sets %s=%s (the launcher's %s is replaced)", key, value, launcher[key]
            )
        settings[key] = value
    for key, value in {**own, **extra}.items():
        if key in LISTS:
            settings[key] = append_items(launcher.get(key), value, LISTS[key])
        else:
            settings[key] = value
    return settings


def append_items(existing: str | None, added: str, sep: str = ",") -> str:
    """The list ``existing`` with ``added``'s items it lacks after it (``sep``-separated)."""
    names: list[str] = []
    for name in f"{existing or ''}{sep}{added}".split(sep):
        if name.strip() and name.strip() not in names:
            names.append(name.strip())
    return sep.join(names)


def append_extensions(existing: str | None, added: str) -> str:
    return append_items(existing, added, ",")


def launcher_conf(under_submit: bool) -> dict[str, str]:
    """The settings the launcher gave this driver, before prodclf adds its own.

    An active SparkContext's; under spark-submit the JVM's (``--conf``, ``--jars``,
    ``--properties-file``, ``spark-defaults.conf``: joined through pyspark's gateway);
    otherwise ``spark-defaults.conf``, which the JVM prodclf starts will read.
    """
    from pyspark import SparkConf, SparkContext

    active = SparkContext._active_spark_context
    if active is not None:
        return dict(active.getConf().getAll())
    if under_submit:
        SparkContext._ensure_initialized()
        return dict(SparkConf().getAll())
    return spark_defaults_file()


def spark_defaults_file() -> dict[str, str]:
    """``$SPARK_CONF_DIR/spark-defaults.conf`` (else ``$SPARK_HOME/conf``), as Spark parses it."""
    home = os.environ.get("SPARK_HOME") or os.path.dirname(pyspark.__file__)
    folder = os.environ.get("SPARK_CONF_DIR") or os.path.join(home, "conf")
    found: dict[str, str] = {}
    try:
        with open(os.path.join(folder, "spark-defaults.conf"), encoding="utf-8") as fh:
            for line in fh:
                line = line.strip()
                if line and not line.startswith("#"):
                    key, _, value = line.replace("=", " ", 1).partition(" ")
                    if key.startswith("spark."):
                        found[key] = value.strip()
    except FileNotFoundError:
        pass
    return found


def version_settings(spark_version: str) -> dict[str, str]:
    """Settings Spark 4.0+ has: byte-sized Arrow batches, and a classic (not Connect) session.

    prodclf needs a classic session: it reads ``sparkContext`` (parallelism, log level).
    """
    major = spark_version.split(".", 1)[0]
    if major.isdigit() and int(major) >= 4:
        return {
            "spark.sql.execution.arrow.maxBytesPerBatch": ARROW_MAX_BYTES_PER_BATCH,
            "spark.api.mode": "classic",
        }
    return {}


def s3a_settings(env: dict[str, str] | os._Environ[str]) -> dict[str, str]:
    """Point Hadoop's s3a connector at the same endpoint boto3 uses (MinIO, Ceph, moto...).

    Credentials are not copied: s3a's default provider chain reads the same AWS variables,
    profiles and instance roles, and nothing secret ends up in the Spark configuration.
    """
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    if not endpoint:
        return {}
    return {
        "spark.hadoop.fs.s3a.endpoint": endpoint,
        "spark.hadoop.fs.s3a.path.style.access": "true",
        "spark.hadoop.fs.s3a.connection.ssl.enabled": str(endpoint.startswith("https")).lower(),
    }


def catalog_settings(cfg: SparkConfig) -> dict[str, str]:
    """The Spark SQL catalog when the command asks for one (``--database``: Hive's metastore);
    otherwise the launcher's, which is Spark's in-memory catalog unless the cluster says hive.

    With ``metastore_dir`` the embedded Derby metastore (pyspark's own jars) lives there,
    and so does ``derby.log``: nothing is written to the working directory. Without it the
    metastore is whatever ``hive-site.xml`` says (the cluster's metastore, or Glue).
    """
    settings: dict[str, str] = {}
    if cfg.catalog_implementation:  # else the cluster's (EMR with Glue: hive)
        settings["spark.sql.catalogImplementation"] = cfg.catalog_implementation
    if cfg.warehouse_dir:
        settings["spark.sql.warehouse.dir"] = cfg.warehouse_dir
    if cfg.metastore_dir and cfg.catalog_implementation == "hive":
        home = os.path.abspath(cfg.metastore_dir)
        settings["spark.hadoop.javax.jdo.option.ConnectionURL"] = (
            f"jdbc:derby:;databaseName={home}/metastore_db;create=true"
        )
        settings["spark.driver.extraJavaOptions"] = f"-Dderby.system.home={home}"
        settings.setdefault("spark.sql.warehouse.dir", os.path.join(home, "warehouse"))
    return settings
