"""The zero-shot stage's options (`python -m mtmg.zeroshot --help` lists them) and the
`NAME=MODEL:PRETRAINED` model specs it scores."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mtmg import config
from mtmg.errors import InputError

option = config.option
SPEC_FORM = "NAME=MODEL:PRETRAINED, e.g. RemoteCLIP=ViT-B-32:/ckpt/RemoteCLIP-ViT-B-32.pt"


@dataclass(frozen=True)
class ModelSpec:
    """One CLIP to score: its row name, open_clip architecture and weights (tag or file)."""

    name: str
    model: str
    pretrained: str | None

    @classmethod
    def parse(cls, text: str) -> ModelSpec:
        """`NAME=MODEL:PRETRAINED`; an InputError naming the spec when it is not that."""
        name, eq, rest = text.partition("=")
        model, colon, pretrained = rest.partition(":")
        if not (eq and colon and name.strip() and model.strip() and pretrained.strip()):
            raise InputError(f"--models {text!r}: expected {SPEC_FORM}")
        return cls(name.strip(), model.strip(), pretrained.strip())


@dataclass(frozen=True, kw_only=True)
class ZeroShotConfig:
    """CLIP checkpoints scored zero-shot on shard sets, as the patching stage scores alpha 0."""

    data: tuple[str, ...] = option(
        help="shard sets to score (their test split; val where a set has no test split), "
        "PATH or PATH:NOMENCLATURE (e.g. BEN:ben5)"
    )
    out: str = option(help="output directory")
    models: tuple[str, ...] = option(
        (), help=f"CLIPs to score, each {SPEC_FORM} (an open_clip tag or a checkpoint file)"
    )
    model: str | None = option(None, help="one more CLIP: its open_clip model name")
    pretrained: str | None = option(None, help="its pretrained tag or checkpoint file")
    model_config: str | None = option(None, help="JSON of a custom open_clip architecture")
    templates: str | None = option(None, help="prompt templates file (default: the manifest's)")
    precision: str = option(
        "auto", help="bf16 autocast on GPU with auto", choices=["auto", "fp32", "bf16"]
    )
    gpu: bool | None = option(None, help="evaluate on the GPU (default: when there is one)")
    loader_workers: int = option(2, help="data-loading processes")
    eval_batch_size: int = option(256, help="evaluation batch size")
    eval_cache_gb: float = option(2.0, help="decoded batches held in memory up to this size")
    seed: int = option(0, help="seed of a model without pretrained weights")
    cache_dir: str | None = option(None, help="zero-shot head cache (default ~/.cache/mtmg)")
    overwrite: bool = option(False, help="--out holds a run of other inputs: delete it first")
    cluster: bool = option(
        False, help="run as one task on a running Ray cluster (RAY_ADDRESS or auto)"
    )
    report_to: tuple[str, ...] = option(
        (), help="also track the results in tensorboard,mlflow,wandb (any subset; README: Tracking)"
    )

    def __post_init__(self) -> None:
        self.specs()  # a bad spec is an error before anything is loaded

    def specs(self) -> list[ModelSpec]:
        """Every CLIP to score: --models, then --model/--pretrained; names unique."""
        specs = [ModelSpec.parse(s) for s in self.models]
        if self.model:
            specs.append(ModelSpec(_name(self.model, self.pretrained), self.model, self.pretrained))
        elif self.pretrained:
            raise InputError(
                "--pretrained needs --model (or give NAME=MODEL:PRETRAINED to --models)"
            )
        if not specs:
            raise InputError(f"nothing to score: give --models {SPEC_FORM}, or --model")
        names = [s.name for s in specs]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise InputError(f"--models: the name(s) {', '.join(twice)} are given twice")
        return specs


def _name(model: str, pretrained: str | None) -> str:
    """The row name of --model/--pretrained: a checkpoint's file stem, else MODEL/TAG."""
    if not pretrained:
        return model
    if "/" in pretrained or Path(pretrained).suffix:
        return Path(pretrained).stem
    return f"{model}/{pretrained}"
