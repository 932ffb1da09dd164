"""Training throughput of the alignment job against a plain PyTorch loop, side by side.

On one generated BigEarthNet shard set, with the same teacher, student, batch size and loader:
  plain       a single-process loop: frozen CLIP image tower on RGB, student on 13 bands,
              MSE + 0.05 * BCE through the zero-shot head, AdamW (what one writes by hand)
  ray_train   `mtmg.align` as a Ray Train TorchTrainer job with 1 worker (skipped: --no-ray)
Samples/s are steady-state (first two steps excluded); runs alternate, medians are reported;
every timed run starts once the CPUs are idle (bench/common.py: wait_quiet).
Prints one JSON object.

    python bench/align_step.py                     # CPU: mtmg-small-vit teacher, small student
    python bench/align_step.py --teacher ViT-B-32 --student-args '{}' --student-size 224 \\
        --precision bf16 --device cuda --gpu-augment --no-ray   # GPU: ViT-B/32 + ViT-S/16
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import wait_quiet  # noqa: E402
from patch_step import make_shards  # noqa: E402

from mtmg.data import loader, transforms
from mtmg.engine.loop import ThroughputMeter  # noqa: E402
from mtmg.models import clip, heads, student
from mtmg.stages.align import driver as align  # noqa: E402

SMALL_STUDENT = '{"depth": 4, "embed_dim": 192, "num_heads": 3, "patch_size": 8}'


def plain_rate(ds: loader.ShardSet, args) -> float:
    """The loop a researcher would write by hand, timed like the job's ThroughputMeter."""
    device = torch.device(args.device)
    torch.manual_seed(0)
    tb = clip.load_clip(args.teacher, None)
    w = heads.build_zeroshot_weights(
        tb.model, tb.tokenizer, ds.prompt_names(), ds.manifest["templates"]
    )
    head = heads.ZeroShotHead.from_weights(w).to(device)
    teacher = tb.model.visual.to(device).eval().requires_grad_(False)
    spec = student.StudentSpec(
        input="ms",
        img_size=args.student_size,
        embed_dim=w.shape[1],
        timm_args=json.loads(args.student_args),
    )
    net = student.build_student(spec).to(device).train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4, weight_decay=0.01)
    dec = loader.Decoder(
        tuple(ds.manifest["bands"]),
        ds.manifest["modality"],
        "rgb+ms",
        loader.Targets.of(ds),
        tb.image_size,
        args.student_size,
        tb.mean,
        tb.std,
        transforms.Augment(),
        defer_augment=args.gpu_augment,
    )
    batches = loader.make_loader(
        ds, "train", dec, batch_size=args.batch_size, train=True, num_workers=args.loader_workers
    )
    amp = torch.bfloat16 if args.precision == "bf16" else None
    meter = ThroughputMeter(device)
    for batch in batches:
        batch = loader.device_batch(batch, dec, device)
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            with torch.no_grad():
                t = teacher(batch["rgb"])
            s = net(batch["ms"])
        s, t = s.float(), t.float()
        loss = torch.nn.functional.mse_loss(s, t) + 0.05 * (
            torch.nn.functional.binary_cross_entropy_with_logits(head(s), batch["target"])
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        meter.step(len(s))
    return meter.rate()


def ray_train_rate(ds: loader.ShardSet, args, work: Path) -> dict:
    cfg = align.AlignConfig(
        data=ds.root,
        out=str(work / "job"),
        model=args.teacher,
        pretrained=None,
        student_args=args.student_args,
        student_size=args.student_size,
        batch_size=args.batch_size,
        epochs=1,
        precision=args.precision,
        eval_every=0,
        eval_init=False,
        loader_workers=args.loader_workers,
        cpus_per_worker=float(os.cpu_count() or 1),
        cache_dir=str(work / "cache"),
        gpu=args.device == "cuda",
        gpu_augment=args.gpu_augment,
    )
    t0 = time.perf_counter()
    summary = align.run(cfg)
    return {
        "samples_per_s": summary["epochs"][0]["samples_per_s"],
        "job_wall_s": time.perf_counter() - t0,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--teacher", default="mtmg-small-vit", help="open_clip model (random init)")
    ap.add_argument("--student-args", default=SMALL_STUDENT, help="timm overrides of ViT-S/16")
    ap.add_argument("--student-size", type=int, default=64)
    ap.add_argument("--patches", type=int, default=1200)
    ap.add_argument("--size", type=int, default=120, help="generated patch size (px)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--loader-workers", type=int, default=2)
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no-ray", action="store_true", help="skip the Ray Train runs")
    ap.add_argument("--gpu-augment", action="store_true", help="augment batches on the device")
    ap.add_argument("--repeats", type=int, default=3, help="alternated runs; medians reported")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mtmg-bench-"))
    try:
        ds = make_shards(work, args.patches, args.size)
        result = {
            "bench": "align_step",
            "machine": {
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
                "torch_threads": torch.get_num_threads(),
            },
            "teacher": args.teacher,
            "student": "vit_small_patch16_224",
            "student_args": json.loads(args.student_args),
            "student_size": args.student_size,
            "batch_size": args.batch_size,
            "precision": args.precision,
            "train_samples": ds.count("train"),
            "gpu_augment": args.gpu_augment,
        }
        plain, job, wall, waited = [], [], [], []
        for r in range(args.repeats):  # alternated: this machine is noisy
            waited.append(wait_quiet())
            plain.append(plain_rate(ds, args))  # no Ray running
            if args.no_ray:
                continue
            import ray

            from mtmg.runtime.cluster import init_ray

            init_ray(num_cpus=os.cpu_count())
            waited.append(wait_quiet())  # Ray's start-up is over, as in any long job
            res = ray_train_rate(ds, args, work / f"run{r}")
            job.append(res["samples_per_s"])
            wall.append(res["job_wall_s"])
            ray.shutdown()
        med = statistics.median
        result["waited_for_idle_cpus_s"] = waited
        result["plain_loop_samples_per_s"] = round(med(plain), 1)
        if job:
            result.update(
                {
                    "ray_train_samples_per_s": round(med(job), 1),
                    "ray_train_job_wall_s": round(med(wall), 1),
                    "ratio_ray_train_vs_plain": round(med(job) / med(plain), 3),
                    "runs": {
                        "plain": [round(x, 1) for x in plain],
                        "ray_train": [round(x, 1) for x in job],
                    },
                }
            )
        result["goals"] = {"ray_train_vs_plain": ">= 0.9"}
        print(json.dumps(result, indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
