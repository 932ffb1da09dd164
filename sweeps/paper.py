"""The paper's protocol in one command (see --help and mtmg/sweeps/paper/driver.py)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a checkout, installed or not

from mtmg.sweeps.paper.driver import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
