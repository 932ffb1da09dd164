"""Choosing the mixing coefficient alpha from validation metrics (PAINT's rule and others).

Rows are dicts with at least `alpha`, `role` ("patching" or "supported"), `split` and `value`
(the dataset's main metric: mAP or top-1, in %). Selection only ever looks at `split == "val"`.

Several datasets of one role are averaged first, each weighing the same: with joint patching
(several patching sets) the patching metric is the mean over the patching sets, and the `mean`
rule maximises (mean patching + mean supported) / 2. A mixture thus stays one side of PAINT's
patching/supported trade-off (the curve `curves` gives, and the alpha sweep's objective and
Pareto front); with one patching and one supported set it is PAINT's rule as written.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

RULES = {
    "mean": "max of the mean of patching and supported metrics (PAINT; each a mean over its sets)",
    "patching": "max of the patching metric alone",
    "constrained": "max patching metric with supported within --tolerance points of alpha 0 "
    "(zero-shot); if no alpha keeps it, the least supported drop",
}

INFEASIBLE = -100.0  # constrained rule: every infeasible score lies at or below this


def curves(rows: Iterable[dict], split: str = "val") -> dict[str, dict[float, float]]:
    """role -> alpha -> mean main metric over that role's datasets (each dataset has a row at
    every alpha, so every dataset weighs the same)."""
    acc: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r["split"] == split and r["role"] in ("patching", "supported"):
            acc[r["role"]][float(r["alpha"])].append(float(r["value"]))
    return {role: {a: sum(v) / len(v) for a, v in sorted(d.items())} for role, d in acc.items()}


def score(
    rule: str, patching: float, supported: float | None, base: float | None, tolerance: float
) -> float:
    """How much `rule` prefers an alpha with these validation metrics: the one rule that both the
    sweep's objective (what Optuna maximises) and `select_alpha` (the chosen alpha) apply.

    `base` is the supported metric at alpha 0 (the zero-shot weights); only `constrained` uses
    it. A metric is a percentage, so a feasible alpha (supported within `tolerance` of `base`)
    scores its patching metric, at least 0, and beats every infeasible one, which scores
    INFEASIBLE less its drop below `base - tolerance`: the least drop wins among them.
    """
    if rule not in RULES:
        raise ValueError(f"unknown selection rule {rule!r}; choose one of {sorted(RULES)}")
    if rule == "patching" or supported is None:
        return patching
    if rule == "mean":
        return (patching + supported) / 2
    if base is None:
        raise ValueError("the constrained rule needs the supported metric at alpha 0")
    floor = base - tolerance
    return patching if supported >= floor else INFEASIBLE - (floor - supported)


def feasible(supported: float | None, base: float | None, tolerance: float) -> bool:
    """Whether the constrained rule's bound holds: supported within `tolerance` of `base`."""
    return supported is None or base is None or supported >= base - tolerance


def select_alpha(
    rows: Iterable[dict], rule: str = "mean", tolerance: float = 1.0, base: float | None = None
) -> float:
    """The alpha that `rule` prefers on the validation rows (`score`; ties: the smaller alpha).

    `base`: the supported metric at alpha 0, for the constrained rule when the rows have no
    alpha 0 (a sweep over a range above 0, a failed alpha-0 trial); otherwise the rows' own.
    """
    if rule not in RULES:
        raise ValueError(f"unknown selection rule {rule!r}; choose one of {sorted(RULES)}")
    c = curves(rows)
    patching = c.get("patching")
    if not patching:
        raise ValueError("no validation metrics of the patching task to select alpha from")
    supported = c.get("supported", {})
    if base is None:
        base = supported.get(0.0)
    if rule == "constrained" and supported and base is None:
        raise ValueError(
            "the constrained rule needs the supported metric at alpha 0: evaluate alpha 0 too "
            "(or give it as base)"
        )
    return max(
        sorted(patching),
        key=lambda a: (score(rule, patching[a], supported.get(a), base, tolerance), -a),
    )
