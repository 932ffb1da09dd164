"""A sweep's command line: its options are parsed before torch, open_clip or Ray is imported,
so `--help` and bad flags answer at once.

A sweep describes its face in its light `config` module as a `SweepCommand` (its name, options
class, help texts and the driver module that runs it); `main(COMMAND, argv)` parses, then imports
the driver and hands it the parsed config (`execute(cfg) -> exit code`: `common.execute` for the
sweeps on the common skeleton).
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass

from mtmg.sweeps import options


@dataclass(frozen=True)
class SweepCommand:
    """What parsing a sweep's options needs, and the module that runs the sweep."""

    name: str  # the Tune experiment's name and OUT's kind
    config: type[options.SweepConfig]
    description: str
    epilog: str
    driver: str  # a module with `execute(cfg) -> int`, imported after parsing


def main(command: SweepCommand, argv: Sequence[str] | None = None) -> int:
    """Parse the options (exit 2 on a bad flag, 0 after --help), then run the sweep: exit 0, 1
    when no trial finished, 2 on bad input, 130 on Ctrl-C."""
    cfg = options.parse(command.config, argv, command.description, command.epilog)
    driver = importlib.import_module(command.driver)
    return driver.execute(cfg)
