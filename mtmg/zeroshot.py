"""`python -m mtmg.zeroshot`: the command-line face of `mtmg.stages.zeroshot` (`run(cfg)` from
Python, imported when first used)."""

from typing import Any

from mtmg.stages.zeroshot.command import main
from mtmg.stages.zeroshot.config import ModelSpec, ZeroShotConfig

__all__ = ["ModelSpec", "ZeroShotConfig", "main"]


def __getattr__(name: str) -> Any:
    if name == "run":
        from mtmg.stages.zeroshot.driver import run

        return run
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if __name__ == "__main__":
    raise SystemExit(main())
