"""Reading one Sentinel-2 patch stored as one GeoTIFF per band (BigEarthNet v1 and v2).

Sources store the 12 L2A bands on their native grids (10, 20 and 60 m) or, in preprocessed
redistributions and torchgeo's fixtures, all on the 10 m grid. Which of the two a tree uses is
decided once per tree (`on_one_grid`, probed on its first patches) and every patch must match.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mtmg.data import bands
from mtmg.data.raw.common import SampleError, as_uint16, georef, open_raster, upsample
from mtmg.data.storage import Location

REF_BAND = "B02"  # a 10 m band: its size is the patch's 10 m grid
PROBE_BAND = "B01"  # a 60 m band: at the 10 m size only in trees stored on one grid

# (bands in the canonical order, factor of their grid against the 10 m grid) per native grid
NATIVE_GROUPS: tuple[tuple[tuple[str, ...], int], ...] = tuple(
    (tuple(b for b in bands.S2_L2A if bands.S2_GSD[b] == gsd), gsd // 10) for gsd in (10, 20, 60)
)


def on_one_grid(loc: Location, band_paths: dict[str, str], key: str) -> bool:
    """Whether a patch stores its 60 m band at the size of its 10 m bands (header reads only)."""
    sizes = []
    for band in (REF_BAND, PROBE_BAND):
        with open_raster(loc, band_paths[band], key, georef=False) as ds:
            sizes.append((ds.height, ds.width))
    return sizes[0] == sizes[1]


def expected_size(band: str, hw: tuple[int, int], one_grid: bool) -> tuple[tuple[int, int], str]:
    """The size a band must have in a patch whose 10 m grid is `hw`, and why, for messages.

    Raises ValueError (the why) when a native grid cannot cover the patch in whole pixels.
    """
    (h, w), gsd = hw, bands.S2_GSD[band]
    factor = gsd // 10
    if one_grid or factor == 1:
        why = "this tree stores every band on the 10 m grid" if factor > 1 else "a 10 m band"
        return (h, w), why
    if h % factor or w % factor:
        raise ValueError(
            f"the {h}x{w} px 10 m grid is not a whole number of {gsd} m pixels ({factor} px "
            f"each), so {band} cannot be on its native grid; the tree's first patches store "
            "their bands on native grids"
        )
    return (h // factor, w // factor), f"its {gsd} m grid under the {h}x{w} px 10 m grid"


def read_s2(
    loc: Location,
    band_paths: dict[str, str],
    key: str,
    size: tuple[int, int] | None,
    resample: str,
    with_georef: bool = True,
    *,
    one_grid: bool = False,
    native: bool = False,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read the 12 L2A band files of a patch.

    Returns ({"ms.npy": 12 x H x W uint16 on the 10 m grid} or, with `native`, {"ms.groups":
    [(bands, factor, C x h x w uint16), ...]} as stored), and with `with_georef` the CRS and
    transform of the 10 m grid (parsing a CRS costs as much as reading three bands).
    """
    with open_raster(loc, band_paths[REF_BAND], key, georef=with_georef) as ds:
        ref = ds.read(1)
        geo = georef(ds) if with_georef else {}
    hw = ref.shape
    if size is not None and hw != tuple(size):
        raise SampleError(
            key,
            f"10 m band {REF_BAND} is {hw[0]}x{hw[1]}, dataset patches are {size[0]}x{size[1]}",
            band_paths[REF_BAND],
        )
    read: dict[str, np.ndarray] = {}
    for band in bands.S2_L2A:
        path = band_paths[band]
        try:
            want, why = expected_size(band, hw, one_grid)
        except ValueError as e:
            raise SampleError(key, f"band {band}: {e}", path) from None
        if band == REF_BAND:
            read[band] = as_uint16(ref, key, path)
            continue
        with open_raster(loc, path, key, georef=False) as ds:
            arr = ds.read(1)
            if arr.shape != want:
                got = f"{arr.shape[0]}x{arr.shape[1]}"
                msg = f"band {band} is {got}, expected {want[0]}x{want[1]} ({why})"
                raise SampleError(key, msg, path)
            factor = hw[0] // want[0]
            if native:
                read[band] = as_uint16(arr, key, path)
            else:
                read[band] = as_uint16(upsample(arr, factor, resample, ds), key, path)
    if not native:
        return {"ms.npy": np.stack([read[b] for b in bands.S2_L2A])}, geo
    groups = [(bands.S2_L2A, 1)] if one_grid else NATIVE_GROUPS
    stacked = [(names, f, np.stack([read[b] for b in names])) for names, f in groups]
    return {"ms.groups": stacked}, geo


def grid_size(sample: dict[str, Any]) -> tuple[int, int]:
    """Height and width of the 10 m grid of a sample `read_s2` returned."""
    arr = sample["ms.npy"] if "ms.npy" in sample else sample["ms.groups"][0][2]
    return tuple(arr.shape[1:])


def read_s1(loc: Location, s1_dir: str, s1_name: str, key: str, hw: tuple[int, int]) -> np.ndarray:
    """VV and VH backscatter (dB, float32) of the paired S1 patch, in that order."""
    out = np.empty((len(bands.S1), *hw), dtype=np.float32)
    for i, pol in enumerate(bands.S1):
        path = f"{s1_dir}/{s1_name}_{pol}.tif"
        with open_raster(loc, path, key, georef=False) as ds:
            arr = ds.read(1)
        if arr.shape != hw:
            raise SampleError(key, f"S1 {pol} is {arr.shape}, expected {hw}", path)
        out[i] = arr
    return out
