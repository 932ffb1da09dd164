"""Fault injection for mtmg's own tests: one environment variable, read here and nowhere else.

`MTMG_TEST_FAULTS` holds `;`-separated `key=value` entries:

    trial_delay=SECONDS   every sweep trial sleeps this long before it starts
    fail_alphas=A,B,...   alpha-sweep trials at these alphas raise
    fail_step=MARKER@N    a training worker raises once at step N; the MARKER file records that
                          it did, so the retried worker runs through

Drivers read it with `current()` and hand the frozen `Faults` to their workers and trials inside
the job's config, so it reaches every Ray process, on any cluster, without touching their
environment. Unset, every hook does nothing.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

from mtmg.errors import InputError

ENV = "MTMG_TEST_FAULTS"


@dataclasses.dataclass(frozen=True)
class Faults:
    """The faults one run injects (none by default)."""

    trial_delay: float = 0.0
    fail_alphas: tuple[float, ...] = ()
    fail_step: tuple[str, int] | None = None

    def at_trial_start(self, alpha: float | None = None) -> None:
        """Call first thing in a sweep trial."""
        if self.trial_delay:
            time.sleep(self.trial_delay)
        if alpha is not None and any(abs(alpha - a) < 1e-9 for a in self.fail_alphas):
            raise RuntimeError(f"injected failure at alpha={alpha}")

    def at_step(self, step: int) -> None:
        """Call at every training step: raises once at `fail_step`, to exercise resume."""
        if self.fail_step is None or step != self.fail_step[1]:
            return
        marker = Path(self.fail_step[0])
        if not marker.exists():
            marker.touch()
            raise RuntimeError(f"injected worker failure at step {step}")


NONE = Faults()


def parse(text: str) -> Faults:
    """`Faults` from the variable's text; a malformed entry is an InputError naming it."""
    fields: dict = {}
    for entry in filter(None, (e.strip() for e in text.split(";"))):
        key, sep, value = entry.partition("=")
        try:
            if not sep:
                raise ValueError("expected key=value")
            if key == "trial_delay":
                fields[key] = float(value)
            elif key == "fail_alphas":
                fields[key] = tuple(float(a) for a in value.split(",") if a)
            elif key == "fail_step":
                marker, at, step = value.rpartition("@")
                if not at or not marker:
                    raise ValueError("expected MARKER@STEP")
                fields[key] = (marker, int(step))
            else:
                raise ValueError("unknown key (trial_delay, fail_alphas, fail_step)")
        except ValueError as e:
            raise InputError(f"{ENV}: bad entry {entry!r}: {e}") from None
    return Faults(**fields)


def current() -> Faults:
    """The faults this process's environment asks for (drivers call this once per run)."""
    text = os.environ.get(ENV, "")
    return parse(text) if text else NONE
