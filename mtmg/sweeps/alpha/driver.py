"""The alpha sweep: search PAINT's mixing coefficient with Ray Tune, no retraining.

`python sweeps/alpha_sweep.py --run PATCH_RUN --out DIR [options]`, or
`python sweeps/alpha_sweep.py --data SHARDS --supported SHARDS --out DIR [model options]` to
fine-tune once first (`mtmg.patch.run`, into DIR/patch; an existing finished one is reused).

Each trial interpolates theta(alpha) = (1 - alpha) theta_zs + alpha theta_ft and evaluates it
on the validation splits of the patching and supported sets (`trial`), reading what the driver
put in the object store once (`inputs`); trials run in reused actors that keep what they
fetched, so a trial costs an interpolation and an evaluation.

The sweep runs in phases: check the options (`config`), make the inputs (fine-tune or load a
patch run: `inputs`; overlapped with the fine-tune: `early`), tune, select (`selection`), test
(`heldout`), write (`outputs`).

Search: `--search grid` evaluates `--alphas`; `--search optuna` runs TPE over `--alpha-range`
(`--num-samples` trials, the two ends first); `--multi-objective` makes Optuna optimise
(patching metric, supported metric) jointly (over the grid with `--search grid`) and the Pareto
front is reported. Ray Tune's experiment lives in OUT/tune (or --storage).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from mtmg import errors, faults
from mtmg.runtime import tuner
from mtmg.sweeps import command, common
from mtmg.sweeps.alpha import config, early, heldout, inputs, outputs, selection, trial
from mtmg.sweeps.alpha.config import COMMAND, NAME, AlphaSweepConfig
from mtmg.sweeps.outputs import trial_rows

log = logging.getLogger(__name__)
TRIAL_MODULES = (trial.__name__,)  # what trial processes import (preloaded when embedded)


def run(cfg: AlphaSweepConfig) -> dict[str, Any]:
    """The whole sweep; returns the summary also written to OUT/summary.json. OUT is the
    sweep's alone while it runs (`common.claim`)."""
    config.check_options(cfg)
    with common.claim(cfg, NAME):
        sweep = _start(cfg)
        grid, got = _inputs_and_tune(sweep)
        sweep.times["tune_s"] = time.perf_counter() - got.ready_at  # once the weights exist
        rows = trial_rows(grid, final_key="patching")  # a trial reports once, at its end
        rows.sort(
            key=lambda r: (r.get("alpha") is None, r.get("alpha") or r.get("config/alpha") or 0)
        )
        choice = selection.choose(rows, sweep.trial_inputs.sets, cfg.selection, cfg.tolerance)
        t = time.perf_counter()
        test = heldout.metrics(sweep, got, choice.alpha)
        sweep.times["test_s"] = time.perf_counter() - t
        return outputs.write(sweep, got, rows, choice, test, grid.experiment_path)


def _start(cfg: AlphaSweepConfig) -> inputs.Sweep:
    """Resolve the patch run, check the inputs (before Ray starts), start Ray, write spec.yaml."""
    from mtmg.stages.patch import driver as patch

    t0 = time.perf_counter()
    resuming = tuner.can_resume(cfg, NAME)
    pcfg = config.patch_config(cfg)
    if cfg.multi_objective and not pcfg.supported:
        raise ValueError("--multi-objective needs a supported set (--supported)")
    if cfg.run:  # not before a fine-tune: see tuner.preload
        tuner.preload(cfg, TRIAL_MODULES)
    run_dir = config.run_dir(cfg)
    fine_tune = not cfg.run and not config.run_finished(run_dir)
    if not cfg.run and not fine_tune:
        log.info("reusing the finished fine-tune in %s", run_dir)
    bundle, sets = patch.resolve_inputs(pcfg)  # input errors before Ray starts
    on_cluster = tuner.init(cfg)
    out = Path(cfg.out).resolve()
    if on_cluster:
        _check_visible(cfg, sets, out)
    trial_inputs = inputs.trial_inputs(cfg, pcfg, bundle, sets, faults.current())
    spec = config.spec(cfg)
    out.mkdir(parents=True, exist_ok=True)
    from mtmg.report import tables  # matplotlib: not before the checks

    tables.save_config(spec, out / "spec.yaml")
    return inputs.Sweep(
        cfg=cfg,
        pcfg=pcfg,
        bundle=bundle,
        sets=sets,
        run_dir=run_dir,
        out=out,
        on_cluster=on_cluster,
        resuming=resuming,
        fine_tune=fine_tune,
        trial_inputs=trial_inputs,
        spec=spec,
        t0=t0,
    )


def _check_visible(cfg: AlphaSweepConfig, sets: inputs.Sets, out: Path) -> None:
    """Every node must see the local shard sets and the experiment's storage."""
    from mtmg.runtime.cluster import check_paths_visible

    store, _ = tuner.experiment(cfg, NAME)
    local = [p for _, p, _ in sets if "://" not in p]
    check_paths_visible(local, store if "://" not in store else str(out))


def _inputs_and_tune(sweep: inputs.Sweep) -> tuple[Any, inputs.SweptRun]:
    """Make the inputs and run Ray Tune: (ResultGrid, the inputs)."""
    from mtmg.stages.patch import driver as patch

    times = sweep.times

    def fine_tune(on_train_start: Callable[[], None]) -> None:
        patch.run(sweep.pcfg, on_train_start=on_train_start)  # validates again, then trains
        times["fine_tune_s"] = time.perf_counter() - sweep.t0

    def load(prepared: inputs.Prepared) -> inputs.SweptRun:  # timed from the fine-tune's end
        got = inputs.load(sweep, prepared)
        times["prepare_s"] = time.perf_counter() - sweep.t0 - times["fine_tune_s"]
        return got

    def tune(shared: dict[str, Any], **placement: Any) -> Any:
        return _tune(sweep, shared, **placement)

    if sweep.fine_tune:  # the one switch: overlap the sweep with its own fine-tune
        cfg = sweep.cfg
        slots = early.trial_slots(
            sweep.on_cluster, sweep.resuming, cfg.cpus_per_trial, cfg.gpus_per_trial
        )
        return early.fine_tune_then_tune(
            fine_tune,
            lambda: inputs.prepare(sweep),
            load,
            tune,
            slots,
            lambda: tuner.remove_experiment(cfg, NAME),
        )
    t = time.perf_counter()
    got = inputs.load(sweep, inputs.prepare(sweep))
    times["prepare_s"] = time.perf_counter() - t
    return tune(got.shared), got


def _tune(
    sweep: inputs.Sweep,
    shared: dict[str, Any],
    resources: dict[str, float] | None = None,
    trial_env: dict[str, str] | None = None,
) -> Any:
    """Ray Tune over alpha: the trials read `shared` (refs, or where to wait for them)."""
    param_space, search_alg, n = _search(sweep.cfg)
    ti = replace(sweep.trial_inputs, shared=shared)
    return tuner.run_tuner(
        tuner.bind(trial.trial, inputs=ti),
        sweep.cfg,
        name=NAME,
        param_space=param_space,
        search_alg=search_alg,
        num_samples=n,
        resources=resources,
        trial_env=trial_env,
    )


def _search(cfg: AlphaSweepConfig) -> tuple[dict | None, Any, int]:
    """(param_space, search algorithm, num_samples) of the sweep."""
    from ray import tune

    if cfg.search == "grid" and not cfg.multi_objective:
        return {"alpha": tune.grid_search([float(a) for a in cfg.alphas])}, None, 1
    import optuna

    lo, hi = cfg.alpha_range
    step = cfg.alpha_step or None
    if cfg.search == "grid":  # multi-objective over the grid: Optuna evaluates exactly it
        lo, hi, step = 0.0, 1.0, None
        points, n = [{"alpha": float(a)} for a in cfg.alphas], len(cfg.alphas)
    else:
        points, n = [{"alpha": lo}, {"alpha": hi}][: cfg.num_samples], cfg.num_samples
    space = {"alpha": optuna.distributions.FloatDistribution(lo, hi, step=step)}
    if cfg.multi_objective:
        metric, mode = ["patching", "supported"], ["max", "max"]
    else:
        metric, mode = "objective", "max"
    return None, tuner.optuna_search(space, metric, mode, seed=cfg.seed, points=points), n


def main(argv: list[str] | None = None) -> int:
    """`python sweeps/alpha_sweep.py --run DIR --out DIR [options]`."""
    return command.main(COMMAND, argv)


def execute(cfg: AlphaSweepConfig) -> int:
    """The sweep of parsed options, as its command runs it: prints the chosen alpha and the
    test metrics; exit 0, 2 on bad input, 130 on Ctrl-C."""
    try:
        summary = run(cfg)
    except errors.USER_ERRORS as e:
        return errors.failed(e)
    except KeyboardInterrupt as e:
        return errors.interrupted(str(e) or errors.RESUME_SWEEP)
    _print(summary, cfg)
    return 0


def _print(summary: dict[str, Any], cfg: AlphaSweepConfig) -> None:
    trials = summary["trials"]
    print(
        f"chosen alpha = {summary['alpha']:g} ({cfg.selection} rule on validation; "
        f"{trials['finished']} trials finished, {trials['failed']} failed)"
    )
    if summary["pareto_front"]:
        print(
            "Pareto front: alpha " + ", ".join(f"{p['alpha']:g}" for p in summary["pareto_front"])
        )
    for r in summary["test"]:
        mark = "*" if r["selected"] else " "
        print(
            f"{mark} {r['dataset']:<24} {r.get('nomenclature') or '':<8} {r['split']:<5} "
            f"alpha={r['alpha']:<6g} {r['metric']}={r['value']:.2f}"
        )
    print(f"outputs in {Path(cfg.out).resolve()}")
