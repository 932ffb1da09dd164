"""The alignment worker: train the student towards the frozen teacher's embeddings, evaluating
as configured. Plain PyTorch, run by Ray Train on each DDP worker or alone."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any

import torch

from mtmg import faults
from mtmg.data import loader, transforms
from mtmg.engine import loop
from mtmg.engine.context import WorkerContext
from mtmg.models import clip, heads, student
from mtmg.stages.align import loss, scoring
from mtmg.stages.align.config import AlignConfig

log = logging.getLogger(__name__)


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
        return loader.Decoder(
            tuple(ds.manifest["bands"]),
            ds.manifest["modality"],
            f"rgb+{spec.input}",
            loader.Targets.of(ds, nomenclature),
            self.image_size,
            spec.img_size,
            self.mean,
            self.std,
            **kw,
        )


def worker(conf: dict[str, Any], ctx: WorkerContext | None = None) -> dict[str, Any]:
    """Align, evaluating as configured; returns the student's weights and the run's state. Runs
    on each DDP worker (`mtmg.runtime.train.fit`), or alone (a test, a Tune trial: pass `ctx`
    with a reporter there)."""
    cfg = AlignConfig(**conf["cfg"])
    ctx = ctx or WorkerContext()
    torch.manual_seed(cfg.seed)
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
    state = _train(cfg, ctx, m, conf["sets"], conf.get("faults", faults.NONE))
    return {"student": net.state_dict(), **state}


def _train(cfg: AlignConfig, ctx, m: Models, sets, hooks: faults.Faults) -> dict[str, Any]:
    """The alignment loop; resumes from the latest Ray Train checkpoint when there is one."""
    ds = loader.ShardSet.open(sets[0][0])
    defer = cfg.augment and (
        cfg.gpu_augment or (cfg.gpu_augment is None and ctx.device.type == "cuda")
    )
    augment = transforms.Augment() if cfg.augment else None
    decoder = m.decoder(ds, sets[0][1], augment=augment, seed=cfg.seed, defer_augment=defer)
    multi_label = ds.task == "multi-label"
    steps = loop.train_steps(ds, cfg.batch_size, cfg.epochs, cfg.seed, ctx.world)
    params = [p for p in m.student.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, loop.lr_lambda(cfg.warmup_steps, sum(steps)))
    state: dict[str, Any] = {"epoch": 0, "step": 0, "losses": [], "stats": [], "rows": []}
    saved = loop.load_epoch(ctx, "student", opt, sched)
    if saved:
        tensors, state = saved
        m.student.load_state_dict(tensors, strict=True)
        if state.get("done"):
            return state
        log.info("resuming at epoch %d, step %d", state["epoch"], state["step"])
    elif cfg.eval_init:
        state["rows"] += scoring.score(cfg, ctx, m, sets, "val", 0)
        state["rows"] += scoring.score(cfg, ctx, m, sets, "test", 0)
    model = ctx.wrap(m.student)
    amp = loop.amp_dtype(cfg.precision, ctx.device)
    head = m.heads[0]
    for epoch in range(state["epoch"], cfg.epochs):
        model.train()
        batches = loader.make_loader(
            ds,
            "train",
            replace(decoder, epoch=epoch),
            batch_size=max(1, cfg.batch_size // ctx.world),
            train=True,
            rank=ctx.rank,
            world=ctx.world,
            num_workers=cfg.loader_workers,
            seed=cfg.seed,
            epoch=epoch,
        )
        total = torch.zeros(2, device=ctx.device)
        meter = loop.ThroughputMeter(ctx.device)
        for batch in batches:
            batch = loader.device_batch(batch, decoder, ctx.device)
            x, y = batch[m.student.spec.input], batch["target"]
            with torch.autocast(ctx.device.type, dtype=amp, enabled=amp is not None):
                with torch.no_grad():
                    t_emb = m.teacher(batch["rgb"])
                s_emb = model(x)
            value, parts = loss.loss_parts(cfg, s_emb.float(), t_emb.float(), head, y, multi_label)
            loop.optimizer_step(value, opt, sched, params, cfg.grad_clip, state["step"])
            state["step"] += 1
            meter.step(len(y))
            hooks.at_step(state["step"])
            size = torch.tensor(len(y), device=ctx.device)
            total += torch.stack([value.detach() * len(y), size])
            terms = {k: parts[k].item() if k in parts else None for k in ("img", "txt", "kd")}
            state["losses"].append({"step": state["step"], "loss": value.item(), **terms})
        if ctx.world > 1:
            torch.distributed.all_reduce(total)
        stats = {
            "epoch": epoch + 1,
            "step": state["step"],
            "train_loss": float(total[0] / total[1]),
            "samples_per_s": meter.rate(),
        }
        state["stats"].append(stats)
        state["epoch"] = epoch + 1
        log.info("epoch %d: %s", epoch + 1, stats)
        if cfg.eval_every and ((epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs):
            val = scoring.score(cfg, ctx, m, sets, "val", epoch + 1)
            state["rows"] += val
            stats.update(scoring.headline(val, ds.name, m.student.spec.input, "val"))
        loop.save_epoch(ctx, "student", m.student.state_dict(), state, stats, opt, sched)
    state["rows"] += scoring.score(cfg, ctx, m, sets, "test", cfg.epochs, teacher=True)
    state["done"] = True
    loop.save_epoch(ctx, "student", m.student.state_dict(), state, {"done": 1})
    return state
