"""What every generator shares: seeded generators, file writers, splits and the result dict."""

from __future__ import annotations

import logging
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from PIL import Image
from rasterio.crs import CRS
from rasterio.transform import Affine

# one logger for the package, whichever module writes
log = logging.getLogger("mtmg.synth")


def seeded(seed: int, *key: object) -> np.random.Generator:
    """Generator seeded from `seed` and a stable hash of each key part.

    Every item draws from its own generator, so an item's pixels do not depend on the others.
    """
    return np.random.default_rng([int(seed) % 2**64] + [zlib.crc32(str(k).encode()) for k in key])


def geo(ulx: float, uly: float, xres: float, yres: float | None = None) -> Affine:
    """North-up affine transform from the upper-left corner and pixel size."""
    return Affine(xres, 0.0, ulx, 0.0, -(xres if yres is None else yres), uly)


def write_tif(
    path: Path,
    array: np.ndarray,
    crs: CRS,
    transform: Affine,
    nodata: float | None = None,
    **options: Any,
) -> None:
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


def write_lines(path: Path, lines: Sequence[str]) -> None:
    """A text file of one line per entry (split lists)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines))


def write_image(path: Path, rgb: np.ndarray) -> None:
    """RGB uint8 array to JPEG (quality 95) or PNG, by suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(rgb, mode="RGB")
    if path.suffix == ".jpg":
        image.save(path, format="JPEG", quality=95)
    else:
        image.save(path, format="PNG")


def assign_splits(
    keys: Sequence[str], fractions: Sequence[float], names: Sequence[str], seed: int
) -> dict[str, list[str]]:
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
    order = [sorted(keys)[i] for i in seeded(seed, "splits").permutation(n)]
    bounds = np.concatenate([[0], np.cumsum(counts)])
    return {s: sorted(order[bounds[i] : bounds[i + 1]]) for i, s in enumerate(names)}


def result(
    root: Path,
    kind: str,
    classes: Sequence[str],
    labels: dict[str, list[str]],
    splits: dict[str, list[str]],
    files: int,
    **extra: Any,
) -> dict[str, Any]:
    """The summary every `make_*` returns (see the package docstring) and logs."""
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
