"""Shard format 2 against format 1, side by side in one run: bytes and loader speed per core.

  bytes        shard bytes per patch (tars, S2 only) against the source GeoTIFF bytes of the
               12 bands, on the real v1 patches in tests/fixtures/real and on a generated tree
  loader       samples/s of one loader worker (one core, one torch thread): shards read and
               checked, decoded by the loader's Decoder as the stages use it, batched by 64:
                 rgb_native    RGB composite at the native 120 px, no augmentation
                 rgb_deferred  RGB for the accelerator path: native size in half precision
                               plus the drawn augmentation (resize to 224 px and augmentation
                               happen on the GPU, `device_batch`)
                 ms_native     the 13-band student tensor at 120 px
                 ms_deferred   MS for the accelerator path: format 1 the 13 bands in half
                               precision, format 2 its native grids (upsampled on the GPU)
Prints one JSON object; `ratio_*` = format 2 / format 1.

    python bench/shard_format.py [--patches 600] [--repeat 3]
"""

from __future__ import annotations

import argparse
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


def loader_rate(out: Path, view: str, defer: bool, repeat: int) -> float:
    """Best samples/s of `repeat` passes over the train split through a loader worker's stages
    (shards read and checked, decoded, batched by 64) in this process."""
    ds = ShardSet.open(str(out))
    aug = transforms.Augment() if defer else None
    dec = Decoder(
        tuple(ds.manifest["bands"]),
        ds.manifest["modality"],
        view,
        Targets.of(ds),
        224 if defer else 120,
        120,
        augment=aug,
        defer_augment=defer,
    )
    urls = [u for u, _ in ds.shards("train")]
    best = 0.0
    for _ in range(repeat):
        pipe = wds.DataPipeline(
            wds.SimpleShardList(urls),
            verify.ShardReader(ds.root, "train", ds.manifest, skip=dec.unread),
            wds.map(dec),
            wds.batched(64, collation_fn=collate, partial=True),
        )
        t0, n = time.perf_counter(), 0
        for batch in pipe:
            n += len(batch["__key__"])
        best = max(best, n / (time.perf_counter() - t0))
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--patches", type=int, default=600)
    ap.add_argument("--repeat", type=int, default=3)
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
    loader = {}
    for name, view, defer in (
        ("rgb_native", "rgb", False),
        ("rgb_deferred", "rgb", True),
        ("ms_native", "ms", False),
        ("ms_deferred", "ms", True),
    ):
        rates = {v: 0.0 for v in (1, 2)}
        for _ in range(args.repeat):  # alternating, so both formats see the same machine load
            for v in (1, 2):
                rates[v] = max(rates[v], loader_rate(work / f"gen-v{v}", view, defer, 1))
        loader[name] = {
            "format1_samples_per_s": round(rates[1], 1),
            "format2_samples_per_s": round(rates[2], 1),
            "ratio_format2_vs_1": round(rates[2] / rates[1], 2),
        }
    result["loader_per_core"] = loader
    result["goals"] = {
        "format2_vs_tif": "<= 0.75",
        "rgb_native ratio": ">= 1.5",
        "ms_native ratio": ">= 1.0",
        "rgb_deferred format2 samples/s per core": ">= 2000",
    }
    print(json.dumps(result, indent=1))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
