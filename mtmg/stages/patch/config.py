"""The patching stage's options (`python -m mtmg.patch --help` lists them)."""

from __future__ import annotations

from dataclasses import dataclass

from mtmg import config
from mtmg.engine import select
from mtmg.stages.config import StageConfig, with_default

option = config.option
ALPHAS = tuple(round(0.1 * i, 1) for i in range(11))
Sets = list[tuple[str, str, str | None]]  # (role, absolute path, nomenclature) of every dataset


@dataclass(frozen=True, kw_only=True)
class PatchConfig(StageConfig):
    """`StageConfig` with PAINT's defaults, the other patching and supported sets, alpha."""

    data: str = option(help="shard set of the patching task (train, val, test splits)")
    eval_data: tuple[str, ...] = option(
        (),
        help="more shard sets to report test metrics on: PATH, or PATH:NOMENCLATURE for another "
        "label set of it (e.g. shards/ben:ben5)",
    )
    model: str = option("ViT-B-32", help="open_clip model name")
    pretrained: str | None = option("openai", help="open_clip pretrained tag or a local file")
    nomenclature: str | None = option(
        None, help="label set of the patching sets that have it (default: ben19 for BigEarthNet)"
    )
    lr: float = with_default("lr", 1e-5)
    weight_decay: float = option(0.5, help="AdamW weight decay (paper code: 0.5)")
    warmup_steps: int = with_default("warmup_steps", 200)
    epochs: int = option(1, help="fine-tuning epochs")
    batch_size: int = option(
        128, help="global batch size (split over workers, and evenly over the patching sets)"
    )
    grad_clip: float = with_default("grad_clip", 1.0)
    augment: bool = option(True, help="random-resized crop, flips, colour jitter")
    gpu_augment: bool | None = option(
        None, help="crop/resize/jitter batches on the accelerator (default: on a GPU)"
    )
    loader_workers: int = option(
        2, help="data-loading processes per worker (shared by the patching sets)"
    )
    joint_data: tuple[str, ...] = option(
        (),
        help="more patching shard sets (train, val), fine-tuned on together with --data: "
        "PAINT's joint patching, each set through its own head and loss",
    )
    supported: tuple[str, ...] = option((), help="shard sets of supported tasks (kept zero-shot)")
    alphas: tuple[float, ...] = option(ALPHAS, help="mixing coefficients to evaluate")
    selection: str = option("mean", help="alpha selection rule", choices=sorted(select.RULES))
    tolerance: float = option(1.0, help="constrained rule: allowed supported drop (points)")
    eval_cache_gb: float = option(2.0, help="keep decoded evaluation batches up to this size")

    @property
    def patching(self) -> tuple[str, ...]:
        """Every patching shard set: --data, then --joint-data."""
        return (self.data, *self.joint_data)
