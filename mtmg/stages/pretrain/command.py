"""`python -m mtmg.pretrain`: the options are parsed before torch or open_clip is imported, so
`--help` and bad flags answer at once."""

from __future__ import annotations

from pathlib import Path

from mtmg import config
from mtmg.stages import cli
from mtmg.stages.pretrain.config import PretrainConfig, read_result

EPILOG = """\
output (OUT):
  clip.safetensors   full open_clip checkpoint of MODEL trained from scratch
  pretrain.json      resolved config, zero-shot top-1 on held-out images, chance, seconds

The model is evaluated zero-shot on held-out pictures of CLASSES, i.e. those that
`python -m mtmg.synth imagefolder --size SIZE --seed SEED` draws. Re-running with the same options
returns at once. With real weights (e.g. --model ViT-B-32 --pretrained openai) this is not needed.

example:
  python -m mtmg.pretrain --out runs/pretrain
  ... --model mtmg-demo-vit --pretrained runs/pretrain/clip.safetensors
"""

RETRAIN = "run the same command again to train from the start"


def main(argv: list[str] | None = None) -> int:
    """`python -m mtmg.pretrain --out DIR [options]`."""
    cfg = config.parse(
        PretrainConfig,
        argv,
        "Train a tiny open_clip model on generated coloured-shape photos, CPU, about a minute, "
        "so that it is zero-shot capable there (a stand-in for real CLIP weights).",
        EPILOG,
    )
    from mtmg.stages.pretrain.driver import pretrain

    return cli.run_command(cfg, pretrain, _show, RETRAIN)


def _show(cfg: PretrainConfig, ckpt: Path) -> None:
    res = read_result(cfg.out) or {}
    print(
        f"zero-shot top-1 {res.get('zeroshot_top1', float('nan')):.1f}% on "
        f"{res.get('eval_images', '?')} held-out images of {len(cfg.classes)} classes "
        f"(chance {res.get('chance', float('nan')):.1f}%), trained in {res.get('seconds', '?')}s"
    )
    print(f"checkpoint: {ckpt}")
    print(f"use it as: --model {cfg.model} --pretrained {ckpt}")
