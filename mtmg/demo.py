"""The mtmg demo on generated data, on an embedded local Ray: `python -m mtmg.demo --out DIR`.

Steps (each skipped when its outputs exist; `--fresh` redoes all):
  1. generate raw datasets in their real on-disk layouts (BigEarthNet-S2 v1 with S1 pairs,
     EuroSAT-MS) with mtmg's generator;
  2. shard them with the `data_prep/shard.py` command;
  3. print what the shard sets hold.
Later stages (patching, alpha sweep, alignment, report) build on these shards.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

from mtmg import prep, shards, synth


def _step(name: str, done: Path, fresh: bool, fn: Callable[[], object]) -> None:
    if done.exists() and not fresh:
        print(f"[skip] {name}: {done} exists")
        return
    t0 = time.perf_counter()
    fn()
    print(f"[done] {name} in {time.perf_counter() - t0:.1f}s -> {done}")


def _shard(dataset: str, root: Path, out: Path, *extra: str) -> None:
    argv = [dataset, "--root", str(root), "--out", str(out), "--shard-size", "64", *extra]
    if prep.main(argv) != 0:
        raise SystemExit(f"sharding {dataset} failed")


def run(out: Path, *, patches: int = 240, fresh: bool = False) -> dict[str, Path]:
    """Run the demo into `out`; returns the shard directories it made."""
    raw, shard_dir = out / "raw", out / "shards"
    if fresh and out.exists():
        shutil.rmtree(out)
    ben_raw, ems_raw = raw / "bigearthnet", raw / "eurosat-ms"
    _step("generate BigEarthNet-S2 v1 + S1", ben_raw / "train.csv", fresh,
          lambda: synth.make_bigearthnet(ben_raw, n_patches=patches, s1=True))  # fmt: skip
    _step("generate EuroSAT-MS", ems_raw / "ds", fresh,
          lambda: synth.make_eurosat_ms(ems_raw, n_per_class=max(4, patches // 20)))  # fmt: skip
    ben, ems = shard_dir / "bigearthnet", shard_dir / "eurosat-ms"
    _step("shard BigEarthNet", ben / "manifest.json", fresh,
          lambda: _shard("bigearthnet", ben_raw, ben, "--s1", str(ben_raw)))  # fmt: skip
    _step("shard EuroSAT-MS", ems / "manifest.json", fresh,
          lambda: _shard("eurosat-ms", ems_raw, ems))  # fmt: skip
    for name, d in (("BigEarthNet", ben), ("EuroSAT-MS", ems)):
        m = shards.load_manifest(d)
        print(f"\n{name}: {m['modality']}, {len(m['bands'])} bands, {m['native_size']} px, "
              f"{m['task']} over {list(m['nomenclatures'])}")  # fmt: skip
        print(shards.summary_table(m))
    return {"bigearthnet": ben, "eurosat-ms": ems}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--out", type=Path, default=Path("demo-out"), help="where everything goes")
    ap.add_argument("--patches", type=int, default=240, help="BigEarthNet patches to generate")
    ap.add_argument("--fresh", action="store_true", help="redo every step")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    run(args.out.resolve(), patches=args.patches, fresh=args.fresh)
    print(f"\ndemo finished in {time.perf_counter() - t0:.1f}s; outputs in {args.out.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
