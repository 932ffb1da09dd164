"""`python -m mtmg.patch`: the command-line face of `mtmg.stages.patch` (`run(cfg)` from
Python, imported when first used)."""

from typing import Any

from mtmg.stages.patch.command import main
from mtmg.stages.patch.config import PatchConfig

__all__ = ["PatchConfig", "main"]


def __getattr__(name: str) -> Any:
    if name == "run":
        from mtmg.stages.patch.driver import run

        return run
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if __name__ == "__main__":
    raise SystemExit(main())
