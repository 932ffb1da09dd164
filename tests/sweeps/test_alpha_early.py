"""The alpha sweep's early-trials machinery (`mtmg.sweeps.alpha.early`, `mtmg.runtime.handoff`):
trial slots, the nice-19 hook, TorchScript packing. The sweep that uses it end to end is
`tests/test_alpha_sweep.py::test_fine_tune_then_sweep`."""

from __future__ import annotations

import os
import threading
import types

import torch

from mtmg.models import clip, weights
from mtmg.sweeps.alpha import early, trial

MODEL = "mtmg-tiny-vit"


def test_early_trials_hold_trial_slots_and_start_at_the_lowest_priority(ray_session):
    import ray

    from mtmg.runtime.cluster import TRIAL_SLOT
    from mtmg.runtime.handoff import LOW_PRIORITY_ENV, NICE

    assert ray.cluster_resources()[TRIAL_SLOT] == ray.cluster_resources()["CPU"] == 2

    @ray.remote(num_cpus=0, resources={TRIAL_SLOT: 1}, runtime_env={"env_vars": LOW_PRIORITY_ENV})
    def niceness() -> int:
        return os.nice(0)

    assert ray.get(niceness.remote()) == NICE == 19


def test_image_tower_travels_as_torchscript_with_the_same_numbers():
    bundle = clip.load_clip(MODEL, None)
    visual = bundle.model.visual.eval()
    kind, packed = early.pack_visual(visual)
    assert kind == "torchscript" and isinstance(packed, bytes)
    loaded = early.unpack_visual((kind, packed))
    assert set(loaded.state_dict()) == set(visual.state_dict())
    x = torch.randn(3, 3, bundle.image_size, bundle.image_size)
    with torch.no_grad(), torch.jit.optimized_execution(False):
        assert torch.equal(loaded(x), visual(x))
        # theta(alpha) lands in the loaded tower as in the module (trials load every alpha)
        state = {f"visual.{k}": v * 0.5 for k, v in visual.state_dict().items()}
        holder = trial._Holder(loaded)
        weights.load_image_state(holder, state)
        assert torch.equal(holder.visual.state_dict()["proj"], visual.state_dict()["proj"] * 0.5)

    class Unscriptable(torch.nn.Module):
        def forward(self, x, *args):  # varargs: TorchScript refuses it
            return x

    kind, packed = early.pack_visual(Unscriptable())
    assert kind == "module" and early.unpack_visual((kind, packed)) is packed
    assert early.pack_visual(visual, script=False) == ("module", visual)  # GPU trials


def test_trials_start_early_only_on_the_embedded_ray_for_new_cpu_sweeps(ray_session):
    from mtmg.runtime.cluster import TRIAL_SLOT

    assert early.trial_slots(False, False, 1.0, 0.0) == {TRIAL_SLOT: 1.0}
    assert early.trial_slots(True, False, 1.0, 0.0) is None  # a cluster: CPUs would idle
    assert early.trial_slots(False, True, 1.0, 0.0) is None  # --resume
    assert early.trial_slots(False, False, 1.0, 0.5) is None  # GPU trials
    assert early.trial_slots(False, False, 3.0, 0.0) is None  # more than the slots there are


def test_the_preparation_runs_while_the_fine_tune_trains():
    """Without early trials the inputs that do not need theta_ft are still made during the
    fine-tune, in a thread started once the training job runs; Tune starts after it."""
    prepared, events = threading.Event(), []

    def fine_tune(on_train_start):
        events.append("train")
        on_train_start()
        assert prepared.wait(30), "the preparation did not start during the fine-tune"
        events.append("trained")

    def prepare():
        prepared.set()
        return "decoded"

    def load(got):
        events.append(f"load {got}")
        return types.SimpleNamespace(shared={"zs": "ref"})

    def tune(shared, **placement):
        events.append(("tune", shared, placement))
        return "grid"

    grid, got = early.fine_tune_then_tune(fine_tune, prepare, load, tune, None, lambda: None)
    assert grid == "grid" and got.shared == {"zs": "ref"}
    assert events == ["train", "trained", "load decoded", ("tune", {"zs": "ref"}, {})]
