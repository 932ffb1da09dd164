"""The options every training stage has (`StageConfig`): inputs, model, optimisation, resources
and the run directory.

A stage's config subclasses it: it sets the defaults that its paper code sets (`with_default`
keeps the shared help text), gives the options whose meaning is its own their help text, and
adds its own options, which `--help` lists after these.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

from mtmg import config

option = config.option


@dataclass(frozen=True, kw_only=True)
class StageConfig:
    """Options shared by the patching and the alignment stage; no default where they differ."""

    data: str = option(help="shard set to train on")
    out: str = option(help="output directory")
    eval_data: tuple[str, ...] = option((), help="more shard sets to evaluate on")
    model: str = option("ViT-B-32", help="open_clip model")
    pretrained: str | None = option("openai", help="open_clip pretrained tag or local file")
    model_config: str | None = option(None, help="JSON of a custom open_clip architecture")
    nomenclature: str | None = option(None, help="label set (default: ben19 for BigEarthNet)")
    templates: str | None = option(None, help="prompt templates file (default: the manifest's)")
    lr: float = option(help="AdamW learning rate")
    weight_decay: float = option(help="AdamW weight decay")
    warmup_steps: int = option(help="linear warm-up steps, then cosine to 0")
    epochs: int = option(help="training epochs")
    batch_size: int = option(help="global batch size (split over workers)")
    grad_clip: float = option(help="gradient-norm clip (0: off)")
    augment: bool = option(True, help="random-resized crop and flips")
    gpu_augment: bool | None = option(
        None, help="augment batches on the accelerator (default: on a GPU)"
    )
    precision: str = option(
        "auto", help="bf16 autocast on GPU with auto", choices=["auto", "fp32", "bf16"]
    )
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
    report_to: tuple[str, ...] = option(
        (), help="also track the run in tensorboard, mlflow and/or wandb (comma-separated)"
    )

    def defer_augment(self, device: torch.device) -> bool:
        """Whether training batches are augmented on `device` rather than in the loader."""
        on_device = self.gpu_augment or (self.gpu_augment is None and device.type == "cuda")
        return bool(self.augment and on_device)


def with_default(name: str, default: Any) -> Any:
    """`StageConfig`'s option `name` with a stage's own default, help text and choices kept."""
    field = next(f for f in dataclasses.fields(StageConfig) if f.name == name)
    return option(default, **field.metadata)
