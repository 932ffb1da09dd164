"""`python -m mtmg.align`: the command-line face of `mtmg.stages.align` (`run(cfg)` from
Python, imported when first used)."""

from typing import Any

from mtmg.stages.align.command import main
from mtmg.stages.align.config import AlignConfig

__all__ = ["AlignConfig", "main"]


def __getattr__(name: str) -> Any:
    if name == "run":
        from mtmg.stages.align.driver import run

        return run
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if __name__ == "__main__":
    raise SystemExit(main())
