"""What a command prints: its progress, the warnings that need action, errors and its results.

Libraries' informational lines (open_clip's "Loaded built-in ... model config", Ray's note that
token authentication is on) show only with `-v`; `-q` leaves warnings, errors and results. Library
code logs through `logging`; only a command's `main` prints.
"""

from __future__ import annotations

import argparse
import logging
import sys

from mtmg.runtime import ray_private

# informational at INFO or WARNING level, nothing to act on: shown with -v only
CHATTY = (
    "open_clip",
    "timm",
    "huggingface_hub",
    "urllib3",
    "matplotlib",
    "PIL",
    ray_private.TOKEN_AUTH_LOGGER,
)
ROOT_LOGGERS = ("open_clip", "timm")  # packages that log through the root logger


def setup(verbosity: int = 0) -> None:
    """-1 (`-q`): warnings and errors; 0: also mtmg's own progress lines; 1 (`-v`): every
    library's informational lines too. Progress bars are off with `-q`."""
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        root.addHandler(handler)
    for handler in root.handlers:
        handler.filters = [f for f in handler.filters if not isinstance(f, _Chatter)]
        if verbosity <= 0:
            handler.addFilter(_Chatter())
    root.setLevel(logging.INFO if verbosity > 0 else logging.WARNING)
    logging.getLogger("mtmg").setLevel(logging.WARNING if verbosity < 0 else logging.INFO)
    for name in CHATTY:
        logging.getLogger(name).setLevel(logging.NOTSET if verbosity > 0 else logging.ERROR)
    global _quiet, _verbosity
    _quiet, _verbosity = verbosity < 0, verbosity


_quiet = False
_verbosity = 0


def verbosity() -> int:
    """The level `setup` was last given: what Ray workers of this command are set up with."""
    return _verbosity


def add_flags(parser: argparse.ArgumentParser) -> None:
    """`-v` / `-q` on a command's parser; `setup(args.verbosity or 0)` applies them."""
    talk = parser.add_mutually_exclusive_group()
    talk.add_argument(
        "-v",
        "--verbose",
        action="store_const",
        const=1,
        dest="verbosity",
        help="also print the libraries' informational lines",
    )
    talk.add_argument(
        "-q",
        "--quiet",
        action="store_const",
        const=-1,
        dest="verbosity",
        help="print only warnings, errors and results (no progress bars)",
    )


def progress(enabled: bool = True) -> bool:
    """Whether to draw a progress bar: asked for (`--progress`) and not `-q`."""
    return enabled and not _quiet


class _Chatter(logging.Filter):
    """Drops what ROOT_LOGGERS log through the root logger below ERROR, e.g. open_clip's
    "No pretrained weights loaded" for a model built on purpose without them."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            return True
        path = record.pathname.replace("\\", "/")
        return not any(f"/{name}/" in path for name in ROOT_LOGGERS)
