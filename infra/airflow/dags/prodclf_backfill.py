"""Backfill: tag an explicit selection of products, triggered by hand with params.

Params: ``run_date`` (required), ``model`` (default: the nightly's), and the selection,
at least one of ``products`` (a .txt/.csv/Parquet list of ids), ``where`` (Spark SQL over
the base library) and ``retry_errors``. A cheap first task checks them and builds the
spark-submit arguments, so a bad trigger fails before any cluster work. The tag task is
retried only when a retry can help (``tag_job``, docs/runbook.md).
"""

from __future__ import annotations

import re
from datetime import date, datetime
from typing import Any

from airflow.sdk import DAG, Param, get_current_context, task
from prodclf_common import BASE_LIBRARY, COMMODITY_LIBRARY, MODEL, job, tag_job


def selection_args(params: dict[str, Any], airflow_run_id: str) -> dict[str, Any]:
    """The tag job's arguments and run id for these params (ValueError when unusable)."""
    run_date = date.fromisoformat(str(params["run_date"])).isoformat()
    run_id = "backfill-" + re.sub(r"[^A-Za-z0-9_.-]", "-", airflow_run_id)[:100]
    args = [
        "--mode",
        "backfill",
        "--base-library",
        BASE_LIBRARY,
        "--commodity-library",
        COMMODITY_LIBRARY,
        "--model",
        params.get("model") or MODEL,
        "--run-date",
        run_date,
        "--run-id",
        run_id,
    ]
    selection: list[str] = []
    if params.get("products"):
        selection += ["--products", str(params["products"])]
    if params.get("where"):
        selection += ["--where", str(params["where"])]
    if params.get("retry_errors"):
        selection.append("--retry-errors")
    if not selection:
        raise ValueError("a backfill needs products, where or retry_errors")
    args += selection
    return {"args": args, "run_id": run_id}


with DAG(
    dag_id="prodclf_backfill",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    params={
        "run_date": Param(type="string", format="date", description="partition written"),
        "model": Param(MODEL, type="string", description="model bundle URI"),
        "products": Param(None, type=["null", "string"], description="URI of a product list"),
        "where": Param(None, type=["null", "string"], description="Spark SQL predicate"),
        "retry_errors": Param(False, type="boolean", description="retag error rows"),
    },
    tags=["prodclf"],
) as dag:

    @task(multiple_outputs=True)
    def selection() -> dict[str, Any]:
        """Check the params and build the arguments (fails fast on a bad trigger)."""
        context = get_current_context()
        return selection_args(context["params"], context["run_id"])

    chosen = selection()
    tag = tag_job(chosen["args"])
    report = job(
        "report", "build_report.py", [chosen["run_id"], "--commodity-library", COMMODITY_LIBRARY]
    )
    chosen >> tag >> report
