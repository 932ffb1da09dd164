"""Shard format 2 against format 1, side by side in one run: bytes and loader speed per core.

  bytes        shard bytes per patch (tars, S2 only) against the source GeoTIFF bytes of the
               12 bands, on the real v1 patches in tests/fixtures/real and on a generated tree
  loader       samples/s of one loader worker (one core, one torch thread): shards read and
               checked, decoded by the loader's Decoder as the stages use it, batched by 64:
                 rgb_model_ready  the RGB composite as uint8 at the native 120 px, what leaves
                                  the worker on the GPU path (resize and normalising there)
                 rgb_normalised   RGB CLIP-normalised in float at 120 px (the CPU path)
                 rgb_deferred     training on the GPU path for 224 px: uint8 RGB plus the
                                  drawn augmentation (crop, resize to 224 px and colour happen
                                  on the GPU, `device_batch`)
                 ms_native        the 13-band student tensor (float32) at 120 px
                 ms_deferred      MS for the GPU path: format 1 the 13 bands in half
                                  precision, format 2 its native grids (upsampled on the GPU)
               samples/s count this process's CPU time (decoding is CPU-bound once the shards
               are in the page cache); bytes read per sample are what a node would pull from
               shared storage for that view (`rchar` of /proc/self/io); with --cold the
               goal cases again in wall time with the page cache emptied before each pass
Prints one JSON object; `ratio_*` = format 2 / format 1.

    python bench/shard_format.py [--patches 600] [--repeat 5] [--cold]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import torch
import webdataset as wds

from mtmg import synth
from mtmg.data import transforms, verify
from mtmg.data.loader import Decoder, ShardSet, Targets, collate
from mtmg.prep import ShardConfig, shard
from mtmg.runtime.cluster import init_ray

REAL_V1 = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "real" / "bigearthnet_v1"


def tif_bytes(s2_dir: Path, keys: list[str]) -> int:
    return sum(p.stat().st_size for k in keys for p in (s2_dir / k).glob("*_B*.tif"))


def shard_bytes(out: Path) -> tuple[int, int]:
    """(tar bytes, samples written) of a finished set."""
    m = json.loads((out / "manifest.json").read_text())
    return sum(p.stat().st_size for p in out.rglob("*.tar")), m["summary"]["written"]


def bytes_per_patch(root: Path, work: Path, name: str) -> dict[str, float]:
    """Bytes per written patch of both formats against the GeoTIFFs they came from."""
    res: dict[str, float] = {}
    for v in (1, 2):
        out = work / f"{name}-v{v}"
        shutil.rmtree(out, ignore_errors=True)
        shard(ShardConfig("bigearthnet", str(root), str(out), format=v, workers=1, progress=False))
        total, n = shard_bytes(out)
        keys = [json.loads(line)["key"] for line in _index_keys(out)]
        res[f"format{v}_bytes_per_patch"] = round(total / n)
        res["source_tif_bytes_per_patch"] = round(tif_bytes(_s2(root), keys) / n)
    for v in (1, 2):
        res[f"ratio_format{v}_vs_tif"] = round(
            res[f"format{v}_bytes_per_patch"] / res["source_tif_bytes_per_patch"], 3
        )
    return res


def _s2(root: Path) -> Path:
    return root / "BigEarthNet-v1.0"


def _index_keys(out: Path) -> list[str]:
    import pyarrow.parquet as pq

    return [json.dumps({"key": k}) for k in pq.read_table(out / "index.parquet")["key"].to_pylist()]


def _rchar() -> int:
    """Bytes this process has asked the kernel to read so far (page cache included)."""
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("rchar:"))


def drop_page_cache() -> None:
    """Empty the kernel's page cache, so the next pass reads the shards from the disk."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("1")
    except OSError as e:
        raise SystemExit(f"--cold needs root to write /proc/sys/vm/drop_caches ({e})") from e


def loader_rate(
    out: Path, view: str, defer: bool, augment: bool, cold: bool = False
) -> tuple[float, float]:
    """Samples/s of one pass over the train split through a loader worker's stages (shards
    read and checked, decoded, batched by 64), and the bytes it read per sample: what a node
    pulls from shared storage. Warm: CPU time of this process, the shards page-cached; cold:
    wall time, the page cache emptied first (what an epoch larger than memory sees)."""
    if cold:
        drop_page_cache()
    clock = time.perf_counter if cold else time.process_time
    ds = ShardSet.open(str(out))
    aug = transforms.Augment() if augment else None
    dec = Decoder.of(ds, view, Targets.of(ds), 224 if augment else 120, 120, augment=aug)
    dec = dataclasses.replace(dec, defer_augment=defer)
    urls = [u for u, _ in ds.shards("train")]
    pipe = wds.DataPipeline(
        wds.SimpleShardList(urls),
        verify.ShardReader(ds.root, "train", ds.manifest, skip=dec.unread),
        wds.map(dec),
        wds.batched(64, collation_fn=collate, partial=True),
    )
    t0, r0, n = clock(), _rchar(), 0
    for batch in pipe:
        n += len(batch["__key__"])
    return n / (clock() - t0), (_rchar() - r0) / n


CASES = {  # name: view, deferred to the device, augmented
    "rgb_model_ready": ("rgb", True, False),
    "rgb_normalised": ("rgb", False, False),
    "rgb_deferred": ("rgb", True, True),
    "ms_native": ("ms", False, False),
    "ms_deferred": ("ms", True, True),
}


def compare(work: Path, cases: dict, repeat: int, cold: bool = False) -> dict[str, dict]:
    """Both formats through every case, alternated `repeat` times; the best pass of each."""
    loader = {}
    for name, case in cases.items():
        rates, read = {v: 0.0 for v in (1, 2)}, {}
        for _ in range(repeat):  # alternating, so both formats see the same machine load
            for v in (1, 2):
                rate, read[v] = loader_rate(work / f"gen-v{v}", *case, cold=cold)
                rates[v] = max(rates[v], rate)
        loader[name] = {
            "format1_samples_per_s": round(rates[1], 1),
            "format2_samples_per_s": round(rates[2], 1),
            "ratio_format2_vs_1": round(rates[2] / rates[1], 2),
            "format1_bytes_read_per_sample": round(read[1]),
            "format2_bytes_read_per_sample": round(read[2]),
            "ratio_bytes_read_format2_vs_1": round(read[2] / read[1], 3),
        }
    return loader


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--patches", type=int, default=600)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument(
        "--cold",
        action="store_true",
        help="also time the RGB and MS goal cases from the disk (page cache emptied before "
        "every pass; needs root)",
    )
    args = ap.parse_args()
    torch.set_num_threads(1)  # one core, as in a loader worker
    work = Path(tempfile.mkdtemp(prefix="mtmg-bench-format-"))
    init_ray(num_cpus=1)
    result: dict = {
        "bench": "shard_format",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "bytes_real_v1": bytes_per_patch(REAL_V1, work, "real"),
    }
    root = work / "raw"
    synth.make_bigearthnet(
        root, n_patches=args.patches, s1=False, seed=1, fractions=(1.0, 0.0, 0.0)
    )
    result["bytes_generated"] = bytes_per_patch(root, work, "gen")
    result["loader_per_core"] = compare(work, CASES, args.repeat)
    if args.cold:
        cold = {k: CASES[k] for k in ("rgb_model_ready", "ms_native")}
        result["loader_per_core_cold"] = compare(work, cold, args.repeat, cold=True)
    result["goals"] = {
        "format2_vs_tif": "<= 0.75",
        "rgb_model_ready ratio": ">= 1.5",
        "ms_native ratio": ">= 1.0",
        "rgb_deferred format2 samples/s per core": ">= 2000",
    }
    print(json.dumps(result, indent=1))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
