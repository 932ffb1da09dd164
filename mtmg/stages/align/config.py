"""The alignment stage's options (`python -m mtmg.align --help` lists them)."""

from __future__ import annotations

from dataclasses import dataclass

from mtmg import config

option = config.option
DISTANCES = ("mse", "mse-norm", "cosine")


@dataclass(frozen=True)
class AlignConfig:
    data: str = option(help="shard set to align on (train split; val/test for evaluation)")
    out: str = option(help="output directory")
    eval_data: tuple[str, ...] = option((), help="more shard sets to evaluate the student on")
    teacher: str | None = option(
        None, help="a mtmg.patch (or alpha sweep) output dir: its patched CLIP is the teacher"
    )
    model: str = option("ViT-B-32", help="teacher open_clip model, when no --teacher dir")
    pretrained: str | None = option("openai", help="teacher pretrained tag or local file")
    model_config: str | None = option(None, help="JSON of a custom open_clip architecture")
    student: str = option("vit_small_patch16_224", help="timm ViT of the student")
    student_args: str | None = option(
        None, help="JSON of timm keyword overrides, e.g. '{\"depth\": 6}'"
    )
    student_size: int | None = option(None, help="student input size (default: the arch's)")
    student_input: str = option(
        "ms", help="ms: 13 Sentinel-2 bands; s1: VV, VH", choices=["ms", "s1"]
    )
    student_init: str | None = option(None, help="SSL4EO-S12 (timm) checkpoint for the trunk")
    allow_partial_init: bool = option(False, help="accept an init that misses trunk tensors")
    nomenclature: str | None = option(None, help="label set (default: ben19 for BigEarthNet)")
    templates: str | None = option(None, help="prompt templates file (default: the manifest's)")
    distance: str = option(
        "mse", help="D: mse (raw, paper code), mse-norm, cosine", choices=list(DISTANCES)
    )
    w_img: float = option(1.0, help="weight of the embedding distance D (0: off)")
    w_txt: float = option(0.05, help="weight of the zero-shot head loss (0: off)")
    w_kd: float = option(0.0, help="weight of KL to the teacher's zero-shot logits (0: off)")
    kd_temperature: float = option(1.0, help="temperature of the KL term")
    lr: float = option(1e-4, help="AdamW learning rate")
    weight_decay: float = option(0.01, help="AdamW weight decay")
    warmup_steps: int = option(2000, help="linear warm-up steps, then cosine to 0")
    epochs: int = option(5, help="training epochs")
    batch_size: int = option(256, help="global batch size (split over workers)")
    grad_clip: float = option(0.0, help="gradient-norm clip (0: off, as the paper's code)")
    augment: bool = option(True, help="random-resized crop and flips, the same for both views")
    gpu_augment: bool | None = option(
        None, help="crop/resize batches on the accelerator (default: on a GPU)"
    )
    precision: str = option(
        "auto", help="bf16 autocast on GPU with auto", choices=["auto", "fp32", "bf16"]
    )
    eval_every: int = option(1, help="validate every N epochs (0: only the final test)")
    eval_init: bool = option(True, help="also evaluate the untrained student (epoch 0)")
    recall_ks: tuple[int, ...] = option((1, 5, 10, 20, 50), help="K of retrieval Recall@K")
    workers: int = option(1, help="DDP workers")
    cpus_per_worker: float = option(1.0, help="CPUs reserved per worker (and torch threads)")
    gpu: bool | None = option(None, help="use GPUs (default: when the cluster has them)")
    loader_workers: int = option(2, help="data-loading processes per worker")
    eval_batch_size: int = option(256, help="evaluation batch size per worker")
    seed: int = option(0, help="seed of shuffling, augmentation and initialisation")
    max_failures: int = option(1, help="restarts from the last checkpoint after a worker failure")
    cache_dir: str | None = option(None, help="zero-shot head cache (default ~/.cache/mtmg)")
    cluster: bool = option(False, help="connect to a running Ray cluster (RAY_ADDRESS or auto)")
    overwrite: bool = option(False, help="--out holds a run of other inputs: delete it first")
