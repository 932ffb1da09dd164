"""The alpha sweep's select phase (`mtmg.sweeps.alpha.selection`): one rule, `mtmg.engine.select`,
for Optuna's objective and the final choice."""

from __future__ import annotations

import pytest

from mtmg.engine import select
from mtmg.sweeps.alpha import selection, trial

SETS = (
    trial.EvalSet("patching", "/p", None, "patching/ben", "ben", "multi-label"),
    trial.EvalSet("supported", "/s", None, "supported/img", "img", "single-label"),
)


def _trial_row(alpha: float, p: float, s: float, rule: str, base: float) -> dict:
    """A finished trial's row as `trial.trial` reports it (objective: `select.score`)."""
    return {
        "status": "TERMINATED",
        "alpha": alpha,
        "patching": p,
        "supported": s,
        "objective": select.score(rule, p, s, base, 1.0),
        "supported_base": base,
        "val/patching/ben": p,
        "val/supported/img": s,
    }


@pytest.mark.parametrize("rule", sorted(select.RULES))
def test_the_chosen_alpha_is_the_trials_best_objective(rule):
    """One rule: over a range above 0 (no alpha-0 trial) the choice is the trial Optuna ranks
    best, the constrained rule bounded by the alpha-0 supported metric the trials measured."""
    metrics = {0.3: (60.0, 69.5), 0.5: (66.0, 68.0), 0.7: (71.0, 66.0), 0.9: (74.0, 60.0)}
    rows = [_trial_row(a, p, s, rule, 70.0) for a, (p, s) in metrics.items()]
    best = max(rows, key=lambda r: (r["objective"], -r["alpha"]))["alpha"]
    choice = selection.choose(rows, SETS, rule, 1.0)
    assert choice.alpha == best and choice.base == 70.0
    assert [r["alpha"] for r in rows if r["chosen"]] == [best]
    assert {"mean": 0.7, "patching": 0.9, "constrained": 0.3}[rule] == best
