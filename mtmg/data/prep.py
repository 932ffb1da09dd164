"""Data preparation without Ray: the sharding options, the plan (the tree listed, splits
assigned, bad inputs found without reading pixels), OUT made ready for it, and the work of one
shard. `mtmg.runtime.shard_job` runs the shards as Ray tasks (`python data_prep/shard.py`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass

from mtmg import config
from mtmg.data import storage
from mtmg.data.raw import DATASETS, DatasetError, Inventory, Layout, SampleError, make_layout
from mtmg.data.raw.common import SPLITS, majority, majority_size
from mtmg.data.shard_writer import STATE_DIR, ShardResult, ShardTask, plan_tasks, write_shard
from mtmg.data.shards import FORMAT_VERSION
from mtmg.data.storage import Location, StorageError

log = logging.getLogger(__name__)
option = config.option


@dataclass(frozen=True)
class ShardConfig:
    dataset: str = option(
        help="raw dataset kind", positional=True, choices=sorted(DATASETS), metavar="DATASET"
    )
    root: str = option(help="RAW: the dataset as extracted from its archive (path or URI)")
    out: str = option(help="OUT: where shards and manifest go (path or URI)")
    s1: str | None = option(None, help="BigEarthNet: pair each S2 patch with its S1 patch here")
    splits: str | None = option(
        None, help="folder of split files (train/val/test lists); default: official or in RAW"
    )
    shard_size: int = option(1000, help="samples per shard")
    workers: int | None = option(None, help="shard tasks running at once (default: all CPUs)")
    limit: int | None = option(None, help="at most N samples per split (a quick subset)")
    skip_bad: bool = option(
        False, help="leave bad samples out and list them in the manifest instead of stopping"
    )
    format: int = option(
        FORMAT_VERSION,
        help="shard format: 2 stores bands on their native grids, compressed; "
        "1 stores every band upsampled to the 10 m grid",
        choices=[1, 2],
    )
    resample: str = option(
        "nearest",
        choices=["nearest", "bilinear", "bicubic"],
        help="20/60 m bands onto the 10 m grid (format 2: the loader's default way to do it; "
        "format 1: done while sharding, by GDAL)",
    )
    native_size: int | None = option(
        None, help="expected patch size in pixels (default: the common size of the first patches)"
    )
    seed: int = option(0, help="seed of hash-based splits where a dataset has no split files")
    val_fraction: float = option(
        0.1, help="imagenet without split files: share held out as val; the rest is test"
    )
    class_names: str | None = option(
        None, help="imagefolder: JSON {folder: class name} used in prompts"
    )
    cluster: bool = option(False, help="connect to a running Ray cluster (RAY_ADDRESS or auto)")
    overwrite: bool = option(False, help="replace an OUT that holds shards of another input")
    progress: bool = option(True, help="show a progress bar")


def build_layout(cfg: ShardConfig) -> Layout:
    loc = storage.location
    return make_layout(
        cfg.dataset,
        loc(cfg.root),
        s1=loc(cfg.s1) if cfg.s1 else None,
        splits=loc(cfg.splits) if cfg.splits else None,
        skip_bad=cfg.skip_bad,
        resample=cfg.resample,
        seed=cfg.seed,
        class_names=loc(cfg.class_names) if cfg.class_names else None,
        val_fraction=cfg.val_fraction,
        native=cfg.format == 2,
    )


def make_plan(cfg: ShardConfig) -> tuple[Layout, Inventory, list[ShardTask]]:
    """Plan a run without writing anything: the layout (with its patch size), items and shards."""
    root = storage.location(cfg.root)
    if not storage.is_dir(root.fs, root.path):
        raise DatasetError(f"--root {cfg.root}: no such directory")
    if not storage.list_dir(root.fs, root.path):
        raise DatasetError(f"--root {cfg.root}: the directory is empty")
    layout = build_layout(cfg)
    inventory = layout.scan()
    if cfg.limit is not None:
        inventory.items = {s: v[: cfg.limit] for s, v in inventory.items.items()}
    if inventory.n_items == 0:
        raise DatasetError(f"{cfg.root}: no samples to write ({nothing_left(inventory)})")
    first = next(v for v in inventory.items.values() if v)
    if hasattr(layout, "size"):
        size = (cfg.native_size,) * 2 if cfg.native_size else majority_size(layout, first)
        layout = dataclasses.replace(layout, size=size)
    if hasattr(layout, "one_grid"):
        layout = dataclasses.replace(layout, one_grid=bool(majority(layout.on_one_grid, first)))
    return layout, inventory, plan_tasks(inventory.items, cfg.shard_size)


def nothing_left(inventory: Inventory, rejected: list[dict[str, str]] | None = None) -> str:
    """Why no sample is left to write: what was excluded and rejected, with the first reasons."""
    rejected = [*inventory.rejected, *(rejected or [])]
    parts = []
    for what, entries in (("excluded", inventory.excluded), ("rejected", rejected)):
        reasons = sorted({e["reason"] for e in entries})
        shown = "; ".join(reasons[:3]) + ("; ..." if len(reasons) > 3 else "")
        parts.append(f"{len(entries)} {what}" + (f": {shown}" if entries else ""))
    return ", ".join(parts)


def plan_fingerprint(cfg: ShardConfig, layout: Layout, tasks: list[ShardTask]) -> str:
    """A digest of what the plan writes: options, input roots, patch size, each shard's keys.

    The JSON is hashed as it is encoded: at 590k keys it would be a ~25 MB string at once.
    """
    content = {
        "format_version": cfg.format,
        "dataset": cfg.dataset,
        # not skip_bad: shards are the same either way, except those holding a bad sample
        "options": {k: getattr(cfg, k) for k in ("resample", "shard_size", "seed")},
        "root": storage.location(cfg.root).uri,
        "s1": storage.location(cfg.s1).uri if cfg.s1 else None,
        "size": getattr(layout, "size", None),
        "shards": [[t.name, [i.key for i in t.items]] for t in tasks],
    }
    h = hashlib.sha256()
    for chunk in json.JSONEncoder(sort_keys=True).iterencode(content):
        h.update(chunk.encode())
    return h.hexdigest()


def prepare_out(out: Location, fingerprint: str, overwrite: bool) -> None:
    """Claim OUT for this plan; refuse to mix shards of another input unless told to overwrite."""
    fs = out.fs
    plan_path = out.child_path(STATE_DIR, "plan.json")
    old = None
    if storage.exists(fs, plan_path):
        old = storage.read_json(fs, plan_path).get("fingerprint")
    foreign = old is None and storage.exists(fs, out.child_path("manifest.json"))
    if (old is not None and old != fingerprint) or foreign:
        if not overwrite:
            raise DatasetError(
                f"{out} holds shards of another input or other options; pass --overwrite to "
                "replace them, or choose another --out"
            )
        for name in [*SPLITS, STATE_DIR]:
            if storage.is_dir(fs, out.child_path(name)):
                fs.delete_dir(out.child_path(name))
        for name in ("manifest.json", "index.parquet"):
            if storage.exists(fs, out.child_path(name)):
                fs.delete_file(out.child_path(name))
    for split in SPLITS:
        storage.remove_stale_temporaries(fs, out.child_path(split))
    storage.remove_stale_temporaries(fs, out.path)  # an index.parquet cut short
    storage.write_json_atomic(fs, plan_path, {"fingerprint": fingerprint})


def run_shard(
    layout: Layout, task: ShardTask, out: Location, skip_bad: bool, version: int = FORMAT_VERSION
) -> ShardResult:
    """One shard task: `write_shard`, with a StorageError (full disk, read-only, refused: no
    retry helps) returned as the shard's error; other OSErrors are raised, and retried.

    The result comes back without its keys and labels (the shard's resume state holds them, and
    `catalog.write_index` reads them from there), so the driver holds no per-sample lists.
    """
    try:
        res = write_shard(layout, task, out, skip_bad=skip_bad, version=version)
    except StorageError as e:
        return ShardResult(task.name, error={"kind": "storage", "reason": str(e)})
    return dataclasses.replace(res, keys=[], labels=[])


def raise_error(res: ShardResult) -> None:
    """The error a shard task returned, as the driver raises it."""
    err = res.error or {}
    if err.get("kind") == "storage":
        raise StorageError(err["reason"])
    if err:
        raise SampleError(err["key"], err["reason"], err["file"])


EPILOG = """\
datasets:
{datasets}

output (OUT):
  manifest.json                bands, sizes, classes per nomenclature, templates, per-split shards
                               with sample counts and sha256, excluded and rejected samples
  index.parquet                one row per sample: key, split, shard, labels
  <split>/<split>-NNNNNN.tar   WebDataset shards; __key__ = source patch id

Runs as Ray tasks (one per shard) on an embedded local Ray, or on a running cluster with
--cluster (RAY_ADDRESS or auto); there RAW and OUT must be storage every node sees (a shared
mount or an object-store URI such as s3://bucket/path). Re-running keeps finished shards whose
input files (size, mtime) and bytes (sha256) are unchanged, and rewrites the others.
`python -m mtmg.verify OUT` checks every shard's size and sha256 against manifest.json.

examples:
  python data_prep/shard.py bigearthnet --root BigEarthNet --out shards/ben --s1 BigEarthNet
  python data_prep/shard.py eurosat-ms --root EuroSATallBands --out shards/eurosat-ms
  python data_prep/shard.py bigearthnet --root RAW --out OUT --limit 100 --skip-bad
"""
