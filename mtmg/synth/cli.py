"""`python -m mtmg.synth KIND --out DIR`: write one toy dataset and print a summary."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mtmg import logs
from mtmg.synth.bigearthnet import make_bigearthnet
from mtmg.synth.bigearthnet_v2 import make_bigearthnet_v2
from mtmg.synth.folders import make_eurosat_ms, make_eurosat_rgb, make_imagefolder, make_resisc45
from mtmg.synth.sen12ms import make_sen12ms

# KIND -> the layout it writes, for --help
_KINDS = {
    "bigearthnet": "BigEarthNet v1.0 (--n patches, default 60; size multiple of 6):\n"
    "  BigEarthNet-v1.0/<patch>/<patch>_<B01..B12,B8A>.tif + <patch>_labels_metadata.json,\n"
    "  BigEarthNet-S1-v1.0/<s1patch>/<s1patch>_{VV,VH}.tif + JSON, train.csv/val.csv/test.csv",
    "bigearthnet-v2": "BigEarthNet v2.0 / reBEN (--n patches, default 30):\n"
    "  BigEarthNet-S2/<product>/<patch_id>/<patch_id>_<band>.tif (nodata 0),\n"
    "  BigEarthNet-S1/<S1 product>/<s1_name>/<s1_name>_{VV,VH}.tif, metadata.parquet",
    "eurosat-ms": "EuroSAT MS (--n per class, default 10):\n"
    "  ds/images/remote_sensing/otherDatasets/sentinel_2/tif/<Class>/<Class>_<n>.tif,\n"
    "  13-band uint16 GeoTIFF, bands B01..B12 then B8A last",
    "eurosat": "EuroSAT RGB (--n per class, default 10): 2750/<Class>/<Class>_<n>.jpg",
    "resisc45": "NWPU-RESISC45 (--n per class, default 5; first 10 classes):\n"
    "  NWPU-RESISC45/<class>/<class>_<NNN>.jpg",
    "sen12ms": "SEN12MS (--n scenes, default 4; 5 patches each):\n"
    "  ROIs1158_spring/{s1,s2,lc}_<scene>/ROIs1158_spring_{s1,s2,lc}_<scene>_p<k>.tif,\n"
    "  train_list.txt/test_list.txt (s2 basenames, split by scene)",
    "imagefolder": "coloured-shape photos standing in for ImageNet (--n per class, default 10):\n"
    "  <class>/<class_with_underscores>_<n>.png",
}


# KIND -> (generator, the generator's parameter that --n sets)
_MAKERS: dict[str, tuple[Callable[..., dict[str, Any]], str]] = {
    "bigearthnet": (make_bigearthnet, "n_patches"),
    "bigearthnet-v2": (make_bigearthnet_v2, "n_patches"),
    "eurosat-ms": (make_eurosat_ms, "n_per_class"),
    "eurosat": (make_eurosat_rgb, "n_per_class"),
    "resisc45": (make_resisc45, "n_per_class"),
    "sen12ms": (make_sen12ms, "n_scenes"),
    "imagefolder": (make_imagefolder, "n_per_class"),
}


def _build_parser() -> argparse.ArgumentParser:
    kinds = "\n".join(f"{k}: {v}" for k, v in _KINDS.items())
    parser = argparse.ArgumentParser(
        prog="python -m mtmg.synth",
        description="Write a small synthetic dataset in the real on-disk layout of KIND.",
        epilog=f"kinds:\n{kinds}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("kind", metavar="KIND", choices=sorted(_KINDS), help="dataset kind (below)")
    parser.add_argument("--out", required=True, type=Path, help="output root directory")
    parser.add_argument("--n", type=int, default=None, help="patches / per-class count / scenes")
    parser.add_argument("--size", type=int, default=None, help="image side in pixels (10 m)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--no-s1", action="store_true", help="BigEarthNet: skip Sentinel-1")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: generate one dataset and print a summary."""
    args = _build_parser().parse_args(argv)
    logs.setup(0 if args.verbose else -1)
    kw: dict[str, Any] = {"seed": args.seed}
    if args.size is not None:
        kw["size"] = args.size
    if args.kind in ("bigearthnet", "bigearthnet-v2"):
        kw["s1"] = not args.no_s1
    func, n_name = _MAKERS[args.kind]
    if args.n is not None:
        kw[n_name] = args.n
    try:
        info = func(args.out, **kw)
    except ValueError as err:
        print(f"error: {err}")
        return 2
    splits = ", ".join(f"{s}={len(k)}" for s, k in info["splits"].items()) or "none"
    print(
        f"{info['kind']}: {len(info['labels'])} items, {info['files']} files under {info['root']}"
    )
    print(f"classes: {len(info['classes'])}; splits: {splits}")
    return 0
