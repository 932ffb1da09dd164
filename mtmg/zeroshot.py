"""`python -m mtmg.zeroshot`: the command-line face of `mtmg.stages.zeroshot` (`run(cfg)` from
Python, imported when first used)."""

from mtmg import faces
from mtmg.stages.zeroshot.command import main
from mtmg.stages.zeroshot.config import ModelSpec, ZeroShotConfig

__all__ = ["ModelSpec", "ZeroShotConfig", "main"]


__getattr__ = faces.lazy(__name__, {"run": "mtmg.stages.zeroshot.driver:run"})


if __name__ == "__main__":
    raise SystemExit(main())
