"""One decoding pass and one forward pass for every nomenclature of a set: target maps equal
decoding in each nomenclature, several heads over one pass equal a pass per head."""

from __future__ import annotations

import pytest
import torch

from mtmg import prep, synth
from mtmg.data import labels, loader
from mtmg.engine import evaluate
from mtmg.engine.context import WorkerContext
from mtmg.models import clip
from mtmg.models.heads import ZeroShotHead

NOMENCLATURES = ("ben19", "ben5", "ben43")
# BigEarthNet-19 drops the first three: a patch labelled only with them has no ben19 label
POOL = ("Airports", "Bare rock", "Burnt areas", "Pastures", "Coniferous forest", "Water bodies")


@pytest.fixture(scope="module")
def ben(tmp_path_factory, ray_session) -> loader.ShardSet:
    root = tmp_path_factory.mktemp("evaluate")
    synth.make_bigearthnet(root / "raw", n_patches=30, size=24, s1=False, seed=7, classes=POOL)
    prep.shard(
        prep.ShardConfig("bigearthnet", str(root / "raw"), str(root / "ben"), progress=False)
    )
    return loader.ShardSet.open(str(root / "ben"))


@pytest.fixture(scope="module")
def bundle() -> clip.ClipBundle:
    torch.manual_seed(0)
    return clip.load_clip("mtmg-tiny-vit", None)


def _batches(ds: loader.ShardSet, nomenclature: str, bundle, split: str) -> list[dict]:
    targets = loader.Targets.of(ds, nomenclature)
    dec = loader.Decoder.of(ds, "rgb", targets, bundle.image_size, mean=bundle.mean, std=bundle.std)
    return list(loader.make_loader(ds, split, dec, batch_size=4, train=False, num_workers=0))


def _target_map(ds: loader.ShardSet, nomenclature: str) -> evaluate.TargetMap:
    t = loader.Targets.of(ds, nomenclature)
    return evaluate.TargetMap(t.mapping, t.n_classes)


def test_mapped_targets_equal_decoding_in_each_nomenclature(ben, bundle):
    assert ben.manifest["label_nomenclature"] == "ben43"
    dropped = 0
    for split in ("train", "val", "test"):
        stored = _batches(ben, "ben43", bundle, split)
        keys = [k for b in stored for k in b["__key__"]]
        targets = torch.cat([b["target"] for b in stored])
        for nomen in NOMENCLATURES:
            decoded = _batches(ben, nomen, bundle, split)
            assert [k for b in decoded for k in b["__key__"]] == keys
            want = torch.cat([b["target"] for b in decoded])
            got = _target_map(ben, nomen)(targets)
            assert got.dtype == want.dtype and torch.equal(got, want), (split, nomen)
            if nomen == "ben19":
                dropped += int(((targets.sum(1) > 0) & (want.sum(1) == 0)).sum())
    assert dropped > 0  # patches whose every label drops out of ben19 were mapped too


def test_single_label_target_maps_map_class_indices():
    m = evaluate.TargetMap((2, -1, 0, 1), 3)
    assert m(torch.tensor([0, 3, 2, 1])).tolist() == [2, 1, 0, -1]
    same = torch.tensor([1, 0])
    assert evaluate.TargetMap(None, 2)(same) is same


@pytest.mark.parametrize("amp", [None, torch.bfloat16], ids=["fp32", "bf16"])
def test_heads_over_one_pass_score_as_a_pass_per_head(ben, bundle, amp):
    """Every nomenclature's head on one pass of batches decoded in the stored nomenclature:
    the metrics of scoring each in a pass of its own over batches decoded in it, exactly."""
    visual, ctx = bundle.model.visual.eval(), WorkerContext()
    gen = torch.Generator().manual_seed(1)
    dim = bundle.model.visual.output_dim
    head = {
        n: ZeroShotHead(torch.randn(len(ben.classes(n)), dim, generator=gen)) for n in NOMENCLATURES
    }
    assert len(head["ben5"].weights) == len(labels.BEN5)
    want = [
        evaluate.classification(
            ctx,
            lambda b, h=head[n]: h(visual(b["rgb"])),
            _batches(ben, n, bundle, "train"),
            ben.task,
            amp,
        )
        for n in NOMENCLATURES
    ]
    got = evaluate.classification_by_heads(
        ctx,
        lambda b: visual(b["rgb"]),
        [(head[n], _target_map(ben, n)) for n in NOMENCLATURES],
        _batches(ben, "ben43", bundle, "train"),
        ben.task,
        amp,
    )
    assert got == want
    assert [len(m["per_class"]) for m in got] == [19, 5, 43]
