"""Synthetic raw remote-sensing datasets written in their REAL on-disk layouts.

Every generator writes real GeoTIFFs (rasterio) or JPEG/PNG files (PIL) laid out exactly as the
original archives are (docs/datasets.md), so that the data-preparation code can be tested end to
end without the real datasets. Pixel values are label dependent, so models can learn:

- each class index has a characteristic 13-band Sentinel-2 signature (:func:`spectral_signature`)
  whose RGB composite (B04, B03, B02) is a well-spread colour, and a Sentinel-1 signature
  (:func:`sar_signature`);
- a patch is a blocky spatial mixture of its labels' signatures with multiplicative texture noise,
  clipped to the uint16 ``reflectance x 10000`` range (``1..10000``; 0 stays free for nodata).

Everything is deterministic: each item gets its own ``numpy.random.Generator`` seeded from
``(seed, crc32(item key))`` and items are written in sorted order, so the same arguments and seed
give byte-identical files. Each ``make_*`` function returns a dict::

    {"root": Path, "kind": str, "classes": [nomenclature], "files": int,
     "labels": {key: [label names]}, "splits": {split: [keys]}, ...extras}

``splits`` is empty for class-folder datasets, which ship no split files.
"""

from __future__ import annotations

import argparse
import json
import logging
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import rasterio
from PIL import Image, ImageDraw
from rasterio.crs import CRS
from rasterio.transform import Affine

from mtmg.data import bands
from mtmg.data import labels as lbl

log = logging.getLogger(__name__)

__all__ = [
    "spectral_signature",
    "sar_signature",
    "make_bigearthnet",
    "make_bigearthnet_v2",
    "make_eurosat_ms",
    "make_eurosat_rgb",
    "make_resisc45",
    "make_sen12ms",
    "make_imagefolder",
    "main",
]

# --------------------------------------------------------------------------------------------
# Spectral model
# --------------------------------------------------------------------------------------------

# Surface-reflectance x 10000 end-members in bands.S2_L1C order (B01..B08, B8A, B09, B10, B11, B12).
_ENDMEMBERS = np.array(
    [
        [250, 300, 600, 350, 1000, 2600, 3100, 3300, 3400, 3200, 10, 1700, 800],  # vegetation
        [600, 500, 450, 300, 250, 200, 180, 150, 140, 100, 5, 80, 60],  # water
        [900, 1000, 1300, 1600, 1800, 2000, 2200, 2300, 2400, 2300, 15, 3000, 2500],  # soil
        [1200, 1200, 1250, 1300, 1400, 1500, 1600, 1700, 1700, 1500, 15, 1900, 1700],  # urban
        [400, 500, 900, 1100, 1300, 1700, 1900, 2000, 2100, 2000, 10, 2300, 1500],  # dry grass
    ],
    dtype=np.float64,
)
# Top-of-atmosphere (L1C) = gain * surface + offset: path radiance in the blue bands, water-vapour
# absorption in B09, cirrus band B10 around 10 (as in real EuroSAT tifs).
_L1C_OFFSET = np.array([1000, 750, 450, 300, 200, 150, 120, 100, 90, 0, 0, 20, 10], np.float64)
_L1C_GAIN = np.array([1, 1, 1, 1, 1, 1, 1, 1, 1, 0.3, 1, 1, 1], np.float64)
_R2 = 1.22074408460575947536  # plastic constant: low-discrepancy R2 sequence in 3-D
_MAX_VALUE = 10000


def _geo(ulx: float, uly: float, xres: float, yres: float | None = None) -> Affine:
    """North-up affine transform from the upper-left corner and pixel size."""
    return Affine(xres, 0.0, ulx, 0.0, -(xres if yres is None else yres), uly)


def _rng(seed: int, *key: object) -> np.random.Generator:
    """Generator seeded from `seed` and a stable hash of each key part."""
    return np.random.default_rng([int(seed) % 2**64] + [zlib.crc32(str(k).encode()) for k in key])


def spectral_signature(index: int, level: str = "L2A") -> np.ndarray:
    """Mean 13-band spectrum (bands.S2_L1C order, reflectance x 10000) of class `index`.

    The visible bands follow an R2 low-discrepancy sequence so that the RGB composites of
    different classes are far apart; the rest is an index-seeded mixture of end-members.
    `level` is "L2A" (surface reflectance; B10 is kept but unused) or "L1C" (top of atmosphere).
    """
    if level not in ("L2A", "L1C"):
        raise ValueError(f"level must be 'L2A' or 'L1C', not {level!r}")
    rng = _rng(7919, "signature", index)
    spec = rng.dirichlet([0.4] * len(_ENDMEMBERS)) @ _ENDMEMBERS
    spec *= rng.uniform(0.75, 1.3) * rng.lognormal(0.0, 0.08, size=spec.size)
    rgb = (0.5 + np.array([_R2**-1, _R2**-2, _R2**-3]) * (index + 1)) % 1.0
    spec[[3, 2, 1]] = (25 + 190 * rgb) * bands.RGB_SCALE["S2 L2A"] / 255  # B04, B03, B02
    spec[0] = 0.8 * spec[1] + 0.2 * spec[0]
    spec[10] = 5 + 10 * rng.random()
    if level == "L1C":
        spec = spec * _L1C_GAIN + _L1C_OFFSET
    return spec


def sar_signature(index: int) -> np.ndarray:
    """Mean Sentinel-1 backscatter in dB, (VV, VH), of class `index` (VV ~ -12, VH ~ -19)."""
    rng = _rng(7919, "sar", index)
    vv = -12.0 + rng.uniform(-5.0, 5.0)
    return np.array([vv, vv - rng.uniform(5.0, 9.0)])


def _upsample_index(n_coarse: int, size: int) -> np.ndarray:
    return (np.arange(size) * n_coarse) // size


def _label_map(rng: np.random.Generator, n_labels: int, size: int, grid: int = 4) -> np.ndarray:
    """Blocky (size, size) map of label positions 0..n_labels-1; every label appears."""
    cells = rng.integers(0, n_labels, size=grid * grid)
    cells[:n_labels] = np.arange(n_labels)
    cells = rng.permutation(cells).reshape(grid, grid)
    idx = _upsample_index(grid, size)
    return cells[np.ix_(idx, idx)]


def _texture(rng: np.random.Generator, size: int, coarse: float, fine: float) -> np.ndarray:
    """Multiplicative (size, size) texture: blocky low-frequency field times pixel noise."""
    idx = _upsample_index(8, size)
    low = rng.normal(0.0, coarse, size=(8, 8))[np.ix_(idx, idx)]
    return (1.0 + low) * (1.0 + rng.normal(0.0, fine, size=(size, size)))


def _render_optical(rng: np.random.Generator, sigs: np.ndarray, lmap: np.ndarray) -> np.ndarray:
    """(bands, H, W) field: per-pixel signature x texture x band noise, clipped to 1..10000."""
    size = lmap.shape[0]
    field = np.moveaxis(sigs[lmap], -1, 0)
    field = field * (_texture(rng, size, 0.06, 0.04) * rng.uniform(0.9, 1.1))
    field *= 1.0 + rng.normal(0.0, 0.02, size=field.shape)
    return np.clip(field, 1, _MAX_VALUE)


def _render_sar(rng: np.random.Generator, sigs: np.ndarray, lmap: np.ndarray) -> np.ndarray:
    """(2, H, W) float32 dB field: VV, VH of each pixel's label plus speckle."""
    field = np.moveaxis(sigs[lmap], -1, 0)
    field = field + rng.normal(0.0, 1.5, size=field.shape) + rng.normal(0.0, 0.5)
    return field.astype(np.float32)


def _block_mean(x: np.ndarray, f: int) -> np.ndarray:
    c, h, w = x.shape
    return x.reshape(c, h // f, f, w // f, f).mean(axis=(2, 4))


def _to_uint16(x: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(x, 0, _MAX_VALUE)).astype(np.uint16)


def _to_rgb8(field: np.ndarray, order: Sequence[str], scale: float) -> np.ndarray:
    """(H, W, 3) uint8 RGB composite (B04, B03, B02) of a (bands, H, W) field."""
    rgb = field[bands.reorder_indices(tuple(order), bands.RGB_BANDS)] / scale * 255.0
    return np.ascontiguousarray(np.clip(np.rint(rgb), 0, 255).astype(np.uint8).transpose(1, 2, 0))


# --------------------------------------------------------------------------------------------
# File writers
# --------------------------------------------------------------------------------------------


def _write_tif(
    path: Path, array: np.ndarray, crs: CRS, transform, nodata: float | None = None, **options
):
    """GeoTIFF of a (bands, H, W) array: uncompressed, pixel-interleaved unless `options` say."""
    count, height, width = array.shape
    profile = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": count,
        "dtype": array.dtype.name,
        "crs": crs,
        "transform": transform,
        "interleave": "pixel",
    }
    if nodata is not None:
        profile["nodata"] = nodata
    with rasterio.open(path, "w", **profile, **options) as dst:
        dst.write(array)


def _write_l2a_bands(folder: Path, name: str, field: np.ndarray, crs: CRS, ul, nodata=None) -> int:
    """The 12 single-band L2A files `<name>_<band>.tif` at native 10/20/60 m resolution."""
    folder.mkdir(parents=True, exist_ok=True)
    by_factor = {1: field}
    for band in bands.S2_L2A:
        f = bands.S2_GSD[band] // 10
        if f not in by_factor:
            by_factor[f] = _block_mean(field, f)
        arr = _to_uint16(by_factor[f][bands.S2_L1C.index(band)])[None]
        _write_tif(folder / f"{name}_{band}.tif", arr, crs, _geo(*ul, 10 * f, 10 * f), nodata)
    return len(bands.S2_L2A)


def _write_s1_pair(folder: Path, name: str, sar: np.ndarray, crs: CRS, ul) -> int:
    """`<name>_VV.tif` and `<name>_VH.tif`, float32 dB at 10 m."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, pol in enumerate(bands.S1):
        _write_tif(folder / f"{name}_{pol}.tif", sar[i : i + 1], crs, _geo(*ul, 10, 10))
    return len(bands.S1)


def _write_lines(path: Path, lines: Sequence[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines))


def _write_image(path: Path, rgb: np.ndarray) -> None:
    """RGB uint8 array to JPEG (quality 95) or PNG, by suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(rgb, mode="RGB")
    if path.suffix == ".jpg":
        image.save(path, format="JPEG", quality=95)
    else:
        image.save(path, format="PNG")


def _assign_splits(keys: Sequence[str], fractions, names: Sequence[str], seed: int):
    """Deterministic split of `keys` by `fractions`; non-empty splits whenever possible."""
    frac = np.asarray(fractions, dtype=np.float64)
    if frac.shape != (len(names),) or (frac < 0).any() or frac.sum() <= 0:
        raise ValueError(f"fractions must be {len(names)} non-negative numbers, got {fractions}")
    n = len(keys)
    counts = np.floor(frac / frac.sum() * n).astype(int)
    rest = frac / frac.sum() * n - counts
    for i in np.argsort(-rest, kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    for i in np.flatnonzero((counts == 0) & (frac > 0)):
        j = int(np.argmax(counts))
        if counts[j] > 1:
            counts[i], counts[j] = 1, counts[j] - 1
    order = [sorted(keys)[i] for i in _rng(seed, "splits").permutation(n)]
    bounds = np.concatenate([[0], np.cumsum(counts)])
    return {s: sorted(order[bounds[i] : bounds[i + 1]]) for i, s in enumerate(names)}


def _result(root: Path, kind: str, classes, labels, splits, files: int, **extra) -> dict:
    log.info("%s: wrote %d files for %d items under %s", kind, files, len(labels), root)
    return {
        "root": root,
        "kind": kind,
        "classes": list(classes),
        "files": files,
        "labels": labels,
        "splits": splits,
        **extra,
    }


# --------------------------------------------------------------------------------------------
# BigEarthNet v1 and v2
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Tile:
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
_TILES: tuple[_Tile, ...] = (
    _Tile("S2A_MSIL2A_20160613T101031", "S2A_MSIL2A_20160613T101031_N9999_R022_T33UUP", "33UUP",
          32633, (300000, 5400000),
          "S2A_MSIL1C_20160613T101031_N0205_R022_T33UUP_20160613T101608.SAFE",
          "2016-06-13 10:10:31", "S1A_IW_GRDH_1SDV_20160613T165043",
          "S1A_IW_GRDH_1SDV_20160613T165043_20160613T165108_017018_01C579_7EEC",
          "2016-06-13T16:50:43", "Austria"),
    _Tile("S2A_MSIL2A_20160617T113321", "S2A_MSIL2A_20160617T113321_N9999_R080_T29UPU", "29UPU",
          32629, (600000, 5900040),
          "S2A_MSIL1C_20160617T113321_N0205_R080_T29UPU_20160617T113319.SAFE",
          "2016-06-17 11:33:21", "S1A_IW_GRDH_1SDV_20160617T064724",
          "S1A_IW_GRDH_1SDV_20160617T064724_20160617T064749_017070_01C718_CED2",
          "2016-06-17T06:47:24", "Ireland"),
    _Tile("S2A_MSIL2A_20161221T112501", "S2A_MSIL2A_20161221T112501_N9999_R037_T29SND", "29SND",
          32629, (499980, 4400040),
          "S2A_MSIL1C_20161221T112501_N0206_R037_T29SND_20161221T114356.SAFE",
          "2016-12-21 11:25:01", "S1A_IW_GRDH_1SDV_20161221T064238",
          "S1A_IW_GRDH_1SDV_20161221T064238_20161221T064303_019797_021ACD_16F1",
          "2016-12-21T06:42:38", "Portugal"),
    _Tile("S2B_MSIL2A_20160924T93020", "S2B_MSIL2A_20160924T093020_N9999_R136_T35VPK", "35VPK",
          32635, (600000, 7000020),
          "S2B_MSIL1C_20160924T93020_N0205_R136_T35VPK_20160924T093132.SAFE",
          "2016-09-24 09:30:20", "S1A_IW_GRDH_1SDV_20160925T043256",
          "S1A_IW_GRDH_1SDV_20160925T043256_20160925T043321_018527_01F38C_31E2",
          "2016-09-25T04:32:56", "Finland"),
)  # fmt: skip

# CORINE level-3 code of each BigEarthNet-43 class (official order; docs/datasets.md).
CLC_CODES: tuple[int, ...] = (
    111, 112, 121, 122, 123, 124, 131, 132, 133, 141, 142, 211, 212, 213, 221, 222, 223, 231, 241,
    242, 243, 244, 311, 312, 313, 321, 322, 323, 324, 331, 332, 333, 334, 411, 412, 421, 422, 423,
    511, 512, 521, 522, 523,
)  # fmt: skip
# Ten common 43-classes, each with its own 19-class target, so that learning is feasible.
_BEN_POOL: tuple[str, ...] = tuple(lbl.BEN43[i] for i in (1, 11, 17, 19, 20, 22, 23, 24, 28, 39))


@dataclass(frozen=True)
class _BenPatch:
    tile: _Tile
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


def _ben_patches(n_patches: int, seed: int) -> list[_BenPatch]:
    """`n_patches` distinct patches spread round-robin over the tiles, sorted by S2 name."""
    if n_patches < 1:
        raise ValueError("n_patches must be >= 1")
    rng = _rng(seed, "bigearthnet-names")
    patches = []
    for t, tile in enumerate(_TILES):
        count = len(range(t, n_patches, len(_TILES)))
        for cell in rng.choice(90 * 90, size=count, replace=False):
            patches.append(_BenPatch(tile, int(cell) % 90, int(cell) // 90))
    return sorted(patches, key=lambda p: p.s2)


def _ben_pool(classes: Sequence[str] | None) -> tuple[str, ...]:
    pool = tuple(_BEN_POOL if classes is None else classes)
    unknown = [c for c in pool if c not in lbl.BEN43]
    if unknown or not pool:
        raise ValueError(f"classes must be non-empty BigEarthNet-43 names; unknown: {unknown}")
    return pool


def _render_ben(rng: np.random.Generator, names: Sequence[str], size: int):
    """S2 (13, size, size) L2A field, S1 (2, size, size) dB field and the 10 m CLC code map."""
    idx = [lbl.BEN43.index(n) for n in names]
    lmap = _label_map(rng, len(idx), size)
    s2 = _render_optical(rng, np.stack([spectral_signature(i) for i in idx]), lmap)
    sar = _render_sar(rng, np.stack([sar_signature(i) for i in idx]), lmap)
    return s2, sar, np.array([CLC_CODES[i] for i in idx], dtype=np.uint16)[lmap]


def _pick_ben_labels(rng: np.random.Generator, pool: Sequence[str]) -> list[str]:
    """1-3 names from the pool, in the official BigEarthNet-43 order."""
    k = int(rng.integers(1, min(3, len(pool)) + 1))
    return sorted(
        rng.choice(np.array(pool, dtype=object), size=k, replace=False), key=lbl.BEN43.index
    )


def _check_ben_size(size: int) -> None:
    if size < 6 or size % 6:
        raise ValueError(f"size must be a positive multiple of 6 (60 m bands), got {size}")


def _ben_v1_jsons(p: _BenPatch, names: list[str], size: int) -> tuple[dict, dict]:
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


_WKT_CACHE: dict[int, str] = {}


def _wkt(epsg: int) -> str:
    if epsg not in _WKT_CACHE:
        _WKT_CACHE[epsg] = CRS.from_epsg(epsg).to_wkt()
    return _WKT_CACHE[epsg]


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
) -> dict:
    """BigEarthNet v1.0: `BigEarthNet-v1.0/<patch>/` (12 bands + JSON) and `BigEarthNet-S1-v1.0/`.

    Labels are 1-3 BigEarthNet-43 names from `classes` (default: 10 common classes with a
    19-class target). Writes `train.csv`/`val.csv`/`test.csv` (S2 names) if `split_files`.
    Extra keys: "s2_to_s1" (S2 name -> S1 name), "s2_dir", "s1_dir".
    """
    _check_ben_size(size)
    root, pool = Path(root), _ben_pool(classes)
    s2_dir, s1_dir = root / "BigEarthNet-v1.0", root / "BigEarthNet-S1-v1.0"
    labels, s2_to_s1, files = {}, {}, 0
    for p in _ben_patches(n_patches, seed):
        rng = _rng(seed, p.s2)
        names = _pick_ben_labels(rng, pool)
        s2_field, sar, _ = _render_ben(rng, names, size)
        crs, ul = CRS.from_epsg(p.tile.epsg), p.corner(size)
        s2_json, s1_json = _ben_v1_jsons(p, names, size)
        files += _write_l2a_bands(s2_dir / p.s2, p.s2, s2_field, crs, ul)
        (s2_dir / p.s2 / f"{p.s2}_labels_metadata.json").write_text(json.dumps(s2_json))
        if s1:
            files += _write_s1_pair(s1_dir / p.s1, p.s1, sar, crs, ul)
            (s1_dir / p.s1 / f"{p.s1}_labels_metadata.json").write_text(json.dumps(s1_json))
            files += 1
        labels[p.s2], s2_to_s1[p.s2] = names, p.s1
        files += 1
    splits = {}
    if split_files:
        splits = _assign_splits(list(labels), fractions, ("train", "val", "test"), seed)
        for name, keys in splits.items():
            _write_lines(root / f"{name}.csv", keys)
            files += 1
    return _result(
        root, "bigearthnet", lbl.BEN43, labels, splits, files,
        s2_to_s1=s2_to_s1, s2_dir=s2_dir, s1_dir=s1_dir if s1 else None,
    )  # fmt: skip


_V2_SCHEMA = pa.schema(
    [
        ("patch_id", pa.string()),
        ("labels", pa.list_(pa.string())),
        ("split", pa.string()),
        ("country", pa.string()),
        ("s1_name", pa.string()),
        ("s2v1_name", pa.string()),
        ("contains_seasonal_snow", pa.bool_()),
        ("contains_cloud_or_shadow", pa.bool_()),
    ]
)


def _ben19_names(names43: Sequence[str]) -> list[str]:
    """19-class names of 43-class names, de-duplicated and sorted alphabetically (as in v2)."""
    idx = {lbl.BEN43_TO_19[lbl.BEN43.index(n)] for n in names43}
    return sorted(lbl.BEN19[i] for i in idx if i is not None)


def _v2_row(p: _BenPatch, labels19: list[str], split: str) -> dict:
    """One metadata.parquet row (the snow/cloud flags are always false in metadata.parquet)."""
    return {
        "patch_id": p.v2,
        "labels": labels19,
        "split": split,
        "country": p.tile.country,
        "s1_name": p.s1,
        "s2v1_name": p.s2,
        "contains_seasonal_snow": False,
        "contains_cloud_or_shadow": False,
    }


def _write_v2_metadata(path: Path, rows: list[dict]) -> None:
    cols = {f.name: [r[f.name] for r in rows] for f in _V2_SCHEMA}
    pq.write_table(pa.table(cols, schema=_V2_SCHEMA), path, compression="zstd")


def _write_v2_patch(
    root: Path, p: _BenPatch, names43: list[str], size: int, seed: int, s1: bool, maps: bool
) -> int:
    """All files of one v2 patch (S2 with nodata 0, S1, reference map); returns the file count."""
    s2_field, sar, clc = _render_ben(_rng(seed, p.v2), names43, size)
    crs, ul = CRS.from_epsg(p.tile.epsg), p.corner(size)
    files = _write_l2a_bands(
        root / "BigEarthNet-S2" / p.tile.s2_v2 / p.v2, p.v2, s2_field, crs, ul, nodata=0
    )
    if s1:
        files += _write_s1_pair(root / "BigEarthNet-S1" / p.tile.s1 / p.s1, p.s1, sar, crs, ul)
    if maps:
        folder = root / "Reference_Maps" / p.tile.s2_v2 / p.v2
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{p.v2}_reference_map.tif"
        _write_tif(path, clc[None], crs, _geo(*ul, 10), 0, compress="deflate", predictor=2)
        files += 1
    return files


def make_bigearthnet_v2(
    root: str | Path,
    n_patches: int = 30,
    *,
    size: int = 120,
    s1: bool = True,
    seed: int = 0,
    fractions: Sequence[float] = (0.6, 0.2, 0.2),
    reference_maps: bool = True,
) -> dict:
    """BigEarthNet v2.0 (reBEN): `BigEarthNet-S2/<product>/<patch_id>/` (nodata=0 tifs),
    `BigEarthNet-S1/<S1 product>/<s1_name>/`, `Reference_Maps/<product>/<patch_id>/` (raw CLC
    codes, DEFLATE) and `metadata.parquet` (19-class labels sorted alphabetically; splits
    train/validation/test). Extra keys: "s2_to_s1" (patch_id -> s1_name), "metadata".
    """
    _check_ben_size(size)
    root = Path(root)
    patches = sorted(_ben_patches(n_patches, seed), key=lambda p: p.v2)
    names = ("train", "validation", "test")
    splits = _assign_splits([p.v2 for p in patches], fractions, names, seed)
    split_of = {k: s for s, keys in splits.items() for k in keys}
    labels, s2_to_s1, rows, files = {}, {}, [], 1
    for p in patches:
        names43 = _pick_ben_labels(_rng(seed, p.v2, "labels"), _BEN_POOL)
        files += _write_v2_patch(root, p, names43, size, seed, s1, reference_maps)
        labels[p.v2], s2_to_s1[p.v2] = _ben19_names(names43), p.s1
        rows.append(_v2_row(p, labels[p.v2], split_of[p.v2]))
    _write_v2_metadata(root / "metadata.parquet", rows)
    return _result(
        root, "bigearthnet-v2", lbl.BEN19, labels, splits, files,
        s2_to_s1=s2_to_s1, metadata=root / "metadata.parquet",
    )  # fmt: skip


# --------------------------------------------------------------------------------------------
# Single-label class-folder datasets
# --------------------------------------------------------------------------------------------


def _class_items(classes: Sequence[str], n_per_class: int) -> list[tuple[int, str, int]]:
    """(class position, class name, n) for n = 1..n_per_class, sorted by class then n."""
    if n_per_class < 1 or not classes:
        raise ValueError("need at least one class and n_per_class >= 1")
    return [(ci, c, n) for ci, c in enumerate(classes) for n in range(1, n_per_class + 1)]


def _class_index(name: str, nomenclature: Sequence[str], position: int) -> int:
    """Signature index of a class: its index in the official list, else its position."""
    return nomenclature.index(name) if name in nomenclature else position


def _eurosat_field(seed: int, key: str, sig_index: int, size: int) -> np.ndarray:
    """(13, size, size) L1C field in bands.S2_L1C order for one EuroSAT patch."""
    rng = _rng(seed, "eurosat", key)
    sig = spectral_signature(sig_index, level="L1C")[None]
    return _render_optical(rng, sig, np.zeros((size, size), dtype=np.intp))


def make_eurosat_ms(
    root: str | Path,
    n_per_class: int = 10,
    *,
    size: int = 64,
    seed: int = 0,
    classes: Sequence[str] = lbl.EUROSAT,
) -> dict:
    """EuroSAT-MS: `ds/images/remote_sensing/otherDatasets/sentinel_2/tif/<Class>/<Class>_<n>.tif`.

    One 13-band uint16 pixel-interleaved GeoTIFF per patch (L1C-like values), bands stored in
    bands.EUROSAT_MS_FILE_ORDER, i.e. B8A last (band 13).
    """
    root = Path(root)
    base = root / "ds/images/remote_sensing/otherDatasets/sentinel_2/tif"
    order = bands.reorder_indices(bands.S2_L1C, bands.EUROSAT_MS_FILE_ORDER)
    labels = {}
    for ci, cls, n in _class_items(classes, n_per_class):
        key = f"{cls}_{n}"
        field = _eurosat_field(seed, key, _class_index(cls, lbl.EUROSAT, ci), size)
        rng = _rng(seed, "eurosat-geo", key)
        ul = (float(rng.uniform(3e5, 7e5)), float(rng.uniform(4.5e6, 6.5e6)))
        transform = _geo(*ul, 10.0057068871, 9.9940883412)
        (base / cls).mkdir(parents=True, exist_ok=True)
        _write_tif(
            base / cls / f"{key}.tif", _to_uint16(field[order]), CRS.from_epsg(32632), transform
        )
        labels[key] = [cls]
    return _result(root, "eurosat-ms", classes, labels, {}, len(labels), data_dir=base)


def make_eurosat_rgb(
    root: str | Path,
    n_per_class: int = 10,
    *,
    size: int = 64,
    seed: int = 0,
    classes: Sequence[str] = lbl.EUROSAT,
) -> dict:
    """EuroSAT RGB: `2750/<Class>/<Class>_<n>.jpg` (JPEG quality 95); same scenes as
    :func:`make_eurosat_ms` with the same seed, composite B04,B03,B02 scaled by 3558 (L1C)."""
    root = Path(root)
    base = root / "2750"
    labels = {}
    for ci, cls, n in _class_items(classes, n_per_class):
        key = f"{cls}_{n}"
        field = _eurosat_field(seed, key, _class_index(cls, lbl.EUROSAT, ci), size)
        _write_image(
            base / cls / f"{key}.jpg", _to_rgb8(field, bands.S2_L1C, bands.RGB_SCALE["S2 L1C"])
        )
        labels[key] = [cls]
    return _result(root, "eurosat", classes, labels, {}, len(labels), data_dir=base)


def make_resisc45(
    root: str | Path,
    n_per_class: int = 5,
    *,
    size: int = 64,
    seed: int = 0,
    classes: Sequence[str] | None = None,
) -> dict:
    """NWPU-RESISC45: `NWPU-RESISC45/<class>/<class>_<NNN>.jpg` (NNN from 001), RGB JPEGs.
    Default classes: the first 10 of labels.RESISC45."""
    root = Path(root)
    classes = tuple(lbl.RESISC45[:10] if classes is None else classes)
    base = root / "NWPU-RESISC45"
    labels = {}
    for ci, cls, n in _class_items(classes, n_per_class):
        key = f"{cls}_{n:03d}"
        rng = _rng(seed, "resisc45", key)
        idx = _class_index(cls, lbl.RESISC45, ci)
        sigs = np.stack([spectral_signature(idx), spectral_signature(idx) * 0.85])
        field = _render_optical(rng, sigs, _label_map(rng, 2, size, grid=6))
        _write_image(
            base / cls / f"{key}.jpg", _to_rgb8(field, bands.S2_L1C, bands.RGB_SCALE["S2 L2A"])
        )
        labels[key] = [cls]
    return _result(root, "resisc45", classes, labels, {}, len(labels), data_dir=base)


# --------------------------------------------------------------------------------------------
# SEN12MS
# --------------------------------------------------------------------------------------------

# IGBP code (1..17) -> plausible LCCS land cover / land use / surface hydrology (lc bands 2-4).
_SEN12MS_SEASON = "ROIs1158_spring"
_IGBP_TO_LCCS = np.array(
    [
        [0, 0, 0],
        [11, 10, 10], [12, 10, 10], [13, 10, 10], [14, 10, 10], [15, 10, 10],
        [41, 40, 40], [43, 40, 40], [21, 20, 20], [22, 20, 20], [31, 30, 30],
        [31, 30, 50], [31, 36, 30], [32, 9, 30], [31, 35, 30], [2, 2, 2], [1, 1, 1], [3, 3, 3],
    ],
    dtype=np.uint16,
)  # fmt: skip


def _sen12ms_patch(seed: int, scene: int, patch: int, codes: np.ndarray, size: int) -> dict:
    """{"s2": uint16 13-band L1C, "lc": uint16 4-band, "s1": float32 VV/VH} arrays of one patch."""
    rng = _rng(seed, "sen12ms", scene, patch)
    chosen = np.sort(rng.choice(codes, size=int(rng.integers(1, len(codes) + 1)), replace=False))
    lmap = _label_map(rng, len(chosen), size, grid=8)
    optical = np.stack([spectral_signature(int(c) - 1, level="L1C") for c in chosen])
    s2 = _to_uint16(_render_optical(rng, optical, lmap))
    s1 = _render_sar(rng, np.stack([sar_signature(int(c) - 1) for c in chosen]), lmap)
    igbp = chosen[lmap].astype(np.uint16)
    lc = np.concatenate([igbp[None], np.moveaxis(_IGBP_TO_LCCS[igbp], -1, 0)])
    return {"s2": s2, "lc": lc, "s1": s1}


def _write_sen12ms_patch(root: Path, scene: int, patch: int, arrays: dict, crs: CRS) -> str:
    """Write the s2/lc/s1 triplet of one patch; returns the s2 file stem (the item key)."""
    season = _SEN12MS_SEASON
    transform = _geo(300000 + 2560 * patch, 5000000 + 10000 * scene, 10, 10)
    for mod, arr in arrays.items():
        folder = root / season / f"{mod}_{scene}"
        folder.mkdir(parents=True, exist_ok=True)
        _write_tif(folder / f"{season}_{mod}_{scene}_p{patch}.tif", arr, crs, transform)
    return f"{season}_s2_{scene}_p{patch}"


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
) -> dict:
    """SEN12MS: `ROIs1158_spring/{s1,s2,lc}_<scene>/ROIs1158_spring_{s1,s2,lc}_<scene>_p<patch>.tif`
    plus `train_list.txt`/`test_list.txt` (s2 basenames, ~75/25 by scene). Keys are s2 file stems;
    labels are the simplified IGBP-10 classes covering >= 10 % of the patch (from lc band 1).
    """
    if n_scenes < 1 or patches_per_scene < 1:
        raise ValueError("n_scenes and patches_per_scene must be >= 1")
    root = Path(root)
    labels, keys_of = {}, {}
    for scene in range(1, n_scenes + 1):
        codes = _rng(seed, "sen12ms-scene", scene).choice(np.arange(1, 18), size=3, replace=False)
        crs = CRS.from_epsg(32601 + (scene * 7) % 60)
        keys_of[str(scene)] = []
        for patch in range(1, patches_per_scene + 1):
            arrays = _sen12ms_patch(seed, scene, patch, codes, size)
            key = _write_sen12ms_patch(root, scene, patch, arrays, crs)
            labels[key] = _igbp10_labels(arrays["lc"])
            keys_of[str(scene)].append(key)
    by_scene = _assign_splits(list(keys_of), (0.75, 0.25), ("train", "test"), seed)
    splits = {s: sorted(k for sc in scenes for k in keys_of[sc]) for s, scenes in by_scene.items()}
    for name, keys in splits.items():
        _write_lines(root / f"{name}_list.txt", [f"{k}.tif" for k in keys])
    files = 3 * len(labels) + 2
    return _result(root, "sen12ms", lbl.SEN12MS_IGBP10, labels, splits, files)


# --------------------------------------------------------------------------------------------
# Natural-image stand-in for ImageNet
# --------------------------------------------------------------------------------------------

_COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40), "blue": (40, 80, 225), "green": (40, 170, 60),
    "yellow": (240, 215, 40), "purple": (140, 50, 175), "orange": (250, 140, 30),
    "pink": (245, 120, 190), "cyan": (40, 210, 220), "white": (245, 245, 245),
    "black": (20, 20, 20), "brown": (130, 80, 40), "grey": (128, 128, 128),
}  # fmt: skip
_SHAPES = ("circle", "square", "triangle", "star", "cross", "ring", "diamond", "hexagon")


def _polygon(shape: str, cx: float, cy: float, r: float, rot: float) -> list[tuple[float, float]]:
    """Vertices of a regular shape centred at (cx, cy) with radius r, rotated by rot radians."""
    if shape == "star":
        radii, n = [r if i % 2 == 0 else 0.45 * r for i in range(10)], 10
    elif shape == "cross":
        w = 0.35 * r
        pts = [(w, r), (w, w), (r, w), (r, -w), (w, -w), (w, -r), (-w, -r), (-w, -w),
               (-r, -w), (-r, w), (-w, w), (-w, r)]  # fmt: skip
        c, s = np.cos(rot), np.sin(rot)
        return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in pts]
    else:
        n = {"triangle": 3, "square": 4, "diamond": 4, "hexagon": 6}[shape]
        radii = [r] * n
        rot += np.pi / 4 if shape == "square" else 0.0
    ang = rot + np.arange(n) * 2 * np.pi / n - np.pi / 2
    return [(cx + q * np.cos(a), cy + q * np.sin(a)) for q, a in zip(radii, ang, strict=True)]


def _parse_shape_class(name: str) -> tuple[tuple[int, int, int], str]:
    colour, _, shape = name.rpartition(" ")
    if colour not in _COLOURS or shape not in _SHAPES:
        raise ValueError(
            f"class {name!r} must be '<colour> <shape>' with colour in {sorted(_COLOURS)} "
            f"and shape in {list(_SHAPES)}"
        )
    return _COLOURS[colour], shape


def _background(rng: np.random.Generator, size: int) -> Image.Image:
    """Desaturated random colour + gradient + smooth (bicubic) blotches + grain."""
    bg = 0.55 * rng.uniform(40, 220, size=3) + 0.45 * rng.uniform(60, 200)
    ramp = np.linspace(-1, 1, size)[None, :, None] * rng.normal(0, 15, size=3)
    coarse = rng.normal(0, 25, size=(1, 6, 6)) + rng.normal(0, 8, size=(3, 6, 6))  # luma + chroma
    coarse = np.ascontiguousarray(coarse.astype(np.float32))
    resize = (size, size)
    blur = np.stack(
        [np.asarray(Image.fromarray(c).resize(resize, Image.Resampling.BICUBIC)) for c in coarse],
        axis=-1,
    )
    grain = 1.0 + rng.normal(0, 0.04, size=(size, size, 1))
    return Image.fromarray(np.clip((bg + ramp + blur) * grain, 0, 255).astype(np.uint8), "RGB")


def _shape_image(rng: np.random.Generator, name: str, size: int) -> np.ndarray:
    """(size, size, 3) uint8: a coloured shape on a random, desaturated, textured background."""
    colour, shape = _parse_shape_class(name)
    big = 2 * size  # draw at 2x and downsample for anti-aliasing
    image = _background(rng, big)
    draw = ImageDraw.Draw(image)
    r = big * rng.uniform(0.18, 0.38)
    cx, cy = rng.uniform(r, big - r, size=2)
    fill = tuple(int(np.clip(c + rng.normal(0, 12), 0, 255)) for c in colour)
    if shape in ("circle", "ring"):
        box = (cx - r, cy - r, cx + r, cy + r)
        if shape == "ring":
            draw.ellipse(box, outline=fill, width=max(2, int(0.3 * r)))
        else:
            draw.ellipse(box, fill=fill)
    else:
        draw.polygon(_polygon(shape, cx, cy, r, rng.uniform(-0.4, 0.4)), fill=fill)
    return np.asarray(image.resize((size, size), Image.Resampling.LANCZOS))


# The supported-task classes of the generated image folders (the class name describes the image).
SHAPE_CLASSES: tuple[str, ...] = (
    "red circle",
    "blue square",
    "green triangle",
    "yellow star",
    "purple cross",
    "orange ring",
)


def make_imagefolder(
    root: str | Path,
    n_per_class: int = 10,
    *,
    size: int = 64,
    seed: int = 0,
    classes: Sequence[str] = SHAPE_CLASSES,
) -> dict:
    """Class-folder tree `<class>/<class_with_underscores>_<n>.png` of '<colour> <shape>' images
    (stand-in for ImageNet, CLIP's supported task): the class name describes the picture."""
    root = Path(root)
    for cls in classes:
        _parse_shape_class(cls)
    labels = {}
    for _, cls, n in _class_items(classes, n_per_class):
        key = f"{cls.replace(' ', '_')}_{n}"
        _write_image(root / cls / f"{key}.png", _shape_image(_rng(seed, "shapes", key), cls, size))
        labels[key] = [cls]
    return _result(root, "imagefolder", classes, labels, {}, len(labels), data_dir=root)


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------

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
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    kw: dict = {"seed": args.seed}
    if args.size is not None:
        kw["size"] = args.size
    if args.kind in ("bigearthnet", "bigearthnet-v2"):
        kw["s1"] = not args.no_s1
    funcs = {
        "bigearthnet": (make_bigearthnet, "n_patches"),
        "bigearthnet-v2": (make_bigearthnet_v2, "n_patches"),
        "eurosat-ms": (make_eurosat_ms, "n_per_class"),
        "eurosat": (make_eurosat_rgb, "n_per_class"),
        "resisc45": (make_resisc45, "n_per_class"),
        "sen12ms": (make_sen12ms, "n_scenes"),
        "imagefolder": (make_imagefolder, "n_per_class"),
    }
    func, n_name = funcs[args.kind]
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


if __name__ == "__main__":
    raise SystemExit(main())
