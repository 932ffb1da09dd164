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
               goal cases again in wall time with the page cache emptied before each pass;
               `format2_decoding_free` is format 2 in the goal cases with decompressing and
               unshuffling taken out (`free_decoding`): the most any codec could give here
  bandwidth    with --bandwidth MBPS the goal cases once more, cold and in wall time, with this
               process's reads from the disk limited to MBPS megabytes/s (cgroup-v1 blkio
               throttle; 78 = a 10 Gb/s link shared by 16 cores). This VM's disk gives a core
               ~1.65 GB/s, so --cold hardly shows what shared storage shows: there the bytes a
               view reads are what costs, and a loader gets about MBPS / bytes-per-sample
               samples/s. `device_bytes_read_per_sample` is what the cgroup read from the disk
               (readahead included), next to the bytes the reader asked for (`rchar`). The
               throttle lets ~0.1 s of bytes through ahead of time: passes should last seconds
               (--patches 3000 at 78 MB/s; at 300 format 2 reads ~30% above the limit)
Prints one JSON object; `ratio_*` = format 2 / format 1.

    python bench/shard_format.py [--patches 600] [--repeat 5] [--cold] [--bandwidth 78]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import webdataset as wds

from mtmg import synth
from mtmg.data import grids, transforms, verify
from mtmg.data.loader import Decoder, ShardSet, Targets, collate
from mtmg.prep import ShardConfig, shard
from mtmg.runtime.cluster import init_ray

REAL_V1 = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "real" / "bigearthnet_v1"
BLKIO = Path("/sys/fs/cgroup/blkio")


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
        raise SystemExit(
            f"--cold and --bandwidth need root to write /proc/sys/vm/drop_caches ({e})"
        ) from e


def throttle_disk(path: Path) -> str:
    """MAJOR:MINOR of the whole disk holding `path` (a partition's parent disk), after checking
    that this process may throttle it with the cgroup-v1 blkio controller."""
    if os.geteuid() != 0 or not (BLKIO / "blkio.throttle.read_bps_device").exists():
        raise SystemExit(
            "--bandwidth needs root and the cgroup-v1 blkio controller (/sys/fs/cgroup/blkio)"
        )
    dev = os.stat(path).st_dev
    node = Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}")
    if not node.exists():
        raise SystemExit(f"--bandwidth needs {path} on a block device (not tmpfs or overlay)")
    if (node / "partition").exists():
        node = node.resolve().parent
    return (node / "dev").read_text().strip()


def _blkio_home() -> Path:
    """The blkio cgroup this process is in now."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, ctrls, path = line.split(":", 2)
        if "blkio" in ctrls.split(","):
            return BLKIO / path.lstrip("/")
    return BLKIO


@contextlib.contextmanager
def throttled(disk: str, mb_per_s: float) -> Iterator[Callable[[], int]]:
    """This process in a fresh blkio cgroup whose reads from `disk` are limited to `mb_per_s`
    megabytes/s; yields a function giving the bytes the cgroup has read from the disk so far
    (readahead included). Moved back and the cgroup removed on the way out, on error too.
    Only reads that reach the disk are throttled: empty the page cache before each pass."""
    home, cg = _blkio_home(), BLKIO / f"mtmg-bench-{os.getpid()}"
    cg.mkdir()
    try:
        (cg / "blkio.throttle.read_bps_device").write_text(f"{disk} {round(mb_per_s * 1e6)}\n")
        (cg / "cgroup.procs").write_text(str(os.getpid()))
        yield lambda: _device_read(cg, disk)
    finally:
        try:
            (home / "cgroup.procs").write_text(str(os.getpid()))
        finally:
            cg.rmdir()


def _device_read(cg: Path, disk: str) -> int:
    for line in (cg / "blkio.throttle.io_service_bytes").read_text().splitlines():
        if line.startswith(f"{disk} Read "):
            return int(line.split()[2])
    return 0


def loader_rate(
    out: Path,
    view: str,
    defer: bool,
    augment: bool,
    cold: bool = False,
    device: Callable[[], int] | None = None,
) -> tuple[float, float, float | None]:
    """Samples/s of one pass over the train split through a loader worker's stages (shards
    read and checked, decoded, batched by 64), and the bytes it read per sample: what a node
    pulls from shared storage. Warm: CPU time of this process, the shards page-cached; cold:
    wall time, the page cache emptied first (what an epoch larger than memory sees). With
    `device` (a counter of bytes read from the disk, see `throttled`) also those per sample."""
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
    d0 = device() if device else 0
    t0, r0, n = clock(), _rchar(), 0
    for batch in pipe:
        n += len(batch["__key__"])
    rate, read = n / (clock() - t0), (_rchar() - r0) / n
    return rate, read, (device() - d0) / n if device else None


@contextlib.contextmanager
def free_decoding() -> Iterator[None]:
    """Format 2 with a codec that costs nothing: every band group decoded once per header
    (same bands, grid and shape), later members answered from that. What is left is format
    2's floor on this machine, everything but decompressing and unshuffling."""
    real, seen = grids.decode_group, {}

    def lookup(data: bytes, head: grids.Head | None = None) -> grids.Group:
        key = data[: grids.HEADER.size + grids.NAME_BYTES * data[5]]
        if key not in seen:
            seen[key] = real(data, head)
        return seen[key]

    grids.decode_group = lookup
    try:
        yield
    finally:
        grids.decode_group = real


def floor(work: Path, cases: dict, repeat: int) -> dict[str, float]:
    """Samples/s of format 2 per goal case with decoding free (`free_decoding`), best pass."""
    with free_decoding():
        return {
            name: round(max(loader_rate(work / "gen-v2", *case)[0] for _ in range(repeat)), 1)
            for name, case in cases.items()
        }


CASES = {  # name: view, deferred to the device, augmented
    "rgb_model_ready": ("rgb", True, False),
    "rgb_normalised": ("rgb", False, False),
    "rgb_deferred": ("rgb", True, True),
    "ms_native": ("ms", False, False),
    "ms_deferred": ("ms", True, True),
}


def compare(
    work: Path,
    cases: dict,
    repeat: int,
    cold: bool = False,
    device: Callable[[], int] | None = None,
) -> dict[str, dict]:
    """Both formats through every case, alternated `repeat` times; the best pass of each."""
    loader = {}
    for name, case in cases.items():
        rates, read, disk = {v: 0.0 for v in (1, 2)}, {}, {}
        for _ in range(repeat):  # alternating, so both formats see the same machine load
            for v in (1, 2):
                rate, read[v], disk[v] = loader_rate(work / f"gen-v{v}", *case, cold, device)
                rates[v] = max(rates[v], rate)
        loader[name] = {
            "format1_samples_per_s": round(rates[1], 1),
            "format2_samples_per_s": round(rates[2], 1),
            "ratio_format2_vs_1": round(rates[2] / rates[1], 2),
            "format1_bytes_read_per_sample": round(read[1]),
            "format2_bytes_read_per_sample": round(read[2]),
            "ratio_bytes_read_format2_vs_1": round(read[2] / read[1], 3),
        }
        if device:
            for v in (1, 2):
                loader[name][f"format{v}_device_bytes_read_per_sample"] = round(disk[v])
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
    ap.add_argument(
        "--bandwidth",
        type=float,
        metavar="MBPS",
        help="also time the RGB and MS goal cases cold with this process's disk reads limited "
        "to MBPS megabytes/s per core\n(78 = 10 Gb/s shared by 16 cores; cgroup-v1 blkio "
        "throttle, needs root)",
    )
    args = ap.parse_args()
    disk = throttle_disk(Path(tempfile.gettempdir())) if args.bandwidth else None
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
    goal = {k: CASES[k] for k in ("rgb_model_ready", "ms_native")}
    for name, rate in floor(work, goal, args.repeat).items():
        case = result["loader_per_core"][name]
        case["format2_decoding_free_samples_per_s"] = rate
        case["ratio_format2_decoding_free_vs_1"] = round(rate / case["format1_samples_per_s"], 2)
    if args.cold:
        result["loader_per_core_cold"] = compare(work, goal, args.repeat, cold=True)
    if disk:
        with throttled(disk, args.bandwidth) as device:
            limited = compare(work, goal, args.repeat, cold=True, device=device)
        result["loader_per_core_bandwidth"] = {"bandwidth_mb_per_s": args.bandwidth, **limited}
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
