"""The loss sweep's options (`LossSweepConfig`) and command-line face (`COMMAND`): light, so
`--help` and bad flags answer before torch or Ray is imported (`mtmg.sweeps.command`)."""

from __future__ import annotations

from dataclasses import dataclass

from mtmg import config
from mtmg.sweeps import options
from mtmg.sweeps.command import SweepCommand

option = config.option
NAME = "loss_sweep"
SPACE = ("w_img", "w_txt", "w_kd", "distance", "lr")
# what the sweep sets in every trial: not for --align
FIXED = ("data", "out", "eval_every", "eval_init")


@dataclass(frozen=True)
class LossSweepConfig(options.StageSweepConfig):
    """Options of the loss sweep (the common sweep options first)."""

    data: str | None = option(None, help="shard set to align on (train; val for the objective)")
    eval_data: tuple[str, ...] = option(
        (),
        help="more shard sets to report test metrics on: PATH, or PATH:NOMENCLATURE for another "
        "label set of it (e.g. shards/ben:ben5)",
    )
    teacher: str | None = option(None, help="a mtmg.patch / alpha-sweep output dir (teacher)")
    align: tuple[str, ...] = option(
        (),
        help="an mtmg.align option of every trial as KEY=VALUE (repeatable; lists "
        "comma-separated), e.g. --align batch_size=64 student=vit_base_patch16_224",
    )
    align_config: str | None = option(
        None, help="YAML of mtmg.align options (a run's config.yaml works); --align overrides it"
    )
    w_img: tuple[float, ...] = option((1.0,), help="space: weight of the embedding distance")
    w_txt: tuple[float, ...] = option((0.0, 0.05, 0.5), help="space: weight of the head loss")
    w_kd: tuple[float, ...] = option((0.0,), help="space: weight of the KL to teacher logits")
    distance: tuple[str, ...] = option(("mse",), help="space: distances D (mse, mse-norm, cosine)")
    lr: tuple[float, ...] = option((1e-4,), help="space: learning rates")
    objective: str = option(
        "zeroshot",
        help="validation objective: MS zero-shot metric, mean R@1 both ways, or sum",
        choices=list(options.OBJECTIVES),
    )
    asha: bool = option(True, help="optuna search: stop poor trials early (ASHA, per epoch)")


COMMAND = SweepCommand(
    NAME,
    LossSweepConfig,
    "Sweep the alignment loss (w_img, w_txt, w_kd, distance, lr) with Ray Tune: a grid, or "
    "Optuna TPE with ASHA early stopping.",
    "outputs in --out: sweep.parquet/.csv (one row per trial: config, validation and test\n"
    "metrics, time, status, error), summary.md, summary.json, best_config.yaml (for\n"
    "`python -m mtmg.align --config`), align_config.yaml (what every trial starts from),\n"
    "spec.yaml, loss_sweep.png.\n"
    "--resume continues an interrupted sweep without re-running finished trials.",
    "mtmg.sweeps.loss.driver",
)
