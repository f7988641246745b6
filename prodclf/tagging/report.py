"""A run's report: one self-contained HTML page (inline CSS, plots as inline base64 PNG).

``collect_report_data`` reduces a run's rows and the previous ``tags_current`` to a few
small aggregates with Spark; ``render_html`` draws them with matplotlib (a bare ``Figure``
on the Agg canvas, never pyplot: headless and thread-safe). The page needs no network:
it can be mailed, archived, opened offline.

Category churn is the first sign of a bad model: of the products this run tagged ok that
already had an ok tag, how many changed category, and the most common transitions.
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from prodclf.library.manifest import RunManifest
from prodclf.library.table import CommodityLibrary
from prodclf.schemas import STATUS_OK
from prodclf.storage import objects

if TYPE_CHECKING:
    from matplotlib.figure import Figure

CONFIDENCE_BINS = 20
TOP_TRANSITIONS = 15
TOP_CATEGORIES = 40


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


def build_report(
    spark: Any,
    library: CommodityLibrary,
    manifest: RunManifest,
    review_threshold: float,
    out: str | None = None,
) -> str:
    """Write a complete run's page (beside its manifest, or to ``out``); where it went."""
    rows = library.read_history(spark, manifest.run_date, manifest.run_id)
    before = manifest.previous_snapshot
    previous = None
    if before and library.snapshot_available(before):
        previous = library.read_snapshot(spark, before)
    data = collect_report_data(rows, previous, manifest, review_threshold)
    # The library's first run has nothing to churn from; a vacuumed snapshot is unknown.
    data.previous_available = previous is not None or not before
    uri = out or library.layout.report(manifest.run_id)
    objects.write_bytes(uri, render_html(data).encode())
    return uri


def collect_report_data(
    run_rows: DataFrame,
    previous: DataFrame | None,
    manifest: RunManifest,
    review_threshold: float,
) -> ReportData:
    """The report's aggregates; ``previous`` is tags_current before the run (None: unknown)."""
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


# --- rendering -------------------------------------------------------------------------------


def _figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _bar(labels: list[str], values: list[int], title: str, color: str = "#3b6ea8") -> str:
    fig = _figure(8, max(2.0, 0.28 * len(labels) + 1))
    ax = fig.add_subplot(1, 1, 1)
    if labels:
        ax.barh(range(len(labels)), values, color=color)
        ax.set_yticks(range(len(labels)))
        ax.set_yticklabels([lab[:40] for lab in labels], fontsize=8)
        ax.invert_yaxis()
    else:
        ax.text(0.5, 0.5, "none", ha="center", va="center", transform=ax.transAxes)
    ax.set_title(title)
    ax.set_xlabel("products")
    return _png(fig)


def plot_confidence(bins: list[int], threshold: float) -> str:
    fig = _figure(8, 3)
    ax = fig.add_subplot(1, 1, 1)
    width = 1.0 / len(bins)
    lefts = [i * width for i in range(len(bins))]
    colors = ["#c8553d" if left + width <= threshold else "#3b6ea8" for left in lefts]
    ax.bar(lefts, bins, width=width, align="edge", color=colors, edgecolor="white")
    ax.axvline(threshold, color="black", linestyle="--", label=f"review threshold {threshold}")
    ax.set_xlim(0, 1)
    ax.set_xlabel("top-1 confidence (ok rows)")
    ax.set_ylabel("products")
    ax.set_title("Confidence")
    ax.legend(loc="upper left")
    return _png(fig)


def plot_throughput(samples: list[list[float]], total: int, seconds: float) -> str:
    fig = _figure(8, 3)
    ax = fig.add_subplot(1, 1, 1)
    points = [(0.0, 0.0), *[(float(t), float(d)) for t, d in samples], (seconds, float(total))]
    points.sort()
    ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=3)
    ax.set_xlabel("seconds since tagging started")
    ax.set_ylabel("products done")
    ax.set_title(f"Throughput ({total / max(seconds, 1e-9):.1f} images/s overall)")
    return _png(fig)


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_CSS = """
body{font-family:system-ui,Helvetica,Arial,sans-serif;margin:2em;max-width:60em;color:#222}
h1{font-size:1.5em} h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.5em 0} td,th{border:1px solid #ccc;padding:.2em .6em;
text-align:left;font-size:.9em} th{background:#f1f1f1} img{max-width:100%}
.warn{color:#a33;font-weight:bold}
"""


def render_html(data: ReportData) -> str:
    """The whole page, self-contained."""
    m = data.manifest
    errors, reasons = m.errors, m.reasons
    summary: list[list[Any]] = [
        ["run", m.run_id],
        ["date", m.run_date],
        ["mode", m.mode],
        ["selection", m.selection],
        ["model", f"{m.model_name} {m.model_version}"],
        ["products tagged", m.products_in],
        ["ok", m.ok],
        ["error rows", m.error_rows],
        ["needs review", m.needs_review],
        ["images per second", m.images_per_second],
        ["started / finished", f"{m.to_dict()['started_at']} / {m.to_dict()['finished_at']}"],
        ["tags_current rows", m.current_rows],
        ["unknown product ids", m.unknown_product_ids],
    ]
    share = data.changed / data.compared if data.compared else 0.0
    if not data.previous_available:
        churn_text = "<p>The previous current tags are no longer available.</p>"
    elif not data.compared:
        churn_text = "<p>No product of this run had an earlier ok tag to compare with.</p>"
    else:
        cls = ' class="warn"' if share > 0.05 else ""
        churn_text = (
            f"<p{cls}>{data.changed} of {data.compared} products that had an ok tag changed "
            f"category ({100 * share:.2f}%).</p>"
            + _table(["from", "to", "products"], [list(t) for t in data.transitions])
        )
    cats = data.categories[:TOP_CATEGORIES]
    throughput = plot_throughput(m.progress, int(m.products_in or 0), float(m.tag_seconds or 0))
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>prodclf run {html.escape(m.run_id)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>prodclf run {html.escape(m.run_id)}</h1>",
        _table(["", ""], summary),
        "<h2>Why products were selected</h2>",
        _table(["reason", "products"], [[k, v] for k, v in sorted(reasons.items())]),
        "<h2>Category churn against the previous current tags</h2>",
        churn_text,
        "<h2>Categories</h2>",
        f"<img alt='categories' src='data:image/png;base64,"
        f"{_bar([c for c, _ in cats], [n for _, n in cats], 'ok rows by category')}'>",
        "<h2>Confidence</h2>",
        f"<img alt='confidence' src='data:image/png;base64,"
        f"{plot_confidence(data.confidence_bins, data.review_threshold)}'>",
        "<h2>Errors</h2>",
        f"<img alt='errors' src='data:image/png;base64,"
        f"{_bar(list(errors), list(errors.values()), 'error rows by code', '#c8553d')}'>",
        "<h2>Throughput</h2>",
        f"<img alt='throughput' src='data:image/png;base64,{throughput}'>",
        "</body></html>",
    ]
    return "\n".join(parts)
