"""The linear-probe stage's options (`python -m mtmg.probe --help` lists them)."""

from __future__ import annotations

from dataclasses import dataclass

from mtmg import config

option = config.option
WEIGHT_DECAYS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
OPTIMIZERS = ("lbfgs", "adamw")
SPEC_FORMS = (
    "clip:RUN_DIR[@ALPHA] (a mtmg.patch or alpha-sweep output dir; ALPHA default: its chosen one)",
    "student:ALIGN_DIR (the aligned student of a mtmg.align output dir)",
    "untrained:ALIGN_DIR|ALIGN.yaml (that student as built before alignment: its init only)",
    "NAME:CHECKPOINT (an open_clip model and a pretrained tag or checkpoint file)",
    "LABEL=any of these (LABEL names its rows, e.g. RemoteCLIP=ViT-B-32:FILE.pt)",
)


@dataclass(frozen=True, kw_only=True)
class ProbeConfig:
    """What to probe (encoders x shard sets x label sets x train fractions) and how to fit."""

    data: tuple[str, ...] = option(help="shard sets to probe on (train, val; test when there)")
    encoders: tuple[str, ...] = option(
        help="encoders to probe, each one of: " + "; ".join(SPEC_FORMS)
    )
    out: str = option(help="output directory")
    nomenclature: tuple[str, ...] = option(
        (), help="label sets to probe each set in, those it has (default: the set's default)"
    )
    fractions: tuple[float, ...] = option(
        (1.0,), help="shares of the train split to fit on (few-shot; per class for single-label)"
    )
    weight_decays: tuple[float, ...] = option(
        WEIGHT_DECAYS, help="L2 penalties tried; the best on the val split is kept"
    )
    optimizer: str = option(
        "lbfgs", help="full-batch L-BFGS, or AdamW on the whole train set", choices=list(OPTIMIZERS)
    )
    max_iter: int = option(100, help="L-BFGS iterations / AdamW steps per fit")
    student_features: str = option(
        "trunk",
        help="a student's features: its trunk's pooled output, or its CLIP-space embedding",
        choices=["trunk", "embedding"],
    )
    seed: int = option(0, help="seed of the few-shot samples")
    eval_batch_size: int = option(256, help="feature-extraction batch size")
    loader_workers: int = option(2, help="data-loading processes")
    gpu: bool | None = option(None, help="extract and fit on a GPU (default: when there is one)")
    threads: int | None = option(None, help="torch's CPU threads (default: torch's own)")
    cache_dir: str | None = option(
        None, help="cache directory: features in DIR/features, reused (default ~/.cache/mtmg)"
    )
    overwrite: bool = option(False, help="--out holds a run of other inputs: delete it first")
    cluster: bool = option(
        False, help="run as one task on a running Ray cluster (RAY_ADDRESS or auto)"
    )
    report_to: tuple[str, ...] = option(
        (), help="also track the results in tensorboard,mlflow,wandb (any subset; README: Tracking)"
    )
