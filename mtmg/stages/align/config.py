"""The alignment stage's options (`python -m mtmg.align --help` lists them)."""

from __future__ import annotations

from dataclasses import dataclass

from mtmg import config
from mtmg.stages.config import StageConfig, with_default

option = config.option
DISTANCES = ("mse", "mse-norm", "cosine")


@dataclass(frozen=True, kw_only=True)
class AlignConfig(StageConfig):
    """`StageConfig` with the paper code's alignment defaults, the teacher, the student, the loss
    and the evaluation schedule."""

    data: str = option(help="shard set to align on (train split; val/test for evaluation)")
    eval_data: tuple[str, ...] = option(
        (),
        help="more shard sets to evaluate the student on: PATH, or PATH:NOMENCLATURE for another "
        "label set of it (e.g. shards/ben:ben5)",
    )
    model: str = option("ViT-B-32", help="teacher open_clip model, when no --teacher dir")
    pretrained: str | None = option("openai", help="teacher pretrained tag or local file")
    lr: float = with_default("lr", 1e-4)
    weight_decay: float = with_default("weight_decay", 0.01)
    warmup_steps: int = with_default("warmup_steps", 2000)
    epochs: int = with_default("epochs", 5)
    batch_size: int = with_default("batch_size", 256)
    grad_clip: float = option(1.0, help="gradient-norm clip (0: off; the paper's code: 1.0)")
    augment: bool = option(
        True, help="random-resized crop 0.9-1.0, the same for both views (no flips, no colour)"
    )
    gpu_augment: bool | None = option(
        None, help="crop/resize batches on the accelerator (default: on a GPU)"
    )
    teacher: str | None = option(
        None, help="a mtmg.patch (or alpha sweep) output dir: its patched CLIP is the teacher"
    )
    student: str = option("vit_small_patch16_224", help="timm ViT of the student")
    student_args: str | None = option(
        None, help="JSON of timm keyword overrides, e.g. '{\"depth\": 6}'"
    )
    student_size: int | None = option(None, help="student input size (default: the arch's)")
    drop_path: float = option(0.2, help="the student's stochastic-depth rate (timm drop_path_rate)")
    student_input: str = option(
        "ms", help="ms: 13 Sentinel-2 bands; s1: VV, VH", choices=["ms", "s1"]
    )
    student_init: str | None = option(None, help="SSL4EO-S12 (timm) checkpoint for the trunk")
    allow_partial_init: bool = option(False, help="accept an init that misses trunk tensors")
    distance: str = option(
        "mse", help="D: mse (raw, paper code), mse-norm, cosine", choices=list(DISTANCES)
    )
    w_img: float = option(1.0, help="weight of the embedding distance D (0: off)")
    w_txt: float = option(0.05, help="weight of the zero-shot head loss (0: off)")
    w_kd: float = option(0.0, help="weight of KL to the teacher's zero-shot logits (0: off)")
    kd_temperature: float = option(1.0, help="temperature of the KL term")
    eval_every: int = option(1, help="validate every N epochs (0: only the final test)")
    eval_init: bool = option(True, help="also evaluate the untrained student (epoch 0)")
    recall_ks: tuple[int, ...] = option((1, 5, 10, 20, 50), help="K of retrieval Recall@K")
