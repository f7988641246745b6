"""Settings shared by the prodclf DAGs: where things are, and one spark-submit factory.

Deployment values come from the scheduler's environment (read when the DAG file is parsed;
nothing secret: S3 credentials come from the cluster's roles, Spark's master from the
Airflow connection ``PRODCLF_SPARK_CONN``, default ``spark_default``):

PRODCLF_HOME               the prodclf checkout on the Airflow workers (jobs/ is submitted)
PRODCLF_ENV_ARCHIVE        infra/package.sh's archive, shipped with --archives
PRODCLF_BASE_LIBRARY, PRODCLF_COMMODITY_LIBRARY, PRODCLF_MODEL   the job's data
PRODCLF_KEEP_DAYS          retention for `prodclf vacuum`
PRODCLF_AWS_CONN           the Airflow AWS connection that reads an s3:// library after a
                           failed tag run (default ``aws_default``; prodclf_outcome.py)

The tag tasks retry only what may be transient (docs/runbook.md): ``tag_job``.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

from airflow.exceptions import AirflowException, AirflowFailException
from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from prodclf_outcome import classify, run_of

HOME = os.environ.get("PRODCLF_HOME", "/opt/prodclf")
ENV_ARCHIVE = os.environ.get("PRODCLF_ENV_ARCHIVE", "s3a://example-artifacts/prodclf-env.tar.gz")
BASE_LIBRARY = os.environ.get("PRODCLF_BASE_LIBRARY", "s3://example-catalog/base/products")
COMMODITY_LIBRARY = os.environ.get(
    "PRODCLF_COMMODITY_LIBRARY", "s3://example-catalog/commodity/tags"
)
MODEL = os.environ.get("PRODCLF_MODEL", "s3://example-models/prodclf/current")
KEEP_DAYS = os.environ.get("PRODCLF_KEEP_DAYS", "90")
CONN_ID = os.environ.get("PRODCLF_SPARK_CONN", "spark_default")

#: infra/spark/spark-defaults.conf's properties (tests/test_dags.py keeps them equal), plus
#: what infra/submit.sh sets for the packed environment.
SPARK_CONF: dict[str, str] = {
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.sql.execution.arrow.maxRecordsPerBatch": "256",
    # Spark 4 settings (ignored by Spark 3.5): byte-capped Arrow batches, a classic session.
    "spark.sql.execution.arrow.maxBytesPerBatch": "64m",
    "spark.api.mode": "classic",
    "spark.python.worker.reuse": "true",
    "spark.sql.sources.partitionOverwriteMode": "dynamic",
    "spark.sql.shuffle.partitions": "200",
    "spark.executor.memory": "4g",
    "spark.executor.memoryOverhead": "6g",
    "spark.executorEnv.TF_CPP_MIN_LOG_LEVEL": "2",
    "spark.task.maxFailures": "4",
    "spark.speculation": "false",
    "spark.hadoop.mapreduce.fileoutputcommitter.algorithm.version": "1",
    "spark.hadoop.fs.s3a.aws.credentials.provider": (
        "com.amazonaws.auth.DefaultAWSCredentialsProviderChain"
    ),
    "spark.hadoop.fs.s3a.fast.upload": "true",
    "spark.hadoop.fs.s3a.connection.maximum": "200",
    # The packed environment (infra/package.sh), as infra/submit.sh ships it:
    "spark.pyspark.python": "./environment/bin/python",
}


def job(
    task_id: str,
    script: str,
    args: Any,
    operator: type[SparkSubmitOperator] = SparkSubmitOperator,
    **kwargs: Any,
) -> SparkSubmitOperator:
    """spark-submit ``jobs/<script>`` in cluster mode with the packed environment."""
    return operator(
        task_id=task_id,
        conn_id=CONN_ID,
        application=f"{HOME}/jobs/{script}",
        application_args=args,
        conf=dict(SPARK_CONF),
        archives=f"{ENV_ARCHIVE}#environment",
        executor_cores=4,
        driver_memory="2g",
        deploy_mode="cluster",
        name=f"prodclf-{task_id}",
        **kwargs,
    )


#: A tag task's retries: one, after the lease of a dead attempt's lock (900 s) has expired.
TAG_RETRIES = 1
TAG_RETRY_DELAY = timedelta(minutes=20)


class TagSubmitOperator(SparkSubmitOperator):
    """The tag job's spark-submit. When it fails, the library says whether to retry.

    In cluster mode the driver's exit code does not reach spark-submit, so the failed
    attempt is judged by what it left in the commodity library (``prodclf_outcome``): a
    failure that may be transient is an ``AirflowException`` (retried), one that a rerun
    would repeat (a refusal) an ``AirflowFailException`` (never retried); a run whose
    manifest exists is complete, whatever spark-submit said. A library that cannot be
    read (an S3 error, no Amazon provider) raises that error: Airflow's default, a retry.
    """

    def execute(self, context: Any) -> None:
        try:
            super().execute(context)
        except AirflowException as failure:
            run = run_of([str(a) for a in self.application_args or []])
            if type(failure) is not AirflowException or run is None:
                raise
            outcome = classify(*run)
            if outcome.complete:
                self.log.warning("spark-submit failed, but %s", outcome.reason)
                return
            self.log.error("%s", outcome.reason)
            if outcome.retry:
                raise AirflowException(outcome.reason) from failure
            raise AirflowFailException(outcome.reason) from failure


def tag_job(args: Any, **kwargs: Any) -> SparkSubmitOperator:
    """``job("tag", "tag_catalog.py", args)``, retried only when a retry can help."""
    kwargs = {"retries": TAG_RETRIES, "retry_delay": TAG_RETRY_DELAY, **kwargs}
    return job("tag", "tag_catalog.py", args, operator=TagSubmitOperator, **kwargs)
