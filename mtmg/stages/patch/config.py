"""The patching stage's options (`python -m mtmg.patch --help` lists them)."""

from __future__ import annotations

from dataclasses import dataclass

from mtmg import config
from mtmg.engine import select

option = config.option
ALPHAS = tuple(round(0.1 * i, 1) for i in range(11))


@dataclass(frozen=True)
class PatchConfig:
    data: str = option(help="shard set of the patching task (train, val, test splits)")
    out: str = option(help="output directory")
    joint_data: tuple[str, ...] = option(
        (),
        help="more patching shard sets (train, val), fine-tuned on together with --data: "
        "PAINT's joint patching, each set through its own head and loss",
    )
    supported: tuple[str, ...] = option((), help="shard sets of supported tasks (kept zero-shot)")
    eval_data: tuple[str, ...] = option((), help="more shard sets to report test metrics on")
    model: str = option("ViT-B-32", help="open_clip model name")
    pretrained: str | None = option("openai", help="open_clip pretrained tag or a local file")
    model_config: str | None = option(None, help="JSON of a custom open_clip architecture")
    nomenclature: str | None = option(
        None, help="label set of the patching sets that have it (default: ben19 for BigEarthNet)"
    )
    templates: str | None = option(None, help="prompt templates file (default: the manifest's)")
    lr: float = option(1e-5, help="AdamW learning rate")
    weight_decay: float = option(0.5, help="AdamW weight decay (paper code: 0.5)")
    warmup_steps: int = option(200, help="linear warm-up steps, then cosine to 0")
    epochs: int = option(1, help="fine-tuning epochs")
    batch_size: int = option(
        128, help="global batch size (split over workers, and evenly over the patching sets)"
    )
    grad_clip: float = option(1.0, help="gradient-norm clip (0: off)")
    augment: bool = option(True, help="random-resized crop, flips, colour jitter")
    gpu_augment: bool | None = option(
        None, help="crop/resize/jitter batches on the accelerator (default: on a GPU)"
    )
    precision: str = option(
        "auto", help="bf16 autocast on GPU with auto", choices=["auto", "fp32", "bf16"]
    )
    alphas: tuple[float, ...] = option(ALPHAS, help="mixing coefficients to evaluate")
    selection: str = option("mean", help="alpha selection rule", choices=sorted(select.RULES))
    tolerance: float = option(1.0, help="constrained rule: allowed supported drop (points)")
    workers: int = option(1, help="DDP workers")
    cpus_per_worker: float = option(1.0, help="CPUs reserved per worker (and torch threads)")
    gpu: bool | None = option(None, help="use GPUs (default: when the cluster has them)")
    loader_workers: int = option(
        2, help="data-loading processes per worker (shared by the patching sets)"
    )
    eval_batch_size: int = option(256, help="evaluation batch size per worker")
    eval_cache_gb: float = option(2.0, help="keep decoded evaluation batches up to this size")
    seed: int = option(0, help="seed of shuffling, augmentation and initialisation")
    max_failures: int = option(1, help="restarts from the last checkpoint after a worker failure")
    cache_dir: str | None = option(None, help="zero-shot head cache (default ~/.cache/mtmg)")
    cluster: bool = option(False, help="connect to a running Ray cluster (RAY_ADDRESS or auto)")
    overwrite: bool = option(False, help="--out holds a run of other inputs: delete it first")

    @property
    def patching(self) -> tuple[str, ...]:
        """Every patching shard set: --data, then --joint-data."""
        return (self.data, *self.joint_data)
