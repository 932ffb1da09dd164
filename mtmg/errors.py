"""How a command ends when it cannot finish: one line on stderr and a distinct exit code."""

from __future__ import annotations

import sys

INTERRUPTED = 130  # the shell's code for a process ended by Ctrl-C (128 + SIGINT)


def interrupted(hint: str) -> int:
    """Say that Ctrl-C stopped the command and how to continue; returns the exit code."""
    print(f"interrupted: {hint}", file=sys.stderr)
    return INTERRUPTED


RESUME_RUN = "run the same command again to resume from the last epoch checkpoint"
RESUME_SWEEP = "run it again with --resume (finished trials are kept)"
