"""Sentinel band registry: band names, resolutions, stored orders and the RGB composite.

Bands are handled by name everywhere in mtmg; the orders below say how each source stores them.
Sources: docs/datasets.md, 'Sentinel-2 band orders', and docs/method.md (RGB composite).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mtmg.errors import InputError

# Sentinel-2 L1C order used by the student encoder and SSL4EO-S12 (13 bands, B8A after B08).
S2_L1C: tuple[str, ...] = (
    "B01",
    "B02",
    "B03",
    "B04",
    "B05",
    "B06",
    "B07",
    "B08",
    "B8A",
    "B09",
    "B10",
    "B11",
    "B12",
)
# Sentinel-2 L2A has no cirrus band B10 (BigEarthNet v1/v2 order, bigearthnet_common BEN_CHANNELS).
S2_L2A: tuple[str, ...] = tuple(b for b in S2_L1C if b != "B10")
# EuroSAT-MS GeoTIFFs store B01..B12 (with B10) and then B8A last (torchgeo PR #2480).
EUROSAT_MS_FILE_ORDER: tuple[str, ...] = (
    "B01",
    "B02",
    "B03",
    "B04",
    "B05",
    "B06",
    "B07",
    "B08",
    "B09",
    "B10",
    "B11",
    "B12",
    "B8A",
)
# SEN12MS s2 GeoTIFFs store the L1C order.
SEN12MS_S2_FILE_ORDER: tuple[str, ...] = S2_L1C

# Ground sampling distance in metres, per band.
S2_GSD: dict[str, int] = {
    "B01": 60,
    "B02": 10,
    "B03": 10,
    "B04": 10,
    "B05": 20,
    "B06": 20,
    "B07": 20,
    "B08": 10,
    "B8A": 20,
    "B09": 60,
    "B10": 60,
    "B11": 20,
    "B12": 20,
}

# Sentinel-1 polarisations, in the order mtmg stores them (torchgeo's alphabetical VH,VV is a bug).
S1: tuple[str, ...] = ("VV", "VH")

# RGB composite for CLIP (docs/method.md, 'Stage 1'): bands and the value mapped to 255.
RGB_BANDS: tuple[str, ...] = ("B04", "B03", "B02")
RGB_SCALE: dict[str, float] = {"S2 L2A": 2000.0, "S2 L1C": 3558.0}
# Stored reflectances are reflectance x 10000 as uint16.
REFLECTANCE_SCALE = 10000.0


def reorder_indices(stored: tuple[str, ...], wanted: tuple[str, ...]) -> list[int]:
    """Index list that picks the `wanted` band order out of an array stored as `stored`."""
    missing = [b for b in wanted if b not in stored]
    if missing:
        raise InputError(f"bands {missing} are not among the stored bands {list(stored)}")
    return [stored.index(b) for b in wanted]


def pick(a: np.ndarray, idx: Sequence[int]) -> np.ndarray:
    """`a[idx]` along the first axis, as a view when `idx` is a run stepping by +1 or -1
    (B04, B03, B02 out of B02, B03, B04, ...): no copy of the pixels."""
    step = idx[1] - idx[0] if len(idx) > 1 else 1
    stop = idx[-1] + step
    if step in (1, -1) and list(idx) == list(range(idx[0], stop, step)):
        return a[idx[0] : stop if stop >= 0 else None : step]
    return a[list(idx)]
