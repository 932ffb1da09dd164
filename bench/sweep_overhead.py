"""What the alpha sweep costs over doing its work by hand, side by side in one run.

On generated BigEarthNet (patching) and image-folder (supported) shard sets, with Ray already up:
  baseline   one fine-tune (`mtmg.patch.run`) + K plain evaluations in a loop (theta(alpha) on
             both validation splits, batches decoded once, no Ray), as a researcher would write
  sweep      `mtmg.sweeps.alpha.driver.run` with --data: the same fine-tune, the K-alpha grid as
             Ray Tune trials (started during the fine-tune, waiting for its weights), test
             metrics at alpha {0, chosen, 1} (those the patch run already computed are taken
             over), and all outputs
Runs alternate (noisy machine) and medians are reported. Prints one JSON object:
`ratio_sweep_vs_baseline` (goal <= 1.2; `ratio_per_pair` for the spread) and
`tune_overhead_per_trial_s` (Tune's wall time once the fine-tune's weights exist, beyond the
plain loop's K evaluations, per trial; goal < 1 s).

    python bench/sweep_overhead.py                 # CPU, mtmg-small-vit, K = 11
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import torch
from safetensors.torch import load_file

from mtmg import prep, synth
from mtmg.data import loader as data
from mtmg.engine import evaluate
from mtmg.engine.context import WorkerContext
from mtmg.models import clip as models
from mtmg.models import weights
from mtmg.models.heads import ZeroShotHead
from mtmg.stages.patch import driver as patch
from mtmg.sweeps.alpha import driver as alpha_sweep


def make_sets(work: Path, n: int, per_class: int) -> tuple[str, str]:
    synth.make_bigearthnet(work / "ben", n_patches=n, s1=False, seed=1)
    synth.make_imagefolder(work / "img", n_per_class=per_class, size=64, seed=2)
    for kind, raw in (("bigearthnet", "ben"), ("imagefolder", "img")):
        prep.shard(
            prep.ShardConfig(
                kind, str(work / raw), str(work / f"{raw}-shards"), shard_size=100, progress=False
            )
        )
    return str(work / "ben-shards"), str(work / "img-shards")


def patch_config(args, ben: str, img: str, out: Path) -> patch.PatchConfig:
    return patch.PatchConfig(
        data=ben,
        supported=(img,),
        out=str(out),
        model=args.model,
        pretrained=None,
        epochs=args.epochs,
        batch_size=32,
        lr=1e-4,
        warmup_steps=5,
        alphas=(0.0, 1.0),
        loader_workers=1,
        eval_batch_size=64,
        cache_dir=str(out.parent / "cache"),
    )


def plain_loop(cfg: patch.PatchConfig, alphas: list[float]) -> dict[str, float]:
    """K evaluations by hand: decode both validation splits once, then interpolate + evaluate."""
    t0 = time.perf_counter()
    run = Path(cfg.out)
    bundle, sets = patch.resolve_inputs(cfg)
    head_weights = patch.build_heads(cfg, bundle, sets)
    zs = load_file(str(run / "theta_zs.safetensors"))
    ft = load_file(str(run / "theta_ft.safetensors"))
    jobs = []
    for (_, path, nomen), w in zip(sets, head_weights, strict=True):
        ds = data.ShardSet.open(path)
        dec = data.Decoder(
            tuple(ds.manifest["bands"]),
            ds.manifest["modality"],
            "rgb",
            data.Targets.of(ds, nomen),
            bundle.image_size,
            bundle.image_size,
            bundle.mean,
            bundle.std,
        )
        loader = data.make_loader(
            ds,
            "val",
            dec,
            batch_size=cfg.eval_batch_size,
            train=False,
            num_workers=cfg.loader_workers,
        )
        jobs.append((list(loader), ZeroShotHead(w), ds.task))
    t1 = time.perf_counter()
    visual = bundle.model.visual.eval()
    for a in alphas:
        weights.load_image_state(bundle.model, weights.interpolate(zs, ft, a))
        for batches, head, task in jobs:
            evaluate.classification(
                WorkerContext(), lambda b, h=head: h(visual(b["rgb"])), batches, task
            )
    t2 = time.perf_counter()
    return {"prepare_s": t1 - t0, "evals_s": t2 - t1, "total_s": t2 - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default="mtmg-small-vit")
    ap.add_argument("--patches", type=int, default=600, help="generated BigEarthNet patches")
    ap.add_argument("--per-class", type=int, default=30, help="supported-set images per class")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--alphas", type=int, default=11, help="K: grid size")
    ap.add_argument("--repeats", type=int, default=3, help="alternated runs; medians reported")
    args = ap.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    alphas = [round(i / (args.alphas - 1), 4) for i in range(args.alphas)]
    work = Path(tempfile.mkdtemp(prefix="mtmg-bench-sweep-"))
    try:
        import ray

        from mtmg.runtime.cluster import init_ray

        t0 = time.perf_counter()
        init_ray(num_cpus=os.cpu_count())
        ray_init_s = time.perf_counter() - t0
        ben, img = make_sets(work, args.patches, args.per_class)
        runs: dict[str, list] = {
            k: []
            for k in (
                "baseline",
                "fine_tune",
                "plain_evals",
                "sweep",
                "sweep_fine_tune",
                "tune",
                "per_trial",
                "in_trial",
            )
        }
        for r in range(args.repeats):
            pcfg = patch_config(args, ben, img, work / f"base{r}")
            t = time.perf_counter()
            patch.run(pcfg)
            ft = time.perf_counter() - t
            loop = plain_loop(pcfg, alphas)
            runs["fine_tune"].append(ft)
            runs["plain_evals"].append(loop["evals_s"])
            runs["baseline"].append(ft + loop["total_s"])

            out = work / f"sweep{r}"
            scfg = alpha_sweep.AlphaSweepConfig(
                out=str(out),
                data=ben,
                supported=(img,),
                model=args.model,
                pretrained="none",
                epochs=args.epochs,
                batch_size=32,
                lr=1e-4,
                warmup_steps=5,
                loader_workers=1,
                eval_batch_size=64,
                cache_dir=str(work / "cache"),
                alphas=tuple(alphas),
            )
            t = time.perf_counter()
            with contextlib.redirect_stdout(sys.stderr):  # Tune's progress: stdout is the JSON
                summary = alpha_sweep.run(scfg)
            runs["sweep"].append(time.perf_counter() - t)
            tm = summary["timings"]
            runs["sweep_fine_tune"].append(tm["fine_tune_s"])
            runs["tune"].append(tm["tune_s"])
            runs["per_trial"].append((tm["tune_s"] - loop["evals_s"]) / len(alphas))
            table = pq.read_table(out / "sweep.parquet").to_pylist()
            runs["in_trial"].append(statistics.mean(row["eval_s"] for row in table))
        med = statistics.median
        ds = data.ShardSet.open(ben)
        result = {
            "bench": "sweep_overhead",
            "machine": {
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "device": "cpu",
                "torch_threads": torch.get_num_threads(),
                "ray": ray.__version__,
            },
            "model": args.model,
            "image_size": models.load_clip(args.model, None).image_size,
            "alphas": len(alphas),
            "val_samples": {
                "patching": ds.count("val"),
                "supported": data.ShardSet.open(img).count("val"),
            },
            "train_samples": ds.count("train"),
            "ray_init_s": round(ray_init_s, 2),
            "baseline_s": round(med(runs["baseline"]), 2),
            "baseline_fine_tune_s": round(med(runs["fine_tune"]), 2),
            "plain_evals_s": round(med(runs["plain_evals"]), 2),
            "plain_eval_per_alpha_s": round(med(runs["plain_evals"]) / len(alphas), 3),
            "sweep_s": round(med(runs["sweep"]), 2),
            "sweep_fine_tune_s": round(med(runs["sweep_fine_tune"]), 2),
            "sweep_tune_s": round(med(runs["tune"]), 2),
            "mean_eval_in_trial_s": round(med(runs["in_trial"]), 3),
            "ratio_sweep_vs_baseline": round(med(runs["sweep"]) / med(runs["baseline"]), 3),
            "ratio_per_pair": [
                round(s / b, 3) for s, b in zip(runs["sweep"], runs["baseline"], strict=True)
            ],
            "tune_overhead_per_trial_s": round(med(runs["per_trial"]), 3),
            "runs": {k: [round(x, 3) for x in v] for k, v in runs.items()},
            "goals": {"ratio_sweep_vs_baseline": "<= 1.2", "tune_overhead_per_trial_s": "< 1"},
        }
        print(json.dumps(result, indent=1))
        ray.shutdown()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
