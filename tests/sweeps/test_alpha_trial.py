"""What an alpha-sweep trial process imports (`mtmg.sweeps.alpha.trial`)."""

from __future__ import annotations

import subprocess
import sys


def test_trial_processes_import_neither_open_clip_nor_torchvision():
    """What a trial process imports (`mtmg.sweeps.alpha.trial`, via `mtmg.runtime.tuner`):
    torch, not open_clip and torchvision."""
    code = (
        "import sys, mtmg.runtime.tuner, mtmg.sweeps.alpha.trial; "
        "print([m for m in ('open_clip', 'torchvision') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
