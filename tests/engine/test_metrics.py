"""Metrics against hand-computed values (worked out in the comments), plus cross-checks."""

from __future__ import annotations

import math

import pytest
import torch

from mtmg.engine.metrics import (
    MAIN_METRIC,
    ScoreAccumulator,
    average_precision,
    classification_metrics,
    multilabel_ap,
    recall_at_k,
    top1_accuracy,
)

T = torch.tensor


def _reference_ap(scores: list[float], targets: list[int]) -> float:
    """Textbook sklearn AP: sum over distinct thresholds (descending) of (R_n - R_{n-1}) P_n."""
    n_pos = sum(targets)
    if n_pos == 0:
        return math.nan
    ap, prev_recall = 0.0, 0.0
    for thr in sorted(set(scores), reverse=True):
        selected = [t for s, t in zip(scores, targets, strict=True) if s >= thr]
        tp = sum(selected)
        recall, precision = tp / n_pos, tp / len(selected)
        ap += (recall - prev_recall) * precision
        prev_recall = recall
    return ap


# ---------------------------------------------------------------- average_precision


def test_ap_hand_example():
    # Ranking: pos, neg, pos, neg. Positives at ranks 1 and 3: precisions 1/1 and 2/3.
    # AP = (1 + 2/3) / 2 = 5/6 = 0.8333...
    ap = average_precision(T([0.9, 0.8, 0.7, 0.6]), T([1, 0, 1, 0]))
    assert ap == pytest.approx(5 / 6)


def test_ap_perfect_and_worst():
    scores = T([0.9, 0.8, 0.7, 0.6])
    # Perfect: positives at ranks 1, 2 -> (1/1 + 2/2) / 2 = 1.
    assert average_precision(scores, T([1, 1, 0, 0])) == pytest.approx(1.0)
    # Worst: positives at ranks 3, 4 -> (1/3 + 2/4) / 2 = 5/12 = 0.41666...
    assert average_precision(scores, T([0, 0, 1, 1])) == pytest.approx(5 / 12)


def test_ap_ties_grouped_like_sklearn():
    # scores [0.5, 0.5, 0.5, 0.1], targets [1, 1, 0, 1]; P = 3.
    # Threshold 0.5 takes the whole tie group: TP = 2 of 3 -> P = 2/3, R = 2/3.
    # Threshold 0.1: TP = 3 of 4 -> P = 3/4, R = 1.
    # AP = (2/3 - 0) * 2/3 + (1 - 2/3) * 3/4 = 4/9 + 1/4 = 25/36 = 0.69444...
    # (neither the optimistic order (1 + 1 + 3/4)/3 = 0.9167 nor the pessimistic order
    #  (1/2 + 2/3 + 3/4)/3 = 0.6389)
    ap = average_precision(T([0.5, 0.5, 0.5, 0.1]), T([1, 1, 0, 1]))
    assert ap == pytest.approx(25 / 36)
    # Input order within the tie group must not matter.
    ap2 = average_precision(T([0.1, 0.5, 0.5, 0.5]), T([1, 0, 1, 1]))
    assert ap2 == pytest.approx(25 / 36)


def test_ap_constant_scores_is_prevalence():
    # One tie group holding everything: AP = P at the only threshold = 2 / 5.
    assert average_precision(torch.full((5,), 0.3), T([1, 0, 0, 1, 0])) == pytest.approx(0.4)


def test_ap_no_positive_is_nan_and_bad_input():
    assert math.isnan(average_precision(T([0.3, 0.2]), T([0, 0])))
    assert math.isnan(average_precision(torch.empty(0), torch.empty(0)))
    with pytest.raises(ValueError):
        average_precision(T([0.3, 0.2]), T([0, 2]))
    with pytest.raises(ValueError):
        average_precision(T([0.3, float("nan")]), T([0, 1]))
    with pytest.raises(ValueError):
        average_precision(T([0.3, 0.2]), T([0, 1, 1]))


def test_ap_bool_and_float_targets():
    scores = T([0.9, 0.8, 0.7, 0.6])
    assert average_precision(scores, T([True, False, True, False])) == pytest.approx(5 / 6)
    assert average_precision(scores, T([1.0, 0.0, 1.0, 0.0])) == pytest.approx(5 / 6)


def test_ap_matches_reference_random_with_ties():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        n = int(torch.randint(1, 60, (1,), generator=g))
        scores = torch.randint(0, 8, (n,), generator=g).float() / 8  # many ties
        targets = torch.randint(0, 2, (n,), generator=g)
        ref = _reference_ap(scores.tolist(), targets.tolist())
        got = average_precision(scores, targets)
        if math.isnan(ref):
            assert math.isnan(got)
        else:
            assert got == pytest.approx(ref, abs=1e-12)


def test_multilabel_ap_hand_example():
    # class 0: scores [0.9, 0.8, 0.7, 0.6], targets [1, 0, 1, 0] -> 5/6 -> 83.333 %
    # class 1: no positive -> None, left out of the mean
    # class 2: the only positive has the top score 0.9 -> 100 %
    # mAP = (83.333 + 100) / 2 = 91.6667
    scores = T([[0.9, 0.1, 0.2], [0.8, 0.2, 0.9], [0.7, 0.3, 0.4], [0.6, 0.4, 0.1]])
    targets = T([[1, 0, 0], [0, 0, 1], [1, 0, 0], [0, 0, 0]])
    out = multilabel_ap(scores, targets)
    assert out["n_classes_evaluated"] == 2
    assert out["per_class_ap"][0] == pytest.approx(500 / 6)
    assert out["per_class_ap"][1] is None
    assert out["per_class_ap"][2] == pytest.approx(100.0)
    assert out["mAP"] == pytest.approx((500 / 6 + 100) / 2)


def test_multilabel_ap_no_class_evaluated():
    out = multilabel_ap(torch.rand(3, 2), torch.zeros(3, 2))
    assert out["n_classes_evaluated"] == 0
    assert out["per_class_ap"] == [None, None]
    assert math.isnan(out["mAP"])


def test_multilabel_ap_columns_match_single_ap():
    g = torch.Generator().manual_seed(2)
    scores = torch.randint(0, 5, (50, 7), generator=g).float()
    targets = (torch.rand(50, 7, generator=g) < 0.3).long()
    targets[:, 3] = 0  # a class without positives
    out = multilabel_ap(scores, targets)
    want = []
    for c in range(7):
        ref = _reference_ap(scores[:, c].tolist(), targets[:, c].tolist())
        if math.isnan(ref):
            assert out["per_class_ap"][c] is None
        else:
            assert out["per_class_ap"][c] == pytest.approx(100 * ref, abs=1e-9)
            want.append(100 * ref)
    assert out["n_classes_evaluated"] == len(want) == 6
    assert out["mAP"] == pytest.approx(sum(want) / len(want))


def test_multilabel_ap_shape_mismatch():
    with pytest.raises(ValueError):
        multilabel_ap(torch.rand(3, 2), torch.zeros(3, 3))


# ---------------------------------------------------------------- top1_accuracy


def test_top1_hand_example():
    # argmax per row: 0, 1, 2, 0; labels 0, 1, 1, 2 -> rows 0 and 1 correct -> 2/4 = 50 %
    logits = T([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [1.0, 0.0, 2.0], [5.0, 4.0, 3.0]])
    assert top1_accuracy(logits, T([0, 1, 1, 2])) == pytest.approx(50.0)
    assert top1_accuracy(logits, T([0, 1, 2, 0])) == pytest.approx(100.0)
    assert top1_accuracy(logits, T([1, 0, 0, 1])) == pytest.approx(0.0)


def test_top1_ties_and_errors():
    # tie between classes 0 and 1 -> argmax picks the first index (0)
    assert top1_accuracy(T([[1.0, 1.0, 0.0]]), T([0])) == pytest.approx(100.0)
    assert top1_accuracy(T([[1.0, 1.0, 0.0]]), T([1])) == pytest.approx(0.0)
    assert math.isnan(top1_accuracy(torch.empty(0, 3), torch.empty(0, dtype=torch.long)))
    with pytest.raises(ValueError):
        top1_accuracy(torch.rand(2, 3), T([0.0, 1.0]))
    with pytest.raises(ValueError):
        top1_accuracy(torch.rand(2, 3), T([0, 1, 2]))


# ---------------------------------------------------------------- recall_at_k


def test_recall_permutation_two_of_four():
    # query = one-hot e0..e3; gallery = query with rows 2 and 3 swapped.
    # q0, q1: match has cosine 1, everything else 0 -> rank 1.
    # q2 = e2 vs its match g2 = e3: cosine 0; g3 = e2 scores 1 (ahead), g0, g1 score 0 = tie,
    # counted pessimistically ahead -> rank 4. Same for q3.
    # R@1 = R@2 = R@3 = 2/4 = 50 %, R@4 = 100 %.
    q = torch.eye(4)
    g = q[[0, 1, 3, 2]]
    out = recall_at_k(q, g, ks=(1, 2, 3, 4))
    assert out == pytest.approx({"R@1": 50.0, "R@2": 50.0, "R@3": 50.0, "R@4": 100.0})


def test_recall_graded_ranks_latin_square():
    # gallery rows all permutations of (1, 2, 3, 4) (equal norms) forming a Latin square:
    #   g0 = 4 1 3 2
    #   g1 = 2 3 1 4
    #   g2 = 1 4 2 3
    #   g3 = 3 2 4 1
    # query e_i scores gallery j with G[j, i] / sqrt(30), i.e. column i:
    #   q0: col (4,2,1,3), match 4 -> rank 1
    #   q1: col (1,3,4,2), match 3 -> rank 2
    #   q2: col (3,1,2,4), match 2 -> rank 3
    #   q3: col (2,4,3,1), match 1 -> rank 4
    # -> R@1 = 25, R@2 = 50, R@3 = 75, R@4 = 100; K = 10 > N clamps to 100.
    gal = T([[4.0, 1, 3, 2], [2, 3, 1, 4], [1, 4, 2, 3], [3, 2, 4, 1]])
    want = {"R@1": 25.0, "R@2": 50.0, "R@3": 75.0, "R@4": 100.0, "R@10": 100.0}
    assert recall_at_k(torch.eye(4), gal, ks=(1, 2, 3, 4, 10)) == pytest.approx(want)
    # Cosine similarity: scaling either side changes nothing.
    assert recall_at_k(3 * torch.eye(4), 7 * gal, ks=(1, 2, 3, 4, 10)) == pytest.approx(want)
    # Reverse direction: query g_i scores e_j with row i of G; rows give the same ranks 1..4.
    assert recall_at_k(gal, torch.eye(4), ks=(1, 2, 3, 4, 10)) == pytest.approx(want)


def test_recall_perfect_default_ks():
    # Orthonormal rows matched to themselves: every query at rank 1.
    out = recall_at_k(torch.eye(8), torch.eye(8))
    assert out == pytest.approx({f"R@{k}": 100.0 for k in (1, 5, 10, 20, 50)})


def test_recall_constant_embeddings_pessimistic():
    # All similarities are equal: every query's match ties with all N = 5 items -> rank 5.
    # R@1 = R@4 = 0; R@5 = 100; R@10 clamps to N = 5 -> 100.
    for vec in (torch.ones(16), torch.randn(37, generator=torch.Generator().manual_seed(3))):
        q = vec.expand(5, -1).clone()
        out = recall_at_k(q, 0.5 * q, ks=(1, 4, 5, 10))
        assert out == pytest.approx({"R@1": 0.0, "R@4": 0.0, "R@5": 100.0, "R@10": 100.0})
    # Zero embeddings normalise to zero: all similarities 0 -> equally pessimistic.
    out = recall_at_k(torch.zeros(5, 3), torch.zeros(5, 3), ks=(1, 5))
    assert out == pytest.approx({"R@1": 0.0, "R@5": 100.0})


def test_recall_single_item():
    # N = 1: the only gallery item is the match -> rank 1.
    assert recall_at_k(torch.ones(1, 4), -torch.ones(1, 4), ks=(1, 5)) == pytest.approx(
        {"R@1": 100.0, "R@5": 100.0}
    )


def test_recall_chunked_equals_unchunked_and_bruteforce():
    g = torch.Generator().manual_seed(4)
    n, d = 300, 16
    gal = torch.randn(n, d, generator=g)
    q = gal + 1.5 * torch.randn(n, d, generator=g)
    ks = (1, 5, 10, 20, 50, 1000)
    full = recall_at_k(q, gal, ks=ks, chunk_size=n)
    assert 0 < full["R@1"] < 100  # non-trivial problem
    for chunk in (1, 7, 64, 299, 1024):
        assert recall_at_k(q, gal, ks=ks, chunk_size=chunk) == full
    # Brute force in float64: rank = 1 + number of other items scoring strictly higher.
    qn = torch.nn.functional.normalize(q.double(), dim=1)
    gn = torch.nn.functional.normalize(gal.double(), dim=1)
    sims = qn @ gn.T
    ranks = (sims > sims.diag().unsqueeze(1)).sum(1) + 1
    for k in ks:
        assert full[f"R@{k}"] == pytest.approx(100.0 * float((ranks <= k).double().mean()))
    assert full["R@1000"] == 100.0


def test_recall_errors_and_empty():
    with pytest.raises(ValueError):
        recall_at_k(torch.rand(3, 4), torch.rand(4, 4))
    with pytest.raises(ValueError):
        recall_at_k(torch.rand(3, 4), torch.rand(3, 4), ks=(0,))
    with pytest.raises(ValueError):
        recall_at_k(torch.rand(3, 4), torch.rand(3, 4), chunk_size=0)
    bad = torch.rand(3, 4)
    bad[1, 2] = float("nan")
    with pytest.raises(ValueError):
        recall_at_k(bad, torch.rand(3, 4))
    out = recall_at_k(torch.empty(0, 4), torch.empty(0, 4), ks=(1,))
    assert math.isnan(out["R@1"])


def test_recall_half_precision_inputs():
    # fp16 inputs are computed in float32; the Latin-square ranks are unchanged.
    gal = T([[4.0, 1, 3, 2], [2, 3, 1, 4], [1, 4, 2, 3], [3, 2, 4, 1]])
    out = recall_at_k(torch.eye(4).half(), gal.half(), ks=(1, 2))
    assert out == pytest.approx({"R@1": 25.0, "R@2": 50.0})


# the hand examples above: mAP (500/6 + 100)/2, top-1 50 %
ML_SCORES = T([[0.9, 0.1, 0.2], [0.8, 0.2, 0.9], [0.7, 0.3, 0.4], [0.6, 0.4, 0.1]])
ML_TARGETS = T([[1, 0, 0], [0, 0, 1], [1, 0, 0], [0, 0, 0]])
SL_LOGITS = T([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [1.0, 0.0, 2.0], [5.0, 4.0, 3.0]])
SL_LABELS = T([0, 1, 1, 2])


def test_classification_metrics_dispatch():
    assert MAIN_METRIC == {"multi-label": "mAP", "single-label": "top1"}
    ml = classification_metrics(ML_SCORES, ML_TARGETS, "multi-label")
    assert ml[MAIN_METRIC["multi-label"]] == pytest.approx((500 / 6 + 100) / 2)
    assert ml == multilabel_ap(ML_SCORES, ML_TARGETS)
    sl = classification_metrics(SL_LOGITS, SL_LABELS, "single-label")
    assert sl == pytest.approx({"top1": 50.0})
    with pytest.raises(ValueError):
        classification_metrics(SL_LOGITS, SL_LABELS, "regression")


def test_accumulator_multi_label():
    acc = ScoreAccumulator("multi-label")
    assert acc.main_metric == "mAP" and len(acc) == 0
    with pytest.raises(ValueError):
        acc.compute()
    acc.update(ML_SCORES[:3].half(), ML_TARGETS[:3])  # fp16 batch, stored as float32
    acc.update(ML_SCORES[3:], ML_TARGETS[3:])
    assert len(acc) == 4
    assert acc.scores.dtype == torch.float32 and acc.scores.device.type == "cpu"
    out = acc.compute()
    # Same ranking per class as the hand example (fp16 rounding keeps the order).
    assert out["mAP"] == pytest.approx((500 / 6 + 100) / 2)
    assert out["per_class_ap"][1] is None
    acc.reset()
    assert len(acc) == 0


def test_accumulator_single_label():
    acc = ScoreAccumulator("single-label")
    for i in range(4):
        acc.update(SL_LOGITS[i : i + 1], SL_LABELS[i : i + 1])
    assert acc.compute() == pytest.approx({"top1": 50.0})
    assert torch.equal(acc.targets, SL_LABELS)
    with pytest.raises(ValueError):
        acc.update(SL_LOGITS[:2], SL_LABELS[:1])
    with pytest.raises(ValueError):
        ScoreAccumulator("regression")
