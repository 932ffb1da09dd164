"""The real samples in tests/fixtures/real have the facts docs/datasets.md states (real reads)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio
from bigearthnet_common.constants import (
    BEN_S1_RE,
    BEN_S1_V1_0_JSON_KEYS,
    BEN_S2_RE,
    BEN_S2_V1_0_JSON_KEYS,
)
from PIL import Image
from rasterio.enums import Compression, Interleaving

from mtmg.data import bands
from mtmg.data import labels as lbl

from conftest import REAL

V1_S2 = REAL / "bigearthnet_v1" / "BigEarthNet-v1.0"
V1_S1 = REAL / "bigearthnet_v1" / "BigEarthNet-S1-v1.0"
V2 = REAL / "bigearthnet_v2"
V2_PRODUCT = "S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP"
BAND_PX = {b: 120 // (bands.S2_GSD[b] // 10) for b in bands.S2_L2A}


def _open(path: Path):
    return rasterio.open(path)


def test_real_tree_is_self_contained():
    assert (REAL / "PROVENANCE.md").is_file()
    assert not [p for p in REAL.rglob("*") if p.is_symlink()]
    assert len(list(V1_S2.iterdir())) == 6 and len(list(V1_S1.iterdir())) == 6


@pytest.mark.parametrize("patch", sorted(p.name for p in V1_S2.iterdir()))
def test_v1_s2_patch(patch):
    assert BEN_S2_RE.fullmatch(patch)
    folder = V1_S2 / patch
    for b in bands.S2_L2A:
        with _open(folder / f"{patch}_{b}.tif") as src:
            assert (src.count, src.dtypes[0], src.nodata) == (1, "uint16", None)
            assert src.shape == (BAND_PX[b], BAND_PX[b]) and src.compression is None
            assert src.res == (bands.S2_GSD[b],) * 2 and 32629 <= src.crs.to_epsg() <= 32636
    assert not list(folder.glob("*_B10.tif"))
    meta = json.loads((folder / f"{patch}_labels_metadata.json").read_text())
    assert set(meta) == BEN_S2_V1_0_JSON_KEYS and set(meta["labels"]) <= set(lbl.BEN43)
    assert set(meta["coordinates"]) == {"ulx", "uly", "lrx", "lry"}


def test_v1_one_digit_hour_quirk():
    names = {p.name for p in V1_S2.iterdir()}
    assert {"S2B_MSIL2A_20170924T93020_69_24", "S2B_MSIL2A_20180204T94161_57_38"} <= names


@pytest.mark.parametrize("patch", sorted(p.name for p in V1_S1.iterdir()))
def test_v1_s1_patch(patch):
    assert BEN_S1_RE.fullmatch(patch)
    meta = json.loads((V1_S1 / patch / f"{patch}_labels_metadata.json").read_text())
    assert set(meta) == BEN_S1_V1_0_JSON_KEYS
    assert set(meta["coordinates"]) == {"ulx", "uly", "lrx", "lly"}  # the real typo
    assert "T" in meta["acquisition_time"] and (V1_S2 / meta["corresponding_s2_patch"]).is_dir()
    s2 = meta["corresponding_s2_patch"]
    with _open(V1_S2 / s2 / f"{s2}_B02.tif") as ref:
        corner = (ref.transform.c, ref.transform.f)
    for pol in bands.S1:
        with _open(V1_S1 / patch / f"{patch}_{pol}.tif") as src:
            assert (src.count, src.dtypes[0], src.shape) == (1, "float32", (120, 120))
            assert (src.transform.c, src.transform.f) == corner
            assert -60 < float(src.read(1).mean()) < 10  # backscatter in dB


def test_v2_s2_s1_and_reference_map():
    patch = f"{V2_PRODUCT}_75_43"
    for b in bands.S2_L2A:
        with _open(V2 / "BigEarthNet-S2" / V2_PRODUCT / patch / f"{patch}_{b}.tif") as src:
            assert (src.dtypes[0], src.nodata, src.compression) == ("uint16", 0, None)
            assert src.shape == (BAND_PX[b], BAND_PX[b])  # B01/B09 are 20x20, not 30x30
    s1 = "S1A_IW_GRDH_1SDV_20170613T165043_33UUP_70_48"
    for pol in bands.S1:
        path = V2 / "BigEarthNet-S1" / "_".join(s1.split("_")[:-3]) / s1 / f"{s1}_{pol}.tif"
        with _open(path) as src:
            assert (src.dtypes[0], src.shape, src.nodata) == ("float32", (120, 120), None)
    ref = f"{V2_PRODUCT}_26_57"
    with _open(V2 / "Reference_Maps" / V2_PRODUCT / ref / f"{ref}_reference_map.tif") as src:
        assert (src.dtypes[0], src.shape, src.nodata) == ("uint16", (120, 120), 0)
        assert src.compression == Compression.deflate
        codes = set(np.unique(src.read(1)).tolist())
    assert codes and all(c == 999 or 111 <= c <= 523 for c in codes)  # raw CLC codes


def test_v2_metadata_subset():
    table = pq.read_table(V2 / "metadata.parquet")
    assert table.column_names == [
        "patch_id",
        "labels",
        "split",
        "country",
        "s1_name",
        "s2v1_name",
        "contains_seasonal_snow",
        "contains_cloud_or_shadow",
    ]
    assert str(table.schema.field("labels").type) == "list<element: string>"
    assert pq.ParquetFile(V2 / "metadata.parquet").metadata.row_group(0).column(0).compression == (
        "ZSTD"
    )
    rows = {r["patch_id"]: r for r in table.to_pylist()}
    assert table.num_rows == 203 and {r["split"] for r in rows.values()} == {
        "train",
        "validation",
        "test",
    }
    ids = table.column("patch_id").to_pylist()
    assert ids == sorted(ids)
    for r in rows.values():
        assert r["labels"] == sorted(r["labels"]) and set(r["labels"]) <= set(lbl.BEN19)
    present = rows[f"{V2_PRODUCT}_75_43"]
    assert present["split"] == "validation"
    assert present["s1_name"] == "S1A_IW_GRDH_1SDV_20170613T165043_33UUP_75_43"  # not the S1 here
    assert rows[f"{V2_PRODUCT}_70_48"]["s1_name"].endswith("_33UUP_70_48")
    assert rows[f"{V2_PRODUCT}_26_57"]["split"] == "test"


@pytest.mark.parametrize(
    "name", ["AnnualCrop/AnnualCrop_1", "Pasture/Pasture_300", "SeaLake/SeaLake_3000"]
)
def test_eurosat_real(name):
    with _open(REAL / "eurosat_ms" / f"{name}.tif") as src:
        assert (src.count, src.shape, src.compression) == (13, (64, 64), None)
        assert set(src.dtypes) == {"uint16"} and src.interleaving == Interleaving.pixel
        means = src.read().mean(axis=(1, 2))
    pos = {b: i for i, b in enumerate(bands.EUROSAT_MS_FILE_ORDER)}
    assert means[pos["B10"]] < 50  # band 10 is the cirrus band, ~10
    assert means[pos["B8A"]] == pytest.approx(means[pos["B08"]], rel=0.35)  # band 13 NIR like B08
    with Image.open(REAL / "eurosat_rgb" / f"{name}.jpg") as im:
        assert (im.format, im.mode, im.size) == ("JPEG", "RGB", (64, 64))
