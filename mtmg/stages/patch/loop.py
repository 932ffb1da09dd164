"""The patching worker: fine-tune CLIP's image tower through frozen zero-shot heads, then
evaluate every alpha. Plain PyTorch, run by Ray Train on each DDP worker or alone.

Joint patching takes one batch of every patching set per step (`--batch-size` split evenly),
runs the tower once on their concatenation and averages the sets' losses; an epoch is one pass
over the set with the most steps, a shorter set starting over, reshuffled.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from mtmg import faults
from mtmg.data import loader, transforms
from mtmg.engine import loop
from mtmg.engine.context import WorkerContext
from mtmg.models import clip, heads, weights
from mtmg.stages.patch import alpha
from mtmg.stages.patch.config import PatchConfig

log = logging.getLogger(__name__)


class JointClassifier(torch.nn.Module):
    """Image tower + one frozen zero-shot head per patching set: the tower runs once on the
    concatenated batches of all sets (one forward, one backward: plain DDP), each head scores
    its own set's part."""

    def __init__(self, visual: torch.nn.Module, zs_heads: Sequence[heads.ZeroShotHead]) -> None:
        super().__init__()
        self.visual, self.heads = visual, torch.nn.ModuleList(zs_heads)

    def forward(self, x: torch.Tensor, sizes: Sequence[int]) -> tuple[torch.Tensor, ...]:
        parts = self.visual(x).split(list(sizes))
        return tuple(h(f) for h, f in zip(self.heads, parts, strict=True))


@dataclass(frozen=True)
class Task:
    """One patching set in training: shards, decoder, loss kind and steps of every epoch."""

    ds: loader.ShardSet
    decoder: loader.Decoder
    multi_label: bool
    steps: tuple[int, ...]


def worker(conf: dict[str, Any], ctx: WorkerContext | None = None) -> dict[str, Any]:
    """Fine-tune, then evaluate every alpha; returns theta_ft and the run's state. Runs on each
    DDP worker (`mtmg.runtime.train.fit`), or alone (a test, a Tune trial: pass `ctx` with a
    reporter there). The patching sets are the `sets` of role "patching", each with its head."""
    cfg = PatchConfig(**conf["cfg"])
    ctx = ctx or WorkerContext()
    torch.manual_seed(cfg.seed)
    bundle = clip.load_clip(
        cfg.model, None, model_config=cfg.model_config, build_kwargs=conf.get("build_kwargs")
    )
    bundle.model.load_state_dict(conf["zeroshot"], strict=True)
    theta_zs = weights.image_state(bundle.model)
    head_weights = conf["heads"]
    idx = [i for i, (role, _, _) in enumerate(conf["sets"]) if role == "patching"]
    zs_heads = [heads.ZeroShotHead.from_weights(head_weights[i]) for i in idx]
    clf = ctx.wrap(JointClassifier(bundle.model.visual, zs_heads))
    patching = [(loader.ShardSet.open(conf["sets"][i][1]), conf["sets"][i][2]) for i in idx]
    task_list = tasks(cfg, ctx, bundle, patching)
    state = _train(cfg, ctx, clf, task_list, bundle, conf.get("faults", faults.NONE))
    theta_ft = weights.image_state(bundle.model)
    if state.get("rows") is None:
        state["rows"], state["alpha"] = alpha.search(
            cfg, ctx, bundle, theta_zs, theta_ft, head_weights, conf["sets"]
        )
        done = {"done": 1, "alpha": state["alpha"]}
        loop.save_epoch(ctx, "visual", theta_ft, {"epoch": cfg.epochs, **state}, done)
    return {"theta_ft": theta_ft, **state}


def tasks(cfg: PatchConfig, ctx: WorkerContext, bundle: clip.ClipBundle, patching) -> list[Task]:
    """Decoder, loss kind and per-epoch steps of every patching `(ShardSet, nomenclature)`;
    the batch is split evenly between the sets."""
    per_set = max(1, cfg.batch_size // len(patching))
    defer = cfg.augment and (
        cfg.gpu_augment or (cfg.gpu_augment is None and ctx.device.type == "cuda")
    )
    out = []
    for ds, nomenclature in patching:
        targets = loader.Targets.of(ds, nomenclature)
        decoder = loader.Decoder(
            tuple(ds.manifest["bands"]),
            ds.manifest["modality"],
            "rgb",
            targets,
            bundle.image_size,
            bundle.image_size,
            bundle.mean,
            bundle.std,
            transforms.Augment() if cfg.augment else None,
            cfg.seed,
            defer_augment=defer,
        )
        steps = loop.train_steps(ds, per_set, cfg.epochs, cfg.seed, ctx.world)
        out.append(Task(ds, decoder, targets.multi_label, tuple(steps)))
    return out


def epoch_batches(
    cfg: PatchConfig, ctx: WorkerContext, task_list: list[Task], epoch: int
) -> Iterator[tuple[dict, ...]]:
    """One batch of every patching set per step, for as many steps as the longest set has this
    epoch; a shorter set starts over, its pass p shuffled as epoch `epoch + p * epochs`."""
    batch = max(1, max(1, cfg.batch_size // len(task_list)) // ctx.world)
    procs = -(-cfg.loader_workers // len(task_list))

    def make(task: Task, p: int) -> loader.Loader:
        e = epoch + p * cfg.epochs
        return loader.make_loader(
            task.ds,
            "train",
            replace(task.decoder, epoch=e),
            batch_size=batch,
            train=True,
            rank=ctx.rank,
            world=ctx.world,
            num_workers=procs,
            seed=cfg.seed,
            epoch=e,
        )

    steps = max(t.steps[epoch] for t in task_list)
    cycles = [loader.cycle(lambda p, t=t: make(t, p), steps) for t in task_list]
    return zip(*cycles, strict=True)


def _train(cfg, ctx, clf, task_list: list[Task], bundle, hooks: faults.Faults) -> dict[str, Any]:
    """The fine-tuning loop; resumes from the latest Ray Train checkpoint when there is one."""
    visual = bundle.model.visual
    params = [p for p in visual.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    total = sum(max(t.steps[e] for t in task_list) for e in range(cfg.epochs))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, loop.lr_lambda(cfg.warmup_steps, total))
    start, step, losses, stats = 0, 0, [], []
    saved = loop.load_epoch(ctx, "visual", opt, sched)
    if saved:
        tensors, st = saved
        weights.load_image_state(bundle.model, tensors)
        start, step, losses, stats = st["epoch"], st["step"], st["losses"], st.get("stats", [])
        if st.get("rows") is not None:
            return st
        log.info("resuming at epoch %d, step %d", start, step)
    for epoch in range(start, cfg.epochs):
        optim = (opt, sched, params)
        step, metrics = _epoch(cfg, ctx, clf, task_list, optim, epoch, step, losses, hooks)
        stats.append(metrics)
        log.info("epoch %d: %s", epoch + 1, metrics)
        progress = {"epoch": epoch + 1, "step": step, "losses": losses, "stats": stats}
        tensors = weights.image_state(bundle.model)
        loop.save_epoch(ctx, "visual", tensors, progress, metrics, opt, sched)
    return {"step": step, "losses": losses, "stats": stats, "rows": None, "alpha": None}


def _epoch(cfg, ctx, clf, task_list, optim, epoch, step, losses, hooks):
    """One epoch: the mean of the patching sets' losses per step; appends to `losses` and
    returns (global step, the epoch's metrics)."""
    opt, sched, params = optim
    amp = loop.amp_dtype(cfg.precision, ctx.device)
    loss_fns = [
        torch.nn.BCEWithLogitsLoss() if t.multi_label else torch.nn.CrossEntropyLoss()
        for t in task_list
    ]
    clf.train()
    total, n = torch.zeros(2 + len(task_list), device=ctx.device), 0  # loss*samples, samples
    meter = loop.ThroughputMeter(ctx.device)
    for parts in epoch_batches(cfg, ctx, task_list, epoch):
        batches = [
            loader.device_batch(b, t.decoder, ctx.device)
            for b, t in zip(parts, task_list, strict=True)
        ]
        x, ys = torch.cat([b["rgb"] for b in batches]), [b["target"] for b in batches]
        with torch.autocast(ctx.device.type, dtype=amp, enabled=amp is not None):
            logits = clf(x, [len(y) for y in ys])
            pairs = zip(loss_fns, logits, ys, strict=True)
            per_set = torch.stack([f(lg.float(), y) for f, lg, y in pairs])
            loss = per_set.mean()
        loop.optimizer_step(loss, opt, sched, params, cfg.grad_clip, step)
        step, n = step + 1, n + 1
        meter.step(len(x))
        hooks.at_step(step)
        size = torch.tensor([len(x)], device=ctx.device, dtype=total.dtype)
        total += torch.cat([loss.detach().reshape(1) * len(x), size, per_set.detach()])
        losses.append([step, loss.item()])
    if ctx.world > 1:
        torch.distributed.all_reduce(total)
    metrics = {
        "epoch": epoch + 1,
        "step": step,
        "train_loss": float(total[0] / total[1]),
        "samples_per_s": meter.rate(),
    }
    if len(task_list) > 1:  # each patching set's mean loss, in --data, --joint-data order
        metrics["train_loss_sets"] = [float(v) / (n * ctx.world) for v in total[2:]]
    return step, metrics
