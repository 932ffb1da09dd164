"""Shard a raw remote-sensing dataset into WebDataset tars + manifest.json (see --help)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a checkout, installed or not

from mtmg.prep import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
