"""mtmg's errors and how a command ends when it cannot finish: one line on stderr and a
distinct exit code (2: `error: ...`, 130: `interrupted: ...`)."""

from __future__ import annotations

import sys

INTERRUPTED = 130  # the shell's code for a process ended by Ctrl-C (128 + SIGINT)


class MtmgError(Exception):
    """Input or state that the user can fix: the message names the file, set, option or sample
    at fault. Every command prints it as `error: ...` and exits 2."""


class InputError(MtmgError, ValueError):
    """An option, a dataset or a file that cannot be used as given."""


class ModelLoadError(MtmgError):
    """A model config, pretrained tag or checkpoint could not be loaded; says how to proceed."""


# what commands report as `error: ...`: mtmg's own errors, and the ValueErrors and missing
# files that library functions raise for bad input (a KeyError is a bug: it keeps its traceback)
USER_ERRORS = (MtmgError, ValueError, FileNotFoundError)


def failed(err: BaseException) -> int:
    """Say what is wrong; returns the exit code."""
    print(f"error: {err}", file=sys.stderr)
    return 2


def interrupted(hint: str) -> int:
    """Say that Ctrl-C stopped the command and how to continue; returns the exit code."""
    print(f"interrupted: {hint}", file=sys.stderr)
    return INTERRUPTED


RESUME_RUN = "run the same command again to resume from the last epoch checkpoint"
RESUME_SWEEP = "run it again with --resume (finished trials are kept)"
