"""`--help` answers at once: a command (a stage's, sharding's, the demo's) parses its options
before it imports torch, open_clip or Ray."""

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
        runpy.run_module(sys.argv_module, run_name="__main__")
    except SystemExit:
        pass
heavy = [m for m in ("torch", "ray", "open_clip", "torchvision") if m in sys.modules]
print(len(out.getvalue()), heavy)
"""


FACES = ["mtmg.patch", "mtmg.align", "mtmg.pretrain", "mtmg.zeroshot", "mtmg.probe"]
FACES += ["mtmg.prep", "mtmg.verify", "mtmg.demo"]


@pytest.mark.parametrize("module", FACES)
def test_help_imports_no_heavy_library(module):
    code = f"import sys; sys.argv_module = {module!r}\n{PROBE}"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    chars, heavy = out.stdout.split(" ", 1)
    assert int(chars) > 500 and heavy.strip() == "[]", out.stdout
