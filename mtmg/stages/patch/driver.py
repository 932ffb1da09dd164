"""Stage 1, PAINT patching: fine-tune CLIP's image tower on the patching task with a frozen
zero-shot head, interpolate with the zero-shot weights, choose alpha on validation splits.

`python -m mtmg.patch --data SHARDS [--joint-data SHARDS ...] --out DIR [--supported SHARDS ...]`

The driver validates inputs, builds the zero-shot heads and puts the zero-shot weights in the
object store; `worker` (plain PyTorch, run by Ray Train on N DDP workers) fine-tunes with a
checkpoint per epoch, then evaluates theta(alpha) for every alpha; the driver writes the outputs.

Joint patching (PAINT's patching on several tasks with one model): `--joint-data` adds patching
sets that are fine-tuned on together with `--data`, then interpolated once. PAINT's released
code (mlfoundations/patching, src/finetune.py and src/patch.py) fine-tunes on a single
`--train-dataset` through one frozen head and has no joint path, so how batches are mixed is
mtmg's choice:
- every step takes one batch of every patching set (`--batch-size` split evenly between them),
  runs the image tower once on their concatenation, scores each part with that set's own frozen
  zero-shot head and loss (BCE for multi-label, cross-entropy for single-label sets) and
  averages the per-set losses. Each task weighs the same whatever its size or loss scale (the
  selection rule weighs them the same too), a multi-label and a single-label set can be mixed,
  and one forward and one backward per step leave DDP's gradient sync as it is;
- an epoch is one pass over the set with the most steps; a shorter set starts over, reshuffled
  (its pass p of epoch e is shuffled as epoch e + p * epochs), until that pass ends. Every
  set's loader yields the same number of full batches on every rank (`data.make_loader`), so
  all ranks run the same steps;
- alpha is chosen on the validation splits with the patching metric = the mean over the
  patching sets (`mtmg.engine.select`); every patching set is reported at alpha 0, the chosen alpha
  and 1. With one patching set all of this reduces to plain PAINT patching, unchanged.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from mtmg import config, errors, rundir
from mtmg.data import loader as data
from mtmg.data import transforms
from mtmg.engine import evaluate, select
from mtmg.engine import loop as training
from mtmg.engine.context import WorkerContext
from mtmg.models import clip as models
from mtmg.models import heads, weights
from mtmg.report import tables as results
from mtmg.runtime import train as jobs
from mtmg.runtime.cluster import init_ray

log = logging.getLogger(__name__)
option = config.option
ALPHAS = tuple(round(0.1 * i, 1) for i in range(11))


@dataclass(frozen=True)
class PatchConfig:
    data: str = option(help="shard set of the patching task (train, val, test splits)")
    out: str = option(help="output directory")
    joint_data: tuple[str, ...] = option(
        (), help="more patching shard sets (train, val), fine-tuned on together with --data: "
        "PAINT's joint patching, each set through its own head and loss"
    )  # fmt: skip
    supported: tuple[str, ...] = option((), help="shard sets of supported tasks (kept zero-shot)")
    eval_data: tuple[str, ...] = option((), help="more shard sets to report test metrics on")
    model: str = option("ViT-B-32", help="open_clip model name")
    pretrained: str | None = option("openai", help="open_clip pretrained tag or a local file")
    model_config: str | None = option(None, help="JSON of a custom open_clip architecture")
    nomenclature: str | None = option(
        None, help="label set of the patching sets that have it (default: ben19 for BigEarthNet)"
    )
    templates: str | None = option(None, help="prompt templates file (default: the manifest's)")
    lr: float = option(1e-5, help="AdamW learning rate")
    weight_decay: float = option(0.5, help="AdamW weight decay (paper code: 0.5)")
    warmup_steps: int = option(200, help="linear warm-up steps, then cosine to 0")
    epochs: int = option(1, help="fine-tuning epochs")
    batch_size: int = option(
        128, help="global batch size (split over workers, and evenly over the patching sets)"
    )
    grad_clip: float = option(1.0, help="gradient-norm clip (0: off)")
    augment: bool = option(True, help="random-resized crop, flips, colour jitter")
    gpu_augment: bool | None = option(
        None, help="crop/resize/jitter batches on the accelerator (default: on a GPU)"
    )
    precision: str = option(
        "auto", help="bf16 autocast on GPU with auto", choices=["auto", "fp32", "bf16"]
    )
    alphas: tuple[float, ...] = option(ALPHAS, help="mixing coefficients to evaluate")
    selection: str = option("mean", help="alpha selection rule", choices=sorted(select.RULES))
    tolerance: float = option(1.0, help="constrained rule: allowed supported drop (points)")
    workers: int = option(1, help="DDP workers")
    cpus_per_worker: float = option(1.0, help="CPUs reserved per worker (and torch threads)")
    gpu: bool | None = option(None, help="use GPUs (default: when the cluster has them)")
    loader_workers: int = option(
        2, help="data-loading processes per worker (shared by the patching sets)"
    )
    eval_batch_size: int = option(256, help="evaluation batch size per worker")
    eval_cache_gb: float = option(2.0, help="keep decoded evaluation batches up to this size")
    seed: int = option(0, help="seed of shuffling, augmentation and initialisation")
    max_failures: int = option(1, help="restarts from the last checkpoint after a worker failure")
    cache_dir: str | None = option(None, help="zero-shot head cache (default ~/.cache/mtmg)")
    cluster: bool = option(False, help="connect to a running Ray cluster (RAY_ADDRESS or auto)")
    overwrite: bool = option(False, help="--out holds a run of other inputs: delete it first")

    @property
    def patching(self) -> tuple[str, ...]:
        """Every patching shard set: --data, then --joint-data."""
        return (self.data, *self.joint_data)


# ------------------------------------------------------------------------- worker (Ray Train)


class ImageClassifier(torch.nn.Module):
    """Image tower + frozen zero-shot head: what patching fine-tunes."""

    def __init__(self, visual: torch.nn.Module, head: heads.ZeroShotHead) -> None:
        super().__init__()
        self.visual, self.head = visual, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.visual(x))


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

    ds: data.ShardSet
    decoder: data.Decoder
    multi_label: bool
    steps: tuple[int, ...]


def worker(conf: dict[str, Any], ctx: WorkerContext | None = None) -> dict[str, Any]:
    """Fine-tune, then evaluate every alpha; returns theta_ft and the run's state. Runs on each
    DDP worker (`mtmg.runtime.train.fit`), or alone (a test, a Tune trial: pass `ctx` with a
    reporter there). The patching sets are the `sets` of role "patching", each with its head."""
    cfg = PatchConfig(**conf["cfg"])
    ctx = ctx or WorkerContext()
    torch.manual_seed(cfg.seed)
    bundle = models.load_clip(cfg.model, None, model_config=cfg.model_config,
                              build_kwargs=conf.get("build_kwargs"))  # fmt: skip
    bundle.model.load_state_dict(conf["zeroshot"], strict=True)
    theta_zs = weights.image_state(bundle.model)
    head_weights = conf["heads"]
    idx = [i for i, (role, _, _) in enumerate(conf["sets"]) if role == "patching"]
    zs_heads = [heads.ZeroShotHead.from_weights(head_weights[i]) for i in idx]
    clf = ctx.wrap(JointClassifier(bundle.model.visual, zs_heads))
    patching = [(data.ShardSet.open(conf["sets"][i][1]), conf["sets"][i][2]) for i in idx]
    tasks = _tasks(cfg, ctx, bundle, patching)
    state = _train(cfg, ctx, clf, tasks, bundle, conf.get("fail_once"))
    theta_ft = weights.image_state(bundle.model)
    if state.get("rows") is None:
        state["rows"], state["alpha"] = _evaluate(
            cfg, ctx, bundle, theta_zs, theta_ft, head_weights, conf["sets"]
        )
        training.save_epoch(ctx, "visual", theta_ft, {"epoch": cfg.epochs, **state},
                            {"done": 1, "alpha": state["alpha"]})  # fmt: skip
    return {"theta_ft": theta_ft, **state}


def _tasks(cfg, ctx, bundle, patching) -> list[Task]:
    """Decoder, loss kind and per-epoch steps of every patching `(ShardSet, nomenclature)`;
    the batch is split evenly between the sets."""
    per_set = max(1, cfg.batch_size // len(patching))
    defer = cfg.augment and (
        cfg.gpu_augment or (cfg.gpu_augment is None and ctx.device.type == "cuda")
    )
    out = []
    for ds, nomenclature in patching:
        targets = data.Targets.of(ds, nomenclature)
        decoder = data.Decoder(
            tuple(ds.manifest["bands"]), ds.manifest["modality"], "rgb", targets,
            bundle.image_size, bundle.image_size, bundle.mean, bundle.std,
            transforms.Augment() if cfg.augment else None, cfg.seed, defer_augment=defer,
        )  # fmt: skip
        steps = training.train_steps(ds, per_set, cfg.epochs, cfg.seed, ctx.world)
        out.append(Task(ds, decoder, targets.multi_label, tuple(steps)))
    return out


def _epoch_batches(cfg, ctx, tasks: list[Task], epoch: int) -> Iterator[tuple[dict, ...]]:
    """One batch of every patching set per step, for as many steps as the longest set has this
    epoch; a shorter set starts over, its pass p shuffled as epoch `epoch + p * epochs`."""
    batch = max(1, max(1, cfg.batch_size // len(tasks)) // ctx.world)
    procs = -(-cfg.loader_workers // len(tasks))

    def loader(task: Task, p: int) -> data.Loader:
        e = epoch + p * cfg.epochs
        return data.make_loader(
            task.ds, "train", replace(task.decoder, epoch=e), batch_size=batch, train=True,
            rank=ctx.rank, world=ctx.world, num_workers=procs, seed=cfg.seed, epoch=e,
        )  # fmt: skip

    steps = max(t.steps[epoch] for t in tasks)
    return zip(*[data.cycle(lambda p, t=t: loader(t, p), steps) for t in tasks], strict=True)


def _train(cfg, ctx, clf, tasks: list[Task], bundle, fail_once=None) -> dict[str, Any]:
    """The fine-tuning loop; resumes from the latest Ray Train checkpoint when there is one.

    `fail_once=(marker, step)` (tests) kills the worker once at that step, to exercise resume.
    """
    visual = bundle.model.visual
    params = [p for p in visual.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    total = sum(max(t.steps[e] for t in tasks) for e in range(cfg.epochs))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, training.lr_lambda(cfg.warmup_steps, total))
    start, step, losses, stats = 0, 0, [], []
    saved = training.load_epoch(ctx, "visual", opt, sched)
    if saved:
        tensors, st = saved
        weights.load_image_state(bundle.model, tensors)
        start, step, losses, stats = st["epoch"], st["step"], st["losses"], st.get("stats", [])
        if st.get("rows") is not None:
            return st
        log.info("resuming at epoch %d, step %d", start, step)
    for epoch in range(start, cfg.epochs):
        step, metrics = _epoch(cfg, ctx, clf, tasks, (opt, sched, params), epoch, step, losses,
                               fail_once)  # fmt: skip
        stats.append(metrics)
        log.info("epoch %d: %s", epoch + 1, metrics)
        training.save_epoch(
            ctx, "visual", weights.image_state(bundle.model),
            {"epoch": epoch + 1, "step": step, "losses": losses, "stats": stats},
            metrics, opt, sched,
        )  # fmt: skip
    return {"step": step, "losses": losses, "stats": stats, "rows": None, "alpha": None}


def _epoch(cfg, ctx, clf, tasks, optim, epoch, step, losses, fail_once):
    """One epoch: the mean of the patching sets' losses per step; appends to `losses` and
    returns (global step, the epoch's metrics)."""
    opt, sched, params = optim
    amp = training.amp_dtype(cfg.precision, ctx.device)
    loss_fns = [torch.nn.BCEWithLogitsLoss() if t.multi_label else torch.nn.CrossEntropyLoss()
                for t in tasks]  # fmt: skip
    clf.train()
    total, n = torch.zeros(2 + len(tasks), device=ctx.device), 0  # loss*samples, samples, per set
    meter = training.ThroughputMeter(ctx.device)
    for parts in _epoch_batches(cfg, ctx, tasks, epoch):
        batches = [data.device_batch(b, t.decoder, ctx.device)
                   for b, t in zip(parts, tasks, strict=True)]  # fmt: skip
        x, ys = torch.cat([b["rgb"] for b in batches]), [b["target"] for b in batches]
        with torch.autocast(ctx.device.type, dtype=amp, enabled=amp is not None):
            logits = clf(x, [len(y) for y in ys])
            pairs = zip(loss_fns, logits, ys, strict=True)
            per_set = torch.stack([f(lg.float(), y) for f, lg, y in pairs])
            loss = per_set.mean()
        training.optimizer_step(loss, opt, sched, params, cfg.grad_clip, step)
        step, n = step + 1, n + 1
        meter.step(len(x))
        training.inject_failure(fail_once, step)
        size = torch.tensor([len(x)], device=ctx.device, dtype=total.dtype)
        total += torch.cat([loss.detach().reshape(1) * len(x), size, per_set.detach()])
        losses.append([step, loss.item()])
    if ctx.world > 1:
        torch.distributed.all_reduce(total)
    metrics = {"epoch": epoch + 1, "step": step, "train_loss": float(total[0] / total[1]),
               "samples_per_s": meter.rate()}  # fmt: skip
    if len(tasks) > 1:  # each patching set's mean loss, in --data, --joint-data order
        metrics["train_loss_sets"] = [float(v) / (n * ctx.world) for v in total[2:]]
    return step, metrics


def _evaluate(cfg, ctx, bundle, theta_zs, theta_ft, head_weights, sets):
    """Validation metrics for every alpha, the chosen alpha, test metrics at {0, chosen, 1}."""
    visual = bundle.model.visual.to(ctx.device).eval()
    amp = training.amp_dtype(cfg.precision, ctx.device)
    shard_sets = [data.ShardSet.open(path) for _, path, _ in sets]
    budget = cfg.eval_cache_gb * 2**30 / len(sets)
    cached: dict[tuple[int, str], Any] = {}

    def batches(i: int, split: str) -> Any:
        if (i, split) not in cached:
            ds, nomen = shard_sets[i], sets[i][2]
            dec = data.Decoder(
                tuple(ds.manifest["bands"]), ds.manifest["modality"], "rgb",
                data.Targets.of(ds, nomen), bundle.image_size, bundle.image_size,
                bundle.mean, bundle.std,
            )  # fmt: skip
            loader = data.make_loader(
                ds, split, dec, batch_size=cfg.eval_batch_size, train=False, rank=ctx.rank,
                world=ctx.world, num_workers=cfg.loader_workers,
            )  # fmt: skip
            cached[(i, split)] = evaluate.materialize(loader, budget) or loader
        return cached[(i, split)]

    def run(alpha: float, jobs: list[tuple[int, str]]) -> list[dict]:
        weights.load_image_state(bundle.model, weights.interpolate(theta_zs, theta_ft, alpha))
        out = []
        for i, split in jobs:
            ds = shard_sets[i]
            head = heads.ZeroShotHead.from_weights(head_weights[i]).to(ctx.device)
            m = evaluate.classification(
                ctx, lambda b, h=head: h(visual(b["rgb"])), batches(i, split), ds.task, amp
            )
            if m is not None:
                main = "mAP" if ds.task == "multi-label" else "top1"
                out.append({
                    "dataset": ds.name, "path": sets[i][1], "role": sets[i][0], "split": split,
                    "alpha": alpha, "metric": main, "value": m[main], "n": m["n"],
                    "device": ctx.device.type, "amp": "bf16" if amp else "fp32",
                })  # fmt: skip
        return out

    val_jobs = [(i, "val") for i, (role, _, _) in enumerate(sets)
                if role in ("patching", "supported") and shard_sets[i].count("val")]  # fmt: skip
    rows = [r for a in cfg.alphas for r in run(float(a), val_jobs)]
    base = None  # constrained rule: supported at alpha 0 bounds it, a candidate or not
    if cfg.selection == "constrained" and all(float(a) != 0.0 for a in cfg.alphas):
        zero = run(0.0, [(i, s) for i, s in val_jobs if sets[i][0] == "supported"])
        base = select.curves(zero).get("supported", {}).get(0.0)
    alpha = (select.select_alpha(rows, cfg.selection, cfg.tolerance, base=base)
             if ctx.is_main else None)  # fmt: skip
    alpha = ctx.broadcast(alpha)
    cached.clear()
    test_jobs = [(i, "test" if ds.count("test") else "val") for i, ds in enumerate(shard_sets)]
    for a in sorted({0.0, alpha, 1.0}):
        rows += [{**r, "selected": a == alpha} for r in run(a, test_jobs)]
    weights.load_image_state(bundle.model, theta_ft)
    return rows, alpha


# ------------------------------------------------------------------------------------ driver


def validate(cfg: PatchConfig) -> tuple[models.ClipBundle, list[tuple[str, str, str | None]]]:
    """Check every input before any training: shard sets, splits, model and checkpoint.

    Returns the (role, absolute path, nomenclature) of every dataset, the patching sets first.
    """
    paths = [_abs(p) for p in cfg.patching]
    if len(set(paths)) != len(paths):
        raise ValueError(f"--data/--joint-data: a shard set is given twice ({', '.join(paths)})")
    nomens = _nomenclatures(cfg.nomenclature, paths)
    sets = [("patching", p, n) for p, n in zip(paths, nomens, strict=True)]
    sets += [("supported", _abs(p), None) for p in cfg.supported]
    sets += [("eval", _abs(p), None) for p in cfg.eval_data]
    for role, path, nomen in sets:
        ds = data.ShardSet.open(path)
        need = ("train", "val") if role == "patching" else ()
        need += ("val",) if role == "supported" else ()
        for split in need:
            if not ds.count(split):
                raise ValueError(f"{path}: the {role} dataset has no {split!r} split")
        if not ds.count("test") and not ds.count("val"):
            raise ValueError(f"{path}: no test or val split to evaluate on")
        ds.classes(nomen)
    torch.manual_seed(cfg.seed)  # a model without pretrained weights starts from the seed
    bundle = models.load_clip(cfg.model, cfg.pretrained, model_config=cfg.model_config)
    if cfg.selection not in select.RULES:
        raise ValueError(f"unknown selection rule {cfg.selection!r}")
    return bundle, sets


def _nomenclatures(name: str | None, paths: Sequence[str]) -> list[str | None]:
    """Each patching set's label set: `name` where the set has it, else the set's default. One
    set must have it (an error naming the set otherwise), as must one of several."""
    if name is None or len(paths) == 1:
        return [name] * len(paths)
    have = [name in data.ShardSet.open(p).manifest["nomenclatures"] for p in paths]
    if not any(have):
        raise ValueError(f"--nomenclature {name}: no patching set has it ({', '.join(paths)})")
    return [name if h else None for h in have]


def _abs(path: str) -> str:
    """An absolute local path (Ray workers change their cwd); URIs unchanged."""
    return path if "://" in path else str(Path(path).expanduser().resolve())


def build_heads(cfg: PatchConfig, bundle: models.ClipBundle, sets) -> list[torch.Tensor]:
    """Zero-shot head weights of every dataset (patching task in its nomenclature), cached."""
    datasets = [(data.ShardSet.open(p), n if role == "patching" else None) for role, p, n in sets]
    return heads.dataset_heads(bundle, cfg.model, datasets, cfg.cache_dir, cfg.templates)


def run(
    cfg: PatchConfig,
    *,
    fail_once: tuple[str, int] | None = None,
    on_train_start: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """The whole stage; returns the summary also written to OUT/summary.json.

    `on_train_start()` is called once the driver has handed the fine-tune to Ray Train and
    only waits for it (see `mtmg.runtime.train.fit`)."""
    t0 = time.perf_counter()
    bundle, sets = validate(cfg)
    with rundir.claim("patch", cfg, cfg.out, overwrite=cfg.overwrite):
        return _fine_tune(cfg, bundle, sets, t0, fail_once, on_train_start)


def _fine_tune(cfg, bundle, sets, t0, fail_once, on_train_start) -> dict[str, Any]:
    """`run` once OUT is this run's: the heads, the Ray Train job, the outputs."""
    out = Path(cfg.out).resolve()
    init_ray(cfg.cluster)  # no cluster: an error before anything is written
    results.save_config(config.to_dict(cfg), out / "config.yaml")
    head_weights = build_heads(cfg, bundle, sets)
    theta_zs = weights.image_state(bundle.model)
    save_file(theta_zs, str(out / "theta_zs.safetensors"))
    conf = {
        "cfg": {
            **config.to_dict(cfg),
            "data": _abs(cfg.data),
            "joint_data": [_abs(p) for p in cfg.joint_data],
        },
        "build_kwargs": bundle.build_kwargs,
        "sets": [(r, _abs(p), n) for r, p, n in sets],
        "fail_once": fail_once,
    }
    conf["cfg"] = {k: tuple(v) if isinstance(v, list) else v for k, v in conf["cfg"].items()}
    shared = {"zeroshot": {k: v.cpu() for k, v in bundle.model.state_dict().items()},
              "heads": head_weights}  # fmt: skip
    theta_ft, state = jobs.run_job(worker, conf, cfg, shared=shared, out=out, name="patch",
                                   weights="visual", on_start=on_train_start)  # fmt: skip
    return write_outputs(cfg, out, bundle, theta_zs, theta_ft, state, time.perf_counter() - t0)


def write_outputs(cfg, out: Path, bundle, theta_zs, theta_ft, state, seconds) -> dict[str, Any]:
    """theta_ft, the metrics table, the alpha curve, the patched open_clip checkpoint."""
    save_file(theta_ft, str(out / "theta_ft.safetensors"))
    if cfg.model_config:  # the run dir stays self-contained (the alignment teacher reads it)
        shutil.copyfile(cfg.model_config, out / "model_config.json")
    rows = [{**r, "selected": r.get("selected")} for r in state["rows"]]
    results.write_table(rows, out / "metrics")
    alpha = state["alpha"]
    curves = select.curves(rows, "val")
    k = len(cfg.patching)
    what = f"patching (mean of {k} sets)" if k > 1 else "patching"
    results.plot_alpha_curve(curves, alpha, out / "alpha_curve.png",
                             title=f"{cfg.model}: {what} vs supported (validation)")  # fmt: skip
    weights.load_image_state(bundle.model, weights.interpolate(theta_zs, theta_ft, alpha))
    weights.save_checkpoint(bundle.model, out / "patched.safetensors",
                            build_kwargs=bundle.build_kwargs)  # fmt: skip
    test = [r for r in rows if r["split"] != "val" or r.get("selected") is not None]
    summary = {
        "model": cfg.model,
        "patching": [_abs(p) for p in cfg.patching],
        "alpha": alpha,
        "selection": cfg.selection,
        "steps": state["step"],
        "final_train_loss": state["losses"][-1][1] if state["losses"] else None,
        "epochs": state.get("stats", []),
        "test": [r for r in test if r.get("selected") is not None],
        "patched_checkpoint": str(out / "patched.safetensors"),
        "load_with": f"open_clip.create_model({cfg.model!r}, pretrained='patched.safetensors')",
        "seconds": round(seconds, 1),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def main(argv: list[str] | None = None) -> int:
    """`python -m mtmg.patch --data SHARDS [--joint-data SHARDS ...] --out DIR [options]`."""
    args = sys.argv[1:] if argv is None else argv
    if sum(a == "--data" or a.startswith("--data=") for a in args) > 1:  # argparse keeps the last
        print("error: give --data once; more patching sets go to --joint-data", file=sys.stderr)
        return 2
    cfg = config.parse(
        PatchConfig,
        argv,
        "PAINT patching of an open_clip model on a remote-sensing shard set (Ray Train DDP).",
        "joint patching: --data A --joint-data B ... fine-tunes one image tower on A, B, ...\n"
        "together (each step one batch of each set, each set through its own zero-shot head\n"
        "and loss, the losses averaged; an epoch is one pass over the longest set) and selects\n"
        "alpha with the mean of the patching sets' validation metrics.\n"
        "outputs in --out: config.yaml, theta_zs/theta_ft.safetensors, metrics.parquet/.csv\n"
        "(dataset x alpha x split x metric), alpha_curve.png, patched.safetensors (a full\n"
        "open_clip checkpoint: open_clip.create_model(NAME, pretrained=PATH)), summary.json.\n"
        "Re-running with the same --out resumes from the last epoch checkpoint.",
    )
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        summary = run(cfg)
    except errors.USER_ERRORS as e:
        return errors.failed(e)
    except KeyboardInterrupt:
        return errors.interrupted(errors.RESUME_RUN)
    print(f"chosen alpha = {summary['alpha']:g} ({cfg.selection} rule on validation)")
    for r in summary["test"]:
        mark = "*" if r["selected"] else " "
        print(f"{mark} {r['role']:<9} {r['dataset']:<15} {r['split']:<5} alpha={r['alpha']:<4g} "
              f"{r['metric']}={r['value']:.2f}")  # fmt: skip
    print(f"outputs in {Path(cfg.out).resolve()}")
    return 0
