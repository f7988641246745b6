"""A run's report: one self-contained HTML page (inline CSS, plots as inline base64 PNG).

``collect_report_data`` reduces a run's rows, the previous ``tags_current`` and the run's
own ``tags_current`` snapshot to a few small aggregates with Spark; ``render_html`` draws
them with matplotlib (a bare ``Figure`` on the Agg canvas, never pyplot: headless and
thread-safe). The page needs no network: it can be mailed, archived, opened offline; its
Content-Security-Policy lets it load nothing but its own inline images and style, and
every text from the data (product ids, messages, categories) is escaped.

What an operator acts on: the errors by code with example products, how many products a
full run marked inactive, the selection in words, and the review section (``review_rows``):
thumbnails of the lowest-confidence tags and of error rows. The review section is part
of this page, not a page beside it, so the report stays one file: mailed or archived
whole, rebuilt by ``prodclf report`` and removed by vacuum as one.

Category churn is the first sign of a bad model: of the products this run tagged ok that
already had an ok tag, how many changed category, and the most common transitions.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from prodclf.config import StorageConfig
from prodclf.errors import ERROR_CODE_MEANINGS, ErrorCode
from prodclf.library.manifest import RunManifest
from prodclf.library.table import CommodityLibrary
from prodclf.schemas import STATUS_OK
from prodclf.storage import objects
from prodclf.tagging.plots import bar, plot_confidence, plot_throughput
from prodclf.tagging.review import (
    REVIEW_CSS,
    ReviewItem,
    add_thumbnails,
    clip,
    render_review,
    review_items,
    review_rows,
)

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)

CONFIDENCE_BINS = 20
TOP_TRANSITIONS = 15
TOP_CATEGORIES = 40
#: Example products shown for each error code.
ERROR_EXAMPLES = 3


@dataclass(frozen=True)
class ErrorCodeRows:
    """One error code of the run: how many rows, and a few of them (product id, message)."""

    code: str
    products: int
    examples: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class ReportData:
    manifest: RunManifest
    review_threshold: float
    categories: list[tuple[str, int]] = field(default_factory=list)  # most frequent first
    confidence_bins: list[int] = field(default_factory=lambda: [0] * CONFIDENCE_BINS)
    compared: int = 0  # ok now and ok before: the products churn is measured on
    changed: int = 0
    transitions: list[tuple[str, str, int]] = field(default_factory=list)
    previous_available: bool = True
    errors: list[ErrorCodeRows] = field(default_factory=list)  # most rows first
    #: Products this (full) run set inactive; None: not a full run, or its snapshot is gone.
    inactivated: int | None = None
    ok_rows: int = 0
    error_rows: int = 0
    review: list[ReviewItem] = field(default_factory=list)


def build_report(
    spark: Any,
    library: CommodityLibrary,
    manifest: RunManifest,
    review_threshold: float,
    out: str | None = None,
    storage: StorageConfig | None = None,
) -> tuple[str, ReportData]:
    """Write a complete run's page (beside its manifest, or to ``out``): where it went, and
    the aggregates it shows. ``storage`` fetches the review photos (the run's allowlist)."""
    rows = library.read_history(spark, manifest.run_date, manifest.run_id)
    before = manifest.previous_snapshot
    previous = None
    if before and library.snapshot_available(before):
        previous = library.read_snapshot(spark, before)
    after = manifest.current_snapshot
    current = None
    if manifest.mode == "full" and after and library.snapshot_available(after):
        current = library.read_snapshot(spark, after)
    data = collect_report_data(rows, previous, manifest, review_threshold, current)
    # The library's first run has nothing to churn from; a vacuumed snapshot is unknown.
    data.previous_available = previous is not None or not before
    add_thumbnails(data.review, storage or StorageConfig())
    uri = out or library.layout.report(manifest.run_id)
    objects.write_bytes(uri, render_html(data).encode())
    return uri, data


def collect_report_data(
    run_rows: DataFrame,
    previous: DataFrame | None,
    manifest: RunManifest,
    review_threshold: float,
    current: DataFrame | None = None,
) -> ReportData:
    """The report's aggregates; ``previous`` is tags_current before the run (None: unknown),
    ``current`` the run's own snapshot (None: not a full run, or unknown). The review
    sample is collected, its thumbnails are not made yet (``add_thumbnails``)."""
    ok = run_rows.where(F.col("status") == F.lit(STATUS_OK))
    cats = ok.groupBy("category").count().collect()
    categories = sorted(
        ((str(r["category"]), int(r["count"])) for r in cats), key=lambda kv: (-kv[1], kv[0])
    )
    binned = F.least(
        F.floor(F.col("confidence") * CONFIDENCE_BINS).cast("int"), F.lit(CONFIDENCE_BINS - 1)
    )
    bins = [0] * CONFIDENCE_BINS
    for r in ok.groupBy(binned.alias("b")).count().collect():
        if r["b"] is not None:
            bins[int(r["b"])] += int(r["count"])
    data = ReportData(manifest, review_threshold, categories, bins)
    data.errors = error_codes(error_rows_by_code(run_rows))
    data.ok_rows = sum(n for _, n in categories)
    data.error_rows = sum(e.products for e in data.errors)
    if current is not None and manifest.mode == "full":
        data.inactivated = inactivated_by(current, manifest.run_id).count()
    data.review = review_items(review_rows(run_rows))
    if previous is None:
        data.previous_available = False
        return data
    before = previous.where(F.col("category").isNotNull()).select(
        "product_id", F.col("category").alias("before")
    )
    pairs = ok.select("product_id", F.col("category").alias("after")).join(before, "product_id")
    counts = pairs.groupBy("before", "after").count().collect()
    data.compared = sum(int(r["count"]) for r in counts)
    moved = [
        (str(r["before"]), str(r["after"]), int(r["count"]))
        for r in counts
        if r["before"] != r["after"]
    ]
    data.changed = sum(n for _, _, n in moved)
    data.transitions = sorted(moved, key=lambda t: (-t[2], t[0], t[1]))[:TOP_TRANSITIONS]
    return data


def error_rows_by_code(run_rows: DataFrame, examples: int = ERROR_EXAMPLES) -> DataFrame:
    """``error_code, products, examples`` (up to ``examples`` rows of ``product_id,
    error_message``, the lowest ids), most rows first: what an operator looks up first."""
    errors = run_rows.where(F.col("status") != F.lit(STATUS_OK))
    first = Window.partitionBy("error_code").orderBy("product_id")
    sample = (
        errors.withColumn("_n", F.row_number().over(first))
        .where(F.col("_n") <= examples)
        .groupBy("error_code")
        .agg(
            F.sort_array(F.collect_list(F.struct("product_id", "error_message"))).alias("examples")
        )
    )
    counts = errors.groupBy("error_code").agg(F.count(F.lit(1)).alias("products"))
    return (
        counts.join(sample, "error_code", "left")
        .orderBy(F.col("products").desc(), F.col("error_code").asc_nulls_last())
        .select("error_code", "products", "examples")
    )


def error_codes(by_code: DataFrame) -> list[ErrorCodeRows]:
    """``error_rows_by_code`` on the driver, in its order."""
    return [
        ErrorCodeRows(
            str(r["error_code"]) if r["error_code"] is not None else "(no code)",
            int(r["products"]),
            [(str(e["product_id"]), str(e["error_message"] or "")) for e in r["examples"] or []],
        )
        for r in by_code.collect()
    ]


def inactivated_by(current: DataFrame, run_id: str) -> DataFrame:
    """The rows of ``tags_current`` (the run's snapshot) that ``run_id`` set inactive:
    it changed them last, and they are inactive (a run that tags a product activates it)."""
    return current.where(
        (F.col("updated_run_id") == F.lit(run_id)) & ~F.coalesce(F.col("active"), F.lit(True))
    )


def describe_selection(selection: Mapping[str, Any], mode: str | None = None) -> str:
    """A manifest's ``selection`` in words, for people (older manifests: just the mode)."""
    mode = str(selection.get("mode") or mode or "unknown")
    if mode == "full":
        return (
            "full run: every product of the base library; products no longer in it are "
            "marked inactive"
        )
    if mode == "incremental":
        column = selection.get("change_column")
        changed = f"image_uri or {column} changed" if column else "image_uri changed"
        codes = ", ".join(str(c) for c in selection.get("retry_codes") or [])
        retried = f"errors retried: {codes}" if codes else "no error code retried"
        return (
            "incremental run: products new or back in the base library, whose "
            f"{changed}, or without a tag from this model version; {retried}"
        )
    if mode == "backfill":
        parts = []
        if selection.get("products"):
            parts.append(f"listed in {selection['products']}")
        if selection.get("where"):
            parts.append(f"matching {selection['where']}")
        if selection.get("retry_errors"):
            parts.append("whose current tag is an error")
        chosen = " and ".join(parts) if parts else "(no selection recorded)"
        return f"backfill: the products of the base library {chosen}"
    rest = ", ".join(f"{k}={v}" for k, v in sorted(selection.items()) if k != "mode")
    return f"{mode} run" + (f" ({rest})" if rest else "")


# --- rendering -------------------------------------------------------------------------------


class Markup(str):
    """HTML made here from escaped parts: ``_table`` puts it in as it is."""


def _cell(value: Any) -> str:
    return value if isinstance(value, Markup) else html.escape(str(value))


def _table(headers: list[str], rows: list[list[Any]], cls: str = "") -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_cell(c)}</td>" for c in row) + "</tr>" for row in rows)
    attr = f" class='{cls}'" if cls else ""
    return f"<table{attr}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _meaning(code: str) -> str:
    try:
        return ERROR_CODE_MEANINGS.get(ErrorCode(code), "")
    except ValueError:
        return ""


def errors_table(errors: list[ErrorCodeRows]) -> str:
    """Rows by error code, what the code means, and a few example products with messages."""
    if not errors:
        return "<p>No error rows: every product of this run was tagged.</p>"
    rows = []
    for e in errors:
        examples = "".join(
            f"<li><code>{html.escape(clip(pid, 120))}</code>: {html.escape(clip(msg))}</li>"
            for pid, msg in e.examples
        )
        rows.append(
            [
                Markup(f"<code>{html.escape(e.code)}</code>"),
                e.products,
                _meaning(e.code),
                Markup(f"<ul>{examples}</ul>"),
            ]
        )
    return _table(
        ["error code", "products", "meaning", "examples (product: message)"], rows, "errors"
    )


def churn_html(data: ReportData) -> str:
    """Category churn as a sentence, and the transitions when there are any."""
    if not data.previous_available:
        return "<p>The previous current tags are no longer available.</p>"
    if not data.compared:
        return "<p>No product of this run had an earlier ok tag to compare with.</p>"
    share = data.changed / data.compared
    cls = ' class="warn"' if share > 0.05 else ""
    text = (
        f"<p{cls}>{data.changed} of {data.compared} products that had an ok tag changed "
        f"category ({100 * share:.2f}%).</p>"
    )
    if not data.transitions:
        return text + "<p>No product changed category: there is no transition to show.</p>"
    return text + _table(["from", "to", "products"], [list(t) for t in data.transitions])


def inactive_text(data: ReportData) -> str:
    """The summary's inactive line: only full runs mark products inactive."""
    if data.manifest.mode != "full":
        return "none (only full runs mark products inactive)"
    if data.inactivated is None:
        return "unknown (the run's tags_current snapshot is no longer available)"
    return f"{data.inactivated} (no longer in the base library)"


_CSS = """
body{font-family:system-ui,Helvetica,Arial,sans-serif;margin:2em;max-width:75em;color:#222}
h1{font-size:1.5em} h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.5em 0} td,th{border:1px solid #ccc;padding:.2em .6em;
text-align:left;font-size:.9em;vertical-align:top} th{background:#f1f1f1} img{max-width:100%}
table.errors ul{margin:0;padding-left:1.2em} table.errors td:first-child{white-space:nowrap}
code{overflow-wrap:anywhere}
.warn{color:#a33;font-weight:bold}
"""

#: The page loads nothing: no script, no network; only its inline images and style.
_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def render_html(data: ReportData) -> str:
    """The whole page, self-contained."""
    m = data.manifest
    errors, reasons = m.errors, m.reasons
    summary: list[list[Any]] = [
        ["run", m.run_id],
        ["date", m.run_date],
        ["mode", m.mode],
        ["selection", describe_selection(m.selection, m.mode)],
        ["model", f"{m.model_name} {m.model_version}"],
        ["products tagged", m.products_in],
        ["ok", m.ok],
        ["error rows", m.error_rows],
        ["needs review", m.needs_review],
        ["went inactive", inactive_text(data)],
        ["images per second", m.images_per_second],
        ["started / finished", f"{m.to_dict()['started_at']} / {m.to_dict()['finished_at']}"],
        ["tags_current rows", m.current_rows],
        ["unknown product ids", m.unknown_product_ids],
    ]
    if reasons:
        reasons_html = _table(["reason", "products"], [[k, v] for k, v in sorted(reasons.items())])
    else:
        reasons_html = "<p>No product was selected.</p>"
    cats = data.categories[:TOP_CATEGORIES]
    throughput = plot_throughput(m.progress, int(m.products_in or 0), float(m.tag_seconds or 0))
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<meta http-equiv='Content-Security-Policy' content=\"{_CSP}\">",
        f"<title>prodclf run {html.escape(m.run_id)}</title>",
        f"<style>{_CSS}{REVIEW_CSS}</style></head><body>",
        f"<h1>prodclf run {html.escape(m.run_id)}</h1>",
        "<p><a href='#errors'>Errors</a> · <a href='#review'>Review photos</a></p>",
        _table(["", ""], summary),
        "<h2>Why products were selected</h2>",
        reasons_html,
        "<h2>Category churn against the previous current tags</h2>",
        churn_html(data),
        "<h2>Categories</h2>",
        f"<img alt='categories' src='data:image/png;base64,"
        f"{bar([c for c, _ in cats], [n for _, n in cats], 'ok rows by category')}'>",
        "<h2>Confidence</h2>",
        f"<img alt='confidence' src='data:image/png;base64,"
        f"{plot_confidence(data.confidence_bins, data.review_threshold)}'>",
        "<h2 id='errors'>Errors</h2>",
        errors_table(data.errors),
        f"<img alt='errors' src='data:image/png;base64,"
        f"{bar(list(errors), list(errors.values()), 'error rows by code', '#c8553d')}'>",
        "<h2 id='review'>Review</h2>",
        render_review(data.review, data.review_threshold, data.ok_rows, data.error_rows),
        "<h2>Throughput</h2>",
        f"<img alt='throughput' src='data:image/png;base64,{throughput}'>",
        "</body></html>",
    ]
    return "\n".join(parts)
