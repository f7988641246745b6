"""Temperature scaling: one number that makes a classifier's confidence a probability.

A network trained with cross-entropy is usually over- (or under-) confident: among the
products tagged with confidence 0.9, far fewer (or more) than 90% are right. Temperature
scaling (Guo et al., "On Calibration of Modern Neural Networks", 2017) divides the logits
by one temperature ``T`` fitted on held-out data by minimising the negative
log-likelihood; ``T > 1`` softens over-confident outputs. The ranking of the classes, hence
every tag and top-k list, is unchanged; only the confidences move.

The model outputs probabilities ``p``; ``log p`` are logits up to a per-row constant, which
softmax ignores, so ``softmax(log(p) / T)`` is exactly temperature scaling of the model's
logits. numpy only: the trainer fits ``T``, the tagging workers apply it.
"""

from __future__ import annotations

import math

import numpy as np

#: Probabilities are clipped here before the log (float32 softmax can underflow to 0).
_FLOOR = 1e-30
#: The search range of log(1/T): T from e^-5 (0.007) to e^5 (148).
_LOG_BETA_RANGE = (-5.0, 5.0)


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(log(probs) / temperature)`` row by row; ``temperature`` 1 returns a copy."""
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a positive number, not {temperature}")
    p = np.asarray(probs, dtype=np.float64)
    z = np.log(np.clip(p, _FLOOR, None)) / temperature
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    out: np.ndarray = (e / e.sum(axis=1, keepdims=True)).astype(np.asarray(probs).dtype)
    return out


def negative_log_likelihood(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    """Mean NLL of ``labels`` under ``softmax(logits / temperature)``."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(z).sum(axis=1))
    picked = z[np.arange(len(z)), np.asarray(labels, dtype=np.int64)]
    return float(np.mean(log_norm - picked))


def fit_temperature(logits: np.ndarray, labels: np.ndarray, iterations: int = 100) -> float:
    """The temperature minimising the NLL of ``labels`` (class indices) given ``logits``.

    The NLL is convex in ``1/T``, so a golden-section search over ``log(1/T)`` finds the
    minimum to about 1e-9 relative in 100 steps. Pass ``log(probs)`` for a model that
    outputs probabilities (see the module docstring).
    """
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    if z.ndim != 2 or len(z) != len(y) or len(y) == 0:
        raise ValueError(f"need logits [N, C] and N labels, got {z.shape} and {y.shape}")
    if y.min() < 0 or y.max() >= z.shape[1]:
        raise ValueError("labels must be class indices into the logits' columns")

    def loss(log_beta: float) -> float:
        return negative_log_likelihood(z, y, math.exp(-log_beta))

    lo, hi = _LOG_BETA_RANGE
    ratio = (math.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = loss(a), loss(b)
    for _ in range(iterations):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = loss(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = loss(b)
    return float(math.exp(-(lo + hi) / 2))


def logits_of(probs: np.ndarray) -> np.ndarray:
    """``log(probs)``, clipped: logits up to a per-row constant."""
    return np.log(np.clip(np.asarray(probs, dtype=np.float64), _FLOOR, None))
