"""A non-finite loss or weights never reach a checkpoint, and a non-finite checkpoint is never
resumed from: the run stops with an error that says how to recover."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from mtmg.engine import loop
from mtmg.engine.context import WorkerContext


class Recorder(WorkerContext):
    """A plain-process context that keeps what a stage reports, and can hand a checkpoint
    back as Ray Train would after a restart."""

    def __init__(self, tmp: Path, resume_from: str | None = None) -> None:
        super().__init__()
        self.tmp, self.resume_from, self.reports = tmp, resume_from, []

    @contextlib.contextmanager
    def checkpoint_dir(self):
        d = self.tmp / f"ckpt-{len(self.reports)}"
        d.mkdir()
        yield str(d)

    def report(self, metrics, checkpoint=None):
        self.reports.append((metrics, checkpoint))

    def load_checkpoint(self):
        return self.resume_from


def _model_and_opt():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, loop.lr_lambda(1, 10))
    return model, opt, sched


def test_a_non_finite_loss_stops_before_the_weights_change():
    model, opt, sched = _model_and_opt()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loss = model(torch.full((3, 4), float("nan"))).sum()
    with pytest.raises(loop.NonFiniteError, match=r"loss is nan at step 8.*resumes from"):
        loop.optimizer_step(loss, opt, sched, list(model.parameters()), 1.0, step=7)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    # a finite loss steps as before
    loop.optimizer_step(model(torch.ones(3, 4)).sum(), opt, sched, list(model.parameters()), 1.0)
    assert not torch.equal(model.weight, before["weight"])


def test_non_finite_weights_are_never_checkpointed(tmp_path):
    ctx = Recorder(tmp_path)
    model, opt, sched = _model_and_opt()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    loop.save_epoch(ctx, "visual", state, {"epoch": 1}, {"epoch": 1}, opt, sched)
    assert len(ctx.reports) == 1 and ctx.reports[0][1] is not None
    state["weight"][0, 0] = float("inf")
    with pytest.raises(loop.NonFiniteError, match="weight"):
        loop.save_epoch(ctx, "visual", state, {"epoch": 2}, {"epoch": 2}, opt, sched)
    assert len(ctx.reports) == 1  # nothing reported, no checkpoint written


def test_a_non_finite_checkpoint_is_not_resumed_from(tmp_path):
    """A run dir holding a NaN checkpoint (from an mtmg without these checks) is refused on
    resume instead of failing again at evaluation."""
    ckpt = tmp_path / "old"
    ckpt.mkdir()
    save_file({"weight": torch.tensor([[float("nan"), 1.0]])}, str(ckpt / "visual.safetensors"))
    (ckpt / "state.json").write_text(json.dumps({"epoch": 1, "step": 3}))
    with pytest.raises(loop.NonFiniteError, match=rf"checkpoint {ckpt}.*weight"):
        loop.load_epoch(Recorder(tmp_path, str(ckpt)), "visual")


def test_a_worker_s_non_finite_loss_reaches_the_driver_as_itself(ray_session, tmp_path):
    """Under Ray Train the worker's error comes back as the NonFiniteError it raised (a
    ValueError: commands print it as `error: ...`), not as Ray Train's wrapper."""
    from mtmg.runtime import train

    def diverges(config: dict, ctx) -> None:  # a closure: pickled by value for the worker
        loop.check_finite(torch.tensor(float("nan")), step=4)

    with pytest.raises(loop.NonFiniteError, match="loss is nan at step 5") as info:
        train.fit(
            diverges,
            {},
            workers=1,
            use_gpu=False,
            storage_path=str(tmp_path),
            name="nan",
            max_failures=0,
        )
    assert type(info.value) is loop.NonFiniteError
