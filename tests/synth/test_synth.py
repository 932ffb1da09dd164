"""mtmg.synth writes the real on-disk layouts of docs/datasets.md (real reads)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
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

from mtmg import synth
from mtmg.data import bands
from mtmg.data import labels as lbl

from conftest import REAL

BAND_PX = {b: 120 // (bands.S2_GSD[b] // 10) for b in bands.S2_L2A}  # 120 / 60 / 20


def _tif(path: Path) -> tuple[dict, np.ndarray]:
    with rasterio.open(path) as src:
        info = {
            "count": src.count,
            "dtype": src.dtypes[0],
            "shape": src.shape,
            "nodata": src.nodata,
            "compression": src.compression,
            "interleave": src.interleaving,
            "epsg": src.crs.to_epsg(),
            "res": src.res,
            "ul": (src.transform.c, src.transform.f),
        }
        return info, src.read()


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def ben(tmp_path_factory):
    return synth.make_bigearthnet(tmp_path_factory.mktemp("ben"), n_patches=12)


@pytest.fixture(scope="module")
def ben_v2(tmp_path_factory):
    return synth.make_bigearthnet_v2(tmp_path_factory.mktemp("ben2"), n_patches=10)


@pytest.fixture(scope="module")
def eurosat_ms(tmp_path_factory):
    return synth.make_eurosat_ms(tmp_path_factory.mktemp("eurosat_ms"), n_per_class=4)


# ------------------------------------------------------------------ BigEarthNet v1


def test_bigearthnet_s2_layout_and_bands(ben):
    s2_root = ben["root"] / "BigEarthNet-v1.0"
    patches = sorted(p.name for p in s2_root.iterdir())
    assert patches == sorted(ben["labels"]) and len(patches) == 12
    assert all(BEN_S2_RE.fullmatch(p) for p in patches)
    assert any(re.search(r"T\d{5}_\d+_\d+$", p) for p in patches), "one-digit-hour quirk missing"
    for patch in patches[:4]:
        files = sorted(f.name for f in (s2_root / patch).iterdir())
        expected = [f"{patch}_{b}.tif" for b in bands.S2_L2A] + [f"{patch}_labels_metadata.json"]
        assert files == sorted(expected)  # 12 bands, no B10
        infos = {b: _tif(s2_root / patch / f"{patch}_{b}.tif")[0] for b in bands.S2_L2A}
        for b, info in infos.items():
            assert info["count"] == 1 and info["dtype"] == "uint16" and info["nodata"] is None
            assert info["shape"] == (BAND_PX[b], BAND_PX[b]) and info["compression"] is None
            assert info["res"] == (bands.S2_GSD[b], bands.S2_GSD[b])
            assert 32629 <= info["epsg"] <= 32636
        assert len({i["ul"] for i in infos.values()}) == 1  # shared upper-left corner


def test_bigearthnet_s2_json(ben):
    s2_root = ben["root"] / "BigEarthNet-v1.0"
    for patch, names in ben["labels"].items():
        meta = json.loads((s2_root / patch / f"{patch}_labels_metadata.json").read_text())
        assert set(meta) == BEN_S2_V1_0_JSON_KEYS
        assert meta["labels"] == names and 1 <= len(names) <= 3
        assert all(lbl.BEN43_TO_19[lbl.BEN43.index(n)] is not None for n in names)
        assert names == sorted(names, key=lbl.BEN43.index)
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", meta["acquisition_date"])
        assert meta["tile_source"].endswith(".SAFE") and "PROJCS" in meta["projection"]
        with rasterio.open(s2_root / patch / f"{patch}_B02.tif") as src:
            left, bottom, right, top = src.bounds
        assert meta["coordinates"] == {"ulx": left, "uly": top, "lrx": right, "lry": bottom}


def test_bigearthnet_s1_quirks(ben):
    s1_root = ben["root"] / "BigEarthNet-S1-v1.0"
    assert len(ben["s2_to_s1"]) == 12
    for s2, s1 in list(ben["s2_to_s1"].items())[:4]:
        assert BEN_S1_RE.fullmatch(s1) and s1.split("_")[-2:] == s2.split("_")[-2:]
        assert sorted(f.name for f in (s1_root / s1).iterdir()) == sorted(
            [f"{s1}_VH.tif", f"{s1}_VV.tif", f"{s1}_labels_metadata.json"]
        )
        meta = json.loads((s1_root / s1 / f"{s1}_labels_metadata.json").read_text())
        assert set(meta) == BEN_S1_V1_0_JSON_KEYS
        assert set(meta["coordinates"]) == {"ulx", "uly", "lrx", "lly"}  # the real typo
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", meta["acquisition_time"])
        assert meta["corresponding_s2_patch"] == s2 and meta["labels"] == ben["labels"][s2]
        s2_ul = _tif(ben["root"] / "BigEarthNet-v1.0" / s2 / f"{s2}_B04.tif")[0]["ul"]
        for pol, centre in (("VV", -12), ("VH", -19)):
            info, arr = _tif(s1_root / s1 / f"{s1}_{pol}.tif")
            assert info["dtype"] == "float32" and info["shape"] == (120, 120)
            assert info["ul"] == s2_ul and abs(arr.mean() - centre) < 8


def test_bigearthnet_split_files(ben):
    splits = {
        s: (ben["root"] / f"{s}.csv").read_text().splitlines() for s in ("train", "val", "test")
    }
    assert splits == ben["splits"]
    for keys, fraction in zip(splits.values(), (0.6, 0.2, 0.2), strict=True):
        assert abs(len(keys) - fraction * 12) < 1
    everything = [k for v in splits.values() for k in v]
    assert sorted(everything) == sorted(ben["labels"])  # disjoint and complete, no header


def test_bigearthnet_matches_real_v1_layout(ben):
    real = REAL / "bigearthnet_v1" / "BigEarthNet-v1.0" / "S2A_MSIL2A_20170613T101031_87_48"
    synth_patch = next(iter(ben["labels"]))
    for b in bands.S2_L2A:
        r = _tif(real / f"{real.name}_{b}.tif")[0]
        s = _tif(ben["root"] / "BigEarthNet-v1.0" / synth_patch / f"{synth_patch}_{b}.tif")[0]
        for key in ("count", "dtype", "shape", "nodata", "compression", "res"):
            assert r[key] == s[key], (b, key)


def test_bigearthnet_options(tmp_path):
    info = synth.make_bigearthnet(
        tmp_path, 3, size=60, s1=False, split_files=False, classes=["Sea and ocean"]
    )
    assert not (tmp_path / "BigEarthNet-S1-v1.0").exists() and not (tmp_path / "train.csv").exists()
    assert all(v == ["Sea and ocean"] for v in info["labels"].values()) and info["splits"] == {}
    patch = next(iter(info["labels"]))
    assert _tif(tmp_path / "BigEarthNet-v1.0" / patch / f"{patch}_B01.tif")[0]["shape"] == (10, 10)
    with pytest.raises(ValueError, match="multiple of 6"):
        synth.make_bigearthnet(tmp_path / "x", 2, size=64)
    with pytest.raises(ValueError, match="unknown"):
        synth.make_bigearthnet(tmp_path / "y", 2, classes=["Forest"])


# ------------------------------------------------------------------ BigEarthNet v2


def test_bigearthnet_v2_metadata(ben_v2):
    path = ben_v2["root"] / "metadata.parquet"
    expected = pq.read_schema(REAL / "bigearthnet_v2" / "metadata.parquet")
    table = pq.read_table(path)
    assert table.schema.remove_metadata().equals(expected.remove_metadata())
    assert pq.ParquetFile(path).metadata.row_group(0).column(0).compression == "ZSTD"
    rows = table.to_pylist()
    assert [r["patch_id"] for r in rows] == sorted(ben_v2["labels"])
    assert {r["split"] for r in rows} == {"train", "validation", "test"}
    for r in rows:
        assert r["labels"] == sorted(r["labels"]) and set(r["labels"]) <= set(lbl.BEN19)
        assert r["labels"] == ben_v2["labels"][r["patch_id"]]
        assert BEN_S2_RE.fullmatch(r["s2v1_name"]) and BEN_S1_RE.fullmatch(r["s1_name"])
        assert not r["contains_seasonal_snow"] and not r["contains_cloud_or_shadow"]
        assert r["patch_id"] in ben_v2["splits"][r["split"]]
    assert pa.types.is_list(table.schema.field("labels").type)


def test_bigearthnet_v2_layout(ben_v2):
    root = ben_v2["root"]
    assert not list(root.rglob("*.json"))  # v2 has no per-patch JSON
    for patch_id, s1_name in list(ben_v2["s2_to_s1"].items())[:3]:
        folder = root / "BigEarthNet-S2" / "_".join(patch_id.split("_")[:-2]) / patch_id
        assert re.fullmatch(r"S2[AB]_MSIL2A_\d{8}T\d{6}_N9999_R\d{3}_T\w{5}_\d+_\d+", patch_id)
        for b in bands.S2_L2A:
            info = _tif(folder / f"{patch_id}_{b}.tif")[0]
            assert info["dtype"] == "uint16" and info["nodata"] == 0
            assert info["shape"] == (BAND_PX[b], BAND_PX[b]) and info["compression"] is None
        ref = root / "Reference_Maps" / folder.parent.name / patch_id
        with rasterio.open(ref / f"{patch_id}_reference_map.tif") as src:
            assert (src.dtypes[0], src.shape, src.nodata) == ("uint16", (120, 120), 0)
            assert src.compression == Compression.deflate
            codes = set(np.unique(src.read(1)).tolist())
        named = {synth.CLC_CODES[i] for i, _ in enumerate(lbl.BEN43)}
        assert codes <= named and len(codes) >= len(ben_v2["labels"][patch_id])
        s1_folder = root / "BigEarthNet-S1" / "_".join(s1_name.split("_")[:-3]) / s1_name
        for pol in bands.S1:
            info = _tif(s1_folder / f"{s1_name}_{pol}.tif")[0]
            assert info["dtype"] == "float32" and info["shape"] == (120, 120)


# ------------------------------------------------------------------ EuroSAT, RESISC45


def test_eurosat_ms_layout(eurosat_ms):
    base = eurosat_ms["root"] / "ds/images/remote_sensing/otherDatasets/sentinel_2/tif"
    assert sorted(p.name for p in base.iterdir()) == sorted(lbl.EUROSAT)
    assert sorted(p.name for p in (base / "Forest").iterdir()) == [
        f"Forest_{n}.tif" for n in range(1, 5)
    ]
    info, arr = _tif(base / "SeaLake" / "SeaLake_1.tif")
    assert info["count"] == 13 and info["dtype"] == "uint16" and info["shape"] == (64, 64)
    assert info["compression"] is None and info["interleave"] == Interleaving.pixel


def _class_means(result: dict, base: Path) -> dict[str, np.ndarray]:
    means: dict[str, list[np.ndarray]] = {}
    for key, (cls,) in result["labels"].items():
        means.setdefault(cls, []).append(_tif(base / cls / f"{key}.tif")[1].mean(axis=(1, 2)))
    return {c: np.mean(v, axis=0) for c, v in means.items()}


def test_eurosat_ms_band_order_b8a_last(eurosat_ms):
    base = eurosat_ms["root"] / "ds/images/remote_sensing/otherDatasets/sentinel_2/tif"
    means = _class_means(eurosat_ms, base)
    file_pos = {b: i for i, b in enumerate(bands.EUROSAT_MS_FILE_ORDER)}
    for ci, cls in enumerate(lbl.EUROSAT):
        sig = dict(zip(bands.S2_L1C, synth.spectral_signature(ci, "L1C"), strict=True))
        assert means[cls][12] == pytest.approx(sig["B8A"], rel=0.15)  # band 13 is B8A
        assert means[cls][8] == pytest.approx(sig["B09"], rel=0.15)  # band 9 is B09
        assert means[cls][file_pos["B10"]] < 30  # cirrus band stays tiny (L1C-like)


def test_classes_have_distinct_spectra(eurosat_ms):
    base = eurosat_ms["root"] / "ds/images/remote_sensing/otherDatasets/sentinel_2/tif"
    means = _class_means(eurosat_ms, base)
    centroids = np.stack([means[c] for c in lbl.EUROSAT])
    dist = np.linalg.norm(centroids[:, None] - centroids[None], axis=-1)
    assert dist[~np.eye(len(centroids), dtype=bool)].min() > 200
    for key, (cls,) in eurosat_ms["labels"].items():  # nearest-centroid is perfect: learnable
        spectrum = _tif(base / cls / f"{key}.tif")[1].mean(axis=(1, 2))
        assert lbl.EUROSAT[np.argmin(np.linalg.norm(centroids - spectrum, axis=1))] == cls


def test_rgb_composites_visibly_differ():
    for n in (10, 43):
        sigs = np.stack([synth.spectral_signature(i) for i in range(n)])
        rgb = sigs[:, [3, 2, 1]] / bands.RGB_SCALE["S2 L2A"] * 255  # B04, B03, B02
        assert rgb.max() <= 255 and rgb.min() >= 0
        dist = np.linalg.norm(rgb[:, None] - rgb[None], axis=-1)
        assert dist[~np.eye(n, dtype=bool)].min() > 30  # of 0..255 levels
    vv, vh = np.stack([synth.sar_signature(i) for i in range(43)]).mean(axis=0)
    assert abs(vv + 12) < 2 and abs(vh + 19) < 2


def test_bigearthnet_pixels_follow_labels(tmp_path):
    """Single-label patches have the mean spectrum of their class signature."""
    ben = synth.make_bigearthnet(tmp_path, n_patches=30, s1=False)
    root = ben["root"] / "BigEarthNet-v1.0"
    singles = [(k, v[0]) for k, v in ben["labels"].items() if len(v) == 1]
    assert singles
    for patch, name in singles:
        sig = synth.spectral_signature(lbl.BEN43.index(name))
        got = [_tif(root / patch / f"{patch}_{b}.tif")[1].mean() for b in bands.S2_L2A]
        want = [sig[bands.S2_L1C.index(b)] for b in bands.S2_L2A]
        np.testing.assert_allclose(got, want, rtol=0.15)


def test_eurosat_rgb_and_resisc45(tmp_path):
    rgb = synth.make_eurosat_rgb(tmp_path / "e", n_per_class=2, classes=("Forest", "River"))
    files = sorted(p.relative_to(tmp_path / "e").as_posix() for p in (tmp_path / "e").rglob("*"))
    assert [f for f in files if f.endswith(".jpg")] == [
        "2750/Forest/Forest_1.jpg",
        "2750/Forest/Forest_2.jpg",
        "2750/River/River_1.jpg",
        "2750/River/River_2.jpg",
    ]
    with Image.open(tmp_path / "e/2750/River/River_2.jpg") as im:
        assert im.format == "JPEG" and im.mode == "RGB" and im.size == (64, 64)
    assert rgb["labels"]["River_1"] == ["River"]
    res = synth.make_resisc45(tmp_path / "r", n_per_class=2)
    assert res["classes"] == list(lbl.RESISC45[:10])
    files = sorted((tmp_path / "r/NWPU-RESISC45/airplane").iterdir())
    assert [f.name for f in files] == ["airplane_001.jpg", "airplane_002.jpg"]
    with Image.open(files[0]) as im:
        assert im.format == "JPEG" and im.size == (64, 64)


# ------------------------------------------------------------------ SEN12MS, imagefolder


def test_sen12ms_layout(tmp_path):
    info = synth.make_sen12ms(tmp_path, n_scenes=4, patches_per_scene=3, size=32)
    season = tmp_path / "ROIs1158_spring"
    assert sorted(p.name for p in season.iterdir()) == sorted(
        f"{m}_{s}" for m in ("s1", "s2", "lc") for s in range(1, 5)
    )
    train = (tmp_path / "train_list.txt").read_text().splitlines()
    test = (tmp_path / "test_list.txt").read_text().splitlines()
    assert (len(train), len(test)) == (9, 3)  # 3 + 1 scenes
    scene_of = {name: name.split("_")[3] for name in train + test}
    assert not {scene_of[n] for n in train} & {scene_of[n] for n in test}
    for name in train + test:
        scene = scene_of[name]
        s2 = _tif(season / f"s2_{scene}" / name)
        lc = _tif(season / f"lc_{scene}" / name.replace("_s2_", "_lc_"))
        s1 = _tif(season / f"s1_{scene}" / name.replace("_s2_", "_s1_"))
        assert (s2[0]["count"], s2[0]["dtype"], s2[0]["shape"]) == (13, "uint16", (32, 32))
        assert (lc[0]["count"], lc[0]["dtype"]) == (4, "uint16") and s1[0]["count"] == 2
        assert s1[0]["dtype"] == "float32" and 1 <= lc[1][0].min() <= lc[1][0].max() <= 17
        assert set(info["labels"][name[:-4]]) <= set(lbl.SEN12MS_IGBP10)


def test_imagefolder(tmp_path):
    info = synth.make_imagefolder(tmp_path, n_per_class=3, size=48)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(info["classes"])
    assert [p.name for p in sorted((tmp_path / "red circle").iterdir())] == [
        "red_circle_1.png",
        "red_circle_2.png",
        "red_circle_3.png",
    ]
    colours = {"red": (220, 40, 40), "blue": (40, 80, 225), "yellow": (240, 215, 40)}
    for cls in ("red circle", "blue square", "yellow star"):
        for path in (tmp_path / cls).iterdir():
            with Image.open(path) as im:
                assert im.mode == "RGB" and im.size == (48, 48)
                px = np.asarray(im, dtype=float)
            near = np.linalg.norm(px - colours[cls.split()[0]], axis=-1) < 60
            assert near.mean() > 0.04, f"{path.name}: shape colour not visible"
    with pytest.raises(ValueError, match="colour"):
        synth.make_imagefolder(tmp_path / "bad", classes=("tabby cat",))


# ------------------------------------------------------------------ determinism, CLI

SMALL = {
    "bigearthnet": lambda r, s: synth.make_bigearthnet(r, 4, size=60, seed=s),
    "bigearthnet_v2": lambda r, s: synth.make_bigearthnet_v2(r, 4, size=60, seed=s),
    "eurosat_ms": lambda r, s: synth.make_eurosat_ms(r, 1, size=16, seed=s),
    "eurosat_rgb": lambda r, s: synth.make_eurosat_rgb(r, 1, size=16, seed=s),
    "resisc45": lambda r, s: synth.make_resisc45(r, 1, size=16, seed=s),
    "sen12ms": lambda r, s: synth.make_sen12ms(r, 2, 2, size=16, seed=s),
    "imagefolder": lambda r, s: synth.make_imagefolder(r, 1, size=24, seed=s),
}


@pytest.mark.parametrize("kind", sorted(SMALL))
def test_deterministic(kind, tmp_path):
    make = SMALL[kind]
    first, second = make(tmp_path / "a", 3), make(tmp_path / "b", 3)
    a, b = _tree_bytes(tmp_path / "a"), _tree_bytes(tmp_path / "b")
    assert a and a == b  # byte-identical files
    assert first["labels"] == second["labels"] and first["splits"] == second["splits"]
    assert set(first) >= {"root", "kind", "classes", "files", "labels", "splits"}
    assert first["files"] == len(a)
    make(tmp_path / "c", 4)
    assert _tree_bytes(tmp_path / "c") != a  # another seed gives other data


def test_cli(tmp_path, capsys):
    assert synth.main(["eurosat-ms", "--out", str(tmp_path), "--n", "1", "--size", "8"]) == 0
    assert "eurosat-ms: 10 items" in capsys.readouterr().out
    assert synth.main(["bigearthnet", "--out", str(tmp_path / "b"), "--size", "64"]) == 2
    with pytest.raises(SystemExit) as exc:
        synth.main(["--help"])
    assert exc.value.code == 0 and "BigEarthNet-S1/<S1 product>" in capsys.readouterr().out
    out = subprocess.run(
        [sys.executable, "-m", "mtmg.synth", "sen12ms", "--out", str(tmp_path / "s"), "--n", "1"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "sen12ms: 5 items" in out and (tmp_path / "s" / "train_list.txt").exists()
