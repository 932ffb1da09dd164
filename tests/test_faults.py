"""The test hooks' one environment variable: parsed strictly, inert when unset."""

from __future__ import annotations

import pytest

from mtmg import faults
from mtmg.errors import InputError


def test_unset_injects_nothing(monkeypatch):
    monkeypatch.delenv(faults.ENV, raising=False)
    f = faults.current()
    assert f == faults.NONE
    f.at_trial_start(0.5)
    f.at_step(3)


def test_parses_every_hook(monkeypatch, tmp_path):
    marker = tmp_path / "once"
    monkeypatch.setenv(faults.ENV, f"trial_delay=0.01; fail_alphas=0.5,1 ;fail_step={marker}@3")
    f = faults.current()
    assert f == faults.Faults(0.01, (0.5, 1.0), (str(marker), 3))
    f.at_trial_start(0.0)
    with pytest.raises(RuntimeError, match="alpha=0.5"):
        f.at_trial_start(0.5)
    f.at_step(2)
    with pytest.raises(RuntimeError, match="step 3"):
        f.at_step(3)
    assert marker.exists()
    f.at_step(3)  # once only: the retried worker runs through


@pytest.mark.parametrize("text", ["trial_delay", "fail_step=3", "fail_alphas=a", "nope=1"])
def test_a_bad_entry_is_named(text):
    with pytest.raises(InputError, match=f"MTMG_TEST_FAULTS: bad entry '{text}'"):
        faults.parse(text)
