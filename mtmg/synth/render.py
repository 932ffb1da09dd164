"""Pixel fields: blocky label maps, textured signature mixtures, and their uint16/RGB encodings.

A patch is a blocky spatial mixture of its labels' signatures with multiplicative texture noise,
clipped to the uint16 ``reflectance x 10000`` range (``1..10000``; 0 stays free for nodata).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mtmg.data import bands

MAX_VALUE = 10000


def _upsample_index(n_coarse: int, size: int) -> np.ndarray:
    return (np.arange(size) * n_coarse) // size


def label_map(rng: np.random.Generator, n_labels: int, size: int, grid: int = 4) -> np.ndarray:
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


def render_optical(rng: np.random.Generator, sigs: np.ndarray, lmap: np.ndarray) -> np.ndarray:
    """(bands, H, W) field: per-pixel signature x texture x band noise, clipped to 1..10000."""
    size = lmap.shape[0]
    field = np.moveaxis(sigs[lmap], -1, 0)
    field = field * (_texture(rng, size, 0.06, 0.04) * rng.uniform(0.9, 1.1))
    field *= 1.0 + rng.normal(0.0, 0.02, size=field.shape)
    return np.clip(field, 1, MAX_VALUE)


def render_sar(rng: np.random.Generator, sigs: np.ndarray, lmap: np.ndarray) -> np.ndarray:
    """(2, H, W) float32 dB field: VV, VH of each pixel's label plus speckle."""
    field = np.moveaxis(sigs[lmap], -1, 0)
    field = field + rng.normal(0.0, 1.5, size=field.shape) + rng.normal(0.0, 0.5)
    return field.astype(np.float32)


def block_mean(x: np.ndarray, f: int) -> np.ndarray:
    """(C, H/f, W/f) mean over f x f blocks: a 10 m field seen at 10*f m."""
    c, h, w = x.shape
    return x.reshape(c, h // f, f, w // f, f).mean(axis=(2, 4))


def to_uint16(x: np.ndarray) -> np.ndarray:
    """Rounded uint16 digital numbers in 0..10000."""
    return np.rint(np.clip(x, 0, MAX_VALUE)).astype(np.uint16)


def to_rgb8(field: np.ndarray, order: Sequence[str], scale: float) -> np.ndarray:
    """(H, W, 3) uint8 RGB composite (B04, B03, B02) of a (bands, H, W) field."""
    rgb = field[bands.reorder_indices(tuple(order), bands.RGB_BANDS)] / scale * 255.0
    return np.ascontiguousarray(np.clip(np.rint(rgb), 0, 255).astype(np.uint8).transpose(1, 2, 0))
