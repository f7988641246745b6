"""Nightly: tag what changed (incremental), rebuild the run's report, apply retention.

The run id is fixed by the DAG run (``nightly-<ts_nodash>``) so the report task names the
run the tag task wrote; a retried tag task reruns the same run id and replaces its rows.
The tag task is retried only when a retry can help (``tag_job``, docs/runbook.md): once,
20 minutes later, never after a refusal.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG
from prodclf_common import BASE_LIBRARY, COMMODITY_LIBRARY, KEEP_DAYS, MODEL, job, tag_job

RUN_ID = "nightly-{{ ts_nodash }}"

with DAG(
    dag_id="prodclf_nightly",
    schedule="30 2 * * *",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,  # one writer per commodity library
    default_args={"retries": 1, "retry_delay": timedelta(minutes=15)},
    tags=["prodclf"],
) as dag:
    tag = tag_job(
        [
            "--mode",
            "incremental",
            "--base-library",
            BASE_LIBRARY,
            "--commodity-library",
            COMMODITY_LIBRARY,
            "--model",
            MODEL,
            "--run-date",
            "{{ ds }}",
            "--run-id",
            RUN_ID,
        ],
        execution_timeout=timedelta(hours=6),
    )
    report = job("report", "build_report.py", [RUN_ID, "--commodity-library", COMMODITY_LIBRARY])
    vacuum = job(
        "vacuum",
        "vacuum_library.py",
        ["--commodity-library", COMMODITY_LIBRARY, "--keep-days", KEEP_DAYS, "--apply"],
    )
    tag >> report >> vacuum
