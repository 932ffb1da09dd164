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

The stage's other settings come from `--patch-config`/`--align-config` and `--patch`/`--align
KEY=VALUE`. `--search grid` runs every combination; `--search optuna` samples `--num-samples`
of them (TPE over the categorical axes). A combination that cannot run (an unknown model name, a
missing weight file, a dataset without the split it needs) fails its own trial, recorded with
its error; the others finish. Outputs: `summary.write`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path
from typing import Any

from mtmg.stages.align import driver as align
from mtmg.stages.patch import driver as patch
from mtmg.sweeps import command, common, options, trials
from mtmg.sweeps.backbone import summary, trial
from mtmg.sweeps.backbone.config import (
    ALIGN_SWEPT,
    COMMAND,
    PATCH_SWEPT,
    STAGES,
    BackboneSweepConfig,
)
from mtmg.sweeps.backbone.config import NAME as NAME  # the Tune experiment's name, for callers

log = logging.getLogger(__name__)


def check_options(cfg: BackboneSweepConfig) -> None:
    """Errors in the options, before anything is loaded."""
    options.check_common(cfg)
    if cfg.stage not in STAGES:
        raise ValueError(f"unknown --stage {cfg.stage!r}; choose one of {list(STAGES)}")
    if not cfg.data:
        raise ValueError("give --data SHARDS ... (the datasets of the sweep)")
    if cfg.stage == "patch":
        if not cfg.teachers:
            raise ValueError("--stage patch: give --teachers NAME[:PRETRAINED] ...")
        for t in cfg.teachers:
            parse_teacher(t, cfg.pretrained)
        if cfg.align or cfg.align_config:
            raise ValueError("--align and --align-config apply to --stage align; use --patch")
        options.check_overrides(patch.PatchConfig, cfg.patch, "--patch", PATCH_SWEPT)
    else:
        if not cfg.teacher and not cfg.model:
            raise ValueError("--stage align: give --teacher PATCH_RUN_DIR or --model/--pretrained")
        if not cfg.students or not cfg.student_inits:
            raise ValueError("--stage align: give --students and --student-inits")
        if cfg.objective not in options.OBJECTIVES:
            raise ValueError(f"unknown --objective {cfg.objective!r}")
        if cfg.patch or cfg.patch_config:
            raise ValueError("--patch and --patch-config apply to --stage patch; use --align")
        options.check_overrides(align.AlignConfig, cfg.align, "--align", ALIGN_SWEPT)
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


def init_label(init: str) -> str:
    """A short name of a student init: 'none' or the checkpoint's file name."""
    return "none" if init.lower() == "none" else Path(init).name


def patch_config(cfg: BackboneSweepConfig, paths: list[str], supported: list[str]) -> Any:
    """The patching settings every trial starts from (teacher and dataset vary per trial)."""
    fixed = {
        "out": str(Path(cfg.out).resolve() / "trial"),
        "workers": 1,
        "joint_data": (),
        "data": paths[0],
        "supported": tuple(supported),
    }
    values = {**options.named_values(cfg), **fixed}
    return options.stage_config(patch.PatchConfig, cfg.patch_config, cfg.patch, "--patch", values)


def align_config(cfg: BackboneSweepConfig, paths: list[str]) -> align.AlignConfig:
    """The alignment settings every trial starts from (student, init, dataset vary)."""
    named = options.given(teacher=cfg.teacher and common.absolute(cfg.teacher))
    fixed = {
        "out": str(Path(cfg.out).resolve() / "trial"),
        "eval_every": 1,
        "eval_init": False,
        "data": paths[0],
        "eval_data": (),
        "workers": 1,
    }
    values = {**options.named_values(cfg), **named, **fixed}
    return options.stage_config(align.AlignConfig, cfg.align_config, cfg.align, "--align", values)


def axes(cfg: BackboneSweepConfig, paths: list[str]) -> dict[str, list[str]]:
    """The combination axes (labels) of the stage."""
    ds = common.dataset_labels(paths)
    if cfg.stage == "patch":
        return {"teacher": [teacher_label(t, cfg.pretrained) for t in cfg.teachers], "dataset": ds}
    return {
        "student": list(cfg.students),
        "init": [init_label(i) for i in cfg.student_inits],
        "dataset": ds,
    }


def search(cfg: BackboneSweepConfig, space: dict[str, list[str]]) -> dict[str, Any]:
    """A grid over every combination, or Optuna over the axes (at most every combination)."""
    if cfg.search == "grid":
        return common.search(cfg, space)
    from optuna.distributions import CategoricalDistribution

    dist = {k: CategoricalDistribution(v) for k, v in space.items()}
    combos = math.prod(len(v) for v in space.values())
    if cfg.num_samples > combos:
        log.warning(
            "--num-samples %d > %d combinations: running %d (or use --search grid)",
            cfg.num_samples,
            combos,
            combos,
        )
    return common.search(cfg, space, dist, num_samples=min(cfg.num_samples, combos))


def prepare(cfg: BackboneSweepConfig) -> common.Prepared:
    """The stage's settings and what its trials share; checks every dataset first."""
    paths = common.unique_paths(cfg.data)
    for p in paths:
        common.check_evaluable(p)
    space = axes(cfg, paths)
    for axis in ("teacher", "init"):
        if len(set(space.get(axis, []))) != len(space.get(axis, [])):
            raise ValueError("two backbones have the same label: give distinct names or files")
    datasets = dict(zip(space["dataset"], paths, strict=True))
    resources = trials.TrialResources.of(cfg)
    if cfg.stage == "patch":
        supported = common.unique_paths(cfg.supported)
        common.check_supported(supported)
        base: Any = patch_config(cfg, paths, supported)
        teachers = {
            teacher_label(t, cfg.pretrained): parse_teacher(t, cfg.pretrained) for t in cfg.teachers
        }
        fn: Any = trial.patch_trial
        inputs: Any = trial.PatchTrialInputs(
            dataclasses.asdict(base),
            teachers,
            datasets,
            supported,
            resources,
            cfg.search == "grid",
        )
    else:
        base = align_config(cfg, paths)
        for p in paths:  # every dataset must suit the student
            align.resolve_inputs(dataclasses.replace(base, data=p))
        fn = trial.align_trial
        inits = {
            init_label(i): None if i.lower() == "none" else common.absolute(i)
            for i in cfg.student_inits
        }
        inputs = trial.AlignTrialInputs(
            dataclasses.asdict(base),
            trials.load_teacher(base, [(p, None) for p in paths]),
            datasets,
            inits,
            cfg.objective,
            resources,
        )
    out = Path(cfg.out).resolve()
    return common.Prepared(
        fn, inputs, search(cfg, space), lambda rows: summary.write(cfg, base, inputs, out, rows)
    )


SWEEP = common.Sweep(COMMAND, check_options, prepare, trial_modules=(trial.__name__,))


def execute(cfg: BackboneSweepConfig) -> int:
    """The sweep of parsed options, as its command runs it (`common.execute`)."""
    return common.execute(SWEEP, cfg)


def main(argv: list[str] | None = None) -> int:
    """`python sweeps/backbone_sweep.py --stage patch|align --data SHARDS ... --out DIR`."""
    return command.main(COMMAND, argv)
