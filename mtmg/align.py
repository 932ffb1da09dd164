"""`python -m mtmg.align`: the command-line face of `mtmg.stages.align` (`run(cfg)` from
Python, imported when first used)."""

from mtmg import faces
from mtmg.stages.align.command import main
from mtmg.stages.align.config import AlignConfig

__all__ = ["AlignConfig", "main"]


__getattr__ = faces.lazy(__name__, {"run": "mtmg.stages.align.driver:run"})


if __name__ == "__main__":
    raise SystemExit(main())
