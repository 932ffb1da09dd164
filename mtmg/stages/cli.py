"""How a stage's command ends: its result shown, or one `error:` / `interrupted:` line and the
exit code of `mtmg.errors`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from mtmg import errors

C = TypeVar("C")
R = TypeVar("R")


def run_command(
    cfg: C,
    run: Callable[[C], R],
    show: Callable[[C, R], Any],
    resume_hint: str = errors.RESUME_RUN,
) -> int:
    """`run(cfg)`, then `show(cfg, result)`; returns the exit code. What is logged on the way
    was set when the config was parsed (`mtmg.logs`: -v, -q)."""
    try:
        result = run(cfg)
    except errors.USER_ERRORS as e:
        return errors.failed(e)
    except KeyboardInterrupt:
        return errors.interrupted(resume_hint)
    show(cfg, result)
    return 0
