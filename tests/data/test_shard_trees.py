"""Every real tree prep meets: bands already on one grid, tiny patches, a patch in two split
files, runs that write no sample (real Ray, rasterio and webdataset on generated trees)."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio

from mtmg import synth
from mtmg.data import bands, shards
from mtmg.data.raw import DatasetError, SampleError
from mtmg.prep import main as shard_main


def _rewrite_band(path, size, fill=None):
    """Store a band file at `size` x `size` (nearest-upsampled, or `fill` when given)."""
    with rasterio.open(path) as ds:
        profile, arr = ds.profile, ds.read(1)
    if fill is None:
        f = size // arr.shape[0]
        data = arr.repeat(f, 0).repeat(f, 1) if f >= 1 else arr[:size, :size]
    else:
        data = np.full((size, size), fill, np.uint16)
    profile.update(width=size, height=size)
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(data[None])


def _on_one_grid(root, size):
    for folder in (root / "BigEarthNet-v1.0").iterdir():
        for band in bands.S2_L2A:
            if bands.S2_GSD[band] > 10:
                _rewrite_band(folder / f"{folder.name}_{band}.tif", size)


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "raw"
    info = synth.make_bigearthnet(root, n_patches=8, size=60, s1=False, seed=9)
    return root, sorted(info["labels"])


def test_bands_already_on_one_grid_are_stored_as_read(shard, tmp_path, tree):
    root, keys = tree
    _on_one_grid(root, 60)
    m = shard("bigearthnet", root, out=tmp_path / "o")
    assert m["summary"]["written"] == 8 and m["native_size"] == [60, 60]
    assert m["resampling"]["method"] == "none" and "one grid" in m["resampling"]["note"]
    s = next(shards.iter_samples(tmp_path / "o", "train"))
    key = s["__key__"]
    for band in ("B01", "B05", "B02"):
        with rasterio.open(root / "BigEarthNet-v1.0" / key / f"{key}_{band}.tif") as ds:
            assert s["ms.npy"][bands.S2_L2A.index(band)].tobytes() == ds.read(1).tobytes()


def test_a_patch_off_the_trees_grid_is_named(shard, tmp_path, tree):
    root, keys = tree
    _on_one_grid(root, 60)
    bad = root / "BigEarthNet-v1.0" / keys[3] / f"{keys[3]}_B11.tif"
    _rewrite_band(bad, 30, fill=7)
    with pytest.raises(SampleError) as err:
        shard("bigearthnet", root, out=tmp_path / "o")
    assert err.value.key == keys[3] and err.value.file == str(bad)
    assert "band B11 is 30x30, expected 60x60" in err.value.reason
    assert "every band on the 10 m grid" in err.value.reason


def test_tiny_patches_on_one_grid_are_accepted(shard, tmp_path):
    root = tmp_path / "raw"
    synth.make_bigearthnet(root, n_patches=6, size=12, s1=False, seed=2)
    for folder in (root / "BigEarthNet-v1.0").iterdir():  # torchgeo's fixture: 2x2 every band
        for band in bands.S2_L2A:
            _rewrite_band(folder / f"{folder.name}_{band}.tif", 2, fill=100 + len(band))
    m = shard("bigearthnet", root, out=tmp_path / "o")
    assert m["native_size"] == [2, 2] and m["summary"]["written"] == 6
    assert next(shards.iter_samples(tmp_path / "o", "train"))["ms.npy"].shape == (12, 2, 2)


def test_tiny_patches_on_native_grids_say_what_is_inconsistent(shard, tmp_path):
    root = tmp_path / "raw"
    synth.make_bigearthnet(root, n_patches=6, size=12, s1=False, seed=2)
    for folder in (root / "BigEarthNet-v1.0").iterdir():
        for band in bands.S2_L2A:
            size = {10: 2, 20: 1, 60: 1}[bands.S2_GSD[band]]
            _rewrite_band(folder / f"{folder.name}_{band}.tif", size, fill=5)
    with pytest.raises(SampleError) as err:
        shard("bigearthnet", root, out=tmp_path / "o")
    reason = err.value.reason
    assert "0x0" not in reason and "band B01" in reason
    assert "2x2 px 10 m grid is not a whole number of 60 m pixels" in reason


def test_a_patch_in_two_split_files_is_an_error_naming_it(shard, tmp_path, tree):
    root, _ = tree
    twice = (root / "train.csv").read_text().split()[0]
    with open(root / "test.csv", "a") as f:
        f.write(f"{twice}\n")
    with pytest.raises(SampleError) as err:
        shard("bigearthnet", root, out=tmp_path / "o")
    assert err.value.key == twice and "listed in 2 split files" in err.value.reason
    assert "train.csv" in err.value.reason and "test.csv" in err.value.reason
    m = shard("bigearthnet", root, out=tmp_path / "o", skip_bad=True)
    assert [r["key"] for r in m["rejected"]] == [twice]
    got = [
        s["__key__"]
        for split in ("train", "test")
        for s in shards.iter_samples(tmp_path / "o", split)
        if m["splits"][split]["count"]
    ]
    assert twice not in got


def test_a_run_that_writes_nothing_fails_and_says_why(ray_session, tmp_path, tree, capsys):
    root, keys = tree
    for key in keys:
        (root / "BigEarthNet-v1.0" / key / f"{key}_B8A.tif").unlink()
    out = tmp_path / "o"
    rc = shard_main(
        ["bigearthnet", "--root", str(root), "--out", str(out), "--skip-bad", "--no-progress"]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "no sample was written" in err and "8 rejected: file is missing" in err
    assert not (out / "manifest.json").exists() and not list(out.rglob("*.tar"))


def test_empty_splits_and_all_rejected_shards_leave_no_file(shard, tmp_path, tree):
    root, keys = tree
    (root / "val.csv").write_text("")
    train = (root / "train.csv").read_text().split()
    for key in train[:2]:  # the whole first train shard
        (root / "BigEarthNet-v1.0" / key / f"{key}_B03.tif").write_bytes(b"no tiff")
    out = tmp_path / "o"
    m = shard("bigearthnet", root, out=out, shard_size=2, skip_bad=True)
    assert m["splits"]["val"] == {"count": 0, "shards": []}
    assert not (out / "val").exists() and not (out / "train" / "train-000000.tar").exists()
    names = [s["name"] for s in m["splits"]["train"]["shards"]]
    assert "train/train-000000.tar" not in names and m["summary"]["rejected"] == 2
    assert m == shard("bigearthnet", root, out=out, shard_size=2, skip_bad=True)  # resumed


def test_nothing_to_plan_says_what_was_left_out(shard, tmp_path, tree):
    root, keys = tree
    for name in ("train", "val", "test"):
        (root / f"{name}.csv").write_text("")
    with pytest.raises(DatasetError, match="no samples to write .*8 excluded: not in any split"):
        shard("bigearthnet", root, out=tmp_path / "o")
