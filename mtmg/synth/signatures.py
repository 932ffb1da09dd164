"""Label-dependent spectra: each class index has its own Sentinel-2 and Sentinel-1 signature.

The signatures are what makes the toy data learnable: a patch's pixels are drawn around the
signatures of its labels (:mod:`mtmg.synth.render`).
"""

from __future__ import annotations

import numpy as np

from mtmg.data import bands
from mtmg.synth.common import seeded

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


def spectral_signature(index: int, level: str = "L2A") -> np.ndarray:
    """Mean 13-band spectrum (bands.S2_L1C order, reflectance x 10000) of class `index`.

    The visible bands follow an R2 low-discrepancy sequence so that the RGB composites of
    different classes are far apart; the rest is an index-seeded mixture of end-members.
    `level` is "L2A" (surface reflectance; B10 is kept but unused) or "L1C" (top of atmosphere).
    """
    if level not in ("L2A", "L1C"):
        raise ValueError(f"level must be 'L2A' or 'L1C', not {level!r}")
    rng = seeded(7919, "signature", index)
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
    rng = seeded(7919, "sar", index)
    vv = -12.0 + rng.uniform(-5.0, 5.0)
    return np.array([vv, vv - rng.uniform(5.0, 9.0)])
