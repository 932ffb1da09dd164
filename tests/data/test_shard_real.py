"""Sharding the real BigEarthNet and EuroSAT files in tests/fixtures/real (see PROVENANCE.md)."""

from __future__ import annotations

import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio

from mtmg.data import bands, labels, shards
from mtmg.data.raw import DatasetError, SampleError

from conftest import REAL

BEN1 = REAL / "bigearthnet_v1"
S2 = BEN1 / "BigEarthNet-v1.0"


def test_bigearthnet_v1_official_splits_and_s1_pairs(shard, tmp_path):
    m = shard("bigearthnet", BEN1, s1=str(BEN1))
    # 4 of the 6 real patches are in the official train list, 1 in test, 1 is a snow patch.
    assert {s: v["count"] for s, v in m["splits"].items()} == {"train": 4, "val": 0, "test": 1}
    assert m["excluded"] == [{"key": "S2B_MSIL2A_20180204T94161_57_38", "reason": "seasonal snow"}]
    assert m["summary"] == {"inputs": 6, "written": 5, "excluded": 1, "rejected": 0}
    assert m["source"]["found_of_official"]["train"] == [4, 269_695]
    assert m["bands"] == list(bands.S2_L2A) and m["native_size"] == [120, 120]
    assert m["s1_bands"] == ["VV", "VH"]
    assert len(m["nomenclatures"]["ben19"]["map"]) == 43

    samples = {s["__key__"]: s for s in shards.iter_samples(tmp_path / "out-bigearthnet", "train")}
    key = "S2A_MSIL2A_20170617T113321_36_85"
    s = samples[key]
    assert s["ms.npy"].dtype == np.uint16 and s["ms.npy"].shape == (12, 120, 120)
    # 10 m bands byte-identical; 20 m and 60 m bands recoverable from the nearest upsampling
    for band, step in (("B02", 1), ("B08", 1), ("B8A", 2), ("B11", 2), ("B01", 6), ("B09", 6)):
        with rasterio.open(S2 / key / f"{key}_{band}.tif") as ds:
            src = ds.read(1)
        got = s["ms.npy"][bands.S2_L2A.index(band)][::step, ::step]
        assert got.tobytes() == src.tobytes(), band
    # S1 pair from the official mapping, VV then VH, float32 dB
    s1_name = "S1A_IW_GRDH_1SDV_20170617T064724_29UPU_36_85"
    assert s["json"]["s1"]["patch"] == s1_name
    assert "lry" in s["json"]["s1"]["coordinates"] and "acquisition_date" in s["json"]["s1"]
    with rasterio.open(BEN1 / "BigEarthNet-S1-v1.0" / s1_name / f"{s1_name}_VH.tif") as ds:
        np.testing.assert_array_equal(s["s1.npy"][1], ds.read(1))
    assert "EPSG" in s["json"]["source"]["projection"] and s["json"]["source"]["coordinates"]
    assert s["json"]["labels"] == s["json"]["source"]["labels"]

    index = pq.read_table(tmp_path / "out-bigearthnet" / "index.parquet").to_pylist()
    assert len(index) == 5 and {r["split"] for r in index} == {"train", "test"}
    row = next(r for r in index if r["key"] == key)
    assert row["shard"] == "train/train-000000.tar" and row["labels"] == s["json"]["labels"]


@pytest.mark.parametrize("method", ["bilinear", "bicubic"])
def test_bigearthnet_v1_resampling_options_keep_10m_bands(shard, tmp_path, method):
    """Format 1 resamples while sharding, with GDAL; the 10 m bands stay as they are."""
    m = shard("bigearthnet", BEN1, resample=method, format=1)
    assert m["resampling"]["method"] == method
    s = next(shards.iter_samples(tmp_path / "out-bigearthnet", "test"))
    key = s["__key__"]
    with rasterio.open(S2 / key / f"{key}_B04.tif") as ds:
        assert s["ms.npy"][3].tobytes() == ds.read(1).tobytes()
    with rasterio.open(S2 / key / f"{key}_B05.tif") as ds:
        b05 = ds.read(1).astype(float)
    up = s["ms.npy"][4].astype(float)
    assert abs(up.mean() - b05.mean()) < 0.02 * b05.mean()  # same field, smoothly resampled
    assert not np.array_equal(up, b05.repeat(2, 0).repeat(2, 1))  # not nearest


def test_bigearthnet_v2_real_patch(shard, tmp_path):
    m = shard("bigearthnet-v2", REAL / "bigearthnet_v2")
    assert m["summary"]["written"] == 1 and m["label_nomenclature"] == "ben19"
    split = next(s for s, v in m["splits"].items() if v["count"])
    s = next(shards.iter_samples(tmp_path / "out-bigearthnet-v2", split))
    assert s["ms.npy"].shape == (12, 120, 120) and s["ms.npy"].dtype == np.uint16
    assert s["json"]["labels"] and set(s["json"]["labels"]) <= set(labels.BEN19)


def test_bigearthnet_v2_real_s1_pair_missing_is_named(shard, tmp_path):
    # The real S1 patch shipped beside it belongs to another S2 patch: metadata.parquet pairs
    # this one with ..._33UUP_75_43, which the tree lacks.
    s1 = str(REAL / "bigearthnet_v2" / "BigEarthNet-S1")
    with pytest.raises(SampleError, match=r"75_43_VV\.tif\): file is missing"):
        shard("bigearthnet-v2", REAL / "bigearthnet_v2", s1=s1)
    assert not (tmp_path / "out-bigearthnet-v2" / "manifest.json").exists()
    # with --skip-bad nothing is left to write: that is an error saying why, not an empty set
    with pytest.raises(DatasetError, match=r"no sample was written .*1 rejected: file is missing"):
        shard("bigearthnet-v2", REAL / "bigearthnet_v2", s1=s1, skip_bad=True, overwrite=True)
    assert not (tmp_path / "out-bigearthnet-v2" / "manifest.json").exists()


def test_eurosat_ms_real_files_reordered_to_l1c(shard, tmp_path):
    root = tmp_path / "eurosat"
    shutil.copytree(REAL / "eurosat_ms", root)
    m = shard("eurosat-ms", root, out=tmp_path / "o")
    assert m["bands"] == list(bands.S2_L1C) and m["native_size"] == [64, 64]
    assert m["summary"]["written"] == 3
    got = {}
    for split in ("train", "val", "test"):
        if m["splits"][split]["count"]:
            got.update({s["__key__"]: s for s in shards.iter_samples(tmp_path / "o", split)})
    s = got["Pasture_300"]
    with rasterio.open(root / "Pasture" / "Pasture_300.tif") as ds:
        src = ds.read()
    # the file stores B8A 13th; mtmg stores it 9th (L1C order)
    np.testing.assert_array_equal(s["ms.npy"][8], src[12])
    np.testing.assert_array_equal(s["ms.npy"][9], src[8])  # B09
    assert s["cls"] == m["nomenclatures"]["eurosat-ms"]["classes"].index("Pasture")


def test_eurosat_rgb_keeps_jpeg_bytes(shard, tmp_path):
    root = tmp_path / "EuroSAT"
    shutil.copytree(REAL / "eurosat_rgb", root / "2750")
    m = shard("eurosat", root, out=tmp_path / "o")
    assert m["summary"]["written"] == 3 and m["modality"] == "RGB"
    for split in ("train", "val", "test"):
        if m["splits"][split]["count"]:
            for s in shards.iter_samples(tmp_path / "o", split, decode=False):
                cls = m["nomenclatures"]["eurosat"]["classes"][int(s["cls"])]
                src = (root / "2750" / cls / f"{s['__key__']}.jpg").read_bytes()
                assert s["rgb.jpg"] == src
