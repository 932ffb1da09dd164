"""`python -m mtmg.pretrain`: the command-line face of `mtmg.stages.pretrain` (`pretrain(cfg)` from
Python, imported when first used)."""

from typing import Any

from mtmg.stages.pretrain.command import main
from mtmg.stages.pretrain.config import PretrainConfig

__all__ = ["PretrainConfig", "main"]


def __getattr__(name: str) -> Any:
    if name == "pretrain":
        from mtmg.stages.pretrain.driver import pretrain

        return pretrain
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if __name__ == "__main__":
    raise SystemExit(main())
