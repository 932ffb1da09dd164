"""Data preparation: a raw dataset -> WebDataset shards + manifest, as one Ray task per shard.

`shard(cfg)` is what `python data_prep/shard.py` runs. The driver checks that OUT is writable,
plans (lists the tree, assigns splits, finds bad inputs it can see without reading pixels); tasks
read GeoTIFFs and write tars; the driver writes `index.parquet` and, last, `manifest.json`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import sys
import time
from dataclasses import dataclass
from typing import Any

import ray
from tqdm import tqdm

from mtmg import config, errors
from mtmg.data import storage
from mtmg.data.raw import DATASETS, DatasetError, Layout, Plan, SampleError, make_layout
from mtmg.data.raw.common import SPLITS, majority_size
from mtmg.data.shards import (
    FORMAT_VERSION,
    STATE_DIR,
    ShardResult,
    ShardTask,
    build_manifest,
    plan_tasks,
    summary_table,
    write_index,
    write_shard,
)
from mtmg.data.storage import Location, StorageError
from mtmg.runtime import cluster

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
    resample: str = option(
        "nearest", help="20/60 m bands onto the 10 m grid", choices=["nearest", "bilinear"]
    )
    native_size: int | None = option(
        None, help="expected patch size in pixels (default: the common size of the first patches)"
    )
    seed: int = option(0, help="seed of hash-based splits where a dataset has no split files")
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
    )


def make_plan(cfg: ShardConfig) -> tuple[Layout, Plan, list[ShardTask]]:
    """Plan a run without writing anything: the layout (with its patch size), items and shards."""
    root = storage.location(cfg.root)
    if not storage.is_dir(root.fs, root.path):
        raise DatasetError(f"--root {cfg.root}: no such directory")
    if not storage.list_dir(root.fs, root.path):
        raise DatasetError(f"--root {cfg.root}: the directory is empty")
    layout = build_layout(cfg)
    plan = layout.plan()
    if cfg.limit is not None:
        plan.items = {s: v[: cfg.limit] for s, v in plan.items.items()}
    if plan.n_items == 0:
        raise DatasetError(f"{cfg.root}: no samples to write (excluded: {len(plan.excluded)})")
    if hasattr(layout, "size"):
        first = next(v for v in plan.items.values() if v)
        size = (cfg.native_size,) * 2 if cfg.native_size else majority_size(layout, first)
        layout = dataclasses.replace(layout, size=size)
    return layout, plan, plan_tasks(plan.items, cfg.shard_size)


def _fingerprint(cfg: ShardConfig, layout: Layout, tasks: list[ShardTask]) -> str:
    content = {
        "format_version": FORMAT_VERSION,
        "dataset": cfg.dataset,
        # not skip_bad: shards are the same either way, except those holding a bad sample
        "options": {k: getattr(cfg, k) for k in ("resample", "shard_size", "seed")},
        "root": storage.location(cfg.root).uri,
        "s1": storage.location(cfg.s1).uri if cfg.s1 else None,
        "size": getattr(layout, "size", None),
        "shards": [[t.name, [i.key for i in t.items]] for t in tasks],
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def _prepare_out(out: Location, fingerprint: str, overwrite: bool) -> None:
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
    storage.write_json_atomic(fs, plan_path, {"fingerprint": fingerprint})


def run_shard(layout: Layout, task: ShardTask, out: Location, skip_bad: bool) -> ShardResult:
    """One shard task: `write_shard`, with a StorageError (full disk, read-only, refused: no
    retry helps) returned as the shard's error; other OSErrors are raised, and retried."""
    try:
        return write_shard(layout, task, out, skip_bad=skip_bad)
    except StorageError as e:
        return ShardResult(task.name, error={"kind": "storage", "reason": str(e)})


_shard_task = ray.remote(num_cpus=1, max_retries=3, retry_exceptions=[OSError])(run_shard)


def raise_error(res: ShardResult) -> None:
    """The error a shard task returned, as the driver raises it."""
    err = res.error or {}
    if err.get("kind") == "storage":
        raise StorageError(err["reason"])
    if err:
        raise SampleError(err["key"], err["reason"], err["file"])


def run_tasks(
    cfg: ShardConfig, layout: Layout, tasks: list[ShardTask], out: Location
) -> list[ShardResult]:
    """Run the shard tasks with at most `workers` in flight; stop at the first bad sample.

    The progress bar advances per finished shard (no extra actor: on a small machine starting
    one costs as much as a shard).
    """
    workers = cfg.workers or cluster.cpus_available()
    bar = tqdm(
        total=sum(len(t.items) for t in tasks), unit="patch", desc="sharding",
        disable=not cfg.progress, smoothing=0.1,
    )  # fmt: skip
    todo, pending, results = list(reversed(tasks)), {}, []
    try:
        while todo or pending:
            while todo and len(pending) < workers:
                task = todo.pop()
                pending[_shard_task.remote(layout, task, out, cfg.skip_bad)] = task
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                task = pending.pop(ref)
                try:
                    res: ShardResult = ray.get(ref)
                except ray.exceptions.RayTaskError as e:
                    if not isinstance(e.cause, OSError):
                        raise
                    msg = f"shard {out.join(task.name)} failed after retries: {e.cause}"
                    raise StorageError(msg) from e
                raise_error(res)
                results.append(res)
                bar.update(len(task.items))
    finally:
        if pending:  # stop the rest before returning, so nothing writes into OUT afterwards
            for ref in pending:
                ray.cancel(ref)
            ray.wait(list(pending), num_returns=len(pending), timeout=60)
        bar.close()
    return sorted(results, key=lambda r: r.name)


def shard(cfg: ShardConfig) -> dict[str, Any]:
    """Shard a raw dataset; returns the manifest (also written to OUT/manifest.json)."""
    t0 = time.perf_counter()
    out = storage.location(cfg.out)
    existed = storage.exists(out.fs, out.path)
    storage.check_writable(out)
    try:
        layout, plan, tasks = make_plan(cfg)
    except Exception:
        if not existed:  # bad input leaves no OUT behind
            out.fs.delete_dir(out.path)
        raise
    on_cluster = cluster.init_ray(cfg.cluster, num_cpus=cfg.workers)
    if on_cluster and out.is_local:
        cluster.check_paths_visible([storage.location(cfg.root).path], out.path)
    _prepare_out(out, _fingerprint(cfg, layout, tasks), cfg.overwrite)
    results = run_tasks(cfg, layout, tasks, out)
    manifest = build_manifest(config.to_dict(cfg), layout, plan, results)
    write_index(out, results)
    storage.write_json_atomic(out.fs, out.child_path("manifest.json"), manifest)
    resumed = sum(r.resumed for r in results)
    for r in results:
        if r.note:
            log.warning("%s: %s", r.name, r.note)
    log.info(
        "%d shards (%d kept from an earlier run) in %.1fs", len(results), resumed,
        time.perf_counter() - t0,
    )  # fmt: skip
    return manifest


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


def main(argv: list[str] | None = None) -> int:
    """`python data_prep/shard.py DATASET --root RAW --out OUT [options]`."""
    datasets = "\n".join(f"  {k:<15} {v}" for k, v in DATASETS.items())
    cfg = config.parse(
        ShardConfig,
        argv,
        "Convert a raw remote-sensing dataset into WebDataset shards plus a manifest.",
        EPILOG.format(datasets=datasets),
    )
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        manifest = shard(cfg)
    except SampleError as e:
        print(f"error: {e}", file=sys.stderr)
        print(
            "nothing misleading was written (no manifest); fix the input, or pass --skip-bad "
            "to leave bad samples out and list them in the manifest",
            file=sys.stderr,
        )
        return 2
    except (DatasetError, StorageError, cluster.ClusterError, FileNotFoundError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return errors.interrupted("run the same command again: finished shards are kept")
    print(summary_table(manifest))
    for r in manifest["rejected"]:
        print(f"rejected {r['key']}: {r['reason']} ({r['file']})")
    print(f"manifest: {storage.location(cfg.out).child_path('manifest.json')}")
    return 0
