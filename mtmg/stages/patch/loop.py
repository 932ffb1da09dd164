"""The patching worker: fine-tune CLIP's image tower through frozen zero-shot heads, then
evaluate every alpha. Plain PyTorch, run by Ray Train on each DDP worker or alone.

Joint patching takes one batch of every patching set per step (`--batch-size` split evenly),
runs the tower once on their concatenation and averages the sets' losses; an epoch is one pass
over the set with the most steps, a shorter set starting over, reshuffled.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from mtmg.data import loader, transforms
from mtmg.engine import loop
from mtmg.engine.context import WorkerContext
from mtmg.models import clip, heads, weights
from mtmg.stages import skeleton
from mtmg.stages.patch import alpha
from mtmg.stages.patch.config import PatchConfig


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
    cfg, ctx, hooks = skeleton.start(PatchConfig, conf, ctx)
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
    state, run = _train(cfg, ctx, clf, task_list, bundle, hooks)
    theta_ft = weights.image_state(bundle.model)
    if state.get("rows") is None:
        state["rows"], state["alpha"] = alpha.search(
            cfg, ctx, bundle, theta_zs, theta_ft, head_weights, conf["sets"]
        )
        run.finish(theta_ft, state, {"done": 1, "alpha": state["alpha"]})
    return {"theta_ft": theta_ft, **state}


def tasks(
    cfg: PatchConfig,
    ctx: WorkerContext,
    bundle: clip.ClipBundle,
    patching: Sequence[tuple[loader.ShardSet, str | None]],
) -> list[Task]:
    """Decoder, loss kind and per-epoch steps of every patching `(ShardSet, nomenclature)`;
    the batch is split evenly between the sets."""
    per_set = max(1, cfg.batch_size // len(patching))
    out = []
    for ds, nomenclature in patching:
        targets = loader.Targets.of(ds, nomenclature)
        decoder = loader.Decoder.of(
            ds,
            "rgb",
            targets,
            bundle.image_size,
            mean=bundle.mean,
            std=bundle.std,
            augment=transforms.Augment() if cfg.augment else None,
            seed=cfg.seed,
            defer_augment=cfg.defer_augment(ctx.device),
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
        return skeleton.train_loader(cfg, ctx, task.ds, task.decoder, e, batch, procs)

    steps = max(t.steps[epoch] for t in task_list)
    cycles = [loader.cycle(lambda p, t=t: make(t, p), steps) for t in task_list]
    return zip(*cycles, strict=True)


def _train(
    cfg: PatchConfig, ctx: WorkerContext, clf, task_list: list[Task], bundle, hooks
) -> tuple[skeleton.State, skeleton.Run]:
    """The fine-tuning loop, resumed from the latest epoch checkpoint when there is one; the
    state has "rows" once the alphas are evaluated too."""
    params = [p for p in bundle.model.visual.parameters() if p.requires_grad]
    total = sum(max(t.steps[e] for t in task_list) for e in range(cfg.epochs))
    run = skeleton.Run(cfg, ctx, "visual", params, total, hooks)
    state, finished = run.resume(
        {"epoch": 0, "step": 0, "losses": [], "stats": []},
        lambda tensors: weights.load_image_state(bundle.model, tensors),
        lambda st: st.get("rows") is not None,
    )
    if not finished:
        run.epochs(
            state,
            lambda epoch: _epoch(cfg, ctx, clf, task_list, run, state, epoch),
            lambda: weights.image_state(bundle.model),
        )
        state.update(rows=None, alpha=None)
    return state, run


def _epoch(cfg, ctx, clf, task_list, run: skeleton.Run, state, epoch: int) -> dict[str, Any]:
    """One epoch: the mean of the patching sets' losses per step; appends to the state's losses
    and returns the epoch's statistics."""
    loss_fns = [
        torch.nn.BCEWithLogitsLoss() if t.multi_label else torch.nn.CrossEntropyLoss()
        for t in task_list
    ]
    clf.train()
    totals = skeleton.EpochTotals(ctx.device, parts=len(task_list))
    for parts in epoch_batches(cfg, ctx, task_list, epoch):
        batches = [
            loader.device_batch(b, t.decoder, ctx.device)
            for b, t in zip(parts, task_list, strict=True)
        ]
        x, ys = torch.cat([b["rgb"] for b in batches]), [b["target"] for b in batches]
        with torch.autocast(ctx.device.type, dtype=run.amp, enabled=run.amp is not None):
            logits = clf(x, [len(y) for y in ys])
            pairs = zip(loss_fns, logits, ys, strict=True)
            per_set = torch.stack([f(lg.float(), y) for f, lg, y in pairs])
            loss = per_set.mean()
        state["step"] = run.step(loss, state["step"])
        totals.add(loss, len(x), per_set)
        state["losses"].append([state["step"], loss.item()])
    stats = totals.stats(ctx, epoch, state["step"])
    if len(task_list) > 1:  # each patching set's mean loss, in --data, --joint-data order
        stats["train_loss_sets"] = totals.part_means(ctx.world)
    return stats
