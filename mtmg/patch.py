"""`python -m mtmg.patch`: the command-line face of `mtmg.stages.patch` (`run(cfg)` from
Python, imported when first used)."""

from mtmg import faces
from mtmg.stages.patch.command import main
from mtmg.stages.patch.config import PatchConfig

__all__ = ["PatchConfig", "main"]


__getattr__ = faces.lazy(__name__, {"run": "mtmg.stages.patch.driver:run"})


if __name__ == "__main__":
    raise SystemExit(main())
