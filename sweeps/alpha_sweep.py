"""Alpha sweep of PAINT patching with Ray Tune (see --help and mtmg/sweeps/alpha/driver.py)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a checkout, installed or not

from mtmg.sweeps import command  # noqa: E402
from mtmg.sweeps.alpha.config import COMMAND  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(command.main(COMMAND))
