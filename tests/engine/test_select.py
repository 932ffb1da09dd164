"""Alpha selection rules on hand-made validation curves."""

import pytest

from mtmg.engine.select import curves, score, select_alpha


def rows(patching, supported, split="val"):
    out = []
    for a, p, s in zip((0.0, 0.5, 1.0), patching, supported, strict=True):
        out.append({"alpha": a, "role": "patching", "split": split, "value": p})
        out.append({"alpha": a, "role": "supported", "split": split, "value": s})
    return out


def test_paint_mean_rule():
    # means: 0 -> 45, 0.5 -> 67.5, 1 -> 57.5
    assert select_alpha(rows([20, 70, 90], [70, 65, 25])) == 0.5


def test_patching_and_constrained_rules():
    r = rows([20, 70, 90], [70, 65, 25])
    assert select_alpha(r, "patching") == 1.0
    assert select_alpha(r, "constrained", tolerance=5) == 0.5  # 65 >= 70 - 5
    assert select_alpha(r, "constrained", tolerance=1) == 0.0


def test_test_rows_are_ignored_and_ties_prefer_small_alpha():
    r = rows([50, 50, 50], [50, 50, 50]) + rows([0, 0, 100], [0, 0, 100], split="test")
    assert select_alpha(r) == 0.0
    assert curves(r)["patching"] == {0.0: 50, 0.5: 50, 1.0: 50}


def test_errors():
    with pytest.raises(ValueError, match="unknown selection rule"):
        select_alpha(rows([1, 2, 3], [1, 2, 3]), "best")
    with pytest.raises(ValueError, match="no validation metrics"):
        select_alpha([])


def test_several_patching_sets_are_averaged_first():
    """Joint patching: the patching metric is the mean over the patching sets, and PAINT's rule
    weighs it against the supported metric, half and half."""
    vals = {"p1": [10, 50, 90], "p2": [40, 50, 40], "s": [62, 60, 40]}
    r = [
        {
            "alpha": a,
            "role": "supported" if k == "s" else "patching",
            "split": "val",
            "value": v[i],
            "dataset": k,
        }
        for k, v in vals.items()
        for i, a in enumerate((0.0, 0.5, 1.0))
    ]
    assert curves(r)["patching"] == {0.0: 25, 0.5: 50, 1.0: 65}
    # (25 + 62) / 2, (50 + 60) / 2, (65 + 40) / 2: 0.5; the first set alone would give 1.0, and
    # pooling the three sets with equal weights ((p1 + p2 + s) / 3) would also give 1.0
    assert select_alpha(r) == 0.5
    assert select_alpha([x for x in r if x["dataset"] != "p2"]) == 1.0
    assert select_alpha(r, "patching") == 1.0
    assert select_alpha(r, "constrained", tolerance=5) == 0.5  # supported 40 < 62 - 5 at 1.0


def test_constrained_base_is_alpha_0_not_the_smallest_alpha_searched():
    """An Optuna range above 0: the bound is the zero-shot supported metric (given as `base`),
    the same one the trials' objective used, so both pick the same alpha."""
    trials = {0.4: (50, 68.5), 0.5: (55, 68.0), 0.7: (62, 66.0), 1.0: (70, 60.0)}
    r = [
        {"alpha": a, "role": role, "split": "val", "value": v}
        for a, (p, s) in trials.items()
        for role, v in (("patching", p), ("supported", s))
    ]
    # no alpha keeps supported within 1 point of 70: the least drop (68.5 at 0.4) wins
    assert select_alpha(r, "constrained", tolerance=1, base=70) == 0.4
    objectives = {a: score("constrained", p, s, 70, 1) for a, (p, s) in trials.items()}
    assert max(objectives, key=objectives.get) == 0.4
    assert select_alpha(r, "constrained", tolerance=2, base=70) == 0.5  # 68 >= 70 - 2
    assert select_alpha(r, "constrained", tolerance=1, base=68.5) == 0.5  # 68 >= 68.5 - 1
    with pytest.raises(ValueError, match="needs the supported metric at alpha 0"):
        select_alpha(r, "constrained", tolerance=1)
    assert select_alpha(r, "patching") == 1.0  # other rules need no base


def test_score_orders_feasible_above_infeasible_and_the_least_drop_first():
    assert score("patching", 40, 10, 70, 1) == 40
    assert score("patching", 40, None, None, 1) == 40
    assert score("mean", 40, 60, None, 1) == 50
    assert score("constrained", 40, None, None, 1) == 40  # no supported set: patching alone
    feasible = [score("constrained", p, 69, 70, 1) for p in (0, 40, 100)]
    assert feasible == [0, 40, 100]
    infeasible = [score("constrained", 100, s, 70, 1) for s in (68.9, 60, 0)]
    assert max(infeasible) < min(feasible)
    assert infeasible == sorted(infeasible, reverse=True)  # a smaller drop scores higher
    assert score("constrained", 100, 60, 70, 1) == score("constrained", 0, 60, 70, 1)
    with pytest.raises(ValueError, match="needs the supported metric at alpha 0"):
        score("constrained", 40, 60, None, 1)
    with pytest.raises(ValueError, match="unknown selection rule"):
        score("best", 40, 60, 70, 1)
