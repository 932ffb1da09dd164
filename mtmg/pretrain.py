"""`python -m mtmg.pretrain`: the command-line face of `mtmg.stages.pretrain` (`pretrain(cfg)` from
Python, imported when first used)."""

from mtmg import faces
from mtmg.stages.pretrain.command import main
from mtmg.stages.pretrain.config import PretrainConfig

__all__ = ["PretrainConfig", "main"]


__getattr__ = faces.lazy(__name__, {"pretrain": "mtmg.stages.pretrain.driver:pretrain"})


if __name__ == "__main__":
    raise SystemExit(main())
