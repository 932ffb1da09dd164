"""The test phase: test metrics at alpha 0, the chosen alpha and 1.

`mtmg.patch` evaluates theta(alpha) on the test splits at 0, its own chosen alpha and 1 with
the same heads and interpolation; where it did so on the same kind of device and precision
that the sweep's test evaluation would use, its numbers are taken over (`source`: "patch run")
instead of being computed again. An alpha that a set lacks (another --supported or
--eval-data, another chosen alpha) is evaluated by the sweep (`source`: "sweep").
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from mtmg.sweeps.alpha import config, inputs, trial


def metrics(sweep: inputs.Sweep, got: inputs.SweptRun, chosen: float) -> list[dict[str, Any]]:
    """The test rows, ordered by alpha, then as the sets are."""
    import ray

    cfg = sweep.cfg
    ti = replace(sweep.trial_inputs, shared=got.shared)
    device = "cuda" if cfg.gpus_per_trial else "cpu"
    rows, todo = from_patch_run(sweep.run_dir, ti, chosen, device)
    if todo and not sweep.tests_in_driver:  # where the trials ran: a node with their resources
        task = ray.remote(trial.test_rows).options(
            num_cpus=cfg.cpus_per_trial, num_gpus=cfg.gpus_per_trial or None
        )
        rows += ray.get(task.remote(ti, todo, chosen))
    elif todo:  # this process (decoding without forking it: Ray's threads run here)
        rows += trial.test_rows(
            replace(ti, loader_workers=0), todo, chosen, worker=False, kept=got.tests
        )
    for r in rows:
        r.setdefault("source", "sweep")
    order = {(s.role, s.path, s.nomenclature): i for i, s in enumerate(ti.sets)}
    rows.sort(key=lambda r: (r["alpha"], order[(r["role"], r["path"], r["nomenclature"])]))
    return rows


def from_patch_run(
    run_dir: Path, ti: trial.AlphaTrialInputs, chosen: float, device: str
) -> tuple[list[dict[str, Any]], list[float]]:
    """Test rows at alpha 0, `chosen` and 1 that the patch run already has, and the alphas
    still to evaluate."""
    amp = "bf16" if ti.amp and device == "cuda" else "fp32"
    known = _run_rows(run_dir, device, amp)
    jobs = trial.test_jobs(ti)
    rows: list[dict[str, Any]] = []
    todo: list[float] = []
    for a in sorted({0.0, chosen, 1.0}):
        got = [known.get((*_key(ti.sets[i]), split, a)) for i, split in jobs]
        if not all(got):
            todo.append(a)
            continue
        for (i, split), r in zip(jobs, got, strict=True):
            s = ti.sets[i]
            rows.append(
                {
                    "dataset": s.name,
                    "nomenclature": s.nomenclature,
                    "label": s.label,
                    "path": s.path,
                    "role": s.role,
                    "split": split,
                    "alpha": a,
                    "metric": r["metric"],
                    "value": r["value"],
                    "n": r["n"],
                    "selected": a == chosen,
                    "source": "patch run",
                    "per_class": r["per_class"],
                }
            )
    return rows, todo


def _key(s: trial.EvalSet) -> tuple[str, str, str | None]:
    return s.role, config.abs_path(s.path), s.nomenclature


def _run_rows(run_dir: Path, device: str, amp: str) -> dict[tuple, dict[str, Any]]:
    """The patch run's test-phase rows (`selected` set) evaluated as the sweep would, with
    their per-class values, by (role, path, nomenclature, split, alpha); none from a run
    whose tables lack the nomenclature or the per-class values (then the sweep evaluates)."""
    path, per_class = run_dir / "metrics.parquet", run_dir / "per_class.parquet"
    if not (path.is_file() and per_class.is_file()):
        return {}
    import pyarrow.parquet as pq

    def key(r: dict[str, Any]) -> tuple:
        where = (r["role"], config.abs_path(r["path"]), r.get("nomenclature"))
        return (*where, r["split"], float(r["alpha"]))

    classes: dict[tuple, list] = {}
    for r in pq.read_table(per_class).to_pylist():
        if r.get("selected") is not None:
            classes.setdefault(key(r), []).append((r["class"], r["value"], r["n"]))
    known = {}
    for r in pq.read_table(path).to_pylist():
        if r.get("selected") is not None and (r.get("device"), r.get("amp")) == (device, amp):
            if key(r) in classes and r.get("nomenclature") is not None:
                known[key(r)] = {**r, "per_class": classes[key(r)]}
    return known
