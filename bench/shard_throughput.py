"""Throughput of `data_prep/shard.py` against a per-sample raw GeoTIFF reader, side by side.

On one generated BigEarthNet-S2 v1 tree (real layout: 12 band GeoTIFFs + JSON per patch):
  raw_reader   the reader users have today (torchgeo's BigEarthNet): glob the band files, sort
               them, 12 rasterio reads with bilinear resampling to 120 px, stack, read the labels
  shard        mtmg's sharding job (Ray tasks), 1 and 2 workers: read + write WebDataset tars,
               shard format 2 (the default) and format 1 side by side
  read_back    decoding every sample back from the shards (np arrays + labels)
Prints one JSON object; `ratio_*` fields compare against raw_reader (per core), or format 2
against format 1.

    python bench/shard_throughput.py [--patches 400] [--workers 2] [--out DIR]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import Resampling

from mtmg import synth
from mtmg.data import shards
from mtmg.prep import ShardConfig, shard
from mtmg.runtime.cluster import init_ray


def _sort_sentinel2_bands(path: str) -> str:
    """torchgeo's `sort_sentinel2_bands`: the band suffix, with B8A sorted as B08A."""
    band = os.path.splitext(path)[0].rsplit("_", 1)[-1]
    return "B08A" if band == "B8A" else band


def raw_reader(s2_dir: Path, keys: list[str]) -> float:
    """Samples/s of torchgeo's per-sample BigEarthNet S2 loading in this process."""
    t0 = time.perf_counter()
    for key in keys:
        paths = sorted(glob.glob(str(s2_dir / key / "*.tif")), key=_sort_sentinel2_bands)
        images = []
        for path in paths:
            with rasterio.open(path) as ds:
                images.append(
                    ds.read(
                        1, out_shape=(120, 120), out_dtype="int32", resampling=Resampling.bilinear
                    )
                )
        image = np.stack(images).astype(np.float32)
        with open(s2_dir / key / f"{key}_labels_metadata.json") as f:
            labels = json.load(f)["labels"]
        assert image.shape == (12, 120, 120) and labels
    return len(keys) / (time.perf_counter() - t0)


def shard_rate(root: Path, out: Path, workers: int, version: int = 2) -> dict[str, float]:
    t0 = time.perf_counter()
    m = shard(
        ShardConfig(
            "bigearthnet",
            str(root),
            str(out),
            workers=workers,
            shard_size=100,
            format=version,
            progress=False,
        )
    )
    wall = time.perf_counter() - t0
    n = m["summary"]["written"]
    # time inside the shard tasks (read + write), from the writer's resume records
    task_s = sum(
        json.loads(p.read_text())["seconds"] for p in (out / ".mtmg" / "shards").glob("*.json")
    )
    return {
        "patches": n,
        "wall_s": wall,
        "patches_per_s": n / wall,
        "patches_per_s_per_core": n / wall / workers,
        "task_seconds": task_s,
        "patches_per_task_second": n / task_s,
    }


def read_back(out: Path) -> float:
    t0, n = time.perf_counter(), 0
    for split in ("train", "val", "test"):
        for s in shards.iter_samples(out, split):
            assert s["ms.npy"].shape == (12, 120, 120) and s["json"]["labels"]
            n += 1
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--patches", type=int, default=1500)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None, help="work dir (default: a temp dir)")
    args = ap.parse_args()
    work = args.out or Path(tempfile.mkdtemp(prefix="mtmg-bench-"))
    root = work / "raw"
    if root.exists():
        shutil.rmtree(root)
    synth.make_bigearthnet(root, n_patches=args.patches, s1=False, seed=1)
    s2_dir = root / "BigEarthNet-v1.0"
    keys = sorted(os.listdir(s2_dir))
    init_ray(num_cpus=args.workers)

    raw_reader(s2_dir, keys[:20])  # warm the page cache and GDAL
    raw = raw_reader(s2_dir, keys)
    # Ray's worker processes import torch (through webdataset) once, ~1-2 s: a cost of the
    # first run in a session, measured here and kept out of the per-core comparison
    t0 = time.perf_counter()
    shard(
        ShardConfig(
            "bigearthnet",
            str(root),
            str(work / "warm"),
            workers=args.workers,
            shard_size=1,
            limit=args.workers,
            progress=False,
        )
    )
    cold_start = time.perf_counter() - t0
    runs: dict[tuple[int, int], dict[str, float]] = {}
    for w in sorted({1, args.workers}):
        for v in (2, 1):  # alternating, so both formats see the same machine load
            out = work / f"shards-v{v}-{w}"
            shutil.rmtree(out, ignore_errors=True)
            runs[v, w] = shard_rate(root, out, w, v)
    back = {v: read_back(work / f"shards-v{v}-1") for v in (1, 2)}
    result = {
        "bench": "shard_throughput",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "patches": len(keys),
        "raw_reader_patches_per_s": round(raw, 1),
        "first_run_start_up_s": round(cold_start, 2),
    }
    for v in (2, 1):
        one, many = runs[v, 1], runs[v, args.workers]
        result[f"format{v}"] = {
            "shard_1_worker": {k: round(x, 2) for k, x in one.items()},
            f"shard_{args.workers}_workers": {k: round(x, 2) for k, x in many.items()},
            "read_back_patches_per_s": round(back[v], 1),
            "ratio_shard_per_core_vs_raw": round(one["patches_per_s_per_core"] / raw, 2),
            "ratio_shard_in_task_vs_raw": round(one["patches_per_task_second"] / raw, 2),
            "ratio_read_back_vs_raw": round(back[v] / raw, 1),
            f"scaling_1_to_{args.workers}_workers": round(
                many["patches_per_s"] / one["patches_per_s"], 2
            ),
        }
    result["ratio_format2_vs_1_shard_per_core"] = round(
        runs[2, 1]["patches_per_s"] / runs[1, 1]["patches_per_s"], 2
    )
    result["goals"] = {
        "shard_per_core_vs_raw": ">= 3",
        "read_back_vs_raw": ">= 20",
        "format2_vs_1_shard_per_core": ">= 1.0",
        f"scaling_1_to_{args.workers}_workers": ">= 1.8",
    }
    print(json.dumps(result, indent=1))
    if args.out is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
