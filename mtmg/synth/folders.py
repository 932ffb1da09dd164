"""Single-label class-folder datasets: EuroSAT MS and RGB, NWPU-RESISC45, ImageFolder trees.

They ship no split files, so their results have empty ``splits``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rasterio.crs import CRS

from mtmg.data import bands
from mtmg.data import labels as lbl
from mtmg.synth.common import geo, result, seeded, write_image, write_tif
from mtmg.synth.render import label_map, render_optical, to_rgb8, to_uint16
from mtmg.synth.shapes import SHAPE_CLASSES, parse_shape_class, shape_image
from mtmg.synth.signatures import spectral_signature


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
    rng = seeded(seed, "eurosat", key)
    sig = spectral_signature(sig_index, level="L1C")[None]
    return render_optical(rng, sig, np.zeros((size, size), dtype=np.intp))


def make_eurosat_ms(
    root: str | Path,
    n_per_class: int = 10,
    *,
    size: int = 64,
    seed: int = 0,
    classes: Sequence[str] = lbl.EUROSAT,
) -> dict[str, Any]:
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
        rng = seeded(seed, "eurosat-geo", key)
        ul = (float(rng.uniform(3e5, 7e5)), float(rng.uniform(4.5e6, 6.5e6)))
        transform = geo(*ul, 10.0057068871, 9.9940883412)
        (base / cls).mkdir(parents=True, exist_ok=True)
        path = base / cls / f"{key}.tif"
        write_tif(path, to_uint16(field[order]), CRS.from_epsg(32632), transform)
        labels[key] = [cls]
    return result(root, "eurosat-ms", classes, labels, {}, len(labels), data_dir=base)


def _eurosat_rgb(seed: int, size: int, ci: int, cls: str, key: str) -> np.ndarray:
    """The B04,B03,B02 composite of the EuroSAT-MS patch `key`, scaled as L1C."""
    field = _eurosat_field(seed, key, _class_index(cls, lbl.EUROSAT, ci), size)
    return to_rgb8(field, bands.S2_L1C, bands.RGB_SCALE["S2 L1C"])


def _resisc45_rgb(seed: int, size: int, ci: int, cls: str, key: str) -> np.ndarray:
    """Two shades of the class signature in blocks, as an L2A composite."""
    rng = seeded(seed, "resisc45", key)
    idx = _class_index(cls, lbl.RESISC45, ci)
    sigs = np.stack([spectral_signature(idx), spectral_signature(idx) * 0.85])
    field = render_optical(rng, sigs, label_map(rng, 2, size, grid=6))
    return to_rgb8(field, bands.S2_L1C, bands.RGB_SCALE["S2 L2A"])


def _shape_rgb(seed: int, size: int, ci: int, cls: str, key: str) -> np.ndarray:
    """The '<colour> <shape>' picture of item `key`."""
    return shape_image(seeded(seed, "shapes", key), cls, size)


def _shape_key(cls: str, n: int) -> str:
    """Item key of an image-folder picture: the class name with underscores, then n."""
    return f"{cls.replace(' ', '_')}_{n}"


def _write_pictures(
    base: Path,
    classes: Sequence[str],
    n_per_class: int,
    name: Callable[[str, int], str],
    suffix: str,
    draw: Callable[[int, str, str], np.ndarray],
) -> dict[str, list[str]]:
    """`<base>/<class>/<key><suffix>`, key = name(class, n), pictures drawn by
    `draw(class position, class, key)`; returns the labels by key."""
    labels = {}
    for ci, cls, n in _class_items(classes, n_per_class):
        key = name(cls, n)
        write_image(base / cls / f"{key}{suffix}", draw(ci, cls, key))
        labels[key] = [cls]
    return labels


def make_eurosat_rgb(
    root: str | Path,
    n_per_class: int = 10,
    *,
    size: int = 64,
    seed: int = 0,
    classes: Sequence[str] = lbl.EUROSAT,
) -> dict[str, Any]:
    """EuroSAT RGB: `2750/<Class>/<Class>_<n>.jpg` (JPEG quality 95); same scenes as
    :func:`make_eurosat_ms` with the same seed, composite B04,B03,B02 scaled by 3558 (L1C)."""
    root = Path(root)
    base = root / "2750"
    draw = functools.partial(_eurosat_rgb, seed, size)
    labels = _write_pictures(base, classes, n_per_class, "{}_{}".format, ".jpg", draw)
    return result(root, "eurosat", classes, labels, {}, len(labels), data_dir=base)


def make_resisc45(
    root: str | Path,
    n_per_class: int = 5,
    *,
    size: int = 64,
    seed: int = 0,
    classes: Sequence[str] | None = None,
) -> dict[str, Any]:
    """NWPU-RESISC45: `NWPU-RESISC45/<class>/<class>_<NNN>.jpg` (NNN from 001), RGB JPEGs.
    Default classes: the first 10 of labels.RESISC45."""
    classes = tuple(lbl.RESISC45[:10] if classes is None else classes)
    root = Path(root)
    base = root / "NWPU-RESISC45"
    draw = functools.partial(_resisc45_rgb, seed, size)
    labels = _write_pictures(base, classes, n_per_class, "{}_{:03d}".format, ".jpg", draw)
    return result(root, "resisc45", classes, labels, {}, len(labels), data_dir=base)


def make_imagefolder(
    root: str | Path,
    n_per_class: int = 10,
    *,
    size: int = 64,
    seed: int = 0,
    classes: Sequence[str] = SHAPE_CLASSES,
) -> dict[str, Any]:
    """Class-folder tree `<class>/<class_with_underscores>_<n>.png` of '<colour> <shape>' images
    (stand-in for ImageNet, CLIP's supported task): the class name describes the picture."""
    root = Path(root)
    for cls in classes:
        parse_shape_class(cls)
    draw = functools.partial(_shape_rgb, seed, size)
    labels = _write_pictures(root, classes, n_per_class, _shape_key, ".png", draw)
    return result(root, "imagefolder", classes, labels, {}, len(labels), data_dir=root)
