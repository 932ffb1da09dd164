"""Training throughput of the patching job against a plain PyTorch loop, side by side.

On one generated BigEarthNet shard set, with the same model, batch size and data loader:
  loader        the WebDataset pipeline alone (decode + RGB composite + augment + resize)
  plain         a single-process PyTorch loop: image tower + frozen zero-shot head, AdamW
  ray_train     `mtmg.patch` as a Ray Train TorchTrainer job with 1 worker (skipped: --no-ray)
  ray_data      `ray.data.read_webdataset` + the same decoding, for the loader choice
Samples/s are steady-state (first two steps excluded); every timed run starts once the CPUs
are idle (a fresh Ray's start-up is not the job's steady state). Prints one JSON object.

    python bench/patch_step.py                                   # CPU, mtmg-small-vit
    python bench/patch_step.py --model ViT-B-32 --precision bf16 --device cuda --no-ray
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
from common import cpu_busy_percent, wait_quiet

from mtmg import synth
from mtmg.data import loader, storage, transforms
from mtmg.data.raw import make_layout
from mtmg.models import clip, heads


def make_shards(work: Path, n: int, size: int) -> loader.ShardSet:
    """Generated BigEarthNet patches, sharded without Ray (the loader benchmark needs none), in
    shard format 1 (what the Ray Data path below decodes; bench/shard_format.py compares
    the formats)."""
    import dataclasses

    from mtmg.data.catalog import build_manifest, write_index
    from mtmg.data.shard_writer import plan_tasks, write_shard

    raw, out = work / "raw", work / "shards"
    synth.make_bigearthnet(raw, n_patches=n, s1=False, seed=1, size=size)
    layout = make_layout("bigearthnet", storage.location(str(raw)))
    inventory = layout.scan()
    layout = dataclasses.replace(layout, size=(size, size))
    tasks = plan_tasks(inventory.items, 64)
    res = [write_shard(layout, t, storage.location(str(out)), version=1) for t in tasks]
    write_index(storage.location(str(out)), res)
    cfg = {"dataset": "bigearthnet", "resample": "nearest", "format": 1}
    manifest = build_manifest(cfg, layout, inventory, res)
    storage.write_json_atomic(storage.location(str(out)).fs, str(out / "manifest.json"), manifest)
    return loader.ShardSet.open(str(out))


def decoder(ds: loader.ShardSet, bundle: clip.ClipBundle, defer: bool) -> loader.Decoder:
    return loader.Decoder(
        tuple(ds.manifest["bands"]),
        ds.manifest["modality"],
        "rgb",
        loader.Targets.of(ds),
        bundle.image_size,
        bundle.image_size,
        bundle.mean,
        bundle.std,
        transforms.Augment(),
        defer_augment=defer,
    )


def loader_rate(ds, dec, args) -> float:
    batches = loader.make_loader(
        ds, "train", dec, batch_size=args.batch_size, train=True, num_workers=args.loader_workers
    )
    n, t0 = 0, None
    for i, batch in enumerate(batches):
        if i == 1:
            t0 = time.perf_counter()
        elif i > 1:
            n += len(batch["__key__"])
    return n / (time.perf_counter() - t0)


class ImageClassifier(torch.nn.Module):
    """Image tower + frozen zero-shot head: what patching fine-tunes on one set."""

    def __init__(self, visual: torch.nn.Module, head: heads.ZeroShotHead) -> None:
        super().__init__()
        self.visual, self.head = visual, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.visual(x))


def plain_rate(ds, dec, bundle, args) -> float:
    """The loop a researcher would write by hand, timed like the job's ThroughputMeter."""
    from mtmg.engine.loop import ThroughputMeter

    device = torch.device(args.device)
    w = heads.build_zeroshot_weights(
        bundle.model, bundle.tokenizer, ds.prompt_names(), ds.manifest["templates"]
    )
    model = ImageClassifier(bundle.model.visual, heads.ZeroShotHead.from_weights(w)).to(device)
    opt = torch.optim.AdamW([p for p in model.visual.parameters()], lr=1e-5, weight_decay=0.5)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    amp = torch.bfloat16 if args.precision == "bf16" else None
    batches = loader.make_loader(
        ds, "train", dec, batch_size=args.batch_size, train=True, num_workers=args.loader_workers
    )
    meter = ThroughputMeter(device)
    model.train()
    for batch in batches:
        batch = loader.device_batch(batch, dec, device)
        x, y = batch["rgb"], batch["target"]
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            loss = loss_fn(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.visual.parameters(), 1.0)
        opt.step()
        meter.step(len(y))
    return meter.rate()


def ray_train_rate(ds, args, work: Path) -> dict:
    from mtmg.stages.patch import driver as patch

    cfg = patch.PatchConfig(
        data=ds.root,
        out=str(work / "job"),
        model=args.model,
        pretrained=None,
        batch_size=args.batch_size,
        epochs=1,
        alphas=(0.0,),
        precision=args.precision,
        loader_workers=args.loader_workers,
        cpus_per_worker=float(os.cpu_count() or 1),
        cache_dir=str(work / "cache"),
        gpu=args.device == "cuda",
        gpu_augment=args.gpu_augment,
    )
    t0 = time.perf_counter()
    summary = patch.run(cfg)
    return {
        "samples_per_s": summary["epochs"][0]["samples_per_s"],
        "job_wall_s": time.perf_counter() - t0,
    }


def ray_data_rate(ds, dec, args) -> float:
    """Decoding through Ray Data's read_webdataset (undecoded bytes -> the same Decoder)."""
    import ray

    paths = [p for p, _ in ds.shards("train")]
    rds = ray.data.read_webdataset(paths, decoder=None)

    def decode(row: dict) -> dict:
        sample = {"__key__": row["__key__"], "json": row["json"], "ms.npy": row["ms.npy"]}
        out = dec(sample)
        return {"rgb": out["rgb"].numpy(), "target": out["target"].numpy()}

    n, t0 = 0, None
    for i, batch in enumerate(rds.map(decode).iter_torch_batches(batch_size=args.batch_size)):
        if i == 1:
            t0 = time.perf_counter()
        elif i > 1:
            n += len(batch["rgb"])
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default="mtmg-small-vit")
    ap.add_argument("--patches", type=int, default=1500)
    ap.add_argument("--size", type=int, default=120, help="generated patch size (px)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--loader-workers", type=int, default=2)
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no-ray", action="store_true", help="skip the Ray Train and Ray Data runs")
    ap.add_argument("--gpu-augment", action="store_true", help="augment batches on the device")
    ap.add_argument("--repeats", type=int, default=3, help="alternated runs; medians reported")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mtmg-bench-"))
    try:
        ds = make_shards(work, args.patches, args.size)
        torch.manual_seed(0)
        bundle = clip.load_clip(args.model, None)
        dec = decoder(ds, bundle, defer=args.gpu_augment)
        result = {
            "bench": "patch_step",
            "machine": {
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
                "torch_threads": torch.get_num_threads(),
            },
            "model": args.model,
            "image_size": bundle.image_size,
            "batch_size": args.batch_size,
            "precision": args.precision,
            "train_samples": ds.count("train"),
            "gpu_augment": args.gpu_augment,
            "loader_samples_per_s": round(loader_rate(ds, dec, args), 1),
        }
        plain, plain_up, job, wall, waited = [], [], [], [], []
        for r in range(args.repeats):  # alternated, medians reported: this machine is noisy
            torch.manual_seed(0)
            waited.append(wait_quiet())
            plain.append(plain_rate(ds, dec, clip.load_clip(args.model, None), args))
            if args.no_ray:
                continue
            import ray

            from mtmg.runtime.cluster import init_ray

            init_ray(num_cpus=os.cpu_count())
            waited.append(wait_quiet())  # Ray's start-up is over, as in any long job
            if r == 0:  # what Ray's daemons take from the CPUs while nothing runs
                result["ray_idle_cpu_percent"] = cpu_busy_percent()
            res = ray_train_rate(ds, args, work / f"run{r}")
            job.append(res["samples_per_s"])
            wall.append(res["job_wall_s"])
            # the same plain loop with Ray's daemons running beside it, as the job had
            torch.manual_seed(0)
            waited.append(wait_quiet())
            plain_up.append(plain_rate(ds, dec, clip.load_clip(args.model, None), args))
            if r == args.repeats - 1:
                result["ray_data_samples_per_s"] = round(ray_data_rate(ds, dec, args), 1)
            ray.shutdown()
        med = statistics.median
        result["waited_for_idle_cpus_s"] = waited
        result["plain_loop_samples_per_s"] = round(med(plain), 1)
        result["loader_vs_plain_training"] = round(
            result["loader_samples_per_s"] / result["plain_loop_samples_per_s"], 2
        )
        if job:
            result.update(
                {
                    "plain_loop_with_ray_up_samples_per_s": round(med(plain_up), 1),
                    "ray_train_samples_per_s": round(med(job), 1),
                    "ray_train_job_wall_s": round(med(wall), 1),
                    "ratio_ray_train_vs_plain": round(med(job) / med(plain), 3),
                    "ratio_ray_train_vs_plain_with_ray_up": round(med(job) / med(plain_up), 3),
                    "ratio_ray_data_vs_webdataset_loader": round(
                        result["ray_data_samples_per_s"] / result["loader_samples_per_s"], 2
                    ),
                    "runs": {
                        "plain": [round(x, 1) for x in plain],
                        "plain_with_ray_up": [round(x, 1) for x in plain_up],
                        "ray_train": [round(x, 1) for x in job],
                    },
                }
            )
        result["goals"] = {"ray_train_vs_plain": ">= 0.9", "loader_vs_plain_training": "> 1"}
        print(json.dumps(result, indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
