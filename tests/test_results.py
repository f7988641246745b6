"""``benchmarks/results.py``'s ablation summary: mean, range and the no-difference verdict."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import results  # noqa: E402


def runs(accuracies: dict[str, list[float]]) -> dict[str, dict[str, Any]]:
    out = {}
    for arm, values in accuracies.items():
        for seed, acc in enumerate(values, start=1):
            out[f"{arm}_seed{seed}"] = {
                "seed": seed,
                "test_accuracy": acc,
                "macro_f1": acc - 0.1,
                "head_only_accuracy": None,
                "total_seconds": 300.0,
                "cpu_seconds": 480.0,
                "top_3_accuracy": 0.9,
                "epochs_run": 5,
                "best_epoch": 4,
                "kept": "fine_tuned",
            }
    return out


def test_a_difference_smaller_than_the_spread_is_no_difference() -> None:
    group = results.ABLATIONS[0]
    base, *others = (a.name for a in group.arms)
    accs = {base: [0.80, 0.82, 0.81], others[0]: [0.79, 0.81, 0.80], others[1]: [0.70, 0.71, 0.72]}
    accs[others[2]] = [0.83]  # one seed only
    summary = results.ablation_summary(group, runs(accs))
    arms = {e["arm"]: e for e in summary["arms"]}
    assert abs(arms[base]["test_accuracy"]["mean"] - 0.81) < 1e-9
    assert abs(arms[base]["test_accuracy"]["std"] - 0.01) < 1e-9
    assert arms[others[0]]["verdict"] == "no difference"  # -1 point, range 2 points
    assert arms[others[1]]["verdict"] == "worse"  # -10 points, range 2 points
    assert arms[others[2]]["verdict"] == "no verdict (fewer than 2 seeds)"
    assert arms[others[3]]["verdict"] == "not run" and arms[others[3]]["runs"] == 0
    lines = results.ablation_markdown(group, summary, runs(accs), Path("w/libraries/grocery"))
    text = "\n".join(lines)
    assert "| **81.0%** | 80.0%-82.0% | 1.0 pts | baseline |" in text
    assert "(4.0) |" in text  # CPU minutes / 2 beside wall minutes
