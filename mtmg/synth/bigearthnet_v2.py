"""BigEarthNet v2.0 (reBEN): product folders, reference maps and `metadata.parquet`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from rasterio.crs import CRS

from mtmg.data import labels as lbl
from mtmg.synth.bigearthnet import (
    BEN_POOL,
    BenPatch,
    ben_patches,
    check_size,
    pick_labels,
    render_ben,
    write_l2a_bands,
    write_s1_pair,
)
from mtmg.synth.common import assign_splits, geo, result, seeded, write_tif

_SCHEMA = pa.schema(
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


def _row(p: BenPatch, labels19: list[str], split: str) -> dict[str, Any]:
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


def _write_metadata(path: Path, rows: list[dict[str, Any]]) -> None:
    cols = {f.name: [r[f.name] for r in rows] for f in _SCHEMA}
    pq.write_table(pa.table(cols, schema=_SCHEMA), path, compression="zstd")


def _write_patch(
    root: Path, p: BenPatch, names43: list[str], size: int, seed: int, s1: bool, maps: bool
) -> int:
    """All files of one v2 patch (S2 with nodata 0, S1, reference map); returns the file count."""
    s2_field, sar, clc = render_ben(seeded(seed, p.v2), names43, size)
    crs, ul = CRS.from_epsg(p.tile.epsg), p.corner(size)
    files = write_l2a_bands(
        root / "BigEarthNet-S2" / p.tile.s2_v2 / p.v2, p.v2, s2_field, crs, ul, nodata=0
    )
    if s1:
        files += write_s1_pair(root / "BigEarthNet-S1" / p.tile.s1 / p.s1, p.s1, sar, crs, ul)
    if maps:
        folder = root / "Reference_Maps" / p.tile.s2_v2 / p.v2
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{p.v2}_reference_map.tif"
        write_tif(path, clc[None], crs, geo(*ul, 10), 0, compress="deflate", predictor=2)
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
) -> dict[str, Any]:
    """BigEarthNet v2.0 (reBEN): `BigEarthNet-S2/<product>/<patch_id>/` (nodata=0 tifs),
    `BigEarthNet-S1/<S1 product>/<s1_name>/`, `Reference_Maps/<product>/<patch_id>/` (raw CLC
    codes, DEFLATE) and `metadata.parquet` (19-class labels sorted alphabetically; splits
    train/validation/test). Extra keys: "s2_to_s1" (patch_id -> s1_name), "metadata".
    """
    check_size(size)
    root = Path(root)
    patches = sorted(ben_patches(n_patches, seed), key=lambda p: p.v2)
    names = ("train", "validation", "test")
    splits = assign_splits([p.v2 for p in patches], fractions, names, seed)
    split_of = {k: s for s, keys in splits.items() for k in keys}
    labels, s2_to_s1, rows, files = {}, {}, [], 1
    for p in patches:
        names43 = pick_labels(seeded(seed, p.v2, "labels"), BEN_POOL)
        files += _write_patch(root, p, names43, size, seed, s1, reference_maps)
        labels[p.v2], s2_to_s1[p.v2] = _ben19_names(names43), p.s1
        rows.append(_row(p, labels[p.v2], split_of[p.v2]))
    _write_metadata(root / "metadata.parquet", rows)
    extra = {"s2_to_s1": s2_to_s1, "metadata": root / "metadata.parquet"}
    return result(root, "bigearthnet-v2", lbl.BEN19, labels, splits, files, **extra)
