"""Loading shards: views, targets, augmentation that crops both views alike, DDP parts."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest
import torch
import torchvision

from mtmg import prep, synth
from mtmg.data import bands, labels, transforms
from mtmg.data.loader import Decoder, ShardSet, Targets, make_loader, partition
from mtmg.errors import InputError


@pytest.fixture(scope="module")
def ben_shards(tmp_path_factory, ray_session):
    root = tmp_path_factory.mktemp("raw")
    synth.make_bigearthnet(root, n_patches=40, s1=False, seed=11)
    out = tmp_path_factory.mktemp("shards")
    prep.shard(prep.ShardConfig("bigearthnet", str(root), str(out), shard_size=8, progress=False))
    return ShardSet.open(str(out))


def _decoder(ds, view="rgb", size=120, **kw):
    t = Targets.of(ds, kw.pop("nomenclature", None))
    return Decoder(tuple(ds.manifest["bands"]), ds.manifest["modality"], view, t, size, size, **kw)


def _raw(ds, split="train"):
    from mtmg.data import shards

    return list(shards.iter_samples(ds.root, split, decode=False))


def test_rgb_composite_and_ms_input_follow_the_spec(ben_shards):
    from mtmg.data import shards

    raw = _raw(ben_shards)[0]
    decoded = next(shards.iter_samples(ben_shards.root, "train"))  # either format: ms.npy
    assert decoded["__key__"] == raw["__key__"]
    ms = decoded["ms.npy"]
    out = _decoder(ben_shards, "both")(raw)
    mean, std = (
        torch.tensor(transforms.CLIP_MEAN)[:, None, None],
        torch.tensor(transforms.CLIP_STD)[:, None, None],
    )
    rgb = out["rgb"] * std + mean
    for c, band in enumerate(bands.RGB_BANDS):  # x / 2000 * 255 for L2A, clamped, uint8
        x = ms[bands.S2_L2A.index(band)].astype(np.float32)
        want = np.floor(np.clip(x / np.float32(2000) * np.float32(255), 0, 255)) / 255
        np.testing.assert_allclose(rgb[c].numpy(), want, atol=1e-5)
        assert len(np.unique(want)) > 50  # not all clamped
    assert out["ms"].shape == (13, 120, 120)
    assert torch.all(out["ms"][bands.S2_L1C.index("B10")] == 0)  # L2A has no B10
    b8a = np.clip(ms[bands.S2_L2A.index("B8A")] / 10000.0, 0, 1)
    np.testing.assert_allclose(out["ms"][bands.S2_L1C.index("B8A")].numpy(), b8a, atol=1e-6)


@pytest.mark.parametrize("modality", sorted(bands.RGB_SCALE))
def test_the_composite_is_the_references_uint8_for_every_stored_value(modality):
    """`x / scale * 255`, clamped and cast to uint8 as the reference does, for all 65,536
    uint16 values (table lookup) and from float input (bands upsampled bilinearly)."""
    x = np.arange(1 << 16, dtype=np.uint16).reshape(1, 256, 256).repeat(3, 0)
    ref = (torch.from_numpy(x.astype(np.int32)) / bands.RGB_SCALE[modality] * 255).clamp(0, 255)
    ref = ref.to(torch.uint8)
    stored = list(bands.RGB_BANDS)
    assert torch.equal(transforms.rgb_composite(x, stored, modality), ref)
    assert torch.equal(transforms.rgb_composite(x.astype(np.float32), stored, modality), ref)
    assert torch.equal(transforms.rgb_from_ms(x, stored, modality), ref.float() / 255)


@pytest.mark.parametrize(
    "idx, view",
    [([2, 1, 0], True), ([0, 1, 2], True), ([3, 2, 1], True), ([0], True), ([3], True)]
    + [([2, 0, 1], False), ([0, 2], False), ([1, 1], False)],
)
def test_picking_bands_is_a_view_exactly_when_they_are_a_run(idx, view):
    a = np.arange(4 * 5 * 6, dtype=np.uint16).reshape(4, 5, 6)
    got = bands.pick(a, idx)
    assert np.array_equal(got, a[idx]) and np.shares_memory(got, a) == view


@pytest.mark.parametrize("f", [1, 2, 3, 6])
def test_repeating_columns_is_numpys_repeat(f):
    x = np.random.default_rng(f).random((3, 4, 5), dtype=np.float32)
    x[0, 0, :3] = [np.inf, -0.0, np.nan]  # the x2 path copies bits, whatever they mean
    got = transforms._repeat_columns(x, f)
    assert got.dtype == np.float32 and got.shape == (3, 4, 5 * f)
    assert np.array_equal(got.view(np.uint32), x.repeat(f, axis=-1).view(np.uint32))


def test_augmentation_crops_and_flips_both_views_alike(ben_shards):
    aug = transforms.Augment(scale=(0.5, 0.7), color=False)
    dec = _decoder(ben_shards, "both", size=120, augment=aug, seed=3)
    mean, std = (
        torch.tensor(transforms.CLIP_MEAN)[:, None, None],
        torch.tensor(transforms.CLIP_STD)[:, None, None],
    )
    other = _decoder(ben_shards, "both", size=120, augment=aug, seed=4)

    def agreement(a, b):
        rgb = a["rgb"] * std + mean
        ms_red = (b["ms"][bands.S2_L1C.index("B04")] * 5).clamp(0, 1)  # /10000 vs /2000
        return float(torch.corrcoef(torch.stack([rgb[0].flatten(), ms_red.flatten()]))[0, 1])

    for raw in _raw(ben_shards)[:6]:
        out = dec(raw)
        # same box and flips: the views agree up to bicubic vs bilinear resampling
        assert agreement(out, out) > 0.97
        assert agreement(out, other(raw)) < 0.9  # another crop does not
        assert not torch.allclose(out["rgb"], _decoder(ben_shards, "both")(raw)["rgb"])
    again = dec(_raw(ben_shards)[0])["rgb"]
    assert torch.equal(again, dec(_raw(ben_shards)[0])["rgb"])  # seeded per (seed, epoch, key)


def test_targets_in_every_bigearthnet_nomenclature(ben_shards):
    raw = _raw(ben_shards)[0]
    names = __import__("json").loads(raw["json"])["labels"]
    for nomen, n in (("ben43", 43), ("ben19", 19), ("ben5", 5)):
        t = _decoder(ben_shards, nomenclature=nomen)(raw)["target"]
        assert t.shape == (n,) and t.dtype == torch.float32
    v43 = labels.multi_hot(names, labels.BEN43)
    want19 = labels.convert_multi_hot(v43, labels.BEN43_TO_19, 19)
    got19 = _decoder(ben_shards, nomenclature="ben19")(raw)["target"].numpy()
    np.testing.assert_array_equal(got19, want19)
    assert ben_shards.nomenclature() == "ben19"  # BigEarthNet default
    with pytest.raises(InputError, match="no nomenclature 'ben7'"):
        ben_shards.classes("ben7")


@pytest.mark.parametrize("world", [1, 2, 3, 7])
def test_ranks_read_disjoint_parts_and_run_equal_steps(ben_shards, world):
    dec = _decoder(ben_shards, size=16)
    seen, steps = [], []
    for rank in range(world):
        loader = make_loader(
            ben_shards,
            "train",
            dec,
            batch_size=2,
            train=True,
            rank=rank,
            world=world,
            num_workers=2,
            seed=1,
            epoch=0,
        )
        batches = list(loader)
        steps.append(len(batches))
        assert all(len(b["__key__"]) == 2 for b in batches)
        seen += [k for b in batches for k in b["__key__"]]
    assert len(set(steps)) == 1 and steps[0] > 0
    assert len(seen) == len(set(seen))  # disjoint


@pytest.mark.parametrize("world", [1, 2, 5, 9])
def test_evaluation_visits_every_sample_exactly_once(ben_shards, world):
    dec = _decoder(ben_shards, size=16)
    keys = []
    for rank in range(world):
        loader = make_loader(
            ben_shards, "val", dec, batch_size=3, train=False, rank=rank, world=world, num_workers=2
        )
        keys += [k for b in loader for k in b["__key__"]]
    assert sorted(keys) == sorted(
        ben_shards.manifest and [s["__key__"] for s in _raw(ben_shards, "val")]
    )
    assert len(keys) == ben_shards.count("val")


def test_training_order_is_seeded_and_changes_with_the_epoch(ben_shards):
    dec = _decoder(ben_shards, size=16)

    def order(epoch, seed=0):
        loader = make_loader(
            ben_shards,
            "train",
            dec,
            batch_size=4,
            train=True,
            num_workers=0,
            seed=seed,
            epoch=epoch,
        )
        return [k for b in loader for k in b["__key__"]]

    assert order(0) == order(0)
    assert order(0) != order(1) and order(0) != order(0, seed=5)


def test_partition_falls_back_to_samples_when_shards_are_few():
    parts = partition([("a", 5), ("b", 2)], 0, 3, shuffle=False, seed=0, epoch=0)
    assert [p.by_sample for p in parts] == [True] * 3
    assert [p.count for p in parts] == [3, 2, 2]
    parts = partition([("a", 5), ("b", 2), ("c", 4)], 0, 2, shuffle=False, seed=0, epoch=0)
    assert [p.urls for p in parts] == [("a", "c"), ("b",)] and [p.count for p in parts] == [9, 2]


def test_a_batch_larger_than_a_rank_part_is_refused(ben_shards):
    with pytest.raises(ValueError, match="lower --batch-size"):
        make_loader(ben_shards, "train", _decoder(ben_shards), batch_size=10_000, train=True)


def test_deferred_augmentation_on_the_device_matches_the_worker_path(ben_shards):
    """GPU path (workers decode and draw, the batch is augmented on the device): the same
    functions and draws as the per-sample path, up to the half precision of the transfer."""
    from mtmg.data.loader import collate, device_batch

    aug = transforms.Augment(scale=(0.5, 0.8), p_jitter=0.5, p_grey=0.5, p_blur=0.5)
    kw = dict(view="both", size=96, augment=aug, seed=7)
    cpu, deferred = _decoder(ben_shards, **kw), _decoder(ben_shards, **kw, defer_augment=True)
    raws = _raw(ben_shards)[:8]
    want = collate([cpu(r) for r in raws])
    got = device_batch(collate([deferred(r) for r in raws]), deferred, torch.device("cpu"))
    assert got["rgb"].shape == want["rgb"].shape == (8, 3, 96, 96)
    assert got["ms"].shape == want["ms"].shape == (8, 13, 96, 96)
    for view in ("rgb", "ms"):
        assert (got[view] - want[view]).abs().mean() < 2e-3, view
    torch.testing.assert_close(got["target"], want["target"])


def test_colour_augmentation_is_torchvisions_with_the_references_probabilities():
    """Each op equals torchvision's own (ColorJitter's in the drawn order, RandomGrayscale,
    GaussianBlur(kernel (3, 7))), and the draws follow p = 0.8 / 0.2 / 0.4 / 0.5."""
    import torchvision.transforms.v2.functional as tvf

    aug, rng = transforms.Augment(), random.Random(0)
    img = torch.rand(3, 24, 20, generator=torch.Generator().manual_seed(0))
    ops = (tvf.adjust_brightness, tvf.adjust_contrast, tvf.adjust_saturation)
    draws = [aug.params(24, 20, rng) for _ in range(2000)]
    for p in draws[:40]:
        want = img
        if p["jitter"]:
            for o in p["order"]:
                want = ops[o](want, p["factors"][o])
        if p["grey"]:
            want = tvf.rgb_to_grayscale(want, num_output_channels=3)
        if p["blur"]:
            want = tvf.gaussian_blur(want, [3, 7], [p["sigma"], p["sigma"]])
        torch.testing.assert_close(aug.photometric(img, p), want, atol=1e-5, rtol=0)
    rate = {k: np.mean([p[k] for p in draws]) for k in ("jitter", "grey", "blur", "hflip")}
    assert rate == pytest.approx({"jitter": 0.8, "grey": 0.2, "blur": 0.4, "hflip": 0.5}, abs=0.04)
    factors = np.array([p["factors"] for p in draws])
    assert factors.min() >= 0.6 and factors.max() <= 1.4
    assert {p["order"] for p in draws} == set(itertools.permutations(range(3)))
    sigmas = [p["sigma"] for p in draws]
    assert 0.1 <= min(sigmas) < 0.2 and 1.9 < max(sigmas) <= 2.0
    boxes = np.array([p["box"] for p in draws])  # top, left, h, w inside the 24 x 20 input
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 0] + boxes[:, 2] <= 24).all()
    assert (boxes[:, 1] + boxes[:, 3] <= 20).all()
    area = boxes[:, 2] * boxes[:, 3] / (24 * 20)
    assert 0.85 < area.min() and area.max() <= 1 and len(set(map(tuple, boxes))) > 20


def test_evaluation_resizes_the_shortest_side_and_centre_crops():
    wide = torch.rand(3, 40, 80)
    out = transforms.resize(wide, 20)
    assert out.shape == (3, 20, 20)
    want = torchvision.transforms.v2.functional.resize(
        wide, 20, interpolation=torchvision.transforms.InterpolationMode.BICUBIC, antialias=True
    )[:, :, 10:30]
    torch.testing.assert_close(out, want.clamp(0, 1))


def test_shards_are_read_through_uris_too(ben_shards):
    """A shard set addressed by URI (file:// here; s3://, gs:// alike) loads like a path."""
    by_path = ShardSet.open(ben_shards.root)
    by_uri = ShardSet.open(f"file://{ben_shards.root}")
    assert all(u.startswith("file://") for u, _ in by_uri.shards("val"))

    def keys(ds):
        loader = make_loader(ds, "val", _decoder(ds, size=16), batch_size=4, train=False)
        return [k for b in loader for k in b["__key__"]]

    assert keys(by_uri) == keys(by_path) and len(keys(by_uri)) == by_path.count("val")


@pytest.mark.parametrize("partial", [True, False])
def test_rebatching_keeps_the_order_and_passes_full_batches_through(partial):
    from mtmg.data.batching import Rebatch, collate

    keys = iter(range(100))
    sizes = [4, 3, 4, 1, 4, 2]
    worker = [
        collate([{"__key__": k, "x": torch.tensor([k])} for k in itertools.islice(keys, n)])
        for n in sizes
    ]
    out = list(Rebatch(4, partial)(iter(worker)))
    flat = [k for b in out for k in b["__key__"]]
    assert flat == list(range(18 if partial else 16))
    assert [len(b["__key__"]) for b in out] == [4, 4, 4, 4] + ([2] if partial else [])
    assert out[0] is worker[0]  # nothing pending: not copied
    assert all(torch.equal(b["x"][:, 0], torch.tensor(b["__key__"])) for b in out)
