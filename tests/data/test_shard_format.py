"""Shard format 2 (bands on native grids, zstd) beside format 1: pixels byte-identical to the
source GeoTIFFs, the same samples through every reader, views that decode only what they
need, and readers that refuse forged members (real Ray, rasterio, webdataset, zstandard)."""

from __future__ import annotations

import io
import json
import shutil
import tarfile

import numpy as np
import pytest
import rasterio
import torch

from mtmg import synth
from mtmg.data import bands, grids, shards
from mtmg.data.loader import Decoder, ShardSet, Targets, make_loader
from mtmg.data.shards import ShardError

from conftest import REAL

BEN1 = REAL / "bigearthnet_v1"


def _samples(out, decode=True):
    m = json.loads((out / "manifest.json").read_text())
    return {
        s["__key__"]: s
        for split, v in m["splits"].items()
        if v["count"]
        for s in shards.iter_samples(out, split, decode=decode)
    }


def test_real_v1_pixels_are_byte_identical_to_the_geotiffs(shard, tmp_path):
    m = shard("bigearthnet", BEN1, s1=str(BEN1), out=tmp_path / "o")
    assert m["format_version"] == 2 and m["ms_codec"]["name"] == "zstd"
    assert set(m["fields"]) == {"json", "s1.npy", "ms10.zst", "ms20.zst", "ms60.zst"}
    raw = _samples(tmp_path / "o", decode=False)
    assert len(raw) == 5
    for key, s in raw.items():
        for member in grids.MEMBERS:
            g = grids.decode_group(s[member])
            for i, band in enumerate(g.names):
                assert bands.S2_GSD[band] == 10 * g.factor
                with rasterio.open(BEN1 / "BigEarthNet-v1.0" / key / f"{key}_{band}.tif") as ds:
                    assert g.pixels[i].tobytes() == ds.read(1).tobytes(), (key, band)


@pytest.fixture(scope="module")
def both(tmp_path_factory, ray_session):
    """One generated tree (with S1) sharded as format 1 and as format 2."""
    from mtmg import prep

    root = tmp_path_factory.mktemp("raw")
    synth.make_bigearthnet(root, n_patches=16, size=60, s1=True, seed=21)
    outs = {}
    for version in (1, 2):
        out = tmp_path_factory.mktemp(f"v{version}")
        cfg = prep.ShardConfig(
            "bigearthnet",
            str(root),
            str(out),
            s1=str(root),
            shard_size=4,
            format=version,
            progress=False,
        )
        prep.shard(cfg)
        outs[version] = out
    return root, outs


def test_both_formats_give_the_same_samples_to_iter_samples(both):
    root, outs = both
    one, two = _samples(outs[1]), _samples(outs[2])
    assert set(one) == set(two) and len(one) == 16
    for key, s in two.items():
        assert set(s) == set(one[key]) and "ms10.zst" not in s
        assert s["ms.npy"].dtype == np.uint16 and s["ms.npy"].shape == (12, 60, 60)
        assert s["ms.npy"].tobytes() == one[key]["ms.npy"].tobytes()
        assert (
            s["s1.npy"].tobytes() == one[key]["s1.npy"].tobytes() and s["json"] == one[key]["json"]
        )
        b09 = root / "BigEarthNet-v1.0" / key / f"{key}_B09.tif"
        with rasterio.open(b09) as ds:
            assert (
                s["ms.npy"][bands.S2_L2A.index("B09")][::6, ::6].tobytes() == ds.read(1).tobytes()
            )
    size = {v: sum(p.stat().st_size for p in outs[v].rglob("*.tar")) for v in (1, 2)}
    assert size[2] < 0.8 * size[1]


def _decoder(ds, view, **kw):
    return Decoder(
        tuple(ds.manifest["bands"]), ds.manifest["modality"], view, Targets.of(ds), 60, 60, **kw
    )


@pytest.mark.parametrize("view", ["rgb", "ms", "rgb+s1", "both"])
def test_the_loader_gives_the_same_batches_from_both_formats(both, view):
    _, outs = both
    batches = {}
    for v in (1, 2):
        ds = ShardSet.open(str(outs[v]))
        loader = make_loader(
            ds, "train", _decoder(ds, view), batch_size=4, train=False, num_workers=0
        )
        batches[v] = list(loader)
    assert len(batches[1]) == len(batches[2]) > 0
    for b1, b2 in zip(batches[1], batches[2], strict=True):
        assert b1["__key__"] == b2["__key__"] and set(b1) == set(b2)
        for k, v in b1.items():
            if torch.is_tensor(v):
                assert torch.equal(v, b2[k]), k


def test_bilinear_and_bicubic_upsampling_keep_the_10m_bands(both):
    _, outs = both
    ds = ShardSet.open(str(outs[2]))
    raw = next(iter(_samples(outs[2], decode=False).values()))
    near = _decoder(ds, "ms")(dict(raw))["ms"]
    for method in ("bilinear", "bicubic"):
        got = _decoder(ds, "ms", upsample=method)(dict(raw))["ms"]
        assert got.shape == near.shape == (13, 60, 60)
        i = bands.S2_L1C.index("B04")
        assert torch.equal(got[i], near[i])
        j = bands.S2_L1C.index("B05")
        assert not torch.equal(got[j], near[j]) and abs(got[j].mean() - near[j].mean()) < 0.01


@pytest.mark.parametrize("method", ["bilinear", "bicubic"])
def test_a_set_sharded_bilinear_is_decoded_bilinear(both, tmp_path, method):
    """`shard.py --resample bilinear|bicubic` on format 2 is what the stages' decoders use."""
    from mtmg import prep

    root, outs = both
    out = tmp_path / method
    cfg = prep.ShardConfig(
        "bigearthnet", str(root), str(out), shard_size=4, resample=method, progress=False
    )
    prep.shard(cfg)
    near, bil = ShardSet.open(str(outs[2])), ShardSet.open(str(out))
    assert (near.upsample, bil.upsample) == ("nearest", method)
    raw = next(iter(_samples(outs[2], decode=False).values()))
    got = Decoder.of(bil, "ms", Targets.of(bil), 60)(dict(raw))["ms"]
    assert torch.equal(got, _decoder(near, "ms", upsample=method)(dict(raw))["ms"])
    assert Decoder.of(bil, "ms", Targets.of(bil), 60, upsample="nearest").upsample == "nearest"


def test_the_rgb_view_never_decodes_the_other_grids(both):
    _, outs = both
    ds = ShardSet.open(str(outs[2]))
    raw = dict(next(iter(_samples(outs[2], decode=False).values())))
    good = _decoder(ds, "rgb")(dict(raw))["rgb"]
    broken = {**raw, "ms20.zst": raw["ms20.zst"][:40] + b"\0" * 40, "ms60.zst": b"junk"}
    assert torch.equal(_decoder(ds, "rgb")(broken)["rgb"], good)
    with pytest.raises(ShardError, match="ms60.zst: not a format 2 band group"):
        _decoder(ds, "ms")(broken)


def _forge(path, member, data):
    """Replace `member` of the first sample of a shard and reseal the manifest; its key."""
    import hashlib

    with tarfile.open(path) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers() if m.isreg()]
    key = members[0][0].split(".", 1)[0]
    members = [(n, data if n == f"{key}.{member}" else d) for n, d in members]
    if f"{key}.{member}" not in dict(members):
        members.insert(1, (f"{key}.{member}", data))
    with tarfile.open(path, "w") as tar:
        for name, blob in members:
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    out = path.parents[1]
    m = json.loads((out / "manifest.json").read_text())
    for e in m["splits"][path.parent.name]["shards"]:
        if e["name"] == f"{path.parent.name}/{path.name}":
            e["sha256"], e["bytes"] = (
                hashlib.sha256(path.read_bytes()).hexdigest(),
                path.stat().st_size,
            )
    (out / "manifest.json").write_text(json.dumps(m))
    return key


def _bomb():
    """A member whose header promises four 2x2 bands and whose frame holds 64 MB of zeros."""
    import zstandard

    head = grids.HEADER.pack(grids.MAGIC, 1, 4, 2, 2) + b"B02B03B04B08"
    return head + zstandard.ZstdCompressor().compress(bytes(64 << 20))


FORGED = {
    "ms.npy in a format 2 set": (2, "ms.npy", lambda: b"\x93NUMPY", "not part of the shard format"),
    "ms10.zst in a format 1 set": (1, "ms10.zst", lambda: b"MTG2", "not part of the shard format"),
    "a frame larger than its header": (2, "ms10.zst", _bomb, "its header says 32"),
    "unknown band names": (
        2,
        "ms10.zst",
        lambda: grids.HEADER.pack(grids.MAGIC, 1, 1, 2, 2) + b"XYZ",
        "names bands",
    ),
}


@pytest.mark.parametrize("case", list(FORGED))
def test_forged_members_are_refused_naming_the_sample(both, tmp_path, case):
    version, member, data, said = FORGED[case]
    out = tmp_path / "set"
    shutil.copytree(both[1][version], out)
    path = sorted((out / "train").glob("*.tar"))[0]
    key = _forge(path, member, data())
    with pytest.raises(ShardError, match=said) as err:
        list(shards.iter_samples(out, "train"))
    assert key in str(err.value) and str(path) in str(err.value)


def test_format_1_sets_stay_readable_and_say_their_version(both):
    _, outs = both
    m1 = shards.load_manifest(outs[1])
    assert m1["format_version"] == 1 and "ms.npy" in m1["fields"] and "ms_codec" not in m1
    ds = ShardSet.open(str(outs[1]))
    assert ds.count("train") == sum(n for _, n in ds.shards("train"))


@pytest.mark.parametrize("method", grids.UPSAMPLING)
def test_deferred_grids_are_upsampled_on_the_device_as_on_the_cpu(both, method):
    """The GPU path ships format 2's grids at their native sizes (uint16 bits as int16) and
    builds the 13-band input there, as the loader worker would."""
    from mtmg.data import transforms
    from mtmg.data.loader import collate, device_batch

    _, outs = both
    ds = ShardSet.open(str(outs[2]))
    raws = list(_samples(outs[2], decode=False).values())[:4]
    kw = dict(augment=transforms.Augment(scale=(0.6, 0.9)), seed=5, upsample=method)
    cpu, deferred = _decoder(ds, "both", **kw), _decoder(ds, "both", defer_augment=True, **kw)
    shipped = collate([deferred(dict(r)) for r in raws])
    assert "ms" not in shipped and shipped["ms20.zst"].shape == (4, 6, 30, 30)
    assert shipped["ms10.zst"].dtype == torch.int16 and shipped["rgb"].dtype == torch.uint8
    got = device_batch(shipped, deferred, torch.device("cpu"))
    want = collate([cpu(dict(r)) for r in raws])
    assert got["ms"].shape == want["ms"].shape == (4, 13, 60, 60)
    torch.testing.assert_close(got["ms"], want["ms"], atol=1e-5, rtol=0)
    torch.testing.assert_close(got["rgb"], want["rgb"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("version", [1, 2])
def test_a_deferring_decoder_without_augmentation_resizes_on_the_device(both, version):
    """Model-ready on the GPU path: uint8 RGB and the stored grids leave the worker; resize and
    normalising on the device give what the worker path gives."""
    from mtmg.data.loader import collate, device_batch

    _, outs = both
    ds = ShardSet.open(str(outs[version]))
    raws = list(_samples(outs[version], decode=False).values())[:4]
    cpu = Decoder.of(ds, "both", Targets.of(ds), 48)
    deferred = Decoder.of(ds, "both", Targets.of(ds), 48, defer_augment=True)
    shipped = collate([deferred(dict(r)) for r in raws])
    assert shipped["rgb"].shape == (4, 3, 60, 60) and "aug" not in shipped
    got = device_batch(shipped, deferred, torch.device("cpu"))
    want = collate([cpu(dict(r)) for r in raws])
    for k in ("rgb", "ms"):
        assert got[k].shape == want[k].shape, k
        torch.testing.assert_close(got[k], want[k], atol=1e-3 if version == 1 else 1e-5, rtol=0)
