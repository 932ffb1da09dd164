"""The backbone sweep: encoder backbones on both sides, one row per combination.

`python sweeps/backbone_sweep.py --stage patch --teachers ViT-B-32:openai ViT-B-16:openai
--data SHARDS ... [--supported SHARDS ...] --out DIR` runs one Tune trial per (CLIP teacher,
patching dataset): the trial loads the teacher (open_clip name + pretrained tag or file),
builds its zero-shot heads, fine-tunes the image tower (`mtmg.patch.worker` in the trial's own
process: no Ray Train worker group per trial), selects alpha on validation (`mtmg.engine.select`,
PAINT's rule with `--supported`) and reports validation and test metrics at the chosen alpha.

`python sweeps/backbone_sweep.py --stage align --students vit_small_patch16_224
vit_base_patch16_224 [--student-inits none SSL4EO.pth] --data SHARDS ... --teacher PATCH_RUN
--out DIR` runs one trial per (timm student, init, alignment dataset): `mtmg.align.worker` in
the trial, reporting validation metrics every epoch and test metrics at the end. The teacher is
fixed: its image tower and heads go to the object store once (`mtmg.runtime.tuner.bind`).

`--search grid` runs every combination; `--search optuna` samples `--num-samples` of them (TPE
over the categorical axes). A combination that cannot run (an unknown model name, a missing
weight file, a dataset without the split it needs) fails its own trial, recorded with its
error; the others finish. Outputs in --out: sweep.parquet/.csv, summary.md, summary.json,
best_config.yaml (`python -m mtmg.patch --config` or `python -m mtmg.align --config`),
spec.yaml and backbone_heatmap.png (backbone x dataset of the test metric).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mtmg import config, errors
from mtmg.data import loader as data
from mtmg.engine import select
from mtmg.engine.context import WorkerContext
from mtmg.models import clip as models
from mtmg.models import heads
from mtmg.runtime import tuner as tuning
from mtmg.stages.align import driver as align
from mtmg.stages.patch import driver as patch

log = logging.getLogger(__name__)
option = config.option
NAME = "backbone_sweep"
TRIAL_MODULES = (__name__,)  # what trial processes import (preloaded when embedded)
STAGES = ("patch", "align")
OBJECTIVES = ("zeroshot", "retrieval", "sum")  # align stage (as the loss sweep)
TRAINING = ("epochs", "batch_size", "lr", "warmup_steps", "loader_workers", "eval_batch_size",
            "cache_dir", "model_config")  # fmt: skip


@dataclass(frozen=True)
class BackboneSweepConfig(tuning.SweepConfig):
    """Options of the backbone sweep (the common sweep options first)."""

    stage: str = option(
        "patch", help="patch: CLIP teachers x patching datasets; align: students x inits x "
        "alignment datasets", choices=list(STAGES),
    )  # fmt: skip
    data: tuple[str, ...] = option(
        (), help="shard sets: the patching datasets (patch) or the datasets to align on (align)"
    )
    # patch stage
    teachers: tuple[str, ...] = option(
        (), help="patch: CLIP backbones NAME[:PRETRAINED], PRETRAINED an open_clip tag, a "
        "local weight file or 'none' (default: --pretrained)"
    )  # fmt: skip
    supported: tuple[str, ...] = option((), help="patch: supported-task shard sets (alpha rule)")
    patch_config: str | None = option(None, help="patch: YAML of further mtmg.patch options")
    alphas: tuple[float, ...] | None = option(None, help="patch: mixing coefficients")
    selection: str | None = option(None, help="patch: alpha selection rule (mtmg.engine.select)")
    # align stage
    teacher: str | None = option(None, help="align: a mtmg.patch / alpha-sweep output dir")
    model: str | None = option(
        None, help="align: teacher open_clip model when no --teacher"
    )  # fmt: skip
    pretrained: str = option(
        "", help="teacher weights when not given: an open_clip tag or file, 'none' for random "
        "init (default: the stage's, openai)"
    )  # fmt: skip
    students: tuple[str, ...] = option(
        ("vit_small_patch16_224",), help="align: timm student architectures"
    )
    student_inits: tuple[str, ...] = option(
        ("none",), help="align: SSL4EO-S12 trunk checkpoints to try, 'none' for random init"
    )
    student_args: str | None = option(None, help="align: JSON of timm keyword overrides")
    student_size: int | None = option(None, help="align: student input size")
    align_config: str | None = option(None, help="align: YAML of further mtmg.align options")
    objective: str = option(
        "zeroshot", help="align: validation objective (MS zero-shot, mean R@1, or their sum)",
        choices=list(OBJECTIVES),
    )  # fmt: skip
    # training, both stages
    model_config: str | None = option(None, help="JSON of a custom open_clip architecture")
    epochs: int | None = option(None, help="epochs per trial (default: the stage's)")
    batch_size: int | None = option(None, help="batch size per trial")
    lr: float | None = option(None, help="learning rate per trial")
    warmup_steps: int | None = option(None, help="warm-up steps per trial")
    loader_workers: int | None = option(None, help="data-loading processes per trial")
    eval_batch_size: int | None = option(None, help="evaluation batch size")
    cache_dir: str | None = option(None, help="zero-shot head cache")
    trial_delay: float = option(0.0, help="test hook: every trial sleeps this long (s) first")


def check(cfg: BackboneSweepConfig) -> None:
    """Errors in the options, before anything is loaded."""
    tuning.check(cfg)
    if cfg.stage not in STAGES:
        raise ValueError(f"unknown --stage {cfg.stage!r}; choose one of {list(STAGES)}")
    if not cfg.data:
        raise ValueError("give --data SHARDS ... (the datasets of the sweep)")
    if cfg.stage == "patch":
        if not cfg.teachers:
            raise ValueError("--stage patch: give --teachers NAME[:PRETRAINED] ...")
        for t in cfg.teachers:
            parse_teacher(t, cfg.pretrained)
        if cfg.selection is not None and cfg.selection not in select.RULES:
            raise ValueError(f"unknown --selection {cfg.selection!r}")
    else:
        if not cfg.teacher and not cfg.model:
            raise ValueError("--stage align: give --teacher PATCH_RUN_DIR or --model/--pretrained")
        if not cfg.students or not cfg.student_inits:
            raise ValueError("--stage align: give --students and --student-inits")
        if cfg.objective not in OBJECTIVES:
            raise ValueError(f"unknown --objective {cfg.objective!r}")
    for name in ("data", "teachers", "students", "student_inits"):
        values = getattr(cfg, name)
        if len(set(values)) != len(values):
            raise ValueError(f"--{name.replace('_', '-')}: repeated values")


def parse_teacher(spec: str, default: str = "") -> tuple[str, str | None]:
    """(open_clip name, pretrained tag or absolute file or None) of `NAME[:PRETRAINED]`."""
    head, sep, rest = spec.partition(":")
    if head == "hf-hub":  # open_clip's hub names hold a colon themselves
        name, sep, pre = rest.partition(":")
        name = f"hf-hub:{name}"
    else:
        name, pre = head, rest
    if not name:
        raise ValueError(f"--teachers {spec!r}: no model name")
    pre = pre if sep else default
    if pre.lower() == "none":
        return name, None
    if not pre:
        return name, "openai"
    if "/" in pre or Path(pre).suffix in (".pt", ".pth", ".bin", ".safetensors"):
        return name, str(Path(pre).expanduser().resolve())
    return name, pre


def teacher_label(spec: str, default: str = "") -> str:
    """A short name of a teacher in tables and plots: NAME:TAG or NAME:FILE_NAME."""
    name, pre = parse_teacher(spec, default)
    if pre is None:
        return f"{name}:none"
    return f"{name}:{Path(pre).name}" if Path(pre).is_absolute() else f"{name}:{pre}"


def dataset_labels(paths: Sequence[str]) -> list[str]:
    """Table names of shard sets: the dataset name, the directory name where names repeat."""
    names = [data.ShardSet.open(p).name for p in paths]
    return [n if names.count(n) == 1 else Path(p).name for n, p in zip(names, paths, strict=True)]


def _abs(path: str) -> str:
    return path if "://" in path else str(Path(path).expanduser().resolve())


def _unique(paths: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(_abs(p) for p in paths))


# ------------------------------------------------------------------------ patching in a trial


def patch_config(cfg: Any, **fixed: Any) -> patch.PatchConfig:
    """The fixed patching settings of every trial (a YAML file < sweep options < `fixed`)."""
    values = config.load_yaml(patch.PatchConfig, cfg.patch_config) if cfg.patch_config else {}
    if cfg.pretrained:
        values["pretrained"] = None if cfg.pretrained.lower() == "none" else cfg.pretrained
    for f in (*TRAINING, "alphas", "selection"):
        v = getattr(cfg, f, None)
        if v is not None:
            values[f] = v
    values.update(out=str(Path(cfg.out).resolve() / "trial"), workers=1, joint_data=())
    values.update(fixed)  # a trial names its own patching sets
    return patch.PatchConfig(**values)


def check_patching(path: str) -> None:
    """A patching dataset needs train and val splits (checked in its own trial)."""
    ds = data.ShardSet.open(path)
    for split in ("train", "val"):
        if not ds.count(split):
            raise ValueError(f"{path}: the patching dataset has no {split!r} split")


def check_evaluable(path: str) -> None:
    """An evaluation dataset needs a test or val split (checked before Ray starts)."""
    if not data.ShardSet.open(path).count("test") and not data.ShardSet.open(path).count("val"):
        raise ValueError(f"{path}: no test or val split to evaluate on")


def trial_device(gpu: bool) -> torch.device:
    return torch.device("cuda" if gpu and torch.cuda.is_available() else "cpu")


def run_patch(
    cfg: patch.PatchConfig,
    sets: list[tuple[str, str, str | None]],
    zeroshot: dict[str, torch.Tensor],
    head_weights: list[torch.Tensor],
    device: torch.device,
    progress: bool = True,
    build_kwargs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """`mtmg.patch.worker` in this Tune trial's process: fine-tune (with `progress`, the
    training loss reported to Tune every epoch; not for a searcher that reads every report),
    then evaluate every alpha; returns the worker's result."""
    from ray import tune

    def report(metrics: dict[str, Any], checkpoint: str | None) -> None:
        if progress and "train_loss" in metrics:  # the final "done" report is the caller's
            tune.report({"epoch": metrics["epoch"], "train_loss": metrics["train_loss"]})

    conf = {"cfg": dataclasses.asdict(cfg), "zeroshot": zeroshot, "heads": head_weights,
            "sets": sets, "build_kwargs": build_kwargs}  # fmt: skip
    return patch.worker(conf, WorkerContext(device=device, reporter=report))


def finished_rows(grid: Any) -> list[dict[str, Any]]:
    """`tuning.trial_rows`, with a trial that made its final report (`done_training`) counted
    as finished: a driver killed right after a trial's last report restores it without Tune's
    `done` flag, and --resume rightly does not run it again."""
    return tuning.trial_rows(grid, final_key="done_training")


def eval_values(rows: list[dict[str, Any]], alpha: float) -> dict[str, dict[str, Any]]:
    """path -> {metric, zeroshot, patched, finetuned, gain} from a patch run's test rows
    (alpha 0, the chosen alpha, 1)."""
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        if "selected" not in r:  # validation rows of the alpha grid
            continue
        d = out.setdefault(r["path"], {"metric": r["metric"], "split": r["split"]})
        if r["alpha"] == 0.0:
            d["zeroshot"] = r["value"]
        if r["alpha"] == 1.0:
            d["finetuned"] = r["value"]
        if r["alpha"] == alpha:
            d["patched"] = r["value"]
    for d in out.values():
        d["gain"] = d["patched"] - d["zeroshot"]
    return out


def val_values(rows: list[dict[str, Any]], alpha: float) -> tuple[float, float | None]:
    """Validation (patching, supported) means at `alpha` (supported None without one)."""
    c = select.curves(rows, "val")
    sup = c.get("supported")
    return c["patching"][alpha], (sup[alpha] if sup else None)


# --------------------------------------------------------------------------------- patch stage


@dataclass
class PatchPlan:
    """What every patch-stage trial needs (small: trials load their own teachers)."""

    base: dict[str, Any]  # PatchConfig fields
    teachers: dict[str, tuple[str, str | None]]  # label -> (open_clip name, pretrained)
    datasets: dict[str, str]  # label -> shard set path
    supported: list[str]
    threads: int
    gpu: bool
    trial_delay: float = 0.0
    progress: bool = True  # per-epoch reports (grid only: Optuna reads every report)


def patch_trial(params: dict[str, Any], plan: PatchPlan) -> None:
    """One (teacher, dataset): load the teacher, fine-tune, select alpha, report the metrics."""
    from ray import tune

    torch.set_num_threads(max(1, plan.threads))
    time.sleep(plan.trial_delay)
    name, pretrained = plan.teachers[params["teacher"]]
    path = plan.datasets[params["dataset"]]
    check_patching(path)
    cfg = patch.PatchConfig(**{**plan.base, "model": name, "pretrained": pretrained,
                               "data": path, "supported": tuple(plan.supported)})  # fmt: skip
    sets = [("patching", path, None)]
    sets += [("supported", s, None) for s in plan.supported if s != path]
    torch.manual_seed(cfg.seed)
    bundle = models.load_clip(name, pretrained, model_config=cfg.model_config)
    head_weights = heads.dataset_heads(
        bundle, name, [(data.ShardSet.open(p), None) for _, p, _ in sets], cfg.cache_dir,
        cfg.templates,
    )  # fmt: skip
    zeroshot = {k: v.cpu() for k, v in bundle.model.state_dict().items()}
    res = run_patch(cfg, sets, zeroshot, head_weights, trial_device(plan.gpu), plan.progress,
                    bundle.build_kwargs)  # fmt: skip
    alpha = res["alpha"]
    val_p, val_s = val_values(res["rows"], alpha)
    test = eval_values(res["rows"], alpha)
    own = test[path]
    sup = [test[s] for s in plan.supported if s != path and s in test]
    mean = (lambda k: sum(d[k] for d in sup) / len(sup)) if sup else (lambda k: None)  # noqa: E731
    tune.report({
        "alpha": alpha, "val_patching": val_p, "val_supported": val_s,
        "objective": val_p if val_s is None else (val_p + val_s) / 2,
        "metric": own["metric"], "test_zeroshot": own["zeroshot"], "test_patched": own["patched"],
        "test_finetuned": own["finetuned"], "test_gain": own["gain"],
        "test_supported_zeroshot": mean("zeroshot"), "test_supported": mean("patched"),
        "train_loss": res["stats"][-1]["train_loss"] if res["stats"] else None,
        "steps": res["step"], "done_training": True,
    })  # fmt: skip


# --------------------------------------------------------------------------------- align stage


@dataclass
class AlignPlan:
    """What every align-stage trial needs, put in the object store once."""

    base: dict[str, Any]  # AlignConfig fields
    teacher: dict[str, Any]
    teacher_visual: dict[str, torch.Tensor]
    embed_dim: int
    heads: dict[str, torch.Tensor]  # dataset path -> head weights
    datasets: dict[str, str]  # label -> path
    inits: dict[str, str | None]  # label -> checkpoint
    objective: str
    threads: int
    gpu: bool
    trial_delay: float = 0.0


def init_label(init: str) -> str:
    return "none" if init.lower() == "none" else Path(init).name


def align_trial(params: dict[str, Any], plan: AlignPlan) -> None:
    """One (student, init, dataset): build the student, align, report validation each epoch
    and the test metrics at the end."""
    from ray import tune

    from mtmg.sweeps.loss import objective

    torch.set_num_threads(max(1, plan.threads))
    time.sleep(plan.trial_delay)
    path = plan.datasets[params["dataset"]]
    cfg = align.AlignConfig(**{**plan.base, "student": params["student"], "data": path,
                               "student_init": plan.inits[params["init"]]})  # fmt: skip
    student, _ = align.build_student(cfg, plan.embed_dim)
    last: dict[str, Any] = {}

    def report(metrics: dict[str, Any], checkpoint: str | None) -> None:
        if "epoch" not in metrics:
            return
        last.update({k: v for k, v in metrics.items() if v is not None})
        last["objective"] = objective(last, plan.objective)
        tune.report(dict(last))

    conf = {"cfg": dataclasses.asdict(cfg), "teacher": plan.teacher,
            "teacher_visual": plan.teacher_visual, "spec": student.spec.to_json(),
            "student_init": student.state_dict(), "heads": [plan.heads[path]],
            "sets": [(path, None)]}  # fmt: skip
    rows = align.worker(conf, WorkerContext(device=trial_device(plan.gpu), reporter=report))["rows"]
    ds = data.ShardSet.open(path)
    test = align.headline([r for r in rows if r["split"] != "val"], ds.name, cfg.student_input,
                          "test")  # fmt: skip
    params_m = sum(p.numel() for p in student.parameters())
    tune.report({**last, **test, "student_params": params_m, "done_training": True})


def align_config(cfg: BackboneSweepConfig) -> align.AlignConfig:
    """The fixed alignment settings (a YAML file < sweep options); the axes vary per trial."""
    values = config.load_yaml(align.AlignConfig, cfg.align_config) if cfg.align_config else {}
    if cfg.pretrained:
        values["pretrained"] = None if cfg.pretrained.lower() == "none" else cfg.pretrained
    for f in (*TRAINING, "model", "student_args", "student_size"):
        v = getattr(cfg, f)
        if v is not None:
            values[f] = v
    values.update(out=str(Path(cfg.out).resolve() / "trial"), eval_every=1, eval_init=False,
                  data=_abs(cfg.data[0]), eval_data=(), workers=1)  # fmt: skip
    if cfg.teacher:
        values["teacher"] = _abs(cfg.teacher)
    return align.AlignConfig(**values)


# -------------------------------------------------------------------------------------- driver


def axes(cfg: BackboneSweepConfig) -> dict[str, list[str]]:
    """The combination axes (labels) of the stage."""
    ds = dataset_labels(_unique(cfg.data))
    if cfg.stage == "patch":
        return {"teacher": [teacher_label(t, cfg.pretrained) for t in cfg.teachers], "dataset": ds}
    return {"student": list(cfg.students),
            "init": [init_label(i) for i in cfg.student_inits], "dataset": ds}  # fmt: skip


def _search(cfg: BackboneSweepConfig, space: dict[str, list[str]]) -> dict[str, Any]:
    """run_tuner arguments: a grid over every combination, or Optuna over the axes."""
    from ray import tune

    if cfg.search == "grid":
        return {"param_space": {k: tune.grid_search(v) for k, v in space.items()}}
    from optuna.distributions import CategoricalDistribution

    dist = {k: CategoricalDistribution(v) for k, v in space.items()}
    combos = math.prod(len(v) for v in space.values())
    if cfg.num_samples > combos:
        log.warning("--num-samples %d > %d combinations: running %d (or use --search grid)",
                    cfg.num_samples, combos, combos)  # fmt: skip
    return {"search_alg": tuning.optuna_search(dist, "objective", "max", seed=cfg.seed),
            "num_samples": min(cfg.num_samples, combos)}  # fmt: skip


def run(cfg: BackboneSweepConfig) -> dict[str, Any]:
    """The whole sweep; returns the summary also written to OUT/summary.json. OUT is the
    sweep's alone while it runs (`tune.claim`)."""
    check(cfg)
    with tuning.claim(cfg, NAME):
        return _sweep(cfg)


def _sweep(cfg: BackboneSweepConfig) -> dict[str, Any]:
    paths = _unique(cfg.data)
    for p in paths:
        check_evaluable(p)
    space = axes(cfg)
    if len(set(space.get("teacher", []))) != len(space.get("teacher", [])) or len(
        set(space.get("init", []))
    ) != len(space.get("init", [])):
        raise ValueError("two backbones have the same label: give distinct names or files")
    datasets = dict(zip(space["dataset"], paths, strict=True))
    threads, gpu = max(1, int(cfg.cpus_per_trial)), cfg.gpus_per_trial > 0
    if cfg.stage == "patch":
        supported = _unique(cfg.supported)
        for s in supported:
            ds = data.ShardSet.open(s)
            if not ds.count("val"):
                raise ValueError(f"{s}: the supported dataset has no 'val' split")
        base = patch_config(cfg, data=paths[0], supported=tuple(supported))
        trainable_fn: Any = patch_trial
        plan: Any = PatchPlan(
            dataclasses.asdict(base),
            {teacher_label(t, cfg.pretrained): parse_teacher(t, cfg.pretrained)
             for t in cfg.teachers},
            datasets, supported, threads, gpu, cfg.trial_delay, cfg.search == "grid",
        )  # fmt: skip
    else:
        base = align_config(cfg)
        for p in paths:  # every dataset must suit the student
            align.validate(dataclasses.replace(base, data=p))
        name, pretrained, model_config = align.resolve_teacher(base)
        torch.manual_seed(base.seed)
        tb = models.load_clip(name, pretrained, model_config=model_config)
        head_weights = heads.dataset_heads(
            tb, name, [(data.ShardSet.open(p), None) for p in paths], base.cache_dir,
            base.templates,
        )  # fmt: skip
        trainable_fn = align_trial
        plan = AlignPlan(
            dataclasses.asdict(base),
            {"model": name, "build_kwargs": tb.build_kwargs,
             "config": str(Path(model_config).resolve()) if model_config else None},
            tb.model.visual.state_dict(), int(head_weights[0].shape[1]),
            dict(zip(paths, head_weights, strict=True)), datasets,
            {init_label(i): None if i.lower() == "none" else _abs(i) for i in cfg.student_inits},
            cfg.objective, threads, gpu, cfg.trial_delay,
        )  # fmt: skip
    out = Path(cfg.out).resolve()
    out.mkdir(parents=True, exist_ok=True)

    tuning.preload(cfg, TRIAL_MODULES)
    tuning.init(cfg)
    tuning.can_resume(cfg, NAME)
    trainable = tuning.bind(trainable_fn, plan=plan)
    result = tuning.run_tuner(trainable, cfg, name=NAME, **_search(cfg, space))
    return write(cfg, base, plan, out, finished_rows(result))


# -------------------------------------------------------------------------------------- outputs


def heatmap(
    matrix: dict[str, dict[str, float | None]],
    rows: Sequence[str],
    cols: Sequence[str],
    path: Path,
    *,
    title: str,
    label: str,
    diverging: bool = False,
    xlabel: str = "dataset",
    ylabel: str = "backbone",
) -> None:
    """A rows x cols heat map with the values written in the cells (blank: no value)."""
    import numpy as np

    from mtmg.report import tables as results

    grid = np.array([[np.nan if matrix.get(r, {}).get(c) is None else matrix[r][c]
                      for c in cols] for r in rows], dtype=float)  # fmt: skip
    width = 2.6 + 0.075 * max((len(r) for r in rows), default=0) + 1.2 * len(cols)
    fig, ax = results.plt.subplots(figsize=(max(5.0, width), 1.6 + 0.5 * len(rows)), dpi=120)
    kw: dict[str, Any] = {"cmap": "viridis"}
    if diverging:
        lim = float(np.nanmax(np.abs(grid))) if np.isfinite(grid).any() else 1.0
        kw = {"cmap": "RdBu", "vmin": -lim or -1.0, "vmax": lim or 1.0}
    im = ax.imshow(np.ma.masked_invalid(grid), aspect="auto", **kw)
    ax.set_xticks(range(len(cols)), cols, rotation=30, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    for i in range(len(rows)):
        for j in range(len(cols)):
            text = "failed" if math.isnan(grid[i, j]) else f"{grid[i, j]:.1f}"
            r, g, b, _ = im.cmap(im.norm(grid[i, j])) if not math.isnan(grid[i, j]) else (1,) * 4
            dark = 0.299 * r + 0.587 * g + 0.114 * b < 0.5
            ax.text(j, i, text, ha="center", va="center", fontsize=8,
                    color="white" if dark else "black")  # fmt: skip
    fig.colorbar(im, ax=ax, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    results.save_figure(fig, path)


def _row_label(r: dict[str, Any], stage: str) -> str:
    if stage == "patch":
        return str(r.get("config/teacher"))
    init = r.get("config/init")
    return str(r.get("config/student")) + ("" if init in (None, "none") else f" + {init}")


def write(cfg: BackboneSweepConfig, base: Any, plan: Any, out: Path,
          rows: list[dict[str, Any]]) -> dict[str, Any]:  # fmt: skip
    """Table, summary, best config (a config file of the stage) and the heat map."""
    stage = cfg.stage
    keys = ["teacher", "dataset"] if stage == "patch" else ["student", "init", "dataset"]
    finished = [r for r in rows if r.get("done_training") and r["status"] != "ERROR"
                and r.get("objective") is not None]  # fmt: skip
    best = max(finished, key=lambda r: r["objective"], default=None)
    best_config = None
    if best is not None:
        path = plan.datasets[best["config/dataset"]]
        if stage == "patch":
            name, pretrained = plan.teachers[best["config/teacher"]]
            best_config = {**config.to_dict(base), "model": name, "pretrained": pretrained,
                           "data": path, "workers": 1, "out": str(out / "best")}  # fmt: skip
        else:
            best_config = {**config.to_dict(base), "student": best["config/student"],
                           "student_init": plan.inits[best["config/init"]], "data": path,
                           "eval_init": True, "out": str(out / "best")}  # fmt: skip
    metric = "test_patched" if stage == "patch" else "test_zeroshot"
    if stage == "patch":
        cols = ["trial_id", "status", "config/teacher", "config/dataset", "alpha", "objective",
                "test_zeroshot", "test_patched", "test_gain", "test_supported", "time_s",
                "error"]  # fmt: skip
    else:
        cols = ["trial_id", "status", "config/student", "config/init", "config/dataset",
                "objective", "val_zeroshot", "val_r1", "test_zeroshot", "test_r1",
                "student_params", "time_s", "error"]  # fmt: skip
    ordered = sorted(rows, key=lambda r: -(r.get("objective") or float("-inf")))
    what = ("CLIP teacher x patching dataset" if stage == "patch"
            else "student x init x alignment dataset")  # fmt: skip
    objective_text = ("PAINT's rule on validation (mean of patching and supported metric at "
                      "the chosen alpha)" if stage == "patch"
                      else f"validation {cfg.objective} of the aligned student")  # fmt: skip
    md = [f"# Backbone sweep ({stage} stage): {what}", "", f"objective: {objective_text}", "",
          tuning.markdown_table(ordered, cols), ""]  # fmt: skip
    matrix: dict[str, dict[str, float | None]] = {}
    labels_r: list[str] = []
    for r in rows:
        lab = _row_label(r, stage)
        if lab not in labels_r:
            labels_r.append(lab)
        matrix.setdefault(lab, {})[str(r.get("config/dataset"))] = (
            r.get(metric) if r["status"] != "ERROR" and r.get("done_training") else None
        )
    cols_d = list(plan.datasets)
    md += [f"## {metric} (backbone x dataset, %)", "",
           tuning.markdown_table([{"backbone": b, **matrix[b]} for b in labels_r],
                                 ["backbone", *cols_d]), ""]  # fmt: skip
    per_dataset: dict[str, dict[str, Any]] = {}
    for d in cols_d:
        top = max((r for r in finished if r.get("config/dataset") == d),
                  key=lambda r: r["objective"], default=None)  # fmt: skip
        if top is not None:
            per_dataset[d] = {"backbone": _row_label(top, stage), "objective": top["objective"],
                              metric: top.get(metric)}  # fmt: skip
    if per_dataset:
        md += ["## Best backbone per dataset (validation objective)", "",
               *[f"- {d}: {v['backbone']} (objective {v['objective']:.2f}, {metric} "
                 f"{v[metric]:.2f})" for d, v in per_dataset.items()], ""]  # fmt: skip
    if best is not None:
        run_with = "mtmg.patch" if stage == "patch" else "mtmg.align"
        md += ["## Best configuration", "",
               *[f"- {k} = {best[f'config/{k}']}" for k in keys],
               f"- validation objective = {best['objective']:.2f}",
               f"- {metric} = {best.get(metric):.2f}", "",
               f"Run it: `python -m {run_with} --config best_config.yaml`", ""]  # fmt: skip
    failed = [r for r in rows if r["status"] == "ERROR"]
    if failed:
        md += ["## Failed trials", "",
               *[f"- {', '.join(str(r.get(f'config/{k}')) for k in keys)}: {r['error']}"
                 for r in failed], ""]  # fmt: skip
    summary = {
        "stage": stage,
        "objective": "paint" if stage == "patch" else cfg.objective,
        "metric": metric,
        "best": {k: best[f"config/{k}"] for k in keys} if best else None,
        "best_objective": best["objective"] if best else None,
        "best_test": best.get(metric) if best else None,
        "matrix": matrix,
        "best_per_dataset": per_dataset,
        "trials": len(rows),
        "failed": [{**{k: r.get(f"config/{k}") for k in keys}, "trial_id": r["trial_id"],
                    "error": r["error"]} for r in failed],
    }  # fmt: skip
    tuning.write_outputs(out, rows, summary_md="\n".join(md), summary=summary,
                         spec=tuning.resolved_spec(cfg), best_config=best_config)  # fmt: skip
    heatmap(matrix, labels_r, cols_d, out / "backbone_heatmap.png",
            title=f"backbone sweep ({stage}): {metric}", label=f"{metric} (%)")  # fmt: skip
    return summary


def main(argv: list[str] | None = None) -> int:
    """`python sweeps/backbone_sweep.py --stage patch|align --data SHARDS ... --out DIR`."""
    cfg = tuning.parse(
        BackboneSweepConfig,
        argv,
        "Sweep encoder backbones with Ray Tune: CLIP teachers x patching datasets (--stage "
        "patch: fine-tune, select alpha, test), or timm students x SSL4EO inits x datasets "
        "aligned to one teacher (--stage align). A grid, or Optuna over the combinations.",
        "outputs in --out: sweep.parquet/.csv (one row per combination: config, validation and\n"
        "test metrics, time, status, error), summary.md, summary.json, best_config.yaml (for\n"
        "`python -m mtmg.patch --config` or `python -m mtmg.align --config`), spec.yaml,\n"
        "backbone_heatmap.png. --resume continues an interrupted sweep without re-running\n"
        "finished trials.",
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
