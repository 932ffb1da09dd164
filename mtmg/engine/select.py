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

import math
from collections import defaultdict
from collections.abc import Iterable

RULES = {
    "mean": "max of the mean of patching and supported metrics (PAINT; each a mean over its sets)",
    "patching": "max of the patching metric alone",
    "constrained": "max patching metric with supported within --tolerance points of alpha=0",
}


def curves(rows: Iterable[dict], split: str = "val") -> dict[str, dict[float, float]]:
    """role -> alpha -> mean main metric over that role's datasets (each dataset has a row at
    every alpha, so every dataset weighs the same)."""
    acc: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r["split"] == split and r["role"] in ("patching", "supported"):
            acc[r["role"]][float(r["alpha"])].append(float(r["value"]))
    return {role: {a: sum(v) / len(v) for a, v in sorted(d.items())} for role, d in acc.items()}


def select_alpha(rows: Iterable[dict], rule: str = "mean", tolerance: float = 1.0) -> float:
    """The alpha that `rule` prefers on the validation rows (ties: the smaller alpha)."""
    if rule not in RULES:
        raise ValueError(f"unknown selection rule {rule!r}; choose one of {sorted(RULES)}")
    c = curves(rows)
    patching = c.get("patching")
    if not patching:
        raise ValueError("no validation metrics of the patching task to select alpha from")
    supported = c.get("supported", {})
    alphas = sorted(patching)

    def score(a: float) -> float:
        if rule == "patching" or not supported:
            return patching[a]
        if rule == "mean":
            return (patching[a] + supported[a]) / 2
        base = supported[min(alphas)]
        return patching[a] if supported[a] >= base - tolerance else -math.inf

    best = max(alphas, key=lambda a: (score(a), -a))
    return best
