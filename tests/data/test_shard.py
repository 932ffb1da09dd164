"""data_prep/shard.py on generated raw trees of every supported layout (real Ray, rasterio,
webdataset): contents, determinism, resume and what it keeps, bad input, unwritable or full
OUT, URIs, the CLI. One file for the one command: its tests share the generated trees and the
session's Ray (format 2's own members: test_shard_format.py; real trees: test_shard_trees.py)."""

from __future__ import annotations

import errno
import json
import logging
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio
from PIL import Image

from mtmg import prep, synth
from mtmg.data import bands, labels, shards, storage
from mtmg.data import prep as data_prep
from mtmg.data.raw import DatasetError, SampleError, make_layout
from mtmg.data.storage import StorageError
from mtmg.prep import main as shard_main

from conftest import REPO

BEN_KEYS = "S2A_MSIL2A_20170613T101031"


@pytest.fixture(scope="module")
def ben_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("ben")
    info = synth.make_bigearthnet(root, n_patches=24, s1=True, seed=3)
    return root, info


def _all_samples(out, manifest):
    got = {}
    for split, v in manifest["splits"].items():
        if v["count"]:
            got.update({s["__key__"]: (split, s) for s in shards.iter_samples(out, split)})
    return got


def test_bigearthnet_generated_tree_with_s1(shard, tmp_path, ben_tree):
    root, info = ben_tree
    m = shard("bigearthnet", root, s1=str(root), shard_size=5)
    want = {s: len(info["splits"][s]) for s in ("train", "val", "test")}
    assert {s: v["count"] for s, v in m["splits"].items()} == want
    assert m["summary"] == {"inputs": 24, "written": 24, "excluded": 0, "rejected": 0}
    assert all(sh["count"] <= 5 for v in m["splits"].values() for sh in v["shards"])
    assert m["source"]["split_source"]["train"].endswith("train.csv")
    got = _all_samples(tmp_path / "out-bigearthnet", m)
    assert set(got) == set(info["labels"])
    for key, (split, s) in got.items():
        assert key in info["splits"][split]
        assert s["json"]["labels"] == info["labels"][key]
        assert s["ms.npy"].shape == (12, 120, 120) and s["s1.npy"].shape == (2, 120, 120)
        assert s["json"]["s1"]["patch"] == info["s2_to_s1"][key]
    # one shard set serves 43/19/5: the maps in the manifest turn names into targets
    key, (_, s) = next(iter(got.items()))
    v43 = labels.multi_hot(s["json"]["labels"], m["nomenclatures"]["ben43"]["classes"])
    v19 = labels.convert_multi_hot(v43, m["nomenclatures"]["ben19"]["map"], 19)
    assert v19.sum() >= 1


def test_every_other_dataset_kind(shard, tmp_path):
    made = {
        "bigearthnet-v2": synth.make_bigearthnet_v2(tmp_path / "v2", n_patches=12, seed=1),
        "eurosat-ms": synth.make_eurosat_ms(tmp_path / "ems", n_per_class=3),
        "eurosat": synth.make_eurosat_rgb(tmp_path / "ergb", n_per_class=3),
        "resisc45": synth.make_resisc45(tmp_path / "res", n_per_class=3),
        "sen12ms": synth.make_sen12ms(tmp_path / "sen", n_scenes=4, patches_per_scene=3),
        "imagefolder": synth.make_imagefolder(tmp_path / "img", n_per_class=4),
    }
    kw = {"bigearthnet-v2": {"s1": str(tmp_path / "v2" / "BigEarthNet-S1")}}
    for kind, info in made.items():
        m = shard(kind, info["root"], out=tmp_path / f"o-{kind}", **kw.get(kind, {}))
        n_in = len(info["labels"])
        assert m["summary"]["written"] + m["summary"]["excluded"] == n_in, kind
        assert m["summary"]["written"] > 0 and m["summary"]["rejected"] == 0, kind
        got = _all_samples(tmp_path / f"o-{kind}", m)
        nomen = m["nomenclatures"][m["label_nomenclature"]]["classes"]
        for key, (_, s) in got.items():
            assert sorted(s["json"]["labels"]) == sorted(info["labels"][key]), (kind, key)
            assert set(s["json"]["labels"]) <= set(nomen)
            if "ms.npy" in s:
                assert s["ms.npy"].dtype == np.uint16
                assert s["ms.npy"].shape[0] == len(m["bands"])
            else:
                assert any(k.startswith("rgb.") for k in s) and "cls" in s
                assert nomen[s["cls"]] == s["json"]["labels"][0]
        if kind == "bigearthnet-v2":
            assert all("s1.npy" in s for _, s in got.values())
        if kind == "sen12ms":
            assert m["bands"] == list(bands.S2_L1C) and m["splits"]["val"]["count"] > 0


def test_eurosat_ms_is_found_from_any_archive_folder_and_split_by_torchgeo_lists(tmp_path):
    root = synth.make_eurosat_ms(tmp_path / "ems", n_per_class=2)["root"]
    stems = sorted(p.stem for p in root.rglob("*.tif"))
    lists = tmp_path / "lists"
    lists.mkdir()
    # torchgeo's eurosat-<split>.txt name the RGB .jpg files; they split the MS .tif of each stem
    (lists / "eurosat-train.txt").write_text("\n".join(f"{s}.jpg" for s in stems[::2]))
    (lists / "eurosat-test.txt").write_text("\n".join(f"{s}.jpg" for s in stems[1::2]))
    for top in (root, root / "ds", root / "ds" / "images"):
        layout = make_layout("eurosat-ms", storage.location(top), splits=storage.location(lists))
        inventory = layout.scan()
        assert [i.key for i in inventory.items["train"]] == stems[::2], top
        assert [i.key for i in inventory.items["test"]] == stems[1::2], top
        assert inventory.items["val"] == [] and "eurosat-train.txt" in str(inventory.info)


def _imagenet_tree(root: Path, wnids, n: int) -> None:
    rng = np.random.default_rng(0)
    for wnid in wnids:
        (root / wnid).mkdir(parents=True)
        for i in range(n):
            pixels = rng.integers(0, 255, (12 + i, 20, 3), dtype=np.uint8)  # not square
            Image.fromarray(pixels).save(root / wnid / f"ILSVRC2012_val_{wnid}_{i}.JPEG")


def test_imagenet_is_scored_over_its_1000_classes_with_clips_names_and_templates(shard, tmp_path):
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES

    wnids = {"n01440764": 0, "n01443537": 1, "n15075141": 999}  # tench, goldfish, toilet tissue
    _imagenet_tree(tmp_path / "val", wnids, 20)
    m = shard("imagenet", tmp_path / "val", out=tmp_path / "o", val_fraction=0.25)
    nomen = m["nomenclatures"]["imagenet"]
    assert m["label_nomenclature"] == "imagenet" and len(nomen["classes"]) == 1000
    assert nomen["prompt_names"] == list(IMAGENET_CLASSNAMES)
    assert len(m["templates"]) == 80 and m["templates"][1] == OPENAI_IMAGENET_TEMPLATES[1]("{c}")
    counts = {s: m["splits"][s]["count"] for s in ("train", "val", "test")}
    assert counts["train"] == 0 and 5 <= counts["val"] <= 25 and sum(counts.values()) == 60
    for _, (_, s) in _all_samples(tmp_path / "o", m).items():
        assert s["cls"] == wnids[s["json"]["labels"][0]]
    (tmp_path / "val" / "tench").mkdir()
    with pytest.raises(DatasetError, match=r"unknown class folder\(s\) \['tench'\]"):
        shard("imagenet", tmp_path / "val", out=tmp_path / "o2")


def test_a_val_fraction_outside_0_1_is_refused(tmp_path):
    with pytest.raises(DatasetError, match=r"--val-fraction 1.5: must be in \[0, 1\)"):
        make_layout("imagenet", storage.location(tmp_path), val_fraction=1.5)


def test_deterministic_bytes_across_runs_and_worker_counts(shard, tmp_path, ben_tree):
    root, _ = ben_tree
    m1 = shard("bigearthnet", root, out=tmp_path / "a", shard_size=7, workers=1)
    m2 = shard("bigearthnet", root, out=tmp_path / "b", shard_size=7, workers=2)
    tars = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.tar"))
    assert len(tars) >= 3
    for rel in tars:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
    strip = lambda m: {k: v for k, v in m.items() if k != "config"}  # noqa: E731
    assert strip(m1) == strip(m2)
    index = [(tmp_path / d / "index.parquet").read_bytes() for d in "ab"]
    assert index[0] == index[1]


def test_rerun_keeps_finished_shards_and_redoes_missing(shard, tmp_path, ben_tree):
    root, _ = ben_tree
    out = tmp_path / "o"
    m1 = shard("bigearthnet", root, out=out, shard_size=5)
    second = out / "train" / "train-000001.tar"
    before = second.read_bytes()
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*.tar") if p != second}
    second.unlink()
    (out / "train" / "train-000002.tar.tmp-deadbeef").write_bytes(b"torn")
    m2 = shard("bigearthnet", root, out=out, shard_size=5)
    assert all(p.stat().st_mtime_ns == t for p, t in mtimes.items())  # kept, not rewritten
    assert second.read_bytes() == before  # rewritten identically
    assert not list(out.rglob("*.tmp-*"))
    assert m1 == m2
    with pytest.raises(DatasetError, match="--overwrite"):
        shard("bigearthnet", root, out=out, shard_size=6)
    m3 = shard("bigearthnet", root, out=out, shard_size=6, overwrite=True)
    assert m3["summary"]["written"] == 24 and not (out / "train" / "train-000004.tar").exists()


def test_resume_after_the_cli_is_interrupted(shard, tmp_path):
    root = tmp_path / "raw"
    synth.make_bigearthnet(root, n_patches=200, s1=False, seed=5)  # 100 shards: time to interrupt
    out = tmp_path / "o"
    cmd = [
        sys.executable,
        str(REPO / "data_prep" / "shard.py"),
        "bigearthnet",
        "--root",
        str(root),
        "--out",
        str(out),
        "--shard-size",
        "2",
        "--workers",
        "1",
        "--no-progress",
    ]
    t0 = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(out.rglob("*.tar"))) < 3:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    said, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, said[-3000:]
    assert b"interrupted: run the same command again" in said
    print(f"interrupted after {time.time() - t0:.1f}s")
    done_before = {p: p.stat().st_mtime_ns for p in out.rglob("*.tar")}
    assert 3 <= len(done_before) < 100, "interrupt came too late to test resuming"
    assert not (out / "manifest.json").exists()
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert all(p.stat().st_mtime_ns == t for p, t in done_before.items())
    clean = tmp_path / "clean"
    shard("bigearthnet", root, out=clean, shard_size=2)
    for p in clean.rglob("*.tar"):
        assert p.read_bytes() == (out / p.relative_to(clean)).read_bytes()
    m = json.loads((out / "manifest.json").read_text())
    assert m["summary"]["written"] == 200


# ------------------------------------------------------------------------------ bad input


def _patch_file(root, key, band):
    return root / "BigEarthNet-v1.0" / key / f"{key}_{band}.tif"


@pytest.fixture
def small_tree(tmp_path):
    root = tmp_path / "raw"
    info = synth.make_bigearthnet(root, n_patches=12, s1=False, seed=7)
    keys = sorted(info["labels"])
    return root, keys


def _break_missing_band(root, key):
    path = _patch_file(root, key, "B8A")
    path.unlink()
    return path, "file is missing"


def _break_unreadable_band(root, key):
    path = _patch_file(root, key, "B03")
    path.write_bytes(b"this is not a tiff")
    return path, "unreadable GeoTIFF"


def _break_wrong_size(root, key):
    path = _patch_file(root, key, "B11")
    with rasterio.open(path) as ds:
        profile = ds.profile
    profile.update(width=50, height=50)
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(np.ones((1, 50, 50), np.uint16))
    return path, "band B11 is 50x50, expected 60x60"


def _break_wrong_patch_size(root, key):
    folder = root / "BigEarthNet-v1.0" / key
    for band in bands.S2_L2A:
        path = folder / f"{key}_{band}.tif"
        with rasterio.open(path) as ds:
            profile = ds.profile
        n = {10: 60, 20: 30, 60: 10}[bands.S2_GSD[band]]
        profile.update(width=n, height=n)
        with rasterio.open(path, "w", **profile) as ds:
            ds.write(np.ones((1, n, n), np.uint16))
    return folder / f"{key}_B02.tif", "10 m band B02 is 60x60, dataset patches are 120x120"


def _break_unknown_label(root, key):
    path = root / "BigEarthNet-v1.0" / key / f"{key}_labels_metadata.json"
    meta = json.loads(path.read_text())
    meta["labels"] = [*meta["labels"], "Lava fields"]
    path.write_text(json.dumps(meta))
    return path, "unknown label name(s) ['Lava fields']"


def _break_labels_json_is_a_list(root, key):
    path = root / "BigEarthNet-v1.0" / key / f"{key}_labels_metadata.json"
    path.write_text(json.dumps([json.loads(path.read_text())]))
    return path, "metadata JSON is not an object with a 'labels' list"


BREAKERS = [
    _break_missing_band,
    _break_unreadable_band,
    _break_wrong_size,
    _break_wrong_patch_size,
    _break_unknown_label,
    _break_labels_json_is_a_list,
]


@pytest.mark.parametrize("breaker", BREAKERS, ids=lambda f: f.__name__[7:])
def test_bad_sample_stops_the_run_or_is_rejected(shard, tmp_path, small_tree, breaker):
    root, keys = small_tree
    bad = keys[len(keys) // 2]
    path, reason = breaker(root, bad)
    out = tmp_path / "o"
    with pytest.raises(SampleError) as err:
        shard("bigearthnet", root, out=out)
    assert err.value.key == bad and reason in err.value.reason and err.value.file == str(path)
    assert not (out / "manifest.json").exists()
    m = shard("bigearthnet", root, out=out, skip_bad=True, overwrite=True)
    split = m["rejected"][0]["split"]
    assert m["rejected"] == [
        {"key": bad, "reason": err.value.reason, "file": str(path), "split": split}
    ]
    s = m["summary"]
    assert s["inputs"] == 12 == s["written"] + s["excluded"] + s["rejected"] and s["rejected"] == 1
    index = pq.read_table(out / "index.parquet").column("key").to_pylist()
    assert bad not in index and len(index) == 11


def test_split_file_naming_a_missing_patch(shard, tmp_path, small_tree):
    root, keys = small_tree
    with open(root / "val.csv", "a", newline="") as f:
        f.write("S2A_MSIL2A_20170613T101031_99_99\r\n")  # CRLF like the official lists
    with pytest.raises(SampleError, match="not in the tree") as err:
        shard("bigearthnet", root, out=tmp_path / "o")
    assert err.value.key == "S2A_MSIL2A_20170613T101031_99_99"
    assert err.value.file == str(root / "val.csv")
    assert not (tmp_path / "o").exists()  # found before any work: no OUT left behind
    m = shard("bigearthnet", root, out=tmp_path / "o", skip_bad=True)
    assert m["summary"] == {"inputs": 13, "written": 12, "excluded": 0, "rejected": 1}


def test_patches_outside_the_split_files_are_excluded(shard, tmp_path, small_tree):
    root, keys = small_tree
    lines = (root / "test.csv").read_text().split()
    (root / "test.csv").write_text("\n".join(lines[1:]) + "\n")
    m = shard("bigearthnet", root, out=tmp_path / "o")
    assert m["excluded"] == [{"key": lines[0], "reason": "not in any split file"}]
    assert m["summary"]["inputs"] == 12 and m["summary"]["written"] == 11


def test_empty_missing_root_and_no_official_patches(shard, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="empty"):
        shard("bigearthnet", tmp_path / "empty")
    with pytest.raises(DatasetError, match="no such directory"):
        shard("bigearthnet", tmp_path / "nowhere")
    root = tmp_path / "nosplits"
    synth.make_bigearthnet(root, n_patches=6, s1=False, split_files=False)
    with pytest.raises(DatasetError, match="official splits.*--splits"):
        shard("bigearthnet", root)


def test_cli_exit_codes_and_messages(ray_session, tmp_path, small_tree, capsys):
    root, keys = small_tree
    path, _ = _break_unknown_label(root, keys[0])
    rc = shard_main(
        ["bigearthnet", "--root", str(root), "--out", str(tmp_path / "o"), "--no-progress"]
    )
    err = capsys.readouterr().err
    assert rc == 2 and keys[0] in err and str(path) in err and "--skip-bad" in err
    rc = shard_main(
        [
            "bigearthnet",
            "--root",
            str(root),
            "--out",
            str(tmp_path / "o"),
            "--no-progress",
            "--skip-bad",
        ]
    )
    captured = capsys.readouterr().out
    assert rc == 0 and "inputs 12 = written 11 + excluded 0 + rejected 1" in captured
    assert f"rejected {keys[0]}" in captured


def test_cli_help_and_missing_options(cli):
    r = cli["shard --help"]
    assert r.returncode == 0
    for word in (
        "--root",
        "--out",
        "--s1",
        "--splits",
        "--cluster",
        "--workers",
        "--limit",
        "--skip-bad",
        "bigearthnet-v2",
        "eurosat-ms",
        "manifest.json",
    ):
        assert word in r.stdout
    r = cli["shard without options"]
    assert r.returncode == 2 and "--root, --out" in r.stderr


def test_yaml_config_with_cli_override(ray_session, tmp_path, small_tree):
    root, _ = small_tree
    cfg = tmp_path / "shard.yaml"
    cfg.write_text(f"root: {root}\nout: {tmp_path / 'o'}\nshard-size: 3\nlimit: 2\n")
    rc = shard_main(["bigearthnet", "--config", str(cfg), "--limit", "4", "--no-progress"])
    m = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert rc == 0 and m["config"]["shard_size"] == 3 and m["config"]["limit"] == 4
    assert all(v["count"] <= 4 for v in m["splits"].values())
    cfg.write_text("shard_sise: 3\n")
    with pytest.raises(SystemExit):
        shard_main(["bigearthnet", "--config", str(cfg), "--root", "x", "--out", "y"])


def test_file_uri_for_raw_and_out(shard, tmp_path, small_tree):
    root, _ = small_tree
    out = tmp_path / "uri-out"
    m = shard("bigearthnet", f"file://{root}", out=f"file://{out}", limit=3)
    assert m["splits"]["train"]["count"] == 3 and (out / "manifest.json").exists()
    assert all(v["count"] <= 3 for v in m["splits"].values())
    assert sum(1 for _ in shards.iter_samples(out, "train")) == 3


# ------------------------------------------------------------------ what a rerun keeps


def _mtimes(out):
    return {p: p.stat().st_mtime_ns for p in out.rglob("*.tar")}


def test_rerun_rewrites_the_shard_whose_labels_json_changed(shard, tmp_path, small_tree, caplog):
    root, _ = small_tree
    out = tmp_path / "o"
    shard("bigearthnet", root, out=out, shard_size=3)
    before = _mtimes(out)
    row = pq.read_table(out / "index.parquet").to_pylist()[0]
    meta_path = root / "BigEarthNet-v1.0" / row["key"] / f"{row['key']}_labels_metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["labels"] = ["Vineyards"] if meta["labels"] != ["Vineyards"] else ["Rice fields"]
    meta_path.write_text(json.dumps(meta))
    with caplog.at_level(logging.WARNING, logger="mtmg.runtime.shard_job"):
        shard("bigearthnet", root, out=out, shard_size=3)
    rewritten = out / row["shard"]
    assert [p for p, t in _mtimes(out).items() if before[p] != t] == [rewritten]
    labels = {r["key"]: r["labels"] for r in pq.read_table(out / "index.parquet").to_pylist()}
    assert labels[row["key"]] == meta["labels"]
    assert f"{row['shard']}: rewritten: its input files changed" in caplog.text


def test_rerun_rewrites_a_kept_shard_whose_bytes_changed(shard, tmp_path, small_tree):
    root, _ = small_tree
    out = tmp_path / "o"
    shard("bigearthnet", root, out=out, shard_size=3)
    before, path = _mtimes(out), sorted(out.rglob("*.tar"))[0]
    good = path.read_bytes()
    path.write_bytes(good[:1000] + bytes([good[1000] ^ 1]) + good[1001:])
    shard("bigearthnet", root, out=out, shard_size=3)
    assert path.read_bytes() == good
    assert all(before[p] == t for p, t in _mtimes(out).items() if p != path)


def test_rerun_with_another_root_keeps_nothing(shard, tmp_path, small_tree):
    root, _ = small_tree
    out = tmp_path / "o"
    shard("bigearthnet", root, out=out, shard_size=3)
    other = tmp_path / "raw-copy"
    shutil.copytree(root, other)
    with pytest.raises(DatasetError, match="another input.*--overwrite"):
        shard("bigearthnet", other, out=out, shard_size=3)


# ------------------------------------------------------------------ OUT that cannot be written


@pytest.mark.parametrize("how", ["under a file", "refused by the file system"])
def test_an_unwritable_out_is_an_error_before_any_work(
    ray_session, tmp_path, small_tree, capsys, how
):
    if how == "under a file":
        (tmp_path / "file").write_text("")
        out = tmp_path / "file" / "out"
    else:  # sysfs takes no new entries, not even from root (a chmod 555 folder would, as root)
        out = Path("/sys/mtmg-test-out")
    rc = shard_main(
        ["bigearthnet", "--root", str(small_tree[0]), "--out", str(out), "--no-progress"]
    )
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith(f"error: --out {out}: cannot write there")


def test_a_full_disk_is_not_retried_and_names_the_shard(tmp_path, small_tree, monkeypatch):
    cfg = prep.ShardConfig("bigearthnet", str(small_tree[0]), str(tmp_path / "o"), progress=False)
    layout, _, tasks = data_prep.make_plan(cfg)
    out = storage.location(cfg.out)

    def full(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(storage._HashingWriter, "write", full)
    res = data_prep.run_shard(layout, tasks[0], out, False)
    shard_path = out.child_path(tasks[0].name)
    with pytest.raises(StorageError, match=f"no space left on device writing {shard_path}"):
        data_prep.raise_error(res)
    assert not issubclass(StorageError, OSError)  # Ray retries OSError only
    assert not list((tmp_path / "o").rglob("*.tmp-*"))
