"""The one place a SparkSession is created; everything else receives it as an argument."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

import pyspark
from pyspark.sql import SparkSession

from prodclf.config import SparkConfig

#: Spark 4.0+ also caps each Arrow batch in bytes, beside maxRecordsPerBatch
#: (``spark.conf`` in --config overrides it; see infra/spark/spark-defaults.conf).
ARROW_MAX_BYTES_PER_BATCH = "64m"
#: A list setting: a job's extensions are added to those already set, never replace them.
EXTENSIONS = "spark.sql.extensions"


def create_session(
    cfg: SparkConfig, arrow_batch_size: int = 256, extra: Mapping[str, str] | None = None
) -> SparkSession:
    """Build (or join) the session with the settings every prodclf job relies on.

    Under spark-submit the master and resources come from spark-submit; run as a plain
    command with no ``--master``, it is local Spark on all cores (the embedded default).
    ``extra`` (the job's own static settings, e.g. Iceberg's) comes after prodclf's settings
    and before ``cfg.conf``, which wins; but its ``spark.sql.extensions`` are appended to
    those ``cfg.conf`` or else the launcher (spark-submit, spark-defaults.conf) sets.
    """
    under_submit = "PYSPARK_GATEWAY_PORT" in os.environ
    master = cfg.master or (None if under_submit else "local[*]")
    if master and master.startswith("local"):
        # Local Python workers must run this interpreter, with prodclf and its pins.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    settings = {"spark.app.name": cfg.app_name, **({"spark.master": master} if master else {})}
    settings |= {
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.execution.arrow.maxRecordsPerBatch": str(arrow_batch_size),
        "spark.sql.sources.partitionOverwriteMode": "dynamic",
        # The classic FileOutputCommitter, v1 (v2 can publish a failed task's output). On
        # S3 its job commit is a non-atomic copy + delete; that is safe because every run
        # writes its own partition and snapshot and is published only afterwards, by its
        # manifest and one pointer object (infra/README.md, "Output committer").
        "spark.hadoop.mapreduce.fileoutputcommitter.algorithm.version": "1",
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.parquet.compression.codec": "zstd",
        "spark.ui.showConsoleProgress": "false",
        "spark.python.worker.reuse": "true",
    }
    if cfg.shuffle_partitions:
        settings["spark.sql.shuffle.partitions"] = str(cfg.shuffle_partitions)
    settings.update(version_settings(pyspark.__version__))
    settings.update(catalog_settings(cfg))
    settings.update(s3a_settings(os.environ))
    if os.environ.get("PRODCLF_SPARK_JARS"):  # extra jars for a session that starts its JVM
        settings["spark.jars"] = os.environ["PRODCLF_SPARK_JARS"]  # (e.g. hadoop-aws, local)
    extra, user = dict(extra or {}), dict(cfg.conf)
    launcher = None
    if EXTENSIONS in extra and EXTENSIONS not in user:
        launcher = launcher_setting(EXTENSIONS, {**settings, **extra, **user})
    settings = layered_settings(settings, extra, user, launcher)
    builder = SparkSession.builder
    for key, value in settings.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(os.environ.get("PRODCLF_SPARK_LOG_LEVEL", "WARN"))
    return spark


def layered_settings(
    base: Mapping[str, str],
    extra: Mapping[str, str],
    user: Mapping[str, str],
    launcher_extensions: str | None = None,
) -> dict[str, str]:
    """``base`` < ``extra`` < ``user``; but ``extra``'s ``spark.sql.extensions`` are appended
    to the user's, else to the launcher's (``launcher_extensions``)."""
    settings = {**base, **extra, **user}
    ours = extra.get(EXTENSIONS)
    if ours:
        before = user.get(EXTENSIONS, launcher_extensions)
        settings[EXTENSIONS] = append_extensions(before, ours)
    return settings


def append_extensions(existing: str | None, added: str) -> str:
    """The comma-separated class list ``existing`` with ``added``'s classes it lacks after it."""
    names: list[str] = []
    for name in f"{existing or ''},{added}".split(","):
        if name.strip() and name.strip() not in names:
            names.append(name.strip())
    return ",".join(names)


def launcher_setting(key: str, launch: Mapping[str, str]) -> str | None:
    """``key`` as the launcher sets it (spark-submit --conf, spark-defaults.conf,
    PYSPARK_SUBMIT_ARGS): what the session's own value would otherwise replace.

    Read from the JVM: an active SparkContext's configuration; else the gateway is joined
    (under spark-submit) or started with ``launch``, the settings the session would start it
    with anyway (those of ``key`` left out), and its defaults are read.
    """
    from pyspark import SparkConf, SparkContext

    active = SparkContext._active_spark_context
    if active is not None:
        return active.getConf().get(key)
    launch_conf = SparkConf(loadDefaults=False)
    launch_conf.setAll([(k, v) for k, v in launch.items() if k != key])
    SparkContext._ensure_initialized(conf=launch_conf)
    value = SparkConf().get(key)  # the JVM is up: loads its spark.* system properties
    return value or None


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
    """The Spark SQL catalog: Hive's metastore when asked for, else Spark's in-memory one.

    With ``metastore_dir`` the embedded Derby metastore (pyspark's own jars) lives there,
    and so does ``derby.log``: nothing is written to the working directory. Without it the
    metastore is whatever ``hive-site.xml`` says (the cluster's metastore, or Glue).
    """
    settings = {"spark.sql.catalogImplementation": cfg.catalog_implementation or "in-memory"}
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
