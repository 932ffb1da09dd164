"""`python -m mtmg.probe`: the command-line face of `mtmg.stages.probe` (`run(cfg)` from
Python, imported when first used)."""

from typing import Any

from mtmg.stages.probe.command import main
from mtmg.stages.probe.config import ProbeConfig

__all__ = ["ProbeConfig", "main"]


def __getattr__(name: str) -> Any:
    if name == "run":
        from mtmg.stages.probe.driver import run

        return run
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if __name__ == "__main__":
    raise SystemExit(main())
