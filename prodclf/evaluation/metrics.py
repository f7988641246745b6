"""Metrics of a tagged catalog: accuracy, per-class F1, calibration, review threshold.

Everything works on plain numpy arrays so that the trainer (probabilities from a model)
and ``prodclf evaluate`` (tags read back from the commodity library: predicted category,
confidence, top-k list) share one implementation. No Spark, no TensorFlow, no sklearn.

Conventions, chosen so that a number never silently means something else:

* Class indices refer to ``labels``; an index outside ``range(len(labels))`` raises
  ``ValueError``. Mapping category names to indices (and deciding what to do with a
  ground-truth category the model does not know) is the caller's job. The one exception
  is ``top_k``, where -1 stands for a ranked category outside ``labels`` and never counts
  as a hit.
* The precision of a class that is never predicted is 0.0 (there is no evidence the
  class can be predicted correctly); the recall of a class with no ground-truth image is
  0.0; F1 is 0.0 when precision + recall is 0. Macro-F1 averages over the classes that
  occur in the ground truth or in the predictions: a class absent from both says nothing
  about the model and would only drag the average down (sklearn's default does the same).
* Confidence bins are equal-width over [0, 1], each bin ``(lower, upper]`` except the
  first, which also holds confidence 0.
* Only :func:`evaluate`'s dict is rounded (6 decimals); the helpers return full precision.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "PRF",
    "Scored",
    "confusion_matrix",
    "evaluate",
    "expected_calibration_error",
    "most_confused",
    "precision_recall_f1",
    "reliability_bins",
    "review_threshold",
    "scored_from_probabilities",
    "top_k_accuracy",
]

#: Slack for confidences a little outside [0, 1] (float32 softmax can sum to 1 + 1e-7).
_CONF_TOLERANCE = 1e-6
#: Slack when comparing a measured precision with the target (19/20 must meet 0.95).
_PRECISION_EPS = 1e-12
_DECIMALS = 6


@dataclass(frozen=True, eq=False)
class Scored:
    """What evaluation needs per product: the truth and the tag."""

    labels: list[str]  # class names, output order (defines matrix rows/cols)
    y_true: np.ndarray  # int [N], index into labels
    y_pred: np.ndarray  # int [N], index into labels (top-1)
    confidence: np.ndarray  # float [N], score of the top-1 prediction
    top_k: np.ndarray  # int [N, K], indices of the K best classes, best first (K may be 1)
    # top_k alone may hold -1 for a ranked category outside ``labels``: it never matches.

    def __post_init__(self) -> None:
        # Fail at construction, where the caller still knows where the arrays came from.
        n = len(self.labels)
        if n == 0:
            raise ValueError("Scored: labels is empty")
        y_true = _indices("y_true", self.y_true, n)
        y_pred = _indices("y_pred", self.y_pred, n)
        conf = _confidences(self.confidence)
        top_k = np.asarray(self.top_k)
        if top_k.ndim == 1:
            top_k = top_k.reshape(-1, 1)
        if top_k.ndim != 2 or top_k.shape[1] < 1:
            raise ValueError(f"Scored: top_k must have shape [N, K] with K >= 1, got {top_k.shape}")
        top_k = _indices("top_k", top_k, n, allow_unknown=True)
        sizes = {len(y_true), len(y_pred), len(conf), len(top_k)}
        if len(sizes) != 1:
            raise ValueError(
                "Scored: y_true, y_pred, confidence and top_k must have the same length, got "
                f"{len(y_true)}, {len(y_pred)}, {len(conf)}, {len(top_k)}"
            )
        object.__setattr__(self, "labels", list(self.labels))
        object.__setattr__(self, "y_true", y_true)
        object.__setattr__(self, "y_pred", y_pred)
        object.__setattr__(self, "confidence", conf)
        object.__setattr__(self, "top_k", top_k)

    def __len__(self) -> int:
        return len(self.y_true)

    @property
    def correct(self) -> np.ndarray:
        """Boolean [N]: whether the top-1 tag is right."""
        return np.asarray(self.y_true == self.y_pred)


class PRF(NamedTuple):
    """Per-class arrays, index = class index."""

    precision: np.ndarray  # float [C]
    recall: np.ndarray  # float [C]
    f1: np.ndarray  # float [C]
    support: np.ndarray  # int [C], ground-truth images per class


def scored_from_probabilities(
    probs: np.ndarray, y_true: np.ndarray, labels: list[str], k: int = 3
) -> Scored:
    """Tag every row as the tagging job would (argmax, top-k best first) for evaluation.

    ``k`` is capped at the number of classes. Ties go to the lower class index, like
    ``np.argmax``.
    """
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"probs must have shape [N, C], got {p.shape}")
    if p.shape[1] != len(labels):
        raise ValueError(f"probs has {p.shape[1]} column(s) but there are {len(labels)} label(s)")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    k = min(k, p.shape[1])
    # Stable sort of the negated scores keeps the lower index first among ties.
    top_k = np.argsort(-p, axis=1, kind="stable")[:, :k]
    y_pred = top_k[:, 0] if len(p) else np.zeros(0, dtype=np.int64)
    conf = p[np.arange(len(p)), y_pred]
    return Scored(
        labels=list(labels),
        y_true=np.asarray(y_true),
        y_pred=y_pred,
        confidence=conf,
        top_k=top_k.reshape(len(p), k),
    )


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n: int) -> np.ndarray:
    """Counts [n, n], rows = true class, columns = predicted class."""
    t = _indices("y_true", y_true, n)
    p = _indices("y_pred", y_pred, n)
    if len(t) != len(p):
        raise ValueError(f"y_true and y_pred differ in length: {len(t)} != {len(p)}")
    return np.bincount(t * n + p, minlength=n * n).reshape(n, n).astype(np.int64)


def precision_recall_f1(cm: np.ndarray) -> PRF:
    """Per-class precision, recall, F1 and support from a confusion matrix.

    A class never predicted has precision 0.0, one never true has recall 0.0, rather than
    NaN: a NaN would poison macro averages and JSON alike.
    """
    cm = np.asarray(cm)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"confusion matrix must be square, got shape {cm.shape}")
    tp = np.diag(cm).astype(np.float64)
    predicted = cm.sum(axis=0).astype(np.float64)
    support = cm.sum(axis=1).astype(np.int64)
    precision = _safe_div(tp, predicted)
    recall = _safe_div(tp, support.astype(np.float64))
    f1 = _safe_div(2 * precision * recall, precision + recall)
    return PRF(precision=precision, recall=recall, f1=f1, support=support)


def top_k_accuracy(top_k: np.ndarray, y_true: np.ndarray, k: int) -> float:
    """Share of products whose true class is among the first ``k`` columns of ``top_k``."""
    tk = np.asarray(top_k)
    if tk.ndim == 1:
        tk = tk.reshape(-1, 1)
    t = np.asarray(y_true)
    if len(t) == 0:
        raise ValueError("top_k_accuracy: no products (N == 0)")
    if len(tk) != len(t):
        raise ValueError(f"top_k and y_true differ in length: {len(tk)} != {len(t)}")
    if not 1 <= k <= tk.shape[1]:
        raise ValueError(f"k must be between 1 and K={tk.shape[1]}, got {k}")
    return float((tk[:, :k] == t[:, None]).any(axis=1).mean())


def reliability_bins(conf: np.ndarray, correct: np.ndarray, bins: int = 15) -> list[dict[str, Any]]:
    """Per equal-width confidence bin: lower, upper, count, accuracy, mean_confidence.

    Empty bins are kept (count 0, accuracy and mean_confidence None) so that the plot and
    the JSON always show the same ``bins`` intervals.
    """
    c, ok = _conf_correct(conf, correct)
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    edges = np.linspace(0.0, 1.0, bins + 1)
    # Bin b holds (edges[b], edges[b+1]]; confidence 0 goes to the first bin.
    idx = np.clip(np.searchsorted(edges, c, side="left") - 1, 0, bins - 1)
    out: list[dict[str, Any]] = []
    for b in range(bins):
        m = idx == b
        count = int(m.sum())
        out.append(
            {
                "lower": float(edges[b]),
                "upper": float(edges[b + 1]),
                "count": count,
                "accuracy": float(ok[m].mean()) if count else None,
                "mean_confidence": float(c[m].mean()) if count else None,
            }
        )
    return out


def expected_calibration_error(conf: np.ndarray, correct: np.ndarray, bins: int = 15) -> float:
    """ECE = sum over bins of |B|/N * |accuracy(B) - mean confidence(B)|.

    Tells whether a confidence of 0.9 really means "right 9 times in 10", which is what a
    review threshold silently assumes.
    """
    table = reliability_bins(conf, correct, bins)
    n = sum(b["count"] for b in table)
    return float(
        sum(b["count"] / n * abs(b["accuracy"] - b["mean_confidence"]) for b in table if b["count"])
    )


def review_threshold(conf: np.ndarray, correct: np.ndarray, target: float = 0.95) -> dict[str, Any]:
    """The lowest confidence threshold whose auto-accepted tags are precise enough.

    Products with confidence >= threshold are accepted as tagged, the others go to human
    review. Candidates are the observed confidences; precision is not monotone in the
    threshold, so every candidate is checked and the smallest passing one (largest
    coverage) wins. Returns target_precision, threshold, precision_at_threshold, coverage
    (share of products auto-accepted) and reason (None unless no threshold qualifies, in
    which case threshold and precision_at_threshold are None and coverage is 0.0).
    """
    c, ok = _conf_correct(conf, correct)
    if not 0.0 < target <= 1.0:
        raise ValueError(f"target precision must be in (0, 1], got {target}")
    order = np.argsort(-c, kind="stable")
    c_sorted = c[order]
    hits = np.cumsum(ok[order])
    accepted = np.arange(1, len(c) + 1)
    # Only the last position of each run of equal confidences is a real cut (>= t keeps ties).
    last_of_run = np.r_[c_sorted[1:] != c_sorted[:-1], True]
    precision = hits / accepted
    passing = np.flatnonzero(last_of_run & (precision >= target - _PRECISION_EPS))
    if len(passing) == 0:
        best = float(precision[last_of_run].max())
        return {
            "target_precision": float(target),
            "threshold": None,
            "precision_at_threshold": None,
            "coverage": 0.0,
            "reason": (
                f"no confidence threshold reaches precision {target:g}: the best is "
                f"{best:.4f}; every product needs review"
            ),
        }
    i = int(passing[-1])  # furthest down the sorted list = smallest threshold
    return {
        "target_precision": float(target),
        "threshold": float(c_sorted[i]),
        "precision_at_threshold": float(precision[i]),
        "coverage": float(accepted[i] / len(c)),
        "reason": None,
    }


def most_confused(cm: np.ndarray, labels: list[str], n: int = 10) -> list[dict[str, Any]]:
    """The ``n`` largest off-diagonal cells: which category gets mistaken for which."""
    m = np.asarray(cm)
    rows = m.sum(axis=1)
    cells = [
        (int(m[i, j]), i, j)
        for i in range(m.shape[0])
        for j in range(m.shape[1])
        if i != j and m[i, j] > 0
    ]
    cells.sort(key=lambda x: (-x[0], x[1], x[2]))
    return [
        {
            "true": labels[i],
            "predicted": labels[j],
            "count": count,
            "share_of_true": float(count / rows[i]),
        }
        for count, i, j in cells[:n]
    ]


def evaluate(s: Scored, *, target_precision: float = 0.95, bins: int = 15) -> dict[str, Any]:
    """Every headline metric of a tagged set, as a JSON-ready dict (floats rounded to 6 places).

    Keys: images, labels, accuracy, top_k_accuracy, macro_f1, weighted_f1, per_class
    (label, precision, recall, f1, support, predicted = how many products got the class),
    confusion_matrix (rows true, columns predicted, in ``labels`` order),
    expected_calibration_error, calibration_bins, reliability (see
    :func:`reliability_bins`) and review_threshold (see :func:`review_threshold`; its
    threshold is rounded like every float, the helper gives the exact value).
    ``top_k_accuracy`` has one entry per k from 1 to the K available in ``s.top_k``
    (no ``top_3`` when fewer than 3 classes were kept). Its ``top_1`` is read from
    ``top_k[:, 0]``; ``accuracy`` from ``y_pred``; both agree for consistent tags.
    """
    n_images = len(s)
    if n_images == 0:
        raise ValueError("cannot evaluate an empty set: no products (N == 0)")
    n = len(s.labels)
    cm = confusion_matrix(s.y_true, s.y_pred, n)
    prf = precision_recall_f1(cm)
    correct = s.correct
    seen = (prf.support > 0) | (cm.sum(axis=0) > 0)
    macro_f1 = float(prf.f1[seen].mean())
    weighted_f1 = float((prf.f1 * prf.support).sum() / n_images)
    k_max = s.top_k.shape[1]
    rel = reliability_bins(s.confidence, correct, bins)
    out: dict[str, Any] = {
        "images": n_images,
        "labels": list(s.labels),
        "accuracy": float(correct.mean()),
        "top_k_accuracy": {
            f"top_{k}": top_k_accuracy(s.top_k, s.y_true, k) for k in range(1, k_max + 1)
        },
        "macro_f1": macro_f1,
        "weighted_f1": weighted_f1,
        "per_class": [
            {
                "label": s.labels[i],
                "precision": float(prf.precision[i]),
                "recall": float(prf.recall[i]),
                "f1": float(prf.f1[i]),
                "support": int(prf.support[i]),
                "predicted": int(cm[:, i].sum()),
            }
            for i in range(n)
        ],
        "confusion_matrix": cm.tolist(),
        "expected_calibration_error": expected_calibration_error(s.confidence, correct, bins),
        "calibration_bins": bins,
        "reliability": rel,
        "review_threshold": review_threshold(s.confidence, correct, target_precision),
    }
    return _rounded(out)


# --- helpers -----------------------------------------------------------------------------


def _indices(name: str, a: np.ndarray, n: int, *, allow_unknown: bool = False) -> np.ndarray:
    arr = np.asarray(a)
    if arr.size == 0:
        return arr.astype(np.int64).reshape(arr.shape)
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must hold integer class indices, got dtype {arr.dtype}")
    lo, hi = int(arr.min()), int(arr.max())
    if lo < (-1 if allow_unknown else 0) or hi >= n:
        bad = lo if lo < 0 else hi
        raise ValueError(
            f"{name} holds class index {bad}, outside the {n} label(s); map unknown "
            "categories before evaluating"
        )
    return arr.astype(np.int64)


def _confidences(a: np.ndarray) -> np.ndarray:
    c = np.asarray(a, dtype=np.float64).reshape(-1)
    if c.size and (
        not np.isfinite(c).all() or c.min() < -_CONF_TOLERANCE or c.max() > 1.0 + _CONF_TOLERANCE
    ):
        raise ValueError("confidence must hold finite values in [0, 1]")
    return np.clip(c, 0.0, 1.0)


def _conf_correct(conf: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    c = _confidences(conf)
    ok = np.asarray(correct, dtype=bool).reshape(-1)
    if len(c) == 0:
        raise ValueError("no products (N == 0)")
    if len(c) != len(ok):
        raise ValueError(f"confidence and correct differ in length: {len(c)} != {len(ok)}")
    return c, ok


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.zeros_like(num, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _rounded(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _rounded(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_rounded(v) for v in x]
    if isinstance(x, bool) or x is None or isinstance(x, str | int):
        return x
    if isinstance(x, float | np.floating):
        return round(float(x), _DECIMALS)
    if isinstance(x, np.integer):
        return int(x)
    return x
