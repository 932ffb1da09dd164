"""Sweep encoder backbones: CLIP teachers x patching datasets, or timm students x inits x
datasets aligned to a teacher (Ray Tune; grid or Optuna).

python sweeps/backbone_sweep.py --teachers ViT-B-32:openai ViT-B-16:openai --data SHARDS ...
    --out DIR [--cluster]
python sweeps/backbone_sweep.py --stage align --students vit_small_patch16_224 --teacher RUN
    --data SHARDS --out DIR [--cluster]
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from mtmg.sweeps import command  # noqa: E402
from mtmg.sweeps.backbone.config import COMMAND  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(command.main(COMMAND))
