"""How sharding cost grows with the archive: time per patch and the driver's peak memory.

On generated BigEarthNet-S2 v1 trees (real layout) of each size in --patches, `data_prep/shard.py`
(shard format 2, one worker) runs in a fresh process that reports its own wall time and peak
resident memory (the driver: scan, plan, manifest, index, progress; the Ray workers are separate
processes), overall and when the plan is made. The plan (one item per patch) is the part that
grows with the archive; the index, results and progress are bounded (a shard's rows at a time).
At small sizes the overall peak is the index's fixed cost (Arrow's first use, ~50 MB), which
hides the plan's growth, so the full BigEarthNet v1 (590,326 patches) is projected as the
largest run's peak plus the plan's per-patch slope: an upper bound, as if nothing the plan
frees were reused. Prints one JSON object.

    python bench/shard_growth.py [--patches 1000 20000] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FULL_ARCHIVE = 590_326


def child(root: str, out: str) -> None:
    """Shard `root` into `out` in this process and print wall time and peak memory."""
    from mtmg.prep import ShardConfig, shard
    from mtmg.runtime import shard_job
    from mtmg.runtime.cluster import init_ray

    def maxrss() -> int:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    make_plan, planned = shard_job.make_plan, []

    def plan_and_mark(cfg: ShardConfig) -> tuple:
        plan = make_plan(cfg)
        planned.append(maxrss())
        return plan

    shard_job.make_plan = plan_and_mark
    init_ray(num_cpus=1)
    base = maxrss()
    t0 = time.perf_counter()
    cfg = ShardConfig("bigearthnet", root, out, workers=1, shard_size=1000, progress=False)
    m = shard(cfg)
    wall = time.perf_counter() - t0
    peak = maxrss()
    print(
        json.dumps(
            {
                "written": m["summary"]["written"],
                "wall_s": wall,
                "peak_rss_mb": peak / 1024,
                "rss_before_sharding_mb": base / 1024,
                "peak_rss_after_plan_mb": planned[0] / 1024,
                "manifest_bytes": (Path(out) / "manifest.json").stat().st_size,
            }
        )
    )


def run_size(work: Path, n: int) -> dict[str, float]:
    from mtmg import synth

    root, out = work / f"raw-{n}", work / f"shards-{n}"
    t0 = time.perf_counter()
    synth.make_bigearthnet(root, n_patches=n, s1=False, seed=1)
    generated = time.perf_counter() - t0
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run(
        [sys.executable, __file__, "--child", str(root), str(out)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    shutil.rmtree(root, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    return {**res, "generate_s": generated, "ms_per_patch": 1000 * res["wall_s"] / n}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--patches", type=int, nargs="+", default=[1000, 20000])
    ap.add_argument("--out", type=Path, default=None, help="work dir (default: a temp dir)")
    ap.add_argument("--child", nargs=2, metavar=("RAW", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return
    work = args.out or Path(tempfile.mkdtemp(prefix="mtmg-bench-"))
    runs = {n: run_size(work, n) for n in sorted(args.patches)}
    small, large = runs[min(runs)], runs[max(runs)]
    span = max(runs) - min(runs)
    slope_mb = (large["peak_rss_mb"] - small["peak_rss_mb"]) / span
    plan_mb = (large["peak_rss_after_plan_mb"] - small["peak_rss_after_plan_mb"]) / span
    manifest_slope = (large["manifest_bytes"] - small["manifest_bytes"]) / span
    result = {
        "bench": "shard_growth",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "runs": {str(n): {k: round(v, 3) for k, v in r.items()} for n, r in runs.items()},
        "ratio_ms_per_patch_large_vs_small": round(
            large["ms_per_patch"] / small["ms_per_patch"], 2
        ),
        "driver_peak_rss_kb_per_patch": round(slope_mb * 1024, 3),
        "driver_plan_rss_kb_per_patch": round(plan_mb * 1024, 3),
        "manifest_bytes_per_patch": round(manifest_slope, 3),
        "projected_full_archive": {
            "patches": FULL_ARCHIVE,
            "driver_peak_rss_mb": round(
                large["peak_rss_mb"] + max(plan_mb, slope_mb) * (FULL_ARCHIVE - max(runs))
            ),
            "hours_one_core": round(large["ms_per_patch"] * FULL_ARCHIVE / 3.6e6, 2),
        },
        "goals": {"ratio_ms_per_patch_large_vs_small": "<= 1.1", "driver memory": "bounded"},
    }
    print(json.dumps(result, indent=1))
    if args.out is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
