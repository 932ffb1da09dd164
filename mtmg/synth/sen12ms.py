"""SEN12MS: one season folder of s1/s2/lc GeoTIFF triplets plus train/test split lists."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from rasterio.crs import CRS

from mtmg.data import labels as lbl
from mtmg.synth.common import assign_splits, geo, result, seeded, write_lines, write_tif
from mtmg.synth.render import label_map, render_optical, render_sar, to_uint16
from mtmg.synth.signatures import sar_signature, spectral_signature

_SEASON = "ROIs1158_spring"
# IGBP code (1..17) -> plausible LCCS land cover / land use / surface hydrology (lc bands 2-4).
# fmt: off
_IGBP_TO_LCCS = np.array(
    [
        [0, 0, 0],
        [11, 10, 10], [12, 10, 10], [13, 10, 10], [14, 10, 10], [15, 10, 10],
        [41, 40, 40], [43, 40, 40], [21, 20, 20], [22, 20, 20], [31, 30, 30],
        [31, 30, 50], [31, 36, 30], [32, 9, 30], [31, 35, 30], [2, 2, 2], [1, 1, 1], [3, 3, 3],
    ],
    dtype=np.uint16,
)
# fmt: on


def _patch(seed: int, scene: int, patch: int, codes: np.ndarray, size: int) -> dict[str, Any]:
    """{"s2": uint16 13-band L1C, "lc": uint16 4-band, "s1": float32 VV/VH} arrays of one patch."""
    rng = seeded(seed, "sen12ms", scene, patch)
    chosen = np.sort(rng.choice(codes, size=int(rng.integers(1, len(codes) + 1)), replace=False))
    lmap = label_map(rng, len(chosen), size, grid=8)
    optical = np.stack([spectral_signature(int(c) - 1, level="L1C") for c in chosen])
    s2 = to_uint16(render_optical(rng, optical, lmap))
    s1 = render_sar(rng, np.stack([sar_signature(int(c) - 1) for c in chosen]), lmap)
    igbp = chosen[lmap].astype(np.uint16)
    lc = np.concatenate([igbp[None], np.moveaxis(_IGBP_TO_LCCS[igbp], -1, 0)])
    return {"s2": s2, "lc": lc, "s1": s1}


def _write_patch(root: Path, scene: int, patch: int, arrays: dict[str, Any], crs: CRS) -> str:
    """Write the s2/lc/s1 triplet of one patch; returns the s2 file stem (the item key)."""
    transform = geo(300000 + 2560 * patch, 5000000 + 10000 * scene, 10, 10)
    for mod, arr in arrays.items():
        folder = root / _SEASON / f"{mod}_{scene}"
        folder.mkdir(parents=True, exist_ok=True)
        write_tif(folder / f"{_SEASON}_{mod}_{scene}_p{patch}.tif", arr, crs, transform)
    return f"{_SEASON}_s2_{scene}_p{patch}"


def _igbp10_labels(lc: np.ndarray) -> list[str]:
    """Simplified IGBP classes covering >= SEN12MS_MULTILABEL_THRESHOLD of the patch."""
    frac = np.bincount(np.asarray(lbl.IGBP17_TO_10)[lc[0]].ravel(), minlength=10) / lc[0].size
    return [
        c
        for c, f in zip(lbl.SEN12MS_IGBP10, frac, strict=True)
        if f >= lbl.SEN12MS_MULTILABEL_THRESHOLD
    ]


def make_sen12ms(
    root: str | Path,
    n_scenes: int = 4,
    patches_per_scene: int = 5,
    *,
    size: int = 64,
    seed: int = 0,
) -> dict[str, Any]:
    """SEN12MS: `ROIs1158_spring/{s1,s2,lc}_<scene>/ROIs1158_spring_{s1,s2,lc}_<scene>_p<patch>.tif`
    plus `train_list.txt`/`test_list.txt` (s2 basenames, ~75/25 by scene). Keys are s2 file stems;
    labels are the simplified IGBP-10 classes covering >= 10 % of the patch (from lc band 1).
    """
    if n_scenes < 1 or patches_per_scene < 1:
        raise ValueError("n_scenes and patches_per_scene must be >= 1")
    root = Path(root)
    labels, keys_of = {}, {}
    for scene in range(1, n_scenes + 1):
        codes = seeded(seed, "sen12ms-scene", scene).choice(np.arange(1, 18), size=3, replace=False)
        crs = CRS.from_epsg(32601 + (scene * 7) % 60)
        keys_of[str(scene)] = []
        for patch in range(1, patches_per_scene + 1):
            arrays = _patch(seed, scene, patch, codes, size)
            key = _write_patch(root, scene, patch, arrays, crs)
            labels[key] = _igbp10_labels(arrays["lc"])
            keys_of[str(scene)].append(key)
    by_scene = assign_splits(list(keys_of), (0.75, 0.25), ("train", "test"), seed)
    splits = {s: sorted(k for sc in scenes for k in keys_of[sc]) for s, scenes in by_scene.items()}
    for name, keys in splits.items():
        write_lines(root / f"{name}_list.txt", [f"{k}.tif" for k in keys])
    files = 3 * len(labels) + 2
    return result(root, "sen12ms", lbl.SEN12MS_IGBP10, labels, splits, files)
