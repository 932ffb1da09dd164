"""`python -m mtmg.probe`: the command-line face of `mtmg.stages.probe` (`run(cfg)` from
Python, imported when first used)."""

from mtmg import faces
from mtmg.stages.probe.command import main
from mtmg.stages.probe.config import ProbeConfig

__all__ = ["ProbeConfig", "main"]


__getattr__ = faces.lazy(__name__, {"run": "mtmg.stages.probe.driver:run"})


if __name__ == "__main__":
    raise SystemExit(main())
