"""The sharding job: one Ray task per shard, on an embedded Ray or a cluster.

`shard(cfg)` is what `python data_prep/shard.py` runs. The driver checks that OUT is writable
and plans (`mtmg.data.prep`); tasks read GeoTIFFs and write tars; the driver writes
`index.parquet` and, last, `manifest.json`.

The driver's memory grows with the archive only by its plan (one compact `Item` per patch):
tasks return results without per-sample lists, and the index streams from the shards' resume
states (bench/shard_growth.py).
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

from tqdm import tqdm

from mtmg import config, errors, logs
from mtmg.data import storage
from mtmg.data.catalog import build_manifest, write_index
from mtmg.data.prep import (
    EPILOG,
    ShardConfig,
    make_plan,
    nothing_left,
    plan_fingerprint,
    prepare_out,
    raise_error,
    run_shard,
)
from mtmg.data.raw import DATASETS, DatasetError, Layout, SampleError
from mtmg.data.shard_writer import ShardResult, ShardTask
from mtmg.data.shards import summary_table
from mtmg.data.storage import Location, StorageError

log = logging.getLogger(__name__)


def run_tasks(
    cfg: ShardConfig, layout: Layout, tasks: list[ShardTask], out: Location
) -> list[ShardResult]:
    """Run the shard tasks with at most `workers` in flight; stop at the first bad sample.

    The progress bar advances per finished shard (no extra actor: on a small machine starting
    one costs as much as a shard).
    """
    import ray  # after the options are parsed: --help answers at once

    from mtmg.runtime import cluster

    shard_task = ray.remote(num_cpus=1, max_retries=3, retry_exceptions=[OSError])(run_shard)
    workers = cfg.workers or cluster.cpus_available()
    bar = tqdm(
        total=sum(len(t.items) for t in tasks),
        unit="patch",
        desc="sharding",
        disable=not logs.progress(cfg.progress),
        smoothing=0.1,
    )
    todo, pending, results = list(reversed(tasks)), {}, []
    try:
        while todo or pending:
            while todo and len(pending) < workers:
                task = todo.pop()
                pending[shard_task.remote(layout, task, out, cfg.skip_bad, cfg.format)] = task
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
    except (KeyboardInterrupt, SystemExit):
        pending.clear()  # shards in flight finish atomically, and a rerun keeps them
        raise
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
        layout, inventory, tasks = make_plan(cfg)
    except Exception:
        if not existed:  # bad input leaves no OUT behind
            out.fs.delete_dir(out.path)
        raise
    from mtmg.runtime import cluster  # Ray: after the options are parsed

    on_cluster = cluster.init_ray(cfg.cluster, num_cpus=cfg.workers)
    if on_cluster and out.is_local:
        cluster.check_paths_visible([storage.location(cfg.root).path], out.path)
    prepare_out(out, plan_fingerprint(cfg, layout, tasks), cfg.overwrite)
    with cluster.interruptible("sharding"):
        results = run_tasks(cfg, layout, tasks, out)
    # the items are written: let the index's rows reuse their memory (the manifest needs only
    # what was excluded and rejected)
    del tasks
    inventory.items.clear()
    if not any(r.count for r in results):
        rejected = [x for r in results for x in r.rejected]
        raise DatasetError(
            f"{cfg.root}: no sample was written ({nothing_left(inventory, rejected)}); "
            "no manifest was written"
        )
    manifest = build_manifest(config.to_dict(cfg), layout, inventory, results)
    write_index(out, results)
    storage.write_json_atomic(out.fs, out.child_path("manifest.json"), manifest)
    resumed = sum(r.resumed for r in results)
    for r in results:
        if r.note:
            log.warning("%s: %s", r.name, r.note)
    log.info(
        "%d shards (%d kept from an earlier run) in %.1fs",
        len(results),
        resumed,
        time.perf_counter() - t0,
    )
    return manifest


def main(argv: list[str] | None = None) -> int:
    """`python data_prep/shard.py DATASET --root RAW --out OUT [options]`."""
    datasets = "\n".join(f"  {k:<15} {v}" for k, v in DATASETS.items())
    cfg = config.parse(
        ShardConfig,
        argv,
        "Convert a raw remote-sensing dataset into WebDataset shards plus a manifest.",
        EPILOG.format(datasets=datasets),
    )
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
    except errors.USER_ERRORS as e:
        return errors.failed(e)
    except KeyboardInterrupt:
        return errors.interrupted("run the same command again: finished shards are kept")
    print(summary_table(manifest))
    for r in manifest["rejected"]:
        print(f"rejected {r['key']}: {r['reason']} ({r['file']})")
    print(f"manifest: {storage.location(cfg.out).child_path('manifest.json')}")
    return 0
