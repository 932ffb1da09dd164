"""What the sharding driver holds per patch (issue "Shards at archive scale"): compact items,
results without per-sample lists, an index streamed from the shards' resume states. No Ray:
the driver's parts are called directly (bench/shard_growth.py measures the whole job)."""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import tracemalloc
from dataclasses import asdict

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mtmg import prep, synth
from mtmg.data import catalog, shard_writer, shards, storage
from mtmg.data import prep as data_prep
from mtmg.data.catalog import write_index
from mtmg.data.raw import Item, make_layout
from mtmg.data.raw.common import SPLITS
from mtmg.data.shard_writer import ShardResult, plan_tasks
from mtmg.synth.bigearthnet import ben_patches
from mtmg.synth.common import assign_splits, write_lines


def test_items_have_no_dict_and_travel_by_pickle():
    item = Item("S2A_MSIL2A_20170613T101031_0_45", "train", ("BigEarthNet-v1.0", "", ""))
    assert not hasattr(item, "__dict__")
    assert pickle.loads(pickle.dumps(item)) == item


def _results(out, n_shards=3, per_shard=4):
    """Full results (as write_shard returns them) whose resume states are on disk."""
    results = []
    for i in range(n_shards):
        split = SPLITS[i % 3]
        keys = [f"{split}_{i}_{j}" for j in range(per_shard)]
        labels = [["Vineyards", "Rice fields"][: 1 + j % 2] for j in range(per_shard)]
        r = ShardResult(f"{split}/{split}-{i:06d}.tar", per_shard, f"{i:064x}", 1, keys, labels)
        storage.write_json_atomic(out.fs, shard_writer.state_path(out, r.name), asdict(r))
        results.append(r)
    results.append(ShardResult("val/val-000009.tar", rejected=[{"key": "bad", "reason": "x"}]))
    return results


def _old_index(results) -> bytes:
    """index.parquet as the driver wrote it before: every row in memory, one write_table."""
    rows = {"key": [], "split": [], "shard": [], "labels": []}
    for r in results:
        for key, labs in zip(r.keys, r.labels, strict=True):
            rows["key"].append(key)
            rows["split"].append(r.name.split("/")[0])
            rows["shard"].append(r.name)
            rows["labels"].append(labs)
    buf = io.BytesIO()
    pq.write_table(pa.table(rows, schema=catalog.INDEX_SCHEMA), buf, compression="zstd")
    return buf.getvalue()


def test_the_index_streamed_from_resume_states_is_the_index_of_full_results(tmp_path):
    out = storage.location(tmp_path)
    full = _results(out)
    light = [ShardResult(r.name, r.count, r.sha256, r.bytes, rejected=r.rejected) for r in full]
    for results, want in ((full, full), (light, full), ([], [])):
        write_index(out, results)
        assert (tmp_path / "index.parquet").read_bytes() == _old_index(want)
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name] == []


def test_a_large_index_is_written_in_row_groups_with_the_same_rows(tmp_path, monkeypatch):
    out = storage.location(tmp_path)
    full = _results(out, n_shards=7)
    monkeypatch.setattr(catalog, "INDEX_ROW_GROUP", 8)
    write_index(out, [ShardResult(r.name, r.count, r.sha256) for r in full])
    got = pq.ParquetFile(tmp_path / "index.parquet")
    assert got.metadata.num_row_groups == 4 and got.schema_arrow == catalog.INDEX_SCHEMA
    assert got.read() == pq.read_table(io.BytesIO(_old_index(full)))


def test_a_resume_state_rewritten_under_the_driver_is_refused(tmp_path):
    out = storage.location(tmp_path)
    r = _results(out, n_shards=1)[0]
    storage.write_json_atomic(
        out.fs, shard_writer.state_path(out, r.name), {**asdict(r), "keys": []}
    )
    with pytest.raises(shards.ShardError, match="no longer the state of train/train-000000"):
        write_index(out, [ShardResult(r.name, r.count, r.sha256)])
    assert not (tmp_path / "index.parquet").exists()


def test_a_shard_task_returns_no_per_sample_lists(tmp_path):
    root = tmp_path / "raw"
    synth.make_bigearthnet(root, n_patches=4, s1=False, seed=2)
    cfg = prep.ShardConfig("bigearthnet", str(root), str(tmp_path / "o"), shard_size=8)
    layout, _, tasks = data_prep.make_plan(cfg)
    out = storage.location(cfg.out)
    res = data_prep.run_shard(layout, tasks[0], out, False)
    assert res.count == len(tasks[0].items) and res.keys == res.labels == []
    keys, labels = catalog.shard_rows(out, res)
    assert keys == [i.key for i in tasks[0].items] and len(labels) == res.count


def _dirs_only_tree(root, n):
    """A BigEarthNet v1 tree of empty patch folders and split files: enough to scan and plan."""
    keys = [p.s2 for p in ben_patches(n, 1)]
    for key in keys:
        (root / "BigEarthNet-v1.0" / key).mkdir(parents=True)
    for split, names in assign_splits(keys, (0.6, 0.2, 0.2), SPLITS, 1).items():
        write_lines(root / f"{split}.csv", names)


def test_the_plan_costs_a_few_hundred_bytes_a_patch(tmp_path):
    n = 3000
    _dirs_only_tree(tmp_path, n)
    cfg = prep.ShardConfig("bigearthnet", str(tmp_path), str(tmp_path / "o"), shard_size=100)
    layout = data_prep.build_layout(cfg)
    layout.scan()  # imports and first-call caches out of the measure
    tracemalloc.start()
    try:
        inventory = layout.scan()
        tasks = plan_tasks(inventory.items, cfg.shard_size)
        fingerprint = data_prep.plan_fingerprint(cfg, layout, tasks)
        held, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # before: ~380 bytes held (an Item's __dict__, a full path and a tuple each), ~480 at peak
    assert held / n < 250 and peak / n < 400, (held / n, peak / n)
    train = inventory.items["train"]
    assert train[0].ref is train[1].ref  # one ref tuple for every patch without S1
    old = {
        "format_version": cfg.format,
        "dataset": cfg.dataset,
        "options": {k: getattr(cfg, k) for k in ("resample", "shard_size", "seed")},
        "root": storage.location(cfg.root).uri,
        "s1": None,
        "size": None,
        "shards": [[t.name, [i.key for i in t.items]] for t in tasks],
    }
    assert fingerprint == hashlib.sha256(json.dumps(old, sort_keys=True).encode()).hexdigest()


def test_v1_items_share_their_folders_and_fingerprint_as_before(tmp_path):
    info = synth.make_bigearthnet(tmp_path / "raw", n_patches=3, s1=True, seed=4)
    root = storage.location(tmp_path / "raw")
    layout = make_layout("bigearthnet", root, s1=root)
    items = [i for v in layout.scan().items.values() for i in v]
    assert {i.key: i.ref[2] for i in items} == info["s2_to_s1"]
    assert len({id(i.ref[0]) for i in items}) == len({id(i.ref[1]) for i in items}) == 1
    # resume states fingerprint the refs mtmg stored before (full folders): old shards are kept
    key, s1_name = items[0].key, items[0].ref[2]
    assert layout.ref_id(items[0]) == (f"{info['s2_dir']}/{key}", f"{info['s1_dir']}/{s1_name}")
    assert layout.sources(items[0])[-1][1] == (
        f"{info['s1_dir']}/{s1_name}/{s1_name}_labels_metadata.json"
    )
