"""The dataset sweep's options (`DatasetSweepConfig`) and command-line face (`COMMAND`): light,
so `--help` and bad flags answer before torch or Ray is imported (`mtmg.sweeps.command`)."""

from __future__ import annotations

from dataclasses import dataclass

from mtmg import config
from mtmg.sweeps import options
from mtmg.sweeps.command import SweepCommand

option = config.option
NAME = "dataset_sweep"
MIX = "+"  # joins the shard sets of a mixture in a --patching entry
# what the sweep sets in every trial: not for --patch
SWEPT = ("data", "joint_data", "supported", "eval_data", "out", "workers")


@dataclass(frozen=True)
class DatasetSweepConfig(options.StageSweepConfig):
    """Options of the dataset sweep (the common sweep options first)."""

    patching: tuple[str, ...] = option(
        (),
        help="what to patch on, one trial each: a shard set, or shard sets joined by '+' "
        "(A+B: a mixture, PAINT's joint patching)",
    )
    eval_data: tuple[str, ...] = option(
        (),
        help="more evaluation shard sets, PATH or PATH:NOMENCLATURE (e.g. shards/ben:ben5); "
        "patching and supported sets are always evaluated, in their default nomenclature",
    )
    supported: tuple[str, ...] = option(
        (), help="supported-task shard sets: alpha selection (PAINT's rule) and evaluation"
    )
    patch: tuple[str, ...] = option(
        (),
        help="an mtmg.patch option of every trial as KEY=VALUE (repeatable; lists "
        "comma-separated), e.g. --patch lr=1e-5 alphas=0,0.5,1 selection=patching",
    )
    patch_config: str | None = option(
        None, help="YAML of mtmg.patch options (lr, epochs, ...); --patch overrides it"
    )


COMMAND = SweepCommand(
    NAME,
    DatasetSweepConfig,
    "Which patching dataset, or mixture of datasets (PAINT's joint patching), helps which "
    "evaluation dataset: one Ray Tune trial per --patching entry (fine-tune, select alpha), "
    "every evaluation dataset evaluated zero-shot and patched.",
    "--patching entries: a shard set (one trial patching on it), or shard sets joined by\n"
    "'+' (A+B: one trial patching on A and B together, `mtmg.patch --data A --joint-data\n"
    "B`). An entry that is itself a shard set stays one set even if its path holds '+';\n"
    "one that reads both ways is refused. Example: --patching ben ems ben+ems.\n"
    "outputs in --out: gains.parquet/.csv (patching x evaluation: zero-shot, patched,\n"
    "fine-tuned, gain), gains.png (heat map), sweep.parquet/.csv (one row per trial),\n"
    "summary.md, summary.json, best_config.yaml (for `python -m mtmg.patch --config`),\n"
    "patch_config.yaml (what every trial starts from), spec.yaml. --resume continues an\n"
    "interrupted sweep without re-running finished trials.",
    "mtmg.sweeps.dataset.driver",
)
