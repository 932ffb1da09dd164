"""Sweep of the alignment loss: weights (w_img, w_txt, w_kd), distance D and learning rate.

`python sweeps/loss_sweep.py --data SHARDS --teacher PATCH_RUN --out DIR [--search optuna]`

Each trial is one alignment run (`mtmg.align`'s loop, in the trial's process) that reports its
validation metrics every epoch; with `--search optuna` Optuna (TPE) proposes the settings and ASHA
stops poor trials early. Teacher weights, heads and the student's initial weights go to the object
store once (`mtmg.runtime.tuner.bind`); every trial starts from the same student.

A space option takes values: in a grid every combination is run; for Optuna two numbers are a
range (learning rate on a log scale), one number is fixed, more are a choice.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mtmg import config, errors
from mtmg.data import loader as data
from mtmg.engine.context import WorkerContext
from mtmg.models import clip as models
from mtmg.models import heads
from mtmg.runtime import tuner as tuning
from mtmg.stages.align import driver as align

log = logging.getLogger(__name__)
option = config.option
NAME = "loss_sweep"
SPACE = ("w_img", "w_txt", "w_kd", "distance", "lr")
OBJECTIVES = ("zeroshot", "retrieval", "sum")


@dataclass(frozen=True)
class LossSweepConfig(tuning.SweepConfig):
    """Options of the loss sweep (the common sweep options first)."""

    data: str | None = option(None, help="shard set to align on (train; val for the objective)")
    eval_data: tuple[str, ...] = option((), help="more shard sets to report test metrics on")
    teacher: str | None = option(None, help="a mtmg.patch / alpha-sweep output dir (teacher)")
    model: str | None = option(None, help="teacher open_clip model when no --teacher")
    pretrained: str = option(
        "", help="teacher tag or file when no --teacher, 'none' for random init "
        "(default: mtmg.align's)"
    )  # fmt: skip
    model_config: str | None = option(None, help="JSON of a custom open_clip architecture")
    align_config: str | None = option(
        None, help="YAML of further mtmg.align options (student, epochs, ...); flags override it"
    )
    student: str | None = option(None, help="timm ViT of the student (default: mtmg.align's)")
    student_args: str | None = option(None, help="JSON of timm keyword overrides")
    student_size: int | None = option(None, help="student input size")
    student_init: str | None = option(None, help="SSL4EO-S12 checkpoint for the trunk")
    epochs: int | None = option(None, help="epochs per trial (default: mtmg.align's)")
    batch_size: int | None = option(None, help="batch size per trial")
    warmup_steps: int | None = option(None, help="warm-up steps per trial")
    loader_workers: int | None = option(None, help="data-loading processes per trial")
    cache_dir: str | None = option(None, help="zero-shot head cache")
    w_img: tuple[float, ...] = option((1.0,), help="space: weight of the embedding distance")
    w_txt: tuple[float, ...] = option((0.0, 0.05, 0.5), help="space: weight of the head loss")
    w_kd: tuple[float, ...] = option((0.0,), help="space: weight of the KL to teacher logits")
    distance: tuple[str, ...] = option(("mse",), help="space: distances D (mse, mse-norm, cosine)")
    lr: tuple[float, ...] = option((1e-4,), help="space: learning rates")
    objective: str = option(
        "zeroshot", help="validation objective: MS zero-shot metric, mean R@1 both ways, or sum",
        choices=list(OBJECTIVES),
    )  # fmt: skip
    asha: bool = option(True, help="optuna search: stop poor trials early (ASHA, per epoch)")
    trial_delay: float = option(0.0, help="test hook: every trial sleeps this long (s) first")


def check(cfg: LossSweepConfig) -> None:
    """Errors in the options, before anything is loaded."""
    tuning.check(cfg)
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
    if cfg.objective not in OBJECTIVES:
        raise ValueError(f"unknown --objective {cfg.objective!r}")


def align_config(cfg: LossSweepConfig) -> align.AlignConfig:
    """The fixed alignment settings every trial shares (space values replace the weights)."""
    values = config.load_yaml(align.AlignConfig, cfg.align_config) if cfg.align_config else {}
    if cfg.pretrained:
        values["pretrained"] = None if cfg.pretrained.lower() == "none" else cfg.pretrained
    for f in ("data", "eval_data", "teacher", "model", "model_config", "student",
              "student_args", "student_size", "student_init", "epochs", "batch_size",
              "warmup_steps", "loader_workers", "cache_dir"):  # fmt: skip
        v = getattr(cfg, f)
        if v not in (None, ()):
            values[f] = v
    values.update(out=str(Path(cfg.out).resolve() / "trial"), eval_every=1, eval_init=False,
                  data=str(Path(cfg.data).resolve()))  # fmt: skip
    if cfg.teacher:
        values["teacher"] = str(Path(cfg.teacher).resolve())
    return align.AlignConfig(**values)


def space_values(cfg: LossSweepConfig) -> dict[str, tuple]:
    return {k: tuple(getattr(cfg, k)) for k in SPACE}


def grid(cfg: LossSweepConfig) -> list[dict[str, Any]]:
    """Every combination of the space's values."""
    values = space_values(cfg)
    return [dict(zip(SPACE, combo, strict=True)) for combo in itertools.product(*values.values())]


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


@dataclass
class Plan:
    """What every trial needs, put in the object store once."""

    base: dict[str, Any]  # AlignConfig fields
    teacher: dict[str, Any]
    teacher_visual: dict[str, torch.Tensor]
    spec: dict[str, Any]
    student_init: dict[str, torch.Tensor]
    heads: list[torch.Tensor]
    sets: list[tuple[str, str | None]]
    objective: str
    threads: int
    gpu: bool
    trial_delay: float = 0.0


def objective(metrics: dict[str, float], kind: str) -> float | None:
    """The sweep's objective from `align.headline` metrics (validation, in %)."""
    zs, r1 = metrics.get("val_zeroshot"), metrics.get("val_r1")
    if kind == "zeroshot":
        return zs
    if kind == "retrieval":
        return r1
    return None if zs is None or r1 is None else zs + r1


def trial(params: dict[str, Any], plan: Plan) -> None:
    """One Tune trial: an alignment run reporting validation metrics each epoch, then test."""
    from ray import tune

    torch.set_num_threads(max(1, plan.threads))
    time.sleep(plan.trial_delay)
    cfg = align.AlignConfig(**{**plan.base, **{k: params[k] for k in SPACE}})
    device = torch.device("cuda" if plan.gpu and torch.cuda.is_available() else "cpu")
    last: dict[str, Any] = {}

    def report(metrics: dict[str, Any], checkpoint: str | None) -> None:
        if "epoch" not in metrics:  # the final "done" report: test metrics follow below
            return
        last.update({k: v for k, v in metrics.items() if v is not None})
        last["objective"] = objective(last, plan.objective)
        tune.report(dict(last))

    conf = {"cfg": dataclasses.asdict(cfg), "teacher": plan.teacher,
            "teacher_visual": plan.teacher_visual, "spec": plan.spec,
            "student_init": plan.student_init, "heads": plan.heads, "sets": plan.sets}  # fmt: skip
    rows = align.worker(conf, WorkerContext(device=device, reporter=report))["rows"]
    ds = data.ShardSet.open(plan.sets[0][0])
    test = align.headline(
        [r for r in rows if r["split"] != "val"], ds.name, cfg.student_input, "test"
    )
    tune.report({**last, **test, "done_training": True})


def plot(rows: list[dict[str, Any]], path: Path, objective_name: str) -> None:
    """Objective against w_txt, one series per (distance, w_img); w_kd and lr in the label."""
    from mtmg.report import tables as results

    fig, ax = results.plt.subplots(figsize=(6, 4), dpi=120)
    done = [r for r in rows if r.get("objective") is not None]
    keys = sorted({(r["config/distance"], r["config/w_img"]) for r in done})
    for d, wi in keys:
        pts = sorted((r["config/w_txt"], r["objective"]) for r in done
                     if (r["config/distance"], r["config/w_img"]) == (d, wi))  # fmt: skip
        ax.plot(*zip(*pts, strict=True), marker="o", label=f"D={d}, w_img={wi:g}")
    ax.set_xlabel("w_txt (zero-shot head loss weight)")
    ax.set_ylabel(f"validation {objective_name} (%)")
    ax.set_title("alignment loss sweep")
    ax.grid(alpha=0.3)
    if keys:
        ax.legend(fontsize=8)
    results.save_figure(fig, path)


def run(cfg: LossSweepConfig) -> dict[str, Any]:
    """The whole sweep; returns the summary also written to OUT/summary.json. OUT is the
    sweep's alone while it runs (`tune.claim`)."""
    check(cfg)
    with tuning.claim(cfg, NAME):
        return _sweep(cfg)


def _sweep(cfg: LossSweepConfig) -> dict[str, Any]:
    base = align_config(cfg)
    sets = align.validate(base)
    name, pretrained, model_config = align.resolve_teacher(base)
    torch.manual_seed(base.seed)
    tb = models.load_clip(name, pretrained, model_config=model_config)
    head_weights = heads.dataset_heads(
        tb, name, [(data.ShardSet.open(p), n) for p, n in sets], base.cache_dir, base.templates
    )
    student, _ = align.build_student(base, head_weights[0].shape[1])
    out = Path(cfg.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    from ray import tune

    from mtmg.runtime.tuner import init

    init(cfg)
    tuning.can_resume(cfg, NAME)
    plan = Plan(
        dataclasses.asdict(base), {"model": name, "build_kwargs": tb.build_kwargs,
                                   "config": str(Path(model_config).resolve())
                                   if model_config else None},
        tb.model.visual.state_dict(), student.spec.to_json(), student.state_dict(), head_weights,
        sets, cfg.objective, max(1, int(cfg.cpus_per_trial)), cfg.gpus_per_trial > 0,
        cfg.trial_delay,
    )  # fmt: skip
    trainable = tuning.bind(trial, plan=plan)
    if cfg.search == "grid":
        points = grid(cfg)
        param_space = {k: tune.grid_search(sorted({p[k] for p in points}, key=str))
                       for k in SPACE}  # fmt: skip
        result = tuning.run_tuner(trainable, cfg, name=NAME, param_space=param_space)
    else:
        from ray.tune.schedulers import ASHAScheduler

        search = tuning.optuna_search(optuna_space(cfg), "objective", "max", seed=cfg.seed)
        sched = None
        if cfg.asha:  # +1: the last report carries the test metrics
            sched = ASHAScheduler(metric="objective", mode="max", max_t=base.epochs + 1,
                                  grace_period=1)  # fmt: skip
        result = tuning.run_tuner(trainable, cfg, name=NAME, search_alg=search,
                                  num_samples=cfg.num_samples, scheduler=sched)  # fmt: skip
    return write(cfg, base, out, tuning.trial_rows(result, final_key="done_training"))


def write(cfg, base: align.AlignConfig, out: Path, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Table, summary, best config (an mtmg.align config file) and the plot."""
    finished = [r for r in rows if r.get("objective") is not None and r["status"] != "ERROR"]
    best = max(finished, key=lambda r: r["objective"], default=None)
    best_config = None
    if best is not None:
        best_config = {**config.to_dict(base), **{k: best[f"config/{k}"] for k in SPACE}}
        best_config.update(out=str(out / "best"), eval_every=1, eval_init=True)
    cols = ["trial_id", "status", *[f"config/{k}" for k in SPACE], "objective",
            "val_zeroshot", "val_r1", "test_zeroshot", "test_r1", "time_s", "error"]  # fmt: skip
    ordered = sorted(rows, key=lambda r: -(r.get("objective") or float("-inf")))
    md = ["# Alignment loss sweep", "", f"objective: validation {cfg.objective}", "",
          tuning.markdown_table(ordered, cols), ""]  # fmt: skip
    if best is not None:
        md += ["## Best configuration", "",
               *[f"- {k} = {best[f'config/{k}']}" for k in SPACE],
               f"- validation objective = {best['objective']:.2f}", "",
               "Run it: `python -m mtmg.align --config best_config.yaml`", ""]  # fmt: skip
    failed = [r for r in rows if r["status"] == "ERROR"]
    if failed:
        md += ["## Failed trials", "", *[f"- {r['trial_id']}: {r['error']}" for r in failed], ""]
    summary = {
        "objective": cfg.objective,
        "best": {k: best[f"config/{k}"] for k in SPACE} if best else None,
        "best_objective": best["objective"] if best else None,
        "best_test": {k: best.get(k) for k in ("test_zeroshot", "test_r1", "test_cosine")}
        if best else None,
        "trials": len(rows),
        "failed": [{"trial_id": r["trial_id"], "error": r["error"]} for r in failed],
    }  # fmt: skip
    tuning.write_outputs(out, rows, summary_md="\n".join(md), summary=summary,
                         spec=tuning.resolved_spec(cfg), best_config=best_config)  # fmt: skip
    plot(rows, out / "loss_sweep.png", cfg.objective)
    return summary


def main(argv: list[str] | None = None) -> int:
    """`python sweeps/loss_sweep.py --data SHARDS --teacher RUN --out DIR [options]`."""
    cfg = tuning.parse(
        LossSweepConfig,
        argv,
        "Sweep the alignment loss (w_img, w_txt, w_kd, distance, lr) with Ray Tune: a grid, or "
        "Optuna TPE with ASHA early stopping.",
        "outputs in --out: sweep.parquet/.csv (one row per trial: config, validation and test\n"
        "metrics, time, status, error), summary.md, summary.json, best_config.yaml (for\n"
        "`python -m mtmg.align --config`), spec.yaml, loss_sweep.png.\n"
        "--resume continues an interrupted sweep without re-running finished trials.",
    )
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        summary = run(cfg)
    except errors.USER_ERRORS as e:
        return errors.failed(e)
    except KeyboardInterrupt:
        return errors.interrupted(errors.RESUME_SWEEP)
    print((Path(cfg.out) / "summary.md").read_text())
    if summary["best"] is None:
        print("error: no trial finished", file=sys.stderr)
        return 1
    return 0
