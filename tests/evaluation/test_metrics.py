"""prodclf.evaluation.metrics against hand-computed values on tiny examples and plain loops."""

from __future__ import annotations

import json

import numpy as np
import pytest

from prodclf.evaluation.metrics import (
    Scored,
    confusion_matrix,
    evaluate,
    expected_calibration_error,
    most_confused,
    precision_recall_f1,
    reliability_bins,
    review_threshold,
    scored_from_probabilities,
    top_k_accuracy,
)

pytestmark = pytest.mark.spark4

# The worked example used throughout: 3 classes, 6 products.
#
#   product      0     1     2     3     4     5
#   y_true       0     0     0     1     1     2
#   y_pred       0     0     1     1     2     2
#   correct      Y     Y     N     Y     N     Y        accuracy = 4/6
#   confidence  0.95  0.85  0.75  0.65  0.55  0.35
#   top_k      [0,1] [0,2] [1,0] [1,0] [2,0] [2,1]     true in top-2: Y Y Y Y N Y = 5/6
#
# Confusion matrix (rows true, cols predicted):
#            p0 p1 p2 | support
#   t0     [ 2, 1, 0 ]   3
#   t1     [ 0, 1, 1 ]   2
#   t2     [ 0, 0, 1 ]   1
#   predicted 2  2  2
#
#   class 0: P = 2/2 = 1,   R = 2/3,  F1 = 2*1*(2/3)/(1+2/3) = (4/3)/(5/3) = 4/5 = 0.8
#   class 1: P = 1/2,       R = 1/2,  F1 = 1/2
#   class 2: P = 1/2,       R = 1/1,  F1 = 2*(1/2)*1/(3/2) = 2/3
#   macro-F1    = (4/5 + 1/2 + 2/3) / 3 = (24 + 15 + 20)/90 = 59/90
#   weighted-F1 = (3*4/5 + 2*1/2 + 1*2/3) / 6 = (36 + 15 + 10)/15/6 = 61/90
#
# ECE with 5 bins (0,.2] (.2,.4] (.4,.6] (.6,.8] (.8,1]:
#   (.2,.4]: {0.35 Y}        acc 1,   conf 0.35, gap 0.65, weight 1/6
#   (.4,.6]: {0.55 N}        acc 0,   conf 0.55, gap 0.55, weight 1/6
#   (.6,.8]: {0.75 N, 0.65 Y} acc 1/2, conf 0.70, gap 0.20, weight 2/6
#   (.8,1.]: {0.95 Y, 0.85 Y} acc 1,   conf 0.90, gap 0.10, weight 2/6
#   ECE = (0.65 + 0.55 + 2*0.20 + 2*0.10) / 6 = 1.8 / 6 = 0.3
#
# Review threshold (accept confidence >= t), candidates from the top down:
#   t=0.95: 1/1 = 1.00   t=0.85: 2/2 = 1.00   t=0.75: 2/3 = 0.667
#   t=0.65: 3/4 = 0.75   t=0.55: 3/5 = 0.60   t=0.35: 4/6 = 0.667
#   target 0.75 -> t = 0.65 (precision 0.75, coverage 4/6), although t = 0.75 fails:
#                  precision is not monotone, every candidate must be checked.
#   target 0.95 -> t = 0.85 (precision 1.0, coverage 2/6)

LABELS = ["shirt", "shoe", "bag"]
Y_TRUE = np.array([0, 0, 0, 1, 1, 2])
Y_PRED = np.array([0, 0, 1, 1, 2, 2])
CONF = np.array([0.95, 0.85, 0.75, 0.65, 0.55, 0.35])
TOP2 = np.array([[0, 1], [0, 2], [1, 0], [1, 0], [2, 0], [2, 1]])
CORRECT = Y_TRUE == Y_PRED


def worked_example(top_k: np.ndarray = TOP2) -> Scored:
    return Scored(labels=LABELS, y_true=Y_TRUE, y_pred=Y_PRED, confidence=CONF, top_k=top_k)


def test_confusion_matrix_by_hand() -> None:
    cm = confusion_matrix(Y_TRUE, Y_PRED, 3)
    assert cm.tolist() == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]


def test_precision_recall_f1_by_hand() -> None:
    prf = precision_recall_f1(confusion_matrix(Y_TRUE, Y_PRED, 3))
    np.testing.assert_allclose(prf.precision, [1.0, 0.5, 0.5])
    np.testing.assert_allclose(prf.recall, [2 / 3, 0.5, 1.0])
    np.testing.assert_allclose(prf.f1, [0.8, 0.5, 2 / 3])
    assert prf.support.tolist() == [3, 2, 1]


def test_top_k_accuracy_by_hand() -> None:
    assert top_k_accuracy(TOP2, Y_TRUE, 1) == pytest.approx(4 / 6)
    assert top_k_accuracy(TOP2, Y_TRUE, 2) == pytest.approx(5 / 6)
    with pytest.raises(ValueError, match="between 1 and K=2"):
        top_k_accuracy(TOP2, Y_TRUE, 3)


def test_ece_by_hand() -> None:
    assert expected_calibration_error(CONF, CORRECT, bins=5) == pytest.approx(0.3)
    table = reliability_bins(CONF, CORRECT, bins=5)
    assert [b["count"] for b in table] == [0, 1, 1, 2, 2]
    assert table[0]["accuracy"] is None and table[0]["mean_confidence"] is None
    assert table[3]["accuracy"] == pytest.approx(0.5)
    assert table[3]["mean_confidence"] == pytest.approx(0.7)
    assert (table[3]["lower"], table[3]["upper"]) == pytest.approx((0.6, 0.8))


def test_ece_bins_are_right_closed() -> None:
    # 0.2 sits on an edge: it belongs to (0, 0.2], not (0.2, 0.4]; 0 and 1 are in range.
    table = reliability_bins(np.array([0.0, 0.2, 1.0]), np.array([True, True, True]), bins=5)
    assert [b["count"] for b in table] == [2, 0, 0, 0, 1]
    # Perfectly confident and right: no calibration error.
    assert expected_calibration_error(np.ones(4), np.ones(4, dtype=bool), bins=10) == 0.0


def test_review_threshold_by_hand() -> None:
    rt = review_threshold(CONF, CORRECT, 0.75)
    assert rt["threshold"] == pytest.approx(0.65)
    assert rt["precision_at_threshold"] == pytest.approx(0.75)
    assert rt["coverage"] == pytest.approx(4 / 6)
    assert rt["reason"] is None

    rt = review_threshold(CONF, CORRECT, 0.95)
    assert rt["threshold"] == pytest.approx(0.85)
    assert rt["precision_at_threshold"] == 1.0
    assert rt["coverage"] == pytest.approx(2 / 6)


def test_review_threshold_keeps_ties_together() -> None:
    # Two products at 0.9, one right one wrong: t = 0.9 accepts both (precision 1/2), so a
    # target of 1.0 is unreachable even though the first of them, alone, would pass.
    rt = review_threshold(np.array([0.9, 0.9, 0.5]), np.array([True, False, True]), 1.0)
    assert rt["threshold"] is None
    # Exact fractions meet the target: 19 right out of 20 is precision 0.95.
    conf = np.linspace(0.99, 0.5, 20)
    ok = np.ones(20, dtype=bool)
    ok[0] = False
    rt = review_threshold(conf, ok, 0.95)
    assert rt["threshold"] == pytest.approx(0.5)
    assert rt["coverage"] == 1.0
    assert rt["precision_at_threshold"] == pytest.approx(0.95)


def test_review_threshold_unreachable() -> None:
    # t=0.9: 0/1 = 0.0; t=0.8: 1/2 = 0.5. Neither reaches 0.6.
    rt = review_threshold(np.array([0.9, 0.8]), np.array([False, True]), 0.6)
    assert rt["threshold"] is None
    assert rt["precision_at_threshold"] is None
    assert rt["coverage"] == 0.0
    assert "0.6" in rt["reason"] and "0.5000" in rt["reason"]
    with pytest.raises(ValueError, match="target precision"):
        review_threshold(CONF, CORRECT, 0.0)


def test_evaluate_worked_example() -> None:
    m = evaluate(worked_example(), target_precision=0.75, bins=5)
    assert json.loads(json.dumps(m)) == m  # JSON-ready as is
    assert m["images"] == 6
    assert m["labels"] == LABELS
    assert m["accuracy"] == round(4 / 6, 6) == 0.666667
    assert m["top_k_accuracy"] == {"top_1": 0.666667, "top_2": 0.833333}
    assert "top_3" not in m["top_k_accuracy"]  # K = 2: never fake a top-3
    assert m["macro_f1"] == round(59 / 90, 6) == 0.655556
    assert m["weighted_f1"] == round(61 / 90, 6) == 0.677778
    assert m["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert m["per_class"][0] == {
        "label": "shirt",
        "precision": 1.0,
        "recall": 0.666667,
        "f1": 0.8,
        "support": 3,
        "predicted": 2,
    }
    assert m["per_class"][2]["f1"] == 0.666667
    assert m["expected_calibration_error"] == 0.3
    assert len(m["reliability"]) == 5
    assert m["review_threshold"] == {
        "target_precision": 0.75,
        "threshold": 0.65,
        "precision_at_threshold": 0.75,
        "coverage": 0.666667,
        "reason": None,
    }


def test_evaluate_never_predicted_class() -> None:
    # y_pred never says "bag" (class 2): cm = [[2,1,0],[0,2,0],[1,0,0]].
    #   bag:   P = 0/0 -> 0.0 by convention, R = 0/1 = 0, F1 = 0
    #   shirt: P = 2/3, R = 2/3, F1 = 2/3;  shoe: P = 2/3, R = 2/2 = 1, F1 = 0.8
    #   macro = (2/3 + 0.8 + 0)/3 = 22/45 = 0.488889
    s = Scored(
        labels=LABELS,
        y_true=np.array([0, 0, 0, 1, 1, 2]),
        y_pred=np.array([0, 0, 1, 1, 1, 0]),
        confidence=CONF,
        top_k=np.array([0, 0, 1, 1, 1, 0]),  # 1-D is accepted as K = 1
    )
    m = evaluate(s)
    bag = m["per_class"][2]
    assert bag == {
        "label": "bag",
        "precision": 0.0,
        "recall": 0.0,
        "f1": 0.0,
        "support": 1,
        "predicted": 0,
    }
    assert m["macro_f1"] == 0.488889
    assert m["top_k_accuracy"] == {"top_1": 0.666667}


def test_macro_f1_ignores_classes_absent_from_truth_and_predictions() -> None:
    # A 4th label nobody has and nobody gets: listed per class, but not averaged in.
    s = Scored(
        labels=[*LABELS, "hat"],
        y_true=Y_TRUE,
        y_pred=Y_PRED,
        confidence=CONF,
        top_k=TOP2,
    )
    m = evaluate(s, bins=5)
    assert m["macro_f1"] == 0.655556
    assert m["per_class"][3] == {
        "label": "hat",
        "precision": 0.0,
        "recall": 0.0,
        "f1": 0.0,
        "support": 0,
        "predicted": 0,
    }
    assert len(m["confusion_matrix"]) == 4


def test_evaluate_unreachable_target() -> None:
    m = evaluate(worked_example(), target_precision=1.0)
    # Top confidences 0.95 and 0.85 are both right: precision 1.0 is reachable.
    assert m["review_threshold"]["threshold"] == 0.85
    wrong_first = Scored(
        labels=LABELS,
        y_true=np.array([1, 0]),
        y_pred=np.array([0, 0]),
        confidence=np.array([0.9, 0.8]),
        top_k=np.array([[0], [0]]),
    )
    rt = evaluate(wrong_first, target_precision=0.6)["review_threshold"]
    assert rt["threshold"] is None and rt["coverage"] == 0.0
    assert "every product needs review" in rt["reason"]


def test_empty_set_is_refused() -> None:
    empty = Scored(
        labels=LABELS,
        y_true=np.zeros(0, dtype=int),
        y_pred=np.zeros(0, dtype=int),
        confidence=np.zeros(0),
        top_k=np.zeros((0, 3), dtype=int),
    )
    with pytest.raises(ValueError, match="N == 0"):
        evaluate(empty)
    with pytest.raises(ValueError, match="N == 0"):
        expected_calibration_error(np.zeros(0), np.zeros(0, dtype=bool))
    with pytest.raises(ValueError, match="N == 0"):
        review_threshold(np.zeros(0), np.zeros(0, dtype=bool))
    with pytest.raises(ValueError, match="N == 0"):
        top_k_accuracy(np.zeros((0, 1), dtype=int), np.zeros(0, dtype=int), 1)


def test_top_k_may_hold_unknown_categories() -> None:
    # -1 = a ranked category outside the labels: never a hit. Top-2 of the worked example
    # was 5/6; hiding product 2's second choice (its true class 0) leaves 4/6.
    top2 = TOP2.copy()
    top2[2, 1] = -1
    m = evaluate(worked_example(top2))
    assert m["top_k_accuracy"] == {"top_1": 0.666667, "top_2": 0.666667}
    with pytest.raises(ValueError, match="class index -2"):
        worked_example(TOP2 - 2)
    with pytest.raises(ValueError, match="class index -1"):
        Scored(LABELS, np.array([-1]), np.array([0]), np.array([0.5]), np.array([0]))


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="class index 3, outside the 3 label"):
        Scored(LABELS, np.array([0, 3]), np.array([0, 1]), np.array([0.5, 0.5]), np.array([0, 1]))
    with pytest.raises(ValueError, match="same length"):
        Scored(LABELS, np.array([0, 1]), np.array([0]), np.array([0.5]), np.array([0]))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        Scored(LABELS, np.array([0]), np.array([0]), np.array([1.5]), np.array([0]))
    with pytest.raises(ValueError, match="integer"):
        confusion_matrix(np.array([0.0]), np.array([0]), 3)


def test_scored_from_probabilities() -> None:
    probs = np.array(
        [
            [0.7, 0.2, 0.1],  # -> 0, ranking 0, 1, 2
            [0.1, 0.3, 0.6],  # -> 2, ranking 2, 1, 0
            [0.4, 0.4, 0.2],  # tie: lower index first -> 0, ranking 0, 1, 2
        ],
        dtype=np.float32,
    )
    s = scored_from_probabilities(probs, np.array([0, 0, 1]), LABELS, k=3)
    assert s.y_pred.tolist() == [0, 2, 0]
    assert s.top_k.tolist() == [[0, 1, 2], [2, 1, 0], [0, 1, 2]]
    np.testing.assert_allclose(s.confidence, [0.7, 0.6, 0.4], rtol=1e-6)
    m = evaluate(s)
    # Truth 0, 0, 1: top-1 hits product 0 only; top-2 also product 2 (1 in [0, 1]);
    # product 1 (its 0 is ranked last) only counts for top-3.
    assert m["top_k_accuracy"] == {"top_1": 0.333333, "top_2": 0.666667, "top_3": 1.0}

    # k is capped at the number of classes; k = 1 gives top-1 only.
    two = scored_from_probabilities(probs[:, :2], np.array([0, 1, 1]), LABELS[:2], k=5)
    assert two.top_k.shape == (3, 2)
    assert scored_from_probabilities(probs, np.array([0, 1, 1]), LABELS, k=1).top_k.shape == (3, 1)
    with pytest.raises(ValueError, match="3 column"):
        scored_from_probabilities(probs, np.array([0, 1, 1]), LABELS[:2])


def test_most_confused() -> None:
    cm = np.array([[5, 3, 0], [1, 4, 3], [0, 7, 2]])
    pairs = most_confused(cm, LABELS, n=2)
    assert [(p["true"], p["predicted"], p["count"]) for p in pairs] == [
        ("bag", "shoe", 7),
        ("shirt", "shoe", 3),  # ties (3 and 3) by row, then column
    ]
    assert pairs[0]["share_of_true"] == pytest.approx(7 / 9)


def test_against_plain_loops_on_random_data() -> None:
    rng = np.random.default_rng(20240607)
    n_classes, n = 7, 500
    probs = rng.dirichlet(np.full(n_classes, 0.6), size=n)
    y_true = rng.integers(0, n_classes - 1, size=n)  # the last class never true
    labels = [f"c{i}" for i in range(n_classes)]
    s = scored_from_probabilities(probs, y_true, labels, k=3)
    m = evaluate(s, bins=10, target_precision=0.6)

    # Independent computation with nothing but Python loops.
    yt, yp, conf = y_true.tolist(), s.y_pred.tolist(), s.confidence.tolist()
    cm = [[0] * n_classes for _ in range(n_classes)]
    for t, p in zip(yt, yp, strict=True):
        cm[t][p] += 1
    assert m["confusion_matrix"] == cm
    f1s, weighted = [], 0.0
    for c in range(n_classes):
        tp = sum(1 for t, p in zip(yt, yp, strict=True) if t == c and p == c)
        pred = sum(1 for p in yp if p == c)
        true = sum(1 for t in yt if t == c)
        prec = tp / pred if pred else 0.0
        rec = tp / true if true else 0.0
        f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
        row = m["per_class"][c]
        assert row["precision"] == pytest.approx(prec, abs=1e-6)
        assert row["recall"] == pytest.approx(rec, abs=1e-6)
        assert row["f1"] == pytest.approx(f1, abs=1e-6)
        assert row["support"] == true
        if true or pred:
            f1s.append(f1)
        weighted += f1 * true / n
    assert m["macro_f1"] == pytest.approx(sum(f1s) / len(f1s), abs=1e-6)
    assert m["weighted_f1"] == pytest.approx(weighted, abs=1e-6)
    assert m["accuracy"] == pytest.approx(sum(t == p for t, p in zip(yt, yp, strict=True)) / n)

    # Top-3 by sorting each row of probabilities.
    hits = 0
    for row, t in zip(probs.tolist(), yt, strict=True):
        ranked = sorted(range(n_classes), key=row.__getitem__, reverse=True)
        hits += t in ranked[:3]
    assert m["top_k_accuracy"]["top_3"] == pytest.approx(hits / n, abs=1e-6)

    # ECE with explicit bin membership: bin b is (b/10, (b+1)/10].
    ece = 0.0
    for b in range(10):
        members = [
            (c, t == p)
            for c, t, p in zip(conf, yt, yp, strict=True)
            if (b / 10 < c <= (b + 1) / 10) or (b == 0 and c == 0)
        ]
        if members:
            acc = sum(ok for _, ok in members) / len(members)
            mean_c = sum(c for c, _ in members) / len(members)
            ece += len(members) / n * abs(acc - mean_c)
    assert m["expected_calibration_error"] == pytest.approx(ece, abs=1e-6)

    # Review threshold: brute force over every observed confidence.
    best = None
    for t in sorted(set(conf)):
        acc_ = [yt[i] == yp[i] for i in range(n) if conf[i] >= t]
        if sum(acc_) / len(acc_) >= 0.6:
            best = (t, sum(acc_) / len(acc_), len(acc_) / n)
            break
    assert best is not None
    rt = m["review_threshold"]
    assert rt["threshold"] == pytest.approx(best[0], abs=1e-6)
    assert rt["precision_at_threshold"] == pytest.approx(best[1], abs=1e-6)
    assert rt["coverage"] == pytest.approx(best[2], abs=1e-6)
