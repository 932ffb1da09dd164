"""Which patching dataset, or mixture of datasets (PAINT's joint patching), helps which
evaluation dataset: a matrix of gains over zero-shot (Ray Tune, one trial per --patching entry).

python sweeps/dataset_sweep.py --patching SHARDS ... A+B ... --eval-data SHARDS ... --out DIR
    [--cluster]          (A+B: one trial patching on shard sets A and B together)
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from mtmg.sweeps import command  # noqa: E402
from mtmg.sweeps.dataset.config import COMMAND  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(command.main(COMMAND))
