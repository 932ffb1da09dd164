"""Evaluation entries `PATH[:NOMENCLATURE]`: parsing, checks before training, label remapping,
per-class metrics and the report's columns per nomenclature."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from mtmg import synth
from mtmg.data import evalsets, labels, loader
from mtmg.data.evalsets import EvalEntry
from mtmg.engine import metrics
from mtmg.errors import InputError
from mtmg.report import build


@pytest.fixture(scope="module")
def ben(tmp_path_factory, ray_session) -> str:
    from mtmg.prep import ShardConfig, shard

    root = tmp_path_factory.mktemp("evalsets")
    synth.make_bigearthnet(root / "raw", n_patches=24, s1=False, seed=5)
    shard(ShardConfig("bigearthnet", str(root / "raw"), str(root / "ben"), progress=False))
    return str(root / "ben")


@pytest.mark.parametrize(
    ("entry", "path", "nomen"),
    [
        ("shards/ben", "shards/ben", None),
        ("shards/ben:ben5", "shards/ben", "ben5"),
        ("/abs/ben:ben_43", "/abs/ben", "ben_43"),
        ("s3://bucket/ben", "s3://bucket/ben", None),
        ("s3://bucket/ben:ben5", "s3://bucket/ben", "ben5"),
        ("gs://b/x:y/ben:ben43", "gs://b/x:y/ben", "ben43"),
        ("shards/ben:BEN5", "shards/ben:BEN5", None),  # not a nomenclature name
        ("shards/ben:", "shards/ben:", None),
        (":ben5", ":ben5", None),
    ],
)
def test_parse(entry, path, nomen):
    e = EvalEntry.parse(entry)
    assert (e.path, e.nomenclature) == (path, nomen)
    assert str(e) == entry or nomen is None


def test_an_existing_path_with_a_colon_stays_a_path(tmp_path, monkeypatch):
    (tmp_path / "run:1").mkdir()
    monkeypatch.chdir(tmp_path)
    assert EvalEntry.parse("run:1") == EvalEntry("run:1")
    assert EvalEntry.parse("run:2") == EvalEntry("run", "2")
    assert evalsets.absolute("sets/ben:ben5") == f"{tmp_path}/sets/ben:ben5"
    assert evalsets.absolute("s3://b/ben:ben5") == "s3://b/ben:ben5"


def test_check_names_the_entry_and_the_sets_nomenclatures(ben):
    got = evalsets.check([f"{ben}:ben5", f"{ben}:ben43", ben])
    assert [e.nomenclature for e in got] == ["ben5", "ben43", None]
    with pytest.raises(InputError) as err:
        evalsets.check([f"{ben}:ben7"])
    assert f"--eval-data {ben}:ben7" in str(err.value)
    assert "ben19, ben43, ben5" in str(err.value)
    with pytest.raises(InputError, match="given twice"):
        evalsets.check([ben, f"{ben}:ben19"])  # ben19 is the default


def test_remap_equals_decoding_in_each_nomenclature(ben):
    ds = loader.ShardSet.open(ben)
    stored = loader.Targets.of(ds, "ben43")
    names = [[labels.BEN43[i] for i in (0, 5, 20)], [labels.BEN43[i] for i in (11, 40)]]
    decoded = torch.stack([stored(n) for n in names])
    for nomen in ("ben43", "ben19", "ben5"):
        want = torch.stack([loader.Targets.of(ds, nomen)(n) for n in names])
        torch.testing.assert_close(evalsets.remap(decoded, ds, nomen), want)


def test_per_class_values_average_to_the_macro_metric():
    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(40, 5, generator=gen)
    targets = (torch.rand(40, 5, generator=gen) > 0.6).float()
    targets[:, 3] = 0  # a class without positives: no value, out of the mean
    values, support = metrics.per_class(scores, targets, "multi-label")
    assert values[3] is None and support == [int(n) for n in targets.sum(0)]
    kept = [v for v in values if v is not None]
    assert sum(kept) / len(kept) == pytest.approx(metrics.multilabel_ap(scores, targets)["mAP"])
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0], [2.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    acc, n = metrics.per_class(logits, torch.tensor([0, 0, 0, 2]), "single-label")
    assert acc == [pytest.approx(200 / 3), None, 100.0] and n == [3, 0, 1]


def _run_dir(path: Path, rows: list[dict]) -> Path:
    path.mkdir()
    (path / "patched.safetensors").write_bytes(b"")
    pq.write_table(pa.Table.from_pylist(rows), path / "metrics.parquet")
    return path


def test_report_has_a_column_per_nomenclature_and_reads_old_tables(tmp_path):
    row = dict(role="eval", split="test", metric="mAP", n=10)
    new = [
        {
            **row,
            "dataset": "ben",
            "nomenclature": nomen,
            "alpha": a,
            "value": v + a,
            "selected": a == 1,
        }
        for nomen, v in (("ben19", 50.0), ("ben5", 60.0), ("ben43", 40.0))
        for a in (0.0, 1.0)
    ]
    new += [
        {
            **row,
            "dataset": "ems",
            "nomenclature": "eurosat",
            "alpha": a,
            "value": 30.0,
            "selected": a == 1,
        }
        for a in (0.0, 1.0)
    ]
    old = [
        {**row, "dataset": "sen12ms", "alpha": a, "value": 20.0 + a, "selected": a == 1}
        for a in (0.0, 1.0)
    ]
    runs = [_run_dir(tmp_path / "new", new), _run_dir(tmp_path / "old", old)]
    summary = build.build(runs, tmp_path / "report")
    head = summary["table"][0]
    for col in ("ben:ben19 mAP", "ben:ben5 mAP", "ben:ben43 mAP", "ems mAP", "sen12ms mAP"):
        assert f" {col} |" in head, (col, head)
    zero = {r["set"]: r["value"] for r in summary["rows"] if r["model"] == "zero-shot CLIP"}
    assert zero["ben:ben5"] == 60.0 and zero["ben:ben43"] == 40.0 and zero["sen12ms"] == 20.0
    assert any("ben:ben5 mAP" in g and "+1.00" in g for g in summary["gains"])
