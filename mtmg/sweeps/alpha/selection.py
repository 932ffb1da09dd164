"""The select phase: the chosen alpha and the Pareto front from the finished trials.

The choice applies `mtmg.engine.select`, whose `score` is also every trial's objective (what
Optuna maximises), with the alpha-0 supported metric the trials measured as the constrained
rule's base: Optuna's best trial is the chosen alpha, whatever `--alpha-range` leaves out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mtmg.engine import select
from mtmg.sweeps import outputs

if TYPE_CHECKING:
    from mtmg.sweeps.alpha import trial

ROLES = ("patching", "supported")


@dataclass(frozen=True)
class Choice:
    """The chosen alpha, the validation rows it was chosen on, and the Pareto front."""

    alpha: float
    val_rows: list[dict[str, Any]]
    front: list[float]
    base: float | None  # the constrained rule's supported metric at alpha 0


def finished(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The trials that finished with metrics; an error naming the first failures if none."""
    ok = [r for r in rows if r["status"] == "TERMINATED" and r.get("patching") is not None]
    if not ok:
        errors = "; ".join(f"alpha={r.get('config/alpha')}: {r['error']}" for r in rows[:3])
        raise RuntimeError(f"no trial of the sweep finished ({errors})")
    return ok


def choose(
    rows: list[dict[str, Any]],
    sets: tuple[trial.EvalSet, ...],
    rule: str,
    tolerance: float,
) -> Choice:
    """Choose alpha over the finished trials' validation metrics and mark the trial rows
    (`chosen`, `pareto`); the trials report a metric `val/LABEL` for each of `sets`."""
    ok = finished(rows)
    val_rows = [
        {
            "alpha": r["alpha"],
            "role": s.role,
            "split": "val",
            "value": r[f"val/{s.label}"],
            "dataset": s.label,
        }
        for r in ok
        for s in sets
        if r.get(f"val/{s.label}") is not None
    ]
    base = next((r["supported_base"] for r in ok if r.get("supported_base") is not None), None)
    chosen = select.select_alpha(val_rows, rule, tolerance, base=base)
    front: list[float] = []
    if any(s.role == "supported" for s in sets):
        curves = select.curves(val_rows)
        points = [(a, (curves["patching"][a], curves["supported"][a])) for a in curves["patching"]]
        front = sorted(outputs.pareto_front(points))
    for r in rows:
        r["chosen"] = r.get("alpha") == chosen and r["status"] == "TERMINATED"
        r["pareto"] = r.get("alpha") in front and r["status"] == "TERMINATED"
    return Choice(chosen, val_rows, front, base)
