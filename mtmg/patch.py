"""Stage 1, PAINT patching: fine-tune CLIP's image tower on the patching task with a frozen
zero-shot head, interpolate with the zero-shot weights, choose alpha on validation splits.

`python -m mtmg.patch --data SHARDS --out DIR [--supported SHARDS ...] [options]`

The driver validates inputs, builds the zero-shot heads and puts the zero-shot weights in the
object store; `worker` (plain PyTorch, run by Ray Train on N DDP workers) fine-tunes with a
checkpoint per epoch, then evaluates theta(alpha) for every alpha; the driver writes the outputs.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from mtmg import (
    config,
    data,
    evaluate,
    heads,
    models,
    results,
    select,
    trainers,
    training,
    transforms,
    weights,
)

log = logging.getLogger(__name__)
option = config.option
ALPHAS = tuple(round(0.1 * i, 1) for i in range(11))


@dataclass(frozen=True)
class PatchConfig:
    data: str = option(help="shard set of the patching task (train, val, test splits)")
    out: str = option(help="output directory")
    supported: tuple[str, ...] = option((), help="shard sets of supported tasks (kept zero-shot)")
    eval_data: tuple[str, ...] = option((), help="more shard sets to report test metrics on")
    model: str = option("ViT-B-32", help="open_clip model name")
    pretrained: str | None = option("openai", help="open_clip pretrained tag or a local file")
    model_config: str | None = option(None, help="JSON of a custom open_clip architecture")
    nomenclature: str | None = option(None, help="label set (default: ben19 for BigEarthNet)")
    templates: str | None = option(None, help="prompt templates file (default: the manifest's)")
    lr: float = option(1e-5, help="AdamW learning rate")
    weight_decay: float = option(0.5, help="AdamW weight decay (paper code: 0.5)")
    warmup_steps: int = option(200, help="linear warm-up steps, then cosine to 0")
    epochs: int = option(1, help="fine-tuning epochs")
    batch_size: int = option(128, help="global batch size (split over workers)")
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
    loader_workers: int = option(2, help="data-loading processes per worker")
    eval_batch_size: int = option(256, help="evaluation batch size per worker")
    eval_cache_gb: float = option(2.0, help="keep decoded evaluation batches up to this size")
    seed: int = option(0, help="seed of shuffling, augmentation and initialisation")
    max_failures: int = option(1, help="restarts from the last checkpoint after a worker failure")
    cache_dir: str | None = option(None, help="zero-shot head cache (default ~/.cache/mtmg)")
    cluster: bool = option(False, help="connect to a running Ray cluster (RAY_ADDRESS or auto)")


# ------------------------------------------------------------------------- worker (Ray Train)


class ImageClassifier(torch.nn.Module):
    """Image tower + frozen zero-shot head: what patching fine-tunes."""

    def __init__(self, visual: torch.nn.Module, head: heads.ZeroShotHead) -> None:
        super().__init__()
        self.visual, self.head = visual, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.visual(x))


def worker(conf: dict[str, Any], ctx: trainers.WorkerContext | None = None) -> None:
    """Fine-tune, then evaluate every alpha; runs on each DDP worker, or alone (a test, a Tune
    trial: pass `ctx` with a reporter there)."""
    cfg = PatchConfig(**conf["cfg"])
    ctx = ctx or trainers.WorkerContext.current()
    if ctx.ray:  # Ray limits a worker to 1 thread; use the CPUs it reserved
        torch.set_num_threads(max(1, int(cfg.cpus_per_worker)))
    torch.manual_seed(cfg.seed)
    bundle = models.load_clip(cfg.model, None, model_config=cfg.model_config,
                              build_kwargs=conf.get("build_kwargs"))  # fmt: skip
    bundle.model.load_state_dict(training.ray_value(conf["zeroshot"]), strict=True)
    theta_zs = weights.image_state(bundle.model)
    head_weights = training.ray_value(conf["heads"])
    ds = data.ShardSet.open(cfg.data)
    head = heads.ZeroShotHead.from_weights(head_weights[0])
    clf = ctx.wrap(ImageClassifier(bundle.model.visual, head))
    state = _train(cfg, ctx, clf, ds, bundle, conf.get("fail_once"))
    theta_ft = weights.image_state(bundle.model)
    if state.get("rows") is None:
        state["rows"], state["alpha"] = _evaluate(
            cfg, ctx, bundle, theta_zs, theta_ft, head_weights, conf["sets"]
        )
        training.save_epoch(ctx, "visual", theta_ft, {"epoch": cfg.epochs, **state},
                            {"done": 1, "alpha": state["alpha"]})  # fmt: skip
    if not ctx.ray:  # a plain process (tests, notebooks): hand the results back in place
        conf["result"] = {"theta_ft": theta_ft, **state}


def _train(cfg, ctx, clf, ds, bundle, fail_once=None) -> dict[str, Any]:
    """The fine-tuning loop; resumes from the latest Ray Train checkpoint when there is one.

    `fail_once=(marker, step)` (tests) kills the worker once at that step, to exercise resume.
    """
    targets = data.Targets.of(ds, cfg.nomenclature)
    decoder = data.Decoder(
        tuple(ds.manifest["bands"]), ds.manifest["modality"], "rgb", targets,
        bundle.image_size, bundle.image_size, bundle.mean, bundle.std,
        transforms.Augment() if cfg.augment else None, cfg.seed,
        defer_augment=cfg.augment and (cfg.gpu_augment or (
            cfg.gpu_augment is None and ctx.device.type == "cuda")),
    )  # fmt: skip
    steps = training.train_steps(ds, cfg.batch_size, cfg.epochs, cfg.seed, ctx.world)
    visual = bundle.model.visual
    params = [p for p in visual.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, training.lr_lambda(cfg.warmup_steps, sum(steps)))
    loss_fn = torch.nn.BCEWithLogitsLoss() if targets.multi_label else torch.nn.CrossEntropyLoss()
    start, step, losses, stats = 0, 0, [], []
    saved = training.load_epoch(ctx, "visual", opt, sched)
    if saved:
        tensors, st = saved
        weights.load_image_state(bundle.model, tensors)
        start, step, losses, stats = st["epoch"], st["step"], st["losses"], st.get("stats", [])
        if st.get("rows") is not None:
            return st
        log.info("resuming at epoch %d, step %d", start, step)
    amp = training.amp_dtype(cfg.precision, ctx.device)
    for epoch in range(start, cfg.epochs):
        clf.train()
        loader = data.make_loader(
            ds, "train", replace(decoder, epoch=epoch),
            batch_size=max(1, cfg.batch_size // ctx.world), train=True, rank=ctx.rank,
            world=ctx.world, num_workers=cfg.loader_workers, seed=cfg.seed, epoch=epoch,
        )  # fmt: skip
        total, n = torch.zeros(2, device=ctx.device), 0
        meter = training.ThroughputMeter(ctx.device)
        for batch in loader:
            batch = data.device_batch(batch, decoder, ctx.device)
            x, y = batch["rgb"], batch["target"]
            with torch.autocast(ctx.device.type, dtype=amp, enabled=amp is not None):
                loss = loss_fn(clf(x).float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            sched.step()
            step, n = step + 1, n + 1
            meter.step(len(y))
            if fail_once and step == fail_once[1] and not os.path.exists(fail_once[0]):
                Path(fail_once[0]).touch()
                raise RuntimeError(f"injected worker failure at step {step}")
            total += torch.stack([loss.detach() * len(y), torch.tensor(len(y), device=ctx.device)])
            losses.append([step, loss.item()])
        if ctx.world > 1:
            torch.distributed.all_reduce(total)
        metrics = {
            "epoch": epoch + 1,
            "step": step,
            "train_loss": float(total[0] / total[1]),
            "samples_per_s": meter.rate(),
        }
        stats.append(metrics)
        log.info("epoch %d: %s", epoch + 1, metrics)
        training.save_epoch(
            ctx, "visual", weights.image_state(bundle.model),
            {"epoch": epoch + 1, "step": step, "losses": losses, "stats": stats},
            metrics, opt, sched,
        )  # fmt: skip
    return {"step": step, "losses": losses, "stats": stats, "rows": None, "alpha": None}


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
                })  # fmt: skip
        return out

    val_jobs = [(i, "val") for i, (role, _, _) in enumerate(sets)
                if role in ("patching", "supported") and shard_sets[i].count("val")]  # fmt: skip
    rows = [r for a in cfg.alphas for r in run(float(a), val_jobs)]
    alpha = select.select_alpha(rows, cfg.selection, cfg.tolerance) if ctx.is_main else None
    alpha = ctx.broadcast(alpha)
    cached.clear()
    test_jobs = [(i, "test" if ds.count("test") else "val") for i, ds in enumerate(shard_sets)]
    for a in sorted({0.0, alpha, 1.0}):
        rows += [{**r, "selected": a == alpha} for r in run(a, test_jobs)]
    weights.load_image_state(bundle.model, theta_ft)
    return rows, alpha


# ------------------------------------------------------------------------------------ driver


def validate(cfg: PatchConfig) -> tuple[models.ClipBundle, list[tuple[str, str, str | None]]]:
    """Check every input before any training: shard sets, splits, model and checkpoint."""
    sets = [("patching", cfg.data, cfg.nomenclature)]
    sets += [("supported", p, None) for p in cfg.supported]
    sets += [("eval", p, None) for p in cfg.eval_data]
    for role, path, nomen in sets:
        ds = data.ShardSet.open(path)
        need = ("train", "val") if role == "patching" else ()
        need += ("val",) if role == "supported" else ()
        for split in need:
            if not ds.count(split):
                raise ValueError(f"{path}: the {role} dataset has no {split!r} split")
        if not ds.count("test") and not ds.count("val"):
            raise ValueError(f"{path}: no test or val split to evaluate on")
        ds.classes(nomen if role == "patching" else None)
    torch.manual_seed(cfg.seed)  # a model without pretrained weights starts from the seed
    bundle = models.load_clip(cfg.model, cfg.pretrained, model_config=cfg.model_config)
    if cfg.selection not in select.RULES:
        raise ValueError(f"unknown selection rule {cfg.selection!r}")
    return bundle, sets


def build_heads(cfg: PatchConfig, bundle: models.ClipBundle, sets) -> list[torch.Tensor]:
    """Zero-shot head weights of every dataset (patching task in its nomenclature), cached."""
    datasets = [(data.ShardSet.open(p), n if role == "patching" else None) for role, p, n in sets]
    return heads.dataset_heads(bundle, cfg.model, datasets, cfg.cache_dir, cfg.templates)


def run(cfg: PatchConfig, *, fail_once: tuple[str, int] | None = None) -> dict[str, Any]:
    """The whole stage; returns the summary also written to OUT/summary.json."""
    t0 = time.perf_counter()
    out = Path(cfg.out).resolve()
    bundle, sets = validate(cfg)
    out.mkdir(parents=True, exist_ok=True)
    results.save_config(config.to_dict(cfg), out / "config.yaml")
    head_weights = build_heads(cfg, bundle, sets)
    theta_zs = weights.image_state(bundle.model)
    save_file(theta_zs, str(out / "theta_zs.safetensors"))
    import ray

    from mtmg.cluster import init_ray

    init_ray(cfg.cluster)
    use_gpu = trainers.gpu_available() if cfg.gpu is None else cfg.gpu
    conf = {
        "cfg": {**config.to_dict(cfg), "data": str(Path(cfg.data).resolve())},
        "zeroshot": ray.put({k: v.cpu() for k, v in bundle.model.state_dict().items()}),
        "build_kwargs": bundle.build_kwargs,
        "heads": ray.put(head_weights),
        "sets": [(r, str(Path(p).resolve()), n) for r, p, n in sets],
        "fail_once": fail_once,
    }
    conf["cfg"] = {k: tuple(v) if isinstance(v, list) else v for k, v in conf["cfg"].items()}
    result = trainers.fit(
        worker, conf, workers=cfg.workers, use_gpu=use_gpu, storage_path=str(out / "ray"),
        name="patch", max_failures=cfg.max_failures, cpus_per_worker=cfg.cpus_per_worker,
    )  # fmt: skip
    with result.checkpoint.as_directory() as d:
        theta_ft = load_file(os.path.join(d, "visual.safetensors"))
        state = json.loads(Path(d, "state.json").read_text())
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
    results.plot_alpha_curve(curves, alpha, out / "alpha_curve.png",
                             title=f"{cfg.model}: patching vs supported (validation)")  # fmt: skip
    weights.load_image_state(bundle.model, weights.interpolate(theta_zs, theta_ft, alpha))
    weights.save_checkpoint(bundle.model, out / "patched.safetensors",
                            build_kwargs=bundle.build_kwargs)  # fmt: skip
    test = [r for r in rows if r["split"] != "val" or r.get("selected") is not None]
    summary = {
        "model": cfg.model,
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
    """`python -m mtmg.patch --data SHARDS --out DIR [options]`."""
    cfg = config.parse(
        PatchConfig,
        argv,
        "PAINT patching of an open_clip model on a remote-sensing shard set (Ray Train DDP).",
        "outputs in --out: config.yaml, theta_zs/theta_ft.safetensors, metrics.parquet/.csv\n"
        "(dataset x alpha x split x metric), alpha_curve.png, patched.safetensors (a full\n"
        "open_clip checkpoint: open_clip.create_model(NAME, pretrained=PATH)), summary.json.\n"
        "Re-running with the same --out resumes from the last epoch checkpoint.",
    )
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        summary = run(cfg)
    except (ValueError, KeyError, FileNotFoundError, models.ModelLoadError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"chosen alpha = {summary['alpha']:g} ({cfg.selection} rule on validation)")
    for r in summary["test"]:
        mark = "*" if r["selected"] else " "
        print(f"{mark} {r['role']:<9} {r['dataset']:<15} {r['split']:<5} alpha={r['alpha']:<4g} "
              f"{r['metric']}={r['value']:.2f}")  # fmt: skip
    print(f"outputs in {Path(cfg.out).resolve()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
