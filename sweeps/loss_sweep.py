"""Sweep the alignment loss weights, distance and learning rate (Ray Tune + Optuna + ASHA).

python sweeps/loss_sweep.py --data SHARDS --teacher PATCH_RUN --out DIR [--cluster]
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from mtmg.sweeps import command  # noqa: E402
from mtmg.sweeps.loss.config import COMMAND  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(command.main(COMMAND))
