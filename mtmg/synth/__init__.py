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

Modules mirror the readers of :mod:`mtmg.data.raw`: ``bigearthnet`` (v1), ``bigearthnet_v2``,
``folders`` (EuroSAT, RESISC45, image folders), ``sen12ms``; under them ``signatures``,
``render``, ``shapes`` and ``common``; ``cli`` is ``python -m mtmg.synth``. This package's
namespace is the facade that tests, benches and the demo use.
"""

from __future__ import annotations

from mtmg.synth.bigearthnet import CLC_CODES, make_bigearthnet
from mtmg.synth.bigearthnet_v2 import make_bigearthnet_v2
from mtmg.synth.cli import main
from mtmg.synth.folders import make_eurosat_ms, make_eurosat_rgb, make_imagefolder, make_resisc45
from mtmg.synth.sen12ms import make_sen12ms
from mtmg.synth.shapes import SHAPE_CLASSES
from mtmg.synth.signatures import sar_signature, spectral_signature

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
    "CLC_CODES",
    "SHAPE_CLASSES",
]
