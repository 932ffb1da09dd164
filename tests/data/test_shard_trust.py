"""Readers trust nothing on disk: planted pickles, truncated, corrupt, missing shards and odd
arrays in every reader, and `python -m mtmg.verify` (real webdataset, rasterio and Ray)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import shutil
import subprocess
import sys
import tarfile

import numpy as np
import pytest

from mtmg import prep, synth
from mtmg.data import shards, transforms, verify
from mtmg.data.loader import Decoder, ShardSet, Targets, make_loader
from mtmg.data.shards import ShardError
from mtmg.sweeps.alpha import trial as alpha_trial

from conftest import REPO


@pytest.fixture(scope="module")
def ben_set(tmp_path_factory, ray_session):
    """A finished BigEarthNet set of format 1 with S1 (12 patches of 60 px, 3 per shard); never
    modified. Format 2's own members: tests/data/test_shard_format.py."""
    root = tmp_path_factory.mktemp("raw")
    synth.make_bigearthnet(root, n_patches=12, size=60, s1=True, seed=4)
    out = tmp_path_factory.mktemp("set")
    prep.shard(
        prep.ShardConfig(
            "bigearthnet", str(root), str(out), s1=str(root), shard_size=3, format=1, progress=False
        )
    )
    return out


@pytest.fixture
def fresh(ben_set, tmp_path):
    """A copy of the set to tamper with; (its path, the first train shard's path)."""
    out = tmp_path / "set"
    shutil.copytree(ben_set, out)
    name = json.loads((out / "manifest.json").read_text())["splits"]["train"]["shards"][0]["name"]
    return out, out / name


def _members(path):
    with tarfile.open(path) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar.getmembers() if m.isreg()]


def _write_tar(path, members):
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _npy(arr):
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=True)
    return buf.getvalue()


def _reseal(path):
    """Record a tampered shard's size and sha256 in its manifest, as a forger would."""
    out = path.parents[1]
    manifest = json.loads((out / "manifest.json").read_text())
    for entry in manifest["splits"][path.parent.name]["shards"]:
        if entry["name"] == f"{path.parent.name}/{path.name}":
            entry["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
            entry["bytes"] = path.stat().st_size
    (out / "manifest.json").write_text(json.dumps(manifest))


def _replace(path, member, data):
    """Give the first sample of a shard another `member` (the manifest resealed); returns that
    sample's key."""
    members = _members(path)
    key = members[0][0].split(".", 1)[0]
    members = [(n, data if n == f"{key}.{member}" else d) for n, d in members]
    if f"{key}.{member}" not in dict(members):
        members.insert(1, (f"{key}.{member}", data))
    _write_tar(path, members)
    _reseal(path)
    return key


class _Payload:
    """Unpickling it creates the directory `marker`: stands for any code a pickle may run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def _decoder(ds, view="rgb"):
    return Decoder(
        tuple(ds.manifest["bands"]), ds.manifest["modality"], view, Targets.of(ds), 32, 32
    )


READERS = {
    "iter_samples": lambda out: list(shards.iter_samples(out, "train")),
    "loader": lambda out: list(
        make_loader(
            ShardSet.open(str(out)),
            "train",
            _decoder(ShardSet.open(str(out))),
            batch_size=2,
            train=False,
            num_workers=1,
        )
    ),
    "training loader": lambda out: list(
        make_loader(
            ShardSet.open(str(out)),
            "train",
            _decoder(ShardSet.open(str(out))),
            batch_size=2,
            train=True,
            num_workers=0,
        )
    ),
    "alpha_trial.decode_split": lambda out: alpha_trial.decode_split(
        alpha_trial.AlphaTrialInputs(
            sets=(
                alpha_trial.EvalSet(
                    "supported", str(out), None, "ben", "bigearthnet", "multi-label"
                ),
            ),
            decoder=(32, transforms.CLIP_MEAN, transforms.CLIP_STD),
            eval_batch_size=4,
            loader_workers=0,
            amp=False,
            selection="max",
            tolerance=0.0,
            threads=1,
            gpu=False,
        ),
        0,
        "train",
        2**30,
    ),
}


@pytest.mark.parametrize("reader", ["iter_samples", "loader", "alpha_trial.decode_split"])
@pytest.mark.parametrize("plant", ["pyd member", "object ms.npy"])
def test_a_planted_pickle_never_runs(fresh, tmp_path, reader, plant):
    out, path = fresh
    marker = tmp_path / "payload-ran"
    if plant == "pyd member":
        key = _replace(path, "pyd", pickle.dumps(_Payload(marker)))
        member = f"{key}.pyd"
    else:
        arr = np.empty(1, dtype=object)
        arr[0] = _Payload(marker)
        key, member = _replace(path, "ms.npy", _npy(arr)), "ms.npy"
    with pytest.raises(ShardError) as err:
        READERS[reader](out)
    assert not marker.exists()
    assert str(path) in str(err.value) and member in str(err.value)


CUTS = {  # where a shard ends: (member, into its data), of 3 members per sample
    "mid-member": (7, 100),
    "member boundary, manifest resealed": (7, None),  # a sample lacks s1.npy
    "sample boundary, manifest resealed": (6, None),  # a sample short
}


@pytest.mark.parametrize("reader", ["iter_samples", "loader", "training loader"])
@pytest.mark.parametrize("cut", list(CUTS))
def test_a_truncated_shard_is_an_error_naming_it(fresh, reader, cut):
    out, path = fresh
    index, into = CUTS[cut]
    with tarfile.open(path) as tar:
        member = [m for m in tar.getmembers() if m.isreg()][index]
    os.truncate(path, member.offset if into is None else member.offset_data + into)
    if "resealed" in cut:  # only the sample count or a lacking member shows it
        _reseal(path)
    with pytest.raises(ShardError, match="truncated") as err:
        READERS[reader](out)
    assert str(path) in str(err.value)


BAD_ARRAYS = {
    "float32 NaN ms.npy": ("ms.npy", np.full((12, 60, 60), np.nan, np.float32)),
    "ms.npy of 3 bands": ("ms.npy", np.zeros((3, 60, 60), np.uint16)),
    "s1.npy with a NaN": (
        "s1.npy",
        np.pad(np.zeros((2, 60, 59), np.float32), ((0, 0), (0, 0), (0, 1)), constant_values=np.nan),
    ),
}


@pytest.mark.parametrize("case", list(BAD_ARRAYS))
def test_a_bad_array_is_refused_naming_the_sample(fresh, case):
    out, path = fresh
    member, arr = BAD_ARRAYS[case]
    key = _replace(path, member, _npy(arr))
    ds = ShardSet.open(str(out))
    loader = make_loader(
        ds, "train", _decoder(ds, "rgb+s1"), batch_size=2, train=False, num_workers=0
    )
    for read in (lambda: list(loader), lambda: list(shards.iter_samples(out, "train"))):
        with pytest.raises(ShardError) as err:
            read()
        msg = str(err.value)
        assert key in msg and member in msg and str(path) in msg and "mtmg.verify" in msg


def test_a_deleted_shard_is_found_when_the_set_opens(fresh):
    out, path = fresh
    path.unlink()
    with pytest.raises(ShardError, match="missing") as err:
        ShardSet.open(str(out))
    assert str(path) in str(err.value) and "data_prep/shard.py" in str(err.value)


def test_verify_names_a_corrupt_shard_and_passes_a_good_set(ben_set, fresh, capsys):
    out, path = fresh
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    r = subprocess.run(
        [sys.executable, "-m", "mtmg.verify", str(ben_set), str(out), "--no-progress"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    bad = [ln for ln in r.stderr.splitlines() if ln.startswith("bad shard")]
    assert r.returncode == 2 and bad == [
        f"bad shard {path}: sha256 differs from manifest.json (corrupt or replaced)"
    ]
    assert verify.main([str(ben_set), "--no-progress"]) == 0
    assert "ok: " in capsys.readouterr().out
    path.unlink()
    assert verify.main([str(out), "--no-progress"]) == 2
    assert f"bad shard {path}: missing" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        verify.main(["--help"])
    assert exit_.value.code == 0 and "sha256" in capsys.readouterr().out
