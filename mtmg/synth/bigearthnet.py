"""BigEarthNet v1.0: `BigEarthNet-v1.0/<patch>/` (12 bands + JSON) and `BigEarthNet-S1-v1.0/`.

Also what v2 (:mod:`mtmg.synth.bigearthnet_v2`) shares with v1: the tiles and patch names,
the label pool, the rendering of a patch and the per-band GeoTIFFs.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rasterio.crs import CRS

from mtmg.data import bands
from mtmg.data import labels as lbl
from mtmg.synth.common import assign_splits, geo, result, seeded, write_lines, write_tif
from mtmg.synth.render import block_mean, label_map, render_optical, render_sar, to_uint16
from mtmg.synth.signatures import sar_signature, spectral_signature


@dataclass(frozen=True)
class Tile:
    """One S2 acquisition of BigEarthNet (values from the real example patches)."""

    s2: str  # v1 S2 name prefix (may carry the one-digit-hour quirk)
    s2_v2: str  # v2 S2 L2A product name
    tile: str
    epsg: int
    origin: tuple[int, int]  # upper-left corner of patch (0, 0)
    tile_source: str
    acquisition_date: str
    s1: str  # S1 name prefix = v2 S1 product folder
    scene_source: str
    acquisition_time: str
    country: str


# Dates moved to 2016 (before BigEarthNet's Jun 2017 - May 2018): generated names can never
# collide with real patches in the official split lists.
# fmt: off
TILES: tuple[Tile, ...] = (
    Tile("S2A_MSIL2A_20160613T101031", "S2A_MSIL2A_20160613T101031_N9999_R022_T33UUP", "33UUP",
         32633, (300000, 5400000),
         "S2A_MSIL1C_20160613T101031_N0205_R022_T33UUP_20160613T101608.SAFE",
         "2016-06-13 10:10:31", "S1A_IW_GRDH_1SDV_20160613T165043",
         "S1A_IW_GRDH_1SDV_20160613T165043_20160613T165108_017018_01C579_7EEC",
         "2016-06-13T16:50:43", "Austria"),
    Tile("S2A_MSIL2A_20160617T113321", "S2A_MSIL2A_20160617T113321_N9999_R080_T29UPU", "29UPU",
         32629, (600000, 5900040),
         "S2A_MSIL1C_20160617T113321_N0205_R080_T29UPU_20160617T113319.SAFE",
         "2016-06-17 11:33:21", "S1A_IW_GRDH_1SDV_20160617T064724",
         "S1A_IW_GRDH_1SDV_20160617T064724_20160617T064749_017070_01C718_CED2",
         "2016-06-17T06:47:24", "Ireland"),
    Tile("S2A_MSIL2A_20161221T112501", "S2A_MSIL2A_20161221T112501_N9999_R037_T29SND", "29SND",
         32629, (499980, 4400040),
         "S2A_MSIL1C_20161221T112501_N0206_R037_T29SND_20161221T114356.SAFE",
         "2016-12-21 11:25:01", "S1A_IW_GRDH_1SDV_20161221T064238",
         "S1A_IW_GRDH_1SDV_20161221T064238_20161221T064303_019797_021ACD_16F1",
         "2016-12-21T06:42:38", "Portugal"),
    Tile("S2B_MSIL2A_20160924T93020", "S2B_MSIL2A_20160924T093020_N9999_R136_T35VPK", "35VPK",
         32635, (600000, 7000020),
         "S2B_MSIL1C_20160924T93020_N0205_R136_T35VPK_20160924T093132.SAFE",
         "2016-09-24 09:30:20", "S1A_IW_GRDH_1SDV_20160925T043256",
         "S1A_IW_GRDH_1SDV_20160925T043256_20160925T043321_018527_01F38C_31E2",
         "2016-09-25T04:32:56", "Finland"),
)

# CORINE level-3 code of each BigEarthNet-43 class (official order; docs/datasets.md).
CLC_CODES: tuple[int, ...] = (
    111, 112, 121, 122, 123, 124, 131, 132, 133, 141, 142, 211, 212, 213, 221, 222, 223, 231, 241,
    242, 243, 244, 311, 312, 313, 321, 322, 323, 324, 331, 332, 333, 334, 411, 412, 421, 422, 423,
    511, 512, 521, 522, 523,
)
# fmt: on
# Ten common 43-classes, each with its own 19-class target, so that learning is feasible.
BEN_POOL: tuple[str, ...] = tuple(lbl.BEN43[i] for i in (1, 11, 17, 19, 20, 22, 23, 24, 28, 39))


@dataclass(frozen=True)
class BenPatch:
    """One patch: column `h` and row `v` of a 90 x 90 grid on its tile; its v1/S1/v2 names."""

    tile: Tile
    h: int
    v: int

    @property
    def s2(self) -> str:
        return f"{self.tile.s2}_{self.h}_{self.v}"

    @property
    def s1(self) -> str:
        return f"{self.tile.s1}_{self.tile.tile}_{self.h}_{self.v}"

    @property
    def v2(self) -> str:
        return f"{self.tile.s2_v2}_{self.h}_{self.v}"

    def corner(self, size: int) -> tuple[int, int]:
        ox, oy = self.tile.origin
        return ox + self.h * size * 10, oy - self.v * size * 10


def ben_patches(n_patches: int, seed: int) -> list[BenPatch]:
    """`n_patches` distinct patches spread round-robin over the tiles, sorted by S2 name."""
    if n_patches < 1:
        raise ValueError("n_patches must be >= 1")
    rng = seeded(seed, "bigearthnet-names")
    patches = []
    for t, tile in enumerate(TILES):
        count = len(range(t, n_patches, len(TILES)))
        for cell in rng.choice(90 * 90, size=count, replace=False):
            patches.append(BenPatch(tile, int(cell) % 90, int(cell) // 90))
    return sorted(patches, key=lambda p: p.s2)


def _ben_pool(classes: Sequence[str] | None) -> tuple[str, ...]:
    """The label pool: `classes`, checked against BigEarthNet-43, or BEN_POOL."""
    pool = tuple(BEN_POOL if classes is None else classes)
    unknown = [c for c in pool if c not in lbl.BEN43]
    if unknown or not pool:
        raise ValueError(f"classes must be non-empty BigEarthNet-43 names; unknown: {unknown}")
    return pool


def pick_labels(rng: np.random.Generator, pool: Sequence[str]) -> list[str]:
    """1-3 names from the pool, in the official BigEarthNet-43 order."""
    k = int(rng.integers(1, min(3, len(pool)) + 1))
    return sorted(
        rng.choice(np.array(pool, dtype=object), size=k, replace=False), key=lbl.BEN43.index
    )


def render_ben(
    rng: np.random.Generator, names: Sequence[str], size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """S2 (13, size, size) L2A field, S1 (2, size, size) dB field and the 10 m CLC code map."""
    idx = [lbl.BEN43.index(n) for n in names]
    lmap = label_map(rng, len(idx), size)
    s2 = render_optical(rng, np.stack([spectral_signature(i) for i in idx]), lmap)
    sar = render_sar(rng, np.stack([sar_signature(i) for i in idx]), lmap)
    return s2, sar, np.array([CLC_CODES[i] for i in idx], dtype=np.uint16)[lmap]


def check_size(size: int) -> None:
    """The 60 m bands need a patch side divisible by 6."""
    if size < 6 or size % 6:
        raise ValueError(f"size must be a positive multiple of 6 (60 m bands), got {size}")


def write_l2a_bands(
    folder: Path,
    name: str,
    field: np.ndarray,
    crs: CRS,
    ul: tuple[float, float],
    nodata: float | None = None,
) -> int:
    """The 12 single-band L2A files `<name>_<band>.tif` at native 10/20/60 m resolution."""
    folder.mkdir(parents=True, exist_ok=True)
    by_factor = {1: field}
    for band in bands.S2_L2A:
        f = bands.S2_GSD[band] // 10
        if f not in by_factor:
            by_factor[f] = block_mean(field, f)
        arr = to_uint16(by_factor[f][bands.S2_L1C.index(band)])[None]
        write_tif(folder / f"{name}_{band}.tif", arr, crs, geo(*ul, 10 * f, 10 * f), nodata)
    return len(bands.S2_L2A)


def write_s1_pair(
    folder: Path, name: str, sar: np.ndarray, crs: CRS, ul: tuple[float, float]
) -> int:
    """`<name>_VV.tif` and `<name>_VH.tif`, float32 dB at 10 m."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, pol in enumerate(bands.S1):
        write_tif(folder / f"{name}_{pol}.tif", sar[i : i + 1], crs, geo(*ul, 10, 10))
    return len(bands.S1)


@functools.cache
def _wkt(epsg: int) -> str:
    """The projection string the v1 JSONs carry; cached, as every patch of a tile asks."""
    return CRS.from_epsg(epsg).to_wkt()


def _v1_jsons(p: BenPatch, names: list[str], size: int) -> tuple[dict, dict]:
    """S2 and S1 `labels_metadata.json` contents, with the real S1 quirks (lly, ISO time)."""
    ulx, uly = p.corner(size)
    lrx, lry = ulx + 10 * size, uly - 10 * size
    wkt = _wkt(p.tile.epsg)
    s2 = {
        "labels": names,
        "coordinates": {"ulx": ulx, "uly": uly, "lrx": lrx, "lry": lry},
        "projection": wkt,
        "tile_source": p.tile.tile_source,
        "acquisition_date": p.tile.acquisition_date,
    }
    s1 = {
        "labels": names,
        "coordinates": {"ulx": ulx, "uly": uly, "lrx": lrx, "lly": lry},
        "projection": wkt,
        "corresponding_s2_patch": p.s2,
        "scene_source": p.tile.scene_source,
        "acquisition_time": p.tile.acquisition_time,
    }
    return s2, s1


def _write_v1_patch(
    s2_dir: Path,
    s1_dir: Path | None,
    p: BenPatch,
    rng: np.random.Generator,
    names: list[str],
    size: int,
) -> int:
    """The S2 folder (and the S1 folder unless `s1_dir` is None) of one patch; the file count."""
    s2_field, sar, _ = render_ben(rng, names, size)
    crs, ul = CRS.from_epsg(p.tile.epsg), p.corner(size)
    s2_json, s1_json = _v1_jsons(p, names, size)
    files = write_l2a_bands(s2_dir / p.s2, p.s2, s2_field, crs, ul) + 1
    (s2_dir / p.s2 / f"{p.s2}_labels_metadata.json").write_text(json.dumps(s2_json))
    if s1_dir is not None:
        files += write_s1_pair(s1_dir / p.s1, p.s1, sar, crs, ul) + 1
        (s1_dir / p.s1 / f"{p.s1}_labels_metadata.json").write_text(json.dumps(s1_json))
    return files


def make_bigearthnet(
    root: str | Path,
    n_patches: int = 60,
    *,
    size: int = 120,
    s1: bool = True,
    seed: int = 0,
    split_files: bool = True,
    fractions: Sequence[float] = (0.6, 0.2, 0.2),
    classes: Sequence[str] | None = None,
) -> dict[str, Any]:
    """BigEarthNet v1.0: `BigEarthNet-v1.0/<patch>/` (12 bands + JSON) and `BigEarthNet-S1-v1.0/`.

    Labels are 1-3 BigEarthNet-43 names from `classes` (default: 10 common classes with a
    19-class target). Writes `train.csv`/`val.csv`/`test.csv` (S2 names) if `split_files`.
    Extra keys: "s2_to_s1" (S2 name -> S1 name), "s2_dir", "s1_dir".
    """
    check_size(size)
    root, pool = Path(root), _ben_pool(classes)
    s2_dir, s1_dir = root / "BigEarthNet-v1.0", root / "BigEarthNet-S1-v1.0"
    labels, s2_to_s1, files = {}, {}, 0
    for p in ben_patches(n_patches, seed):
        rng = seeded(seed, p.s2)  # draws the labels, then the pixels
        names = pick_labels(rng, pool)
        files += _write_v1_patch(s2_dir, s1_dir if s1 else None, p, rng, names, size)
        labels[p.s2], s2_to_s1[p.s2] = names, p.s1
    splits = {}
    if split_files:
        splits = assign_splits(list(labels), fractions, ("train", "val", "test"), seed)
        for name, keys in splits.items():
            write_lines(root / f"{name}.csv", keys)
            files += 1
    extra = {"s2_to_s1": s2_to_s1, "s2_dir": s2_dir, "s1_dir": s1_dir if s1 else None}
    return result(root, "bigearthnet", lbl.BEN43, labels, splits, files, **extra)
