"""The alignment worker: train the student towards the frozen teacher's embeddings, evaluating
as configured. Plain PyTorch, run by Ray Train on each DDP worker or alone."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from mtmg import faults
from mtmg.data import loader, transforms
from mtmg.engine import loop
from mtmg.engine.context import WorkerContext
from mtmg.models import clip, heads, student
from mtmg.stages import skeleton
from mtmg.stages.align import loss, scoring
from mtmg.stages.align.config import AlignConfig


@dataclass
class Models:
    """What a worker holds: the frozen teacher tower, the student, the zero-shot heads."""

    teacher: torch.nn.Module
    student: student.Student
    heads: list[heads.ZeroShotHead]
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def decoder(self, ds: loader.ShardSet, nomenclature: str | None, **kw: Any) -> loader.Decoder:
        spec = self.student.spec
        return loader.Decoder.of(
            ds,
            f"rgb+{spec.input}",
            loader.Targets.of(ds, nomenclature),
            self.image_size,
            spec.img_size,
            mean=self.mean,
            std=self.std,
            **kw,
        )


# the paper code's alignment augmentation: CLIP's random-resized crop only, one for both views
AUGMENT = transforms.Augment(flips=False, color=False)


def worker(conf: dict[str, Any], ctx: WorkerContext | None = None) -> dict[str, Any]:
    """Align, evaluating as configured; returns the student's weights and the run's state. Runs
    on each DDP worker (`mtmg.runtime.train.fit`), or alone (a test, a Tune trial: pass `ctx`
    with a reporter there)."""
    cfg, ctx, hooks = skeleton.start(AlignConfig, conf, ctx)
    teacher = conf["teacher"]
    tb = clip.load_clip(
        teacher["model"],
        None,
        model_config=teacher["config"],
        build_kwargs=teacher.get("build_kwargs"),
    )
    tb.model.visual.load_state_dict(conf["teacher_visual"], strict=True)
    net = student.Student(student.StudentSpec.from_json(conf["spec"]))
    net.load_state_dict(conf["student_init"], strict=True)
    m = Models(
        tb.model.visual.to(ctx.device).eval().requires_grad_(False),
        net.to(ctx.device),
        [heads.ZeroShotHead.from_weights(w).to(ctx.device) for w in conf["heads"]],
        tb.image_size,
        tb.mean,
        tb.std,
    )
    state = _train(cfg, ctx, m, conf["sets"], hooks)
    return {"student": net.state_dict(), **state}


def _train(cfg: AlignConfig, ctx, m: Models, sets, hooks: faults.Faults) -> skeleton.State:
    """The alignment loop, resumed from the latest epoch checkpoint when there is one; the
    untrained student is evaluated first (`--eval-init`), the trained one on the test splits."""
    ds = loader.ShardSet.open(sets[0][0])
    augment = AUGMENT if cfg.augment else None
    defer = cfg.defer_augment(ctx.device)
    decoder = m.decoder(ds, sets[0][1], augment=augment, seed=cfg.seed, defer_augment=defer)
    steps = loop.train_steps(ds, cfg.batch_size, cfg.epochs, cfg.seed, ctx.world)
    params = [p for p in m.student.parameters() if p.requires_grad]
    run = skeleton.Run(cfg, ctx, "student", params, sum(steps), hooks)
    state, finished = run.resume(
        {"epoch": 0, "step": 0, "losses": [], "stats": [], "rows": []},
        lambda tensors: m.student.load_state_dict(tensors, strict=True),
        lambda st: bool(st.get("done")),
    )
    if finished:
        return state
    if cfg.eval_init and state["epoch"] == 0:  # a fresh run: no epoch checkpoint yet
        state["rows"] += scoring.score(cfg, ctx, m, sets, "val", 0)
        state["rows"] += scoring.score(cfg, ctx, m, sets, "test", 0)
    model = ctx.wrap(m.student)

    def evaluate_every(epoch: int, stats: dict[str, Any]) -> None:
        if cfg.eval_every and ((epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs):
            val = scoring.score(cfg, ctx, m, sets, "val", epoch + 1)
            state["rows"] += val
            nomen = ds.nomenclature(sets[0][1])
            stats.update(scoring.headline(val, ds.name, m.student.spec.input, "val", nomen))

    run.epochs(
        state,
        lambda epoch: _epoch(cfg, ctx, m, model, run, ds, decoder, state, epoch),
        m.student.state_dict,
        evaluate_every,
    )
    state["rows"] += scoring.score(cfg, ctx, m, sets, "test", cfg.epochs, teacher=True)
    state["done"] = True
    run.finish(m.student.state_dict(), state, {"done": 1})
    return state


def _epoch(cfg, ctx, m: Models, model, run: skeleton.Run, ds, decoder, state, epoch: int):
    """One epoch of distillation; appends to the state's losses and returns the statistics."""
    model.train()
    multi_label = ds.task == "multi-label"
    batch_size = max(1, cfg.batch_size // ctx.world)
    batches = skeleton.train_loader(cfg, ctx, ds, decoder, epoch, batch_size, cfg.loader_workers)
    totals, head = skeleton.EpochTotals(ctx.device), m.heads[0]
    for batch in batches:
        batch = loader.device_batch(batch, decoder, ctx.device)
        x, y = batch[m.student.spec.input], batch["target"]
        with torch.autocast(ctx.device.type, dtype=run.amp, enabled=run.amp is not None):
            with torch.no_grad():
                t_emb = m.teacher(batch["rgb"])
            s_emb = model(x)
        value, parts = loss.loss_parts(cfg, s_emb.float(), t_emb.float(), head, y, multi_label)
        terms = {k: parts[k].item() if k in parts else None for k in ("img", "txt", "kd")}
        used = {k: v for k, v in terms.items() if v is not None}
        state["step"] = run.step(value, state["step"], used)
        totals.add(value, len(y))
        state["losses"].append({"step": state["step"], "loss": value.item(), **terms})
    return totals.stats(ctx, epoch, state["step"])
