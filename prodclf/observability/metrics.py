"""A tag run's numbers pushed to a Prometheus Pushgateway, for dashboards and alerts.

Configured by ``PRODCLF_PUSHGATEWAY_URL`` (``http://host:9091``); unset, nothing is pushed.
Every push goes to the group ``job="prodclf_tag", library="<commodity library>"`` with
POST (``pushadd``), which replaces only the metrics it names: a failed run pushes its failure
time and never touches ``prodclf_last_success_timestamp_seconds``, the metric a staleness
alert keys on. A push that fails logs one warning; it never fails the job.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from typing import Any

from prodclf.errors import ErrorCode
from prodclf.storage.uris import normalize_location

log = logging.getLogger(__name__)

PUSHGATEWAY_ENV = "PRODCLF_PUSHGATEWAY_URL"
JOB = "prodclf_tag"
PUSH_TIMEOUT_S = 10.0

#: Metric name -> help text of the gauges a complete run pushes (label-free ones).
RUN_GAUGES = {
    "prodclf_tag_products_selected": "products the run selected to tag",
    "prodclf_tag_products_ok": "products tagged ok",
    "prodclf_tag_needs_review": "products tagged ok but below the review threshold",
    "prodclf_tag_images_per_second": "the tag stage's throughput",
    "prodclf_tag_duration_seconds": "the tag command's wall time, Spark start included",
}
ERRORS = "prodclf_tag_error_rows"
CHURN = {
    "prodclf_tag_churn_compared": "products tagged by this run and the one before",
    "prodclf_tag_churn_changed": "of those, products whose category changed",
}
LAST_SUCCESS = "prodclf_last_success_timestamp_seconds"
LAST_FAILURE = "prodclf_last_failure_timestamp_seconds"
LAST_FAILED = "prodclf_last_run_failed"


def gateway() -> str | None:
    return os.environ.get(PUSHGATEWAY_ENV, "").strip() or None


def push_tag_success(
    library: str, result: Mapping[str, Any], duration_s: float, now: float | None = None
) -> bool:
    """Push a complete run's numbers and its success time; False when not pushed."""
    url = gateway()
    if url is None:
        return False
    from prometheus_client import CollectorRegistry, Gauge

    registry = CollectorRegistry()
    values = {
        "prodclf_tag_products_selected": result.get("products_in"),
        "prodclf_tag_products_ok": result.get("ok"),
        "prodclf_tag_needs_review": result.get("needs_review"),
        "prodclf_tag_images_per_second": result.get("images_per_second"),
        "prodclf_tag_duration_seconds": duration_s,
    }
    for name, value in values.items():
        if value is not None:
            Gauge(name, RUN_GAUGES[name], registry=registry).set(float(value))
    # Every known code, 0 included: the family replaces the last run's whole, so a code that
    # had errors then none reads 0, not its old count.
    errors = {code.value: 0 for code in ErrorCode}
    errors.update({str(k): int(v) for k, v in (result.get("errors") or {}).items()})
    by_code = Gauge(ERRORS, "error rows of the run, by error code", ["code"], registry=registry)
    for code, n in sorted(errors.items()):
        by_code.labels(code=code).set(n)
    churn = result.get("churn") or {}
    for name, key in (
        ("prodclf_tag_churn_compared", "compared"),
        ("prodclf_tag_churn_changed", "changed"),
    ):
        if churn.get(key) is not None:
            Gauge(name, CHURN[name], registry=registry).set(float(churn[key]))
    stamp = time.time() if now is None else now
    Gauge(LAST_SUCCESS, "when a tag run last completed (Unix time)", registry=registry).set(stamp)
    Gauge(LAST_FAILED, "1 when the last tag run failed, else 0", registry=registry).set(0)
    return _push(url, library, registry)


def push_tag_failure(library: str, now: float | None = None) -> bool:
    """Push a failed run's time; the last success and the last run's numbers stay."""
    url = gateway()
    if url is None:
        return False
    from prometheus_client import CollectorRegistry, Gauge

    registry = CollectorRegistry()
    stamp = time.time() if now is None else now
    Gauge(LAST_FAILURE, "when a tag run last failed (Unix time)", registry=registry).set(stamp)
    Gauge(LAST_FAILED, "1 when the last tag run failed, else 0", registry=registry).set(1)
    return _push(url, library, registry)


def _push(url: str, library: str, registry: Any) -> bool:
    from prometheus_client import pushadd_to_gateway

    try:
        pushadd_to_gateway(
            url,
            job=JOB,
            registry=registry,
            grouping_key={"library": normalize_location(library)},
            timeout=PUSH_TIMEOUT_S,
        )
        return True
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        log.warning("metrics: the push to %s failed (%s: %s)", url, type(exc).__name__, first)
        return False
