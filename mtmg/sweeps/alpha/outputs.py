"""The write phase: everything the sweep leaves in --out.

sweep.parquet/.csv (one row per trial), summary.md, summary.json, best_config.yaml (an
`mtmg.patch --config` at the chosen alpha), spec.yaml, alpha_curve.png (Pareto front starred),
metrics.parquet/.csv (test rows), per_class.parquet/.csv (their per-class values), and, laid
out like a patch run dir for the alignment stage's teacher: patched.safetensors (a full open_clip
checkpoint at the chosen alpha), config.yaml (the patch run's config) and model_config.json
when the run used one.
"""

from __future__ import annotations

import shutil
import time
from typing import Any

from mtmg import config
from mtmg.engine import select
from mtmg.models import weights
from mtmg.sweeps.alpha import inputs, selection
from mtmg.sweeps.outputs import markdown_table, write_outputs

TRIAL_COLUMNS = (
    "alpha",
    "patching",
    "supported",
    "objective",
    "status",
    "pareto",
    "chosen",
    "time_s",
    "error",
)
TEST_COLUMNS = (
    "role",
    "dataset",
    "nomenclature",
    "split",
    "alpha",
    "metric",
    "value",
    "n",
    "selected",
    "source",
)


def write(
    sweep: inputs.Sweep,
    got: inputs.SweptRun,
    rows: list[dict[str, Any]],
    choice: selection.Choice,
    test: list[dict[str, Any]],
    experiment: str,
) -> dict[str, Any]:
    """Write every output; returns the summary (also OUT/summary.json)."""
    from mtmg.report import tables

    cfg, pcfg, out = sweep.cfg, sweep.pcfg, sweep.out
    run_cfg = _checkpoint(sweep, got, choice.alpha)
    curves = select.curves(choice.val_rows)
    title = f"{pcfg.model}: alpha sweep, {len(curves['patching'])} alphas (validation)"
    tables.plot_alpha_curve(
        curves, choice.alpha, out / "alpha_curve.png", pareto=choice.front, title=title
    )
    test = tables.write_metrics(test, out)
    summary = _summary(sweep, rows, choice.alpha, test, experiment)
    sweep.times["total_s"] = time.perf_counter() - sweep.t0
    summary["timings"] = {k: round(v, 3) for k, v in sweep.times.items()}
    best = {**run_cfg, "alphas": [choice.alpha], "out": str(out / "patch-best")}
    md = markdown(summary, rows, cfg.selection, cfg.search, cfg.multi_objective, cfg.tolerance)
    write_outputs(out, rows, summary_md=md, summary=summary, spec=sweep.spec, best_config=best)
    return summary


def _checkpoint(sweep: inputs.Sweep, got: inputs.SweptRun, chosen: float) -> dict[str, Any]:
    """patched.safetensors, config.yaml and model_config.json: a patch run's layout at the
    chosen alpha; returns the run's config as written."""
    from mtmg.report import tables

    bundle, pcfg, out = sweep.bundle, sweep.pcfg, sweep.out
    weights.load_image_state(bundle.model, weights.interpolate(got.theta_zs, got.theta_ft, chosen))
    weights.save_checkpoint(
        bundle.model,
        out / "patched.safetensors",
        metadata={"alpha": repr(chosen), "source": str(sweep.run_dir)},
        build_kwargs=bundle.build_kwargs,
    )
    run_cfg = {**config.to_dict(pcfg), "out": str(sweep.run_dir)}
    if pcfg.model_config:
        shutil.copyfile(pcfg.model_config, out / "model_config.json")
        run_cfg["model_config"] = str(out / "model_config.json")
    tables.save_config(run_cfg, out / "config.yaml")
    return run_cfg


def _summary(
    sweep: inputs.Sweep,
    rows: list[dict[str, Any]],
    chosen: float,
    test: list[dict[str, Any]],
    experiment: str,
) -> dict[str, Any]:
    cfg, out, model = sweep.cfg, sweep.out, sweep.pcfg.model
    failed = [
        {"alpha": r.get("config/alpha"), "trial_id": r["trial_id"], "error": r["error"]}
        for r in rows
        if r["status"] != "TERMINATED"
    ]
    front = [{k: r.get(k) for k in ("alpha", "patching", "supported")} for r in rows if r["pareto"]]
    return {
        "alpha": chosen,
        "selection": cfg.selection,
        "search": cfg.search,
        "multi_objective": cfg.multi_objective,
        "model": model,
        "run": str(sweep.run_dir),
        "on_cluster": sweep.on_cluster,
        "trials": {"total": len(rows), "finished": len(rows) - len(failed), "failed": len(failed)},
        "failed": failed,
        "pareto_front": front,
        "test": test,
        "patched_checkpoint": str(out / "patched.safetensors"),
        "load_with": f"open_clip.create_model({model!r}, pretrained='patched.safetensors')",
        "best_config": str(out / "best_config.yaml"),
        "experiment": experiment,
    }


def markdown(
    summary: dict[str, Any],
    rows: list[dict[str, Any]],
    rule: str,
    search: str,
    multi_objective: bool,
    tolerance: float,
) -> str:
    """summary.md: the chosen alpha, test metrics, Pareto front, trials and failures."""
    lines = [
        f"# Alpha sweep: {summary['model']}",
        "",
        f"Chosen alpha **{summary['alpha']:g}** ({rule} rule: {select.RULES[rule]}), over "
        f"{summary['trials']['finished']} finished trials ({search} search"
        f"{', multi-objective' if multi_objective else ''}); "
        f"{summary['trials']['failed']} failed.",
        "",
        *_infeasible(summary["alpha"], rows, rule, tolerance),
        "Best config (`python -m mtmg.patch --config best_config.yaml`): `best_config.yaml`; "
        "patched checkpoint: `patched.safetensors`.",
        "",
        "## Test metrics (alpha 0, chosen, 1)",
        "",
        markdown_table(summary["test"], TEST_COLUMNS),
        "",
    ]
    if summary["pareto_front"]:
        table = markdown_table(summary["pareto_front"], ["alpha", "patching", "supported"])
        lines += ["## Pareto front (validation)", "", table, ""]
    cols = [c for c in TRIAL_COLUMNS if any(r.get(c) is not None for r in rows)]
    lines += ["## Trials (validation)", "", markdown_table(rows, cols), ""]
    if summary["failed"]:
        lines += ["## Failed trials", ""]
        lines += [
            f"- alpha={f['alpha']} ({f['trial_id']}): {f['error']}" for f in summary["failed"]
        ]
        lines += ["", "Re-run them with `--resume --retry-failed`.", ""]
    return "\n".join(lines)


def _infeasible(
    chosen: float, rows: list[dict[str, Any]], rule: str, tolerance: float
) -> list[str]:
    """The note under the chosen alpha when the constrained rule found no feasible alpha."""
    if rule != "constrained":
        return []
    picked = next((r for r in rows if r.get("chosen")), {})
    base = next((r["supported_base"] for r in rows if r.get("supported_base") is not None), None)
    if select.feasible(picked.get("supported"), base, tolerance):
        return []
    return [
        f"Note: no alpha in the searched range keeps supported within tolerance: least "
        f"drop (supported {picked['supported']:.2f} at alpha {chosen:g}, "
        f"{base:.2f} at alpha 0, --tolerance {tolerance:g}).",
        "",
    ]
