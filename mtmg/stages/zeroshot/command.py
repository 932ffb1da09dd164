"""`python -m mtmg.zeroshot`: the options are parsed before torch or open_clip is imported, so
`--help` and bad flags answer at once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mtmg import config
from mtmg.stages import cli
from mtmg.stages.zeroshot.config import ZeroShotConfig

EPILOG = """\
Each CLIP is scored as `mtmg.patch` scores alpha 0: the RGB composite with the model's own
evaluation preprocessing, a zero-shot head per set from its manifest's class names and prompt
templates, top-1 (single-label) or macro mAP (multi-label) on the test split.

Checkpoints load as published: a plain open_clip state dict (RemoteCLIP), an open_clip training
checkpoint ({"state_dict": {"module.…": …}}: SkyCLIP, GeoRSCLIP), a .safetensors file.

outputs in --out: config.yaml, metrics.parquet/.csv (model, dataset, nomenclature, split,
metric, value, chance, n), per_class.parquet/.csv (per-class AP or accuracy), zeroshot.md (the
table), summary.json. `python -m mtmg.report OUT ...` adds "<NAME> zero-shot" rows.

example:
  python -m mtmg.zeroshot --data shards/ben shards/eurosat-ms --out runs/baselines \\
      --models RemoteCLIP=ViT-B-32:ckpt/RemoteCLIP-ViT-B-32.pt SkyCLIP=ViT-B-32:ckpt/epoch_20.pt \\
      --model ViT-B-32 --pretrained openai
"""


def main(argv: list[str] | None = None) -> int:
    """`python -m mtmg.zeroshot --data SHARDS ... --out DIR --models NAME=MODEL:PRETRAINED ...`."""
    cfg = config.parse(
        ZeroShotConfig,
        argv,
        "Zero-shot rows of CLIP checkpoints (e.g. RemoteCLIP, SkyCLIP, GeoRSCLIP) on shard sets.",
        EPILOG,
    )
    from mtmg.stages.zeroshot.driver import run

    return cli.run_command(cfg, run, _show, "run the same command again")


def _show(cfg: ZeroShotConfig, summary: dict[str, Any]) -> None:
    print("\n".join(summary["table"]))
    print(f"outputs in {Path(cfg.out).resolve()}")
