"""What the command-line faces (`mtmg.patch`, `mtmg.align`, ...) share: names they export that
are imported only when first used, so that `--help` imports neither torch nor Ray."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy(module: str, names: dict[str, str]) -> Callable[[str], Any]:
    """A module-level `__getattr__` for `module`: each of `names` ("run") resolves to the
    attribute its target names ("mtmg.stages.patch.driver:run") when first asked for."""

    def get(name: str) -> Any:
        if name not in names:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        target, _, attr = names[name].partition(":")
        return getattr(importlib.import_module(target), attr)

    return get
