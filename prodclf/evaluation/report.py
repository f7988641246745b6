"""The evaluation report: metrics.json, three PNG plots and a Markdown summary in one folder.

matplotlib is imported inside the plotting functions (and drives a bare ``Figure`` on the
Agg canvas, never pyplot), so importing this module costs nothing and plotting works
headless, from threads, and without touching any global backend setting.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from prodclf.evaluation.metrics import most_confused

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["plot_confusion", "plot_learning_curves", "plot_reliability", "write_report"]

#: Counts are written in the cells only up to this many classes; beyond, they are unreadable.
ANNOTATE_MAX_CLASSES = 15
_DPI = 120
_LABEL_CHARS = 28


def plot_confusion(
    cm: Sequence[Sequence[int]] | np.ndarray, labels: Sequence[str], path: Path
) -> Path:
    """Confusion matrix coloured by share of each true class, so rare classes stay visible.

    Raw counts would make every rare class look perfect (pale); row-normalising shows what
    fraction of a category ends up where.
    """
    m = np.asarray(cm, dtype=np.float64)
    n = len(labels)
    if m.shape != (n, n):
        raise ValueError(f"confusion matrix has shape {m.shape}, expected ({n}, {n})")
    rows = m.sum(axis=1, keepdims=True)
    share = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)

    side = min(22.0, max(6.0, 3.0 + 0.17 * n))
    # About 60% of a cell's height (the axes take ~3/4 of the figure), within 4..10 pt.
    font = float(np.clip(0.6 * 0.75 * side * 72 / max(n, 1), 4.0, 10.0))
    fig = _figure(side + 1.5, side)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    cbar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    cbar.set_label("share of the true class")
    ticks = np.arange(n)
    short = [_short(lab) for lab in labels]
    ax.set_xticks(ticks)
    ax.set_yticks(ticks)
    ax.set_xticklabels(short, rotation=90, fontsize=font)
    ax.set_yticklabels(short, fontsize=font)
    ax.set_xlabel("predicted category")
    ax.set_ylabel("true category")
    ax.set_title(f"Confusion matrix ({n} classes, {int(m.sum())} images)")
    if n <= ANNOTATE_MAX_CLASSES:
        for i in range(n):
            for j in range(n):
                if m[i, j]:
                    ax.text(
                        j,
                        i,
                        str(int(m[i, j])),
                        ha="center",
                        va="center",
                        fontsize=font - 1,
                        color="white" if share[i, j] > 0.5 else "black",
                    )
    return _save(fig, path)


def plot_reliability(reliability_bins: Sequence[dict[str, Any]], path: Path) -> Path:
    """Reliability diagram: accuracy per confidence bin against the diagonal, counts below.

    Bars under the diagonal mean over-confidence: a review threshold taken at face value
    would let more wrong tags through than it promises.
    """
    bins = list(reliability_bins)
    if not bins:
        raise ValueError("no reliability bins to plot")
    lower = np.array([b["lower"] for b in bins], dtype=np.float64)
    upper = np.array([b["upper"] for b in bins], dtype=np.float64)
    counts = np.array([b["count"] for b in bins], dtype=np.float64)
    acc = np.array([np.nan if b["accuracy"] is None else b["accuracy"] for b in bins])
    conf = np.array(
        [np.nan if b["mean_confidence"] is None else b["mean_confidence"] for b in bins]
    )
    width = upper - lower
    centre = lower + width / 2
    filled = counts > 0

    fig = _figure(6.5, 7.0)
    grid = fig.add_gridspec(2, 1, height_ratios=[3, 1], hspace=0.08)
    ax = fig.add_subplot(grid[0])
    ax_n = fig.add_subplot(grid[1], sharex=ax)
    ax.bar(
        lower[filled],
        acc[filled],
        width=width[filled],
        align="edge",
        color="tab:blue",
        edgecolor="black",
        linewidth=0.6,
        label="accuracy",
    )
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    # The gap between a bar's top and its marker is that bin's calibration error.
    ax.plot(
        centre[filled],
        conf[filled],
        marker="_",
        linestyle="none",
        color="tab:red",
        markersize=12,
        markeredgewidth=2,
        label="mean confidence in bin",
    )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.set_title("Reliability diagram")
    ax.legend(loc="upper left", fontsize=8)
    ax.tick_params(labelbottom=False)
    ax_n.bar(centre, counts, width=width, color="tab:grey", edgecolor="black", linewidth=0.6)
    ax_n.set_xlabel("confidence of the top-1 prediction")
    ax_n.set_ylabel("images")
    return _save(fig, path)


def plot_learning_curves(history: dict[str, list[float]], path: Path) -> Path:
    """Loss and accuracy per epoch (train solid, validation dashed), learning rate below.

    The learning-rate panel (from ``learning_rate`` or ``lr``) shows when the trainer
    halved it on a plateau, which explains the kinks in the curves above.
    """
    from matplotlib.ticker import MaxNLocator

    def base(key: str) -> str:
        return key[4:] if key.startswith("val_") else key

    loss_keys = [k for k in history if base(k) == "loss"]
    acc_keys = [k for k in history if base(k).endswith("accuracy") or base(k) == "acc"]
    lr_key = next((k for k in ("learning_rate", "lr") if history.get(k)), None)
    panels: list[tuple[str, list[str]]] = []
    if loss_keys:
        panels.append(("loss", sorted(loss_keys, key=_val_last)))
    if acc_keys:
        panels.append(("accuracy", sorted(acc_keys, key=_val_last)))
    if lr_key:
        panels.append(("learning rate", [lr_key]))
    if not any(history.get(k) for _, keys in panels for k in keys):
        raise ValueError(
            f"history has nothing to plot (keys: {sorted(history)}); expected loss, "
            "accuracy and/or learning_rate series"
        )

    fig = _figure(7.0, 2.6 * len(panels) + 0.6)
    axes = [fig.add_subplot(len(panels), 1, i + 1) for i in range(len(panels))]
    for ax, (title, keys) in zip(axes, panels, strict=True):
        colours: dict[str, str] = {}
        for key in keys:
            values = np.asarray(history[key], dtype=np.float64)
            if values.size == 0:
                continue
            epochs = np.arange(1, values.size + 1)
            colour = colours.setdefault(base(key), f"C{len(colours)}")
            val = key.startswith("val_")
            label = key if title != "learning rate" else "learning rate"
            ax.plot(
                epochs,
                values,
                color=colour,
                linestyle="--" if val else "-",
                marker="o" if values.size <= 30 else None,
                markersize=3,
                label=label,
                drawstyle="steps-mid" if title == "learning rate" else "default",
            )
        if title == "learning rate" and np.all(np.asarray(history[keys[0]]) > 0):
            ax.set_yscale("log")
        ax.set_ylabel(title)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    phase = history.get("phase") or []
    starts = [i + 1 for i in range(1, len(phase)) if phase[i] != phase[i - 1]]
    for ax in axes:
        for x in starts:
            ax.axvline(x - 0.5, color="black", linestyle=":", linewidth=1)
    axes[0].set_title(
        "Learning curves (dotted: backbone unfrozen)" if starts else "Learning curves"
    )
    axes[-1].set_xlabel("epoch")
    return _save(fig, path)


def write_report(
    out_dir: Path,
    metrics: dict[str, Any],
    *,
    title: str,
    context: dict[str, Any] | None = None,
    history: dict[str, list[float]] | None = None,
) -> list[Path]:
    """Write the whole report into ``out_dir`` (local; callers copy it to S3) and list the files.

    ``metrics`` is the dict of :func:`prodclf.evaluation.metrics.evaluate`. Files: metrics.json,
    confusion.png, reliability.png, learning_curves.png (only with ``history``), report.md.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    labels = list(metrics.get("labels") or [c["label"] for c in metrics["per_class"]])
    written: list[Path] = []

    metrics_path = out_dir / "metrics.json"
    metrics_path.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    written.append(metrics_path)
    written.append(plot_confusion(metrics["confusion_matrix"], labels, out_dir / "confusion.png"))
    written.append(plot_reliability(metrics["reliability"], out_dir / "reliability.png"))
    if history:
        written.append(plot_learning_curves(history, out_dir / "learning_curves.png"))
    md_path = out_dir / "report.md"
    md_path.write_text(
        render_markdown(
            metrics,
            labels,
            title=title,
            context=context,
            curves=history is not None and bool(history),
        )
    )
    written.append(md_path)
    return written


def render_markdown(
    metrics: dict[str, Any],
    labels: Sequence[str],
    *,
    title: str,
    context: dict[str, Any] | None = None,
    curves: bool = False,
) -> str:
    """The Markdown body of report.md: headline first, worst classes on top."""
    lines: list[str] = [f"# {_md(title)}", ""]
    if context:
        lines += [f"- **{_md(str(k))}**: {_md(str(v))}" for k, v in context.items()]
        lines.append("")

    top_k = metrics.get("top_k_accuracy", {})
    top3 = top_k.get("top_3")
    rt = metrics["review_threshold"]
    if rt.get("threshold") is None:
        threshold = f"none: {_md(str(rt.get('reason') or 'target not reachable'))}"
    else:
        threshold = (
            f"{rt['threshold']:.4f} (auto-accepts {_pct(rt['coverage'])} of products at "
            f"precision {_pct(rt['precision_at_threshold'])})"
        )
    bins = metrics.get("calibration_bins", len(metrics.get("reliability", [])))
    ece = metrics["expected_calibration_error"]
    lines += [
        "## Headline",
        "",
        "| Metric | Value |",
        "|---|---|",
        f"| Images | {metrics['images']:,} |",
        f"| Accuracy | {_pct(metrics['accuracy'])} |",
        f"| Top-3 accuracy | {_pct(top3) if top3 is not None else 'n/a (fewer than 3 ranked)'} |",
        f"| Macro-F1 | {metrics['macro_f1']:.4f} |",
        f"| Weighted F1 | {metrics['weighted_f1']:.4f} |",
        f"| Expected calibration error ({bins} bins) | {ece:.4f} |",
        f"| Review threshold for precision {_pct(rt['target_precision'])} | {threshold} |",
        "",
    ]

    lines += _phases_section(metrics.get("phases"))
    lines += _calibration_section(metrics.get("calibration"))

    per_class = list(metrics["per_class"])
    # Worst first; classes with neither images nor predictions carry no signal: bottom.
    per_class.sort(key=lambda c: (_unseen(c), c["f1"], -c["support"], c["label"]))
    lines += [
        "## Per class (worst F1 first)",
        "",
        "| Category | Precision | Recall | F1 | Images |",
        "|---|---:|---:|---:|---:|",
    ]
    for c in per_class:
        if _unseen(c):
            lines.append(f"| {_md(c['label'])} | n/a | n/a | n/a | 0 |")
        else:
            lines.append(
                f"| {_md(c['label'])} | {c['precision']:.4f} | {c['recall']:.4f} | "
                f"{c['f1']:.4f} | {c['support']:,} |"
            )
    lines.append("")
    if any(c.get("predicted", 1) == 0 and c["support"] > 0 for c in per_class):
        lines += [
            "Precision is reported as 0 for a category that is never predicted.",
            "",
        ]

    pairs = most_confused(np.asarray(metrics["confusion_matrix"]), list(labels), 10)
    lines += ["## Most confused pairs", ""]
    if pairs:
        lines += [
            "| True category | Predicted as | Images | Share of true category |",
            "|---|---|---:|---:|",
        ]
        lines += [
            f"| {_md(p['true'])} | {_md(p['predicted'])} | {p['count']:,} | "
            f"{_pct(p['share_of_true'])} |"
            for p in pairs
        ]
    else:
        lines.append("No confusions: every image got its true category.")
    lines += [
        "",
        "## Plots",
        "",
        "![Confusion matrix](confusion.png)",
        "",
        "![Reliability diagram](reliability.png)",
        "",
    ]
    if curves:
        lines += ["![Learning curves](learning_curves.png)", ""]
    return "\n".join(lines)


def _phases_section(phases: dict[str, Any] | None) -> list[str]:
    """Head only (frozen backbone) beside fine-tuned, as the trainer measured them."""
    if not phases:
        return []
    lines = [
        "## Head only (frozen backbone) vs fine-tuned",
        "",
        "| Phase | Validation accuracy | Accuracy | Top-3 | Macro-F1 | ECE | Epochs |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for key, name in (("head_only", "head only"), ("fine_tuned", "fine-tuned")):
        row = phases.get(key) or {}

        def num(x: Any) -> str:
            return "n/a" if x is None else f"{x:.4f}"

        lines.append(
            f"| {name} | {_pct(row.get('validation_accuracy'))} | {_pct(row.get('accuracy'))} "
            f"| {_pct(row.get('top_3_accuracy'))} | {num(row.get('macro_f1'))} "
            f"| {num(row.get('expected_calibration_error'))} | {row.get('epochs', 0)} |"
        )
    kept = str(phases.get("kept", "")).replace("_", " ")
    lines += [
        "",
        f"Kept: the **{kept}** weights (best validation accuracy across both phases). "
        "The fine-tuned row is its best epoch on validation, scored even when not kept. "
        "Both rows are uncalibrated.",
        "",
    ]
    return lines


def _calibration_section(cal: dict[str, Any] | None) -> list[str]:
    if not cal:
        return []
    ece = cal.get("expected_calibration_error") or {}
    return [
        "## Calibration",
        "",
        f"Temperature scaling: T = {cal['temperature']:.4f}, fitted on {cal.get('images', '?')} "
        f"{_md(str(cal.get('fitted_on', 'validation')))} image(s); stored in the bundle and "
        "applied at tag time, so the confidences above are the calibrated ones.",
        "",
        f"Expected calibration error on the {_md(str(ece.get('split', 'scored')))} split: "
        f"{ece.get('before', float('nan')):.4f} before, "
        f"{ece.get('after', float('nan')):.4f} after.",
        "",
    ]


# --- helpers -----------------------------------------------------------------------------


def _figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=_DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=_DPI, bbox_inches="tight")
    return path


def _val_last(key: str) -> tuple[bool, str]:
    return (key.startswith("val_"), key)


def _short(label: str) -> str:
    return label if len(label) <= _LABEL_CHARS else label[: _LABEL_CHARS - 1] + "…"


def _unseen(c: dict[str, Any]) -> bool:
    return c["support"] == 0 and c.get("predicted", 1) == 0


def _pct(x: float | None) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{100 * x:.2f}%"


def _md(text: str) -> str:
    """Keep a category name or context value inside its table cell."""
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")
