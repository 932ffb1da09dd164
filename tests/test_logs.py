"""-v / -q on every command: what the libraries' chatter and mtmg's own lines do at each level."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import REPO

SCRIPT = """
import dataclasses, logging, sys
from mtmg import config, logs
from mtmg.models.clip import load_clip

@dataclasses.dataclass(frozen=True)
class Cfg:
    n: int = config.option(1, help="n")

config.parse(Cfg, sys.argv[1:], "test")
load_clip("mtmg-tiny-vit")  # logs "No pretrained weights loaded" (root logger)
logging.getLogger("mtmg.test").info("mtmg progress line")
logging.getLogger("mtmg.test").warning("mtmg warning line")
print("bar" if logs.progress(True) else "no bar")
"""


@pytest.mark.parametrize(
    ("flags", "shown", "hidden"),
    [
        ([], ["mtmg progress line", "mtmg warning line", "bar"], ["Loaded built-in", "No pre"]),
        (["-v"], ["Loaded built-in", "No pretrained weights", "mtmg progress line", "bar"], []),
        (["-q"], ["mtmg warning line", "no bar"], ["Loaded built-in", "No pre", "mtmg progress"]),
    ],
)
def test_verbosity(flags, shown, hidden):
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, *flags],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    text = out.stdout + out.stderr
    assert all(s in text for s in shown), text
    assert not any(h in text for h in hidden), text


def test_verbose_and_quiet_exclude_each_other():
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, "-v", "-q"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2 and "not allowed with argument" in out.stderr
