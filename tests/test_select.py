"""Alpha selection rules on hand-made validation curves."""

import pytest

from mtmg.engine.select import curves, select_alpha


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
    r = [{"alpha": a, "role": "supported" if k == "s" else "patching", "split": "val",
          "value": v[i], "dataset": k}
         for k, v in vals.items() for i, a in enumerate((0.0, 0.5, 1.0))]  # fmt: skip
    assert curves(r)["patching"] == {0.0: 25, 0.5: 50, 1.0: 65}
    # (25 + 62) / 2, (50 + 60) / 2, (65 + 40) / 2: 0.5; the first set alone would give 1.0, and
    # pooling the three sets with equal weights ((p1 + p2 + s) / 3) would also give 1.0
    assert select_alpha(r) == 0.5
    assert select_alpha([x for x in r if x["dataset"] != "p2"]) == 1.0
    assert select_alpha(r, "patching") == 1.0
    assert select_alpha(r, "constrained", tolerance=5) == 0.5  # supported 40 < 62 - 5 at 1.0
