"""`--help` answers at once: a command (a stage's, a sweep's, sharding's, the demo's, the
report's) parses its options before it imports torch, open_clip or Ray."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import REPO

PROBE = """
import contextlib, io, runpy, sys
sys.argv = ["x", "--help"]
with contextlib.redirect_stdout(io.StringIO()) as out:
    try:
        {run}
    except SystemExit:
        pass
heavy = [m for m in ("torch", "ray", "open_clip", "torchvision") if m in sys.modules]
print(len(out.getvalue()), heavy)
"""


FACES = ["mtmg.patch", "mtmg.align", "mtmg.pretrain", "mtmg.zeroshot", "mtmg.probe"]
FACES += ["mtmg.prep", "mtmg.verify", "mtmg.demo"]
FACES += ["mtmg.report"]
# the sweeps' faces are scripts: sweeps/X.py
SCRIPTS = ["alpha_sweep.py", "loss_sweep.py", "backbone_sweep.py", "dataset_sweep.py"]
SCRIPTS += ["paper.py"]


def _probe(run: str) -> None:
    """`run` with argv `--help` in a fresh interpreter: help printed, nothing heavy imported."""
    code = PROBE.format(run=run)
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    chars, heavy = out.stdout.split(" ", 1)
    assert int(chars) > 300 and heavy.strip() == "[]", out.stdout


@pytest.mark.parametrize("module", FACES)
def test_help_imports_no_heavy_library(module):
    _probe(f"runpy.run_module({module!r}, run_name='__main__')")


@pytest.mark.parametrize("script", SCRIPTS)
def test_sweep_help_imports_no_heavy_library(script):
    _probe(f"runpy.run_path({str(REPO / 'sweeps' / script)!r}, run_name='__main__')")
