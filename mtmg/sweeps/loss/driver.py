"""Sweep of the alignment loss: weights (w_img, w_txt, w_kd), distance D and learning rate.

`python sweeps/loss_sweep.py --data SHARDS --teacher PATCH_RUN --out DIR [--search optuna]`

Each trial is one alignment run (`mtmg.align`'s loop, in the trial's process) that reports its
validation metrics every epoch; with `--search optuna` Optuna (TPE) proposes the settings and ASHA
stops poor trials early. Teacher weights, heads and the student's initial weights go to the object
store once (`mtmg.runtime.tuner.bind`); every trial starts from the same student.

A space option takes values: in a grid every combination is run; for Optuna two numbers are a
range (learning rate on a log scale), one number is fixed, more are a choice. The other
alignment settings come from `--align-config` and `--align KEY=VALUE`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mtmg import config
from mtmg.data import evalsets
from mtmg.stages.align import driver as align
from mtmg.sweeps import command, common, options, outputs, trials
from mtmg.sweeps.loss.config import COMMAND, FIXED, SPACE, LossSweepConfig
from mtmg.sweeps.loss.config import NAME as NAME  # the Tune experiment's name, for callers

TEST_KEYS = ("test_zeroshot", "test_r1", "test_cosine")  # a set's `align.headline` test metrics


def check_options(cfg: LossSweepConfig) -> None:
    """Errors in the options, before anything is loaded."""
    options.check_common(cfg)
    if not cfg.data:
        raise ValueError("give --data SHARDS (the shard set to align on)")
    if not cfg.teacher and not cfg.model:
        raise ValueError("give --teacher PATCH_RUN_DIR, or --model/--pretrained for the teacher")
    for name in ("w_img", "w_txt", "w_kd", "lr"):
        values = getattr(cfg, name)
        if not values or any(v < 0 for v in values):
            raise ValueError(f"--{name.replace('_', '-')}: give values >= 0")
    if any(v <= 0 for v in cfg.lr):
        raise ValueError("--lr: learning rates must be > 0")
    bad = [d for d in cfg.distance if d not in align.DISTANCES]
    if not cfg.distance or bad:
        raise ValueError(f"--distance: choose from {list(align.DISTANCES)}, got {bad}")
    if cfg.objective not in options.OBJECTIVES:
        raise ValueError(f"unknown --objective {cfg.objective!r}")
    options.check_overrides(align.AlignConfig, cfg.align, "--align", (*SPACE, *FIXED))


def align_config(cfg: LossSweepConfig) -> align.AlignConfig:
    """The alignment settings every trial shares (space values replace the weights)."""
    assert cfg.data is not None
    named = options.given(
        eval_data=tuple(evalsets.absolute(p) for p in cfg.eval_data),
        teacher=cfg.teacher and common.absolute(cfg.teacher),
    )
    fixed = {
        "data": common.absolute(cfg.data),
        "out": str(Path(cfg.out).resolve() / "trial"),
        "eval_every": 1,
        "eval_init": False,
    }
    values = {**options.named_values(cfg), **named, **fixed}
    return options.stage_config(align.AlignConfig, cfg.align_config, cfg.align, "--align", values)


def space_values(cfg: LossSweepConfig) -> dict[str, tuple]:
    """The values of each space option."""
    return {k: tuple(getattr(cfg, k)) for k in SPACE}


def optuna_space(cfg: LossSweepConfig) -> dict[str, Any]:
    """Optuna distributions: two numbers a range (lr: log scale), one fixed, more a choice."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    out: dict[str, Any] = {}
    for k, v in space_values(cfg).items():
        if k != "distance" and len(v) == 2:
            out[k] = FloatDistribution(min(v), max(v), log=k == "lr" and min(v) > 0)
        else:
            out[k] = CategoricalDistribution(list(v))
    return out


def eval_labels(sets: list[tuple[str, str | None]]) -> list[str]:
    """The names of the --eval-data sets (`sets[1:]`) in the table: `eval/<dataset>`, with
    `:<nomenclature>` where the entry names one (`common.entry_labels`)."""
    return [f"eval/{label}" for label in common.entry_labels(sets)[1:]]


@dataclass(frozen=True)
class LossTrialInputs:
    """What every trial needs, put in the object store once."""

    base: dict[str, Any]  # AlignConfig fields
    teacher: trials.TeacherInputs
    student: tuple[str, dict[str, torch.Tensor]]  # spec JSON, initial weights
    sets: list[tuple[str, str | None]]
    labels: list[str]  # of sets[1:] (--eval-data): their test columns are <label>/test_*
    objective: str
    resources: trials.TrialResources


def trial(params: dict[str, Any], inputs: LossTrialInputs) -> None:
    """One Tune trial: an alignment run reporting validation metrics each epoch, then test."""
    device = inputs.resources.start()
    cfg = align.AlignConfig(**{**inputs.base, **{k: params[k] for k in SPACE}})
    trials.align_and_report(
        cfg, inputs.teacher, inputs.student, inputs.sets, inputs.objective, device, inputs.labels
    )


def prepare(cfg: LossSweepConfig) -> common.Prepared:
    """The teacher, its heads and the student every trial starts from; the search."""
    base = align_config(cfg)
    sets = align.resolve_inputs(base)
    teacher = trials.load_teacher(base, sets)
    student, _ = align.build_student(base, teacher.heads[0].shape[1])
    inputs = LossTrialInputs(
        dataclasses.asdict(base),
        teacher,
        (student.spec.to_json(), student.state_dict()),
        sets,
        eval_labels(sets),
        cfg.objective,
        trials.TrialResources.of(cfg),
    )
    grid = {k: sorted(set(v), key=str) for k, v in space_values(cfg).items()}
    if cfg.search == "grid":
        search = common.search(cfg, grid)
    else:  # +1: the last report carries the test metrics
        search = common.search(
            cfg, grid, optuna_space(cfg), asha_max_t=base.epochs + 1 if cfg.asha else None
        )
    out = Path(cfg.out).resolve()
    return common.Prepared(trial, inputs, search, lambda rows: write(cfg, base, inputs, out, rows))


def plot(rows: list[dict[str, Any]], path: Path, objective_name: str) -> None:
    """Objective against w_txt, one series per (distance, w_img); w_kd and lr in the label."""
    from mtmg.report import tables

    fig, ax = tables.plt.subplots(figsize=(6, 4), dpi=120)
    done = [r for r in rows if r.get("objective") is not None]
    keys = sorted({(r["config/distance"], r["config/w_img"]) for r in done})
    for d, wi in keys:
        pts = sorted(
            (r["config/w_txt"], r["objective"])
            for r in done
            if (r["config/distance"], r["config/w_img"]) == (d, wi)
        )
        ax.plot(*zip(*pts, strict=True), marker="o", label=f"D={d}, w_img={wi:g}")
    ax.set_xlabel("w_txt (zero-shot head loss weight)")
    ax.set_ylabel(f"validation {objective_name} (%)")
    ax.set_title("alignment loss sweep")
    ax.grid(alpha=0.3)
    if keys:
        ax.legend(fontsize=8)
    tables.save_figure(fig, path)


def write(
    cfg: LossSweepConfig,
    base: align.AlignConfig,
    inputs: LossTrialInputs,
    out: Path,
    rows: list[dict[str, Any]],
) -> dict[str, Any]:
    """Table, summary, best config (an mtmg.align config file) and the plot."""
    finished = [r for r in rows if r.get("objective") is not None and r["status"] != "ERROR"]
    best = max(finished, key=lambda r: r["objective"], default=None)
    best_config = None
    if best is not None:
        best_config = {**config.to_dict(base), **{k: best[f"config/{k}"] for k in SPACE}}
        best_config.update(out=str(out / "best"), eval_every=1, eval_init=True)
    test_keys = [*TEST_KEYS, *(f"{lab}/{k}" for lab in inputs.labels for k in TEST_KEYS)]
    shown = [k for k in test_keys if not k.endswith("test_cosine")]
    cols = [
        "trial_id",
        "status",
        *[f"config/{k}" for k in SPACE],
        "objective",
        "val_zeroshot",
        "val_r1",
        *shown,
        "time_s",
        "error",
    ]
    sets = {
        label: str(evalsets.EvalEntry(*entry))
        for label, entry in zip(["data", *inputs.labels], inputs.sets, strict=True)
    }
    where = [f"`test_*` of --data {sets['data']}"]
    where += [f"`{lab}/test_*` of {sets[lab]}" for lab in inputs.labels]
    md = [
        "# Alignment loss sweep",
        "",
        f"objective: validation {cfg.objective}",
        "",
        "test metrics: " + "; ".join(where),
        "",
        outputs.markdown_table(common.ranked(rows), cols),
        "",
    ]
    if best is not None:
        md += common.best_md(best, SPACE, [], "mtmg.align")
    md += common.failed_md(rows, lambda r: r["trial_id"])
    summary = {
        "objective": cfg.objective,
        "best": {k: best[f"config/{k}"] for k in SPACE} if best else None,
        "best_objective": best["objective"] if best else None,
        "best_test": {k: best.get(k) for k in test_keys} if best else None,
        "test_sets": sets,
        "trials": len(rows),
        "failed": common.failed_summary(rows, []),
    }
    common.write_outputs(cfg, out, rows, md, summary, best_config, "align", base)
    plot(rows, out / "loss_sweep.png", cfg.objective)
    return summary


SWEEP = common.Sweep(COMMAND, check_options, prepare)


def execute(cfg: LossSweepConfig) -> int:
    """The sweep of parsed options, as its command runs it (`common.execute`)."""
    return common.execute(SWEEP, cfg)


def main(argv: list[str] | None = None) -> int:
    """`python sweeps/loss_sweep.py --data SHARDS --teacher RUN --out DIR [options]`."""
    return command.main(COMMAND, argv)
