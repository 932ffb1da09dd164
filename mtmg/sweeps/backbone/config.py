"""The backbone sweep's options (`BackboneSweepConfig`) and command-line face (`COMMAND`): light,
so `--help` and bad flags answer before torch or Ray is imported (`mtmg.sweeps.command`)."""

from __future__ import annotations

from dataclasses import dataclass

from mtmg import config
from mtmg.sweeps import options
from mtmg.sweeps.command import SweepCommand

option = config.option
NAME = "backbone_sweep"
STAGES = ("patch", "align")
# what each stage's trials set themselves: not for --patch / --align
PATCH_SWEPT = ("model", "pretrained", "data", "supported", "joint_data", "out", "workers")
ALIGN_SWEPT = (
    "student",
    "student_init",
    "data",
    "eval_data",
    "out",
    "eval_every",
    "eval_init",
    "workers",
)


@dataclass(frozen=True)
class BackboneSweepConfig(options.StageSweepConfig):
    """Options of the backbone sweep (the common sweep options first)."""

    stage: str = option(
        "patch",
        help="patch: CLIP teachers x patching datasets; align: students x inits x "
        "alignment datasets",
        choices=list(STAGES),
    )
    data: tuple[str, ...] = option(
        (), help="shard sets: the patching datasets (patch) or the datasets to align on (align)"
    )
    # patch stage
    teachers: tuple[str, ...] = option(
        (),
        help="patch: CLIP backbones NAME[:PRETRAINED], PRETRAINED an open_clip tag, a "
        "local weight file or 'none' (without one: --pretrained)",
    )
    supported: tuple[str, ...] = option((), help="patch: supported-task shard sets (alpha rule)")
    patch: tuple[str, ...] = option(
        (),
        help="patch: an mtmg.patch option of every trial as KEY=VALUE (repeatable; lists "
        "comma-separated), e.g. --patch lr=3e-3 alphas=0,0.5,1",
    )
    patch_config: str | None = option(
        None, help="patch: YAML of mtmg.patch options; --patch overrides it"
    )
    # align stage
    teacher: str | None = option(None, help="align: a mtmg.patch / alpha-sweep output dir")
    students: tuple[str, ...] = option(
        ("vit_small_patch16_224",), help="align: timm student architectures"
    )
    student_inits: tuple[str, ...] = option(
        ("none",), help="align: SSL4EO-S12 trunk checkpoints to try, 'none' for random init"
    )
    align: tuple[str, ...] = option(
        (),
        help="align: an mtmg.align option of every trial as KEY=VALUE (repeatable), e.g. "
        "--align student_size=128 batch_size=64",
    )
    align_config: str | None = option(
        None, help="align: YAML of mtmg.align options; --align overrides it"
    )
    objective: str = option(
        "zeroshot",
        help="align: validation objective (MS zero-shot, mean R@1, or their sum)",
        choices=list(options.OBJECTIVES),
    )


COMMAND = SweepCommand(
    NAME,
    BackboneSweepConfig,
    "Sweep encoder backbones with Ray Tune: CLIP teachers x patching datasets (--stage "
    "patch: fine-tune, select alpha, test), or timm students x SSL4EO inits x datasets "
    "aligned to one teacher (--stage align). A grid, or Optuna over the combinations.",
    "outputs in --out: sweep.parquet/.csv (one row per combination: config, validation and\n"
    "test metrics, time, status, error), summary.md, summary.json, best_config.yaml (for\n"
    "`python -m mtmg.patch --config` or `python -m mtmg.align --config`), patch_config.yaml\n"
    "or align_config.yaml (what every trial starts from), spec.yaml, backbone_heatmap.png.\n"
    "--resume continues an interrupted sweep without re-running finished trials.",
    "mtmg.sweeps.backbone.driver",
)
