"""The report's plots: bare matplotlib ``Figure``s on the Agg canvas (never pyplot:
headless and thread-safe), returned as base64 PNG for inline ``<img>`` tags."""

from __future__ import annotations

import base64
import io
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure


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


def whole_ticks(axis: Any) -> None:
    """Counts of products: ticks on whole numbers only (never 0.5 of a product)."""
    from matplotlib.ticker import MaxNLocator

    axis.set_major_locator(MaxNLocator(integer=True))


def bar(labels: list[str], values: list[int], title: str, color: str = "#3b6ea8") -> str:
    fig = _figure(8, max(2.0, 0.28 * len(labels) + 1))
    ax = fig.add_subplot(1, 1, 1)
    if labels:
        ax.barh(range(len(labels)), values, color=color)
        ax.set_yticks(range(len(labels)))
        ax.set_yticklabels([lab[:40] for lab in labels], fontsize=8)
        ax.invert_yaxis()
    else:
        ax.text(0.5, 0.5, "none", ha="center", va="center", transform=ax.transAxes)
    whole_ticks(ax.xaxis)
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
    whole_ticks(ax.yaxis)
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
    whole_ticks(ax.yaxis)
    ax.set_xlabel("seconds since tagging started")
    ax.set_ylabel("products done")
    ax.set_title(f"Throughput ({total / max(seconds, 1e-9):.1f} images/s overall)")
    return _png(fig)
