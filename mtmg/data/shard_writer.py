"""Writing a shard set: one tar per task, then `index.parquet` and `manifest.json`.

Writing is deterministic (fixed mtime, owner and member order) and atomic (temporary name, then
a rename), so re-running gives byte-identical shards and a crash never leaves a torn tar. Each
finished shard's result is kept in OUT/.mtmg/shards/ so a rerun skips it while its inputs and
bytes are unchanged. What the set is, and reading it: `mtmg.data.shards`.
"""

from __future__ import annotations

import contextlib
import io
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

import mtmg
from mtmg.data import grids, storage
from mtmg.data.raw.common import (
    SPLITS,
    Inventory,
    Item,
    Layout,
    SampleError,
    gdal_env,
    input_fingerprint,
)
from mtmg.data.raw.s2patch import NATIVE_GROUPS
from mtmg.data.shards import FORMAT, FORMAT_VERSION
from mtmg.data.storage import Location
from mtmg.data.verify import ShardError

STATE_DIR = ".mtmg"  # the writer's resume state, inside OUT
TAR_OWNER = {"user": "mtmg", "group": "mtmg", "mtime": 0}


@dataclass(frozen=True)
class ShardTask:
    """The samples that go into one output tar."""

    split: str
    index: int
    items: tuple[Item, ...]

    @property
    def stem(self) -> str:
        return f"{self.split}-{self.index:06d}"

    @property
    def name(self) -> str:
        return f"{self.split}/{self.stem}.tar"


@dataclass
class ShardResult:
    """What a finished shard holds; persisted beside the shards so a rerun can skip it."""

    name: str
    count: int = 0
    sha256: str = ""
    bytes: int = 0
    keys: list[str] = field(default_factory=list)
    labels: list[list[str]] = field(default_factory=list)
    rejected: list[dict[str, str]] = field(default_factory=list)
    error: dict[str, str] | None = None
    inputs: str = ""  # input_fingerprint of its items when it was written
    resumed: bool = False
    seconds: float = 0.0  # time spent writing it (not part of the manifest)
    note: str = ""  # why an earlier run's shard was rewritten (not persisted)


def plan_tasks(items: dict[str, list[Item]], shard_size: int) -> list[ShardTask]:
    """Cut each split's (sorted) items into consecutive shards of `shard_size` samples."""
    tasks = []
    for split, its in items.items():
        for i in range(0, len(its), shard_size):
            tasks.append(ShardTask(split, i // shard_size, tuple(its[i : i + shard_size])))
    return tasks


def _state_path(out: Location, name: str) -> str:
    """The resume state of the shard `name` (`<split>/<split>-NNNNNN.tar`)."""
    stem = name.rsplit("/", 1)[-1].removesuffix(".tar")
    return out.child_path(STATE_DIR, "shards", f"{stem}.json")


def write_shard(
    layout: Layout,
    task: ShardTask,
    out: Location,
    *,
    skip_bad: bool = False,
    on_progress: Callable[[int], None] | None = None,
    version: int = FORMAT_VERSION,
) -> ShardResult:
    """Read every item of `task` and write its tar; a finished shard is kept, not rewritten,
    while its inputs and bytes are still those it was written from and with (`_kept`).

    Without `skip_bad` the first bad sample aborts the shard (nothing is written) and is returned
    as `error`; with it, bad samples are left out and listed in `rejected`.
    """
    fs, final, state = out.fs, out.child_path(task.name), _state_path(out, task.name)
    inputs = input_fingerprint(layout, task.items)
    done, note = _kept(out, task, inputs, skip_bad)
    if done is not None:
        if on_progress:
            on_progress(len(task.items))
        return done
    result = ShardResult(task.name, inputs=inputs)
    pending, t0 = 0, time.perf_counter()
    names = tuple(layout.header().get("bands", ())) if version == 2 else ()
    with gdal_env():
        try:
            with contextlib.ExitStack() as stack:
                tar = f = None  # opened with the first good sample: rejects alone leave no file
                for item in task.items:
                    try:
                        sample = layout.read(item)
                    except SampleError as e:
                        if not skip_bad:
                            raise
                        result.rejected.append({**e.to_dict(), "split": task.split})
                        continue
                    if tar is None:
                        f = stack.enter_context(storage.atomic_output(fs, final))
                        import webdataset as wds  # seconds to import: not for --help

                        tar = stack.enter_context(wds.TarWriter(f, **TAR_OWNER))
                    tar.write({"__key__": item.key, **encode(sample, version, names)})
                    result.keys.append(item.key)
                    result.labels.append(list(sample["json"].get("labels", [])))
                    pending += 1
                    if on_progress and pending >= 16:
                        on_progress(pending)
                        pending = 0
                if tar is not None:
                    tar.close()  # the end blocks, hashed before the file moves into place
                    result.sha256, result.bytes = f.sha256.hexdigest(), f.size
        except SampleError as e:
            return ShardResult(task.name, error={**e.to_dict(), "split": task.split})
    if on_progress and pending:
        on_progress(pending + len(result.rejected))
    result.count = len(result.keys)
    result.seconds = time.perf_counter() - t0
    storage.write_json_atomic(fs, state, asdict(result))
    result.note = note
    return result


def encode(sample: dict[str, Any], version: int, names: Sequence[str] = ()) -> dict[str, Any]:
    """A layout's sample as the members of shard format `version`."""
    if version == 1:
        return sample
    if version == 2:
        return grids.encode_sample(sample, names)
    raise ValueError(f"shard format {version} is not one this mtmg writes")


def _kept(
    out: Location, task: ShardTask, inputs: str, skip_bad: bool
) -> tuple[ShardResult | None, str]:
    """An earlier run's shard if it can be kept, else None and why it is rewritten ("" when it
    was never finished)."""
    fs, final, state = out.fs, out.child_path(task.name), _state_path(out, task.name)
    if not storage.exists(fs, state):
        return None, ""
    try:
        done = ShardResult(**{**storage.read_json(fs, state), "note": ""})
    except (OSError, ValueError, TypeError):
        return None, "rewritten: its resume state was unreadable"
    if done.count == 0 and done.rejected and skip_bad and done.inputs == inputs:
        done.resumed = True  # every sample was rejected: there is no file to check
        return done, ""
    if not storage.exists(fs, final):
        return None, ""
    # a shard that left bad samples out is only kept when leaving them out is still wanted
    if done.rejected and not skip_bad:
        return None, ""
    if done.inputs != inputs:
        return None, "rewritten: its input files changed since it was written"
    if storage.file_sha256(fs, final) != (done.sha256, done.bytes):
        return None, "rewritten: its bytes no longer match the sha256 recorded when written"
    done.resumed = True
    return done, ""


# ------------------------------------------------------------------------------ manifest


def build_manifest(
    cfg: dict[str, Any], layout: Layout, inventory: Inventory, results: list[ShardResult]
) -> dict[str, Any]:
    """The manifest of a finished run: the layout's header, shards, exclusions, the config."""
    splits: dict[str, Any] = {s: {"count": 0, "shards": []} for s in SPLITS}
    rejected = list(inventory.rejected)
    for r in results:
        split = r.name.split("/", 1)[0]
        rejected.extend(r.rejected)
        if not r.count:  # every sample rejected: no file was written
            continue
        splits[split]["count"] += r.count
        splits[split]["shards"].append(
            {"name": r.name, "count": r.count, "bytes": r.bytes, "sha256": r.sha256}
        )
    written = sum(v["count"] for v in splits.values())
    header = layout.header()
    size = getattr(layout, "size", None)
    version = cfg.get("format", 1)
    manifest = {
        "format": FORMAT,
        "format_version": version,
        "dataset": cfg["dataset"],
        **header,
        "native_size": list(size) if size else None,
        "splits": splits,
        "excluded": inventory.excluded,
        "rejected": sorted(rejected, key=lambda r: r["key"]),
        "summary": {
            "inputs": written + len(inventory.excluded) + len(rejected),
            "written": written,
            "excluded": len(inventory.excluded),
            "rejected": len(rejected),
        },
        "source": inventory.info,
        "config": cfg,
        "created_by": f"mtmg {mtmg.__version__}",
    }
    if "bands" in header and header.get("modality", "").startswith("S2"):
        manifest["resampling"] = resampling_note(cfg["resample"], layout, version)
        if version == 2:
            manifest["fields"] = grid_fields(manifest["fields"], layout, header["bands"])
            manifest["ms_codec"] = dict(grids.CODEC)
    return manifest


def resampling_note(method: str, layout: Layout, version: int = 1) -> dict[str, str]:
    """What the set did to bands coarser than 10 m, for the manifest."""
    size = getattr(layout, "size", None)
    if getattr(layout, "one_grid", False):
        grid = f" ({size[0]}x{size[1]})" if size else ""
        note = f"the source stores every band on one grid{grid}: stored as read, none resampled"
        return {"method": "none", "note": note}
    if version == 2:
        note = (
            "bands stored on their native 10/20/60 m grids; the loader brings them onto the "
            f"10 m grid, by default with {method} (iter_samples: nearest, so a source band "
            "is exactly x[::f, ::f])"
        )
        return {"method": method, "note": note}
    note = "20 m bands x2 and 60 m bands x6 onto the 10 m grid; 10 m bands unchanged"
    if method == "nearest":
        note += "; a source band is exactly x[::f, ::f]"
    return {"method": method, "note": note}


def grid_fields(fields: dict[str, str], layout: Layout, names: Sequence[str]) -> dict[str, str]:
    """A layout's fields with `ms.npy` replaced by the grid members format 2 stores."""
    out = {k: v for k, v in fields.items() if k != "ms.npy"}
    native = getattr(layout, "native", False) and not getattr(layout, "one_grid", False)
    groups = NATIVE_GROUPS if native else [(tuple(names), 1)]
    for group, factor in groups:
        out[grids.member_name(factor)] = (
            f"uint16 {len(group)} x H/{factor} x W/{factor}: bands {', '.join(group)} on the "
            f"{10 * factor} m grid; zstd, byte-shuffled, behind an MTG2 header (mtmg.data.grids)"
        )
    return out


INDEX_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("split", pa.string()),
        ("shard", pa.string()),
        ("labels", pa.list_(pa.string())),
    ]
)
INDEX_ROW_GROUP = 1000  # rows of a row group at least: one default-size shard (~130 KB as Arrow)


def write_index(out: Location, results: Iterable[ShardResult]) -> None:
    """`index.parquet`: key, split, shard, labels: one row per written sample, in the order of
    `results`.

    Rows stream from each shard's keys and labels (`shard_rows`), as Arrow, into row groups
    of INDEX_ROW_GROUP rows or more, so an archive's rows are never in memory at once; a set
    of fewer rows is one row group, byte for byte as `pq.write_table` writes it. The file is
    written under a temporary name and moved into place when complete.
    """
    path = out.child_path("index.parquet")
    with (
        storage.atomic_output(out.fs, path) as f,
        pq.ParquetWriter(_Writable(f), INDEX_SCHEMA, compression="zstd") as writer,
    ):
        batches: list[pa.RecordBatch] = []
        rows = groups = 0
        for r in results:
            keys, labels = shard_rows(out, r)
            if not keys:
                continue
            split, n = r.name.split("/", 1)[0], len(keys)
            batches.append(
                pa.record_batch([keys, [split] * n, [r.name] * n, labels], schema=INDEX_SCHEMA)
            )
            rows += n
            if rows >= INDEX_ROW_GROUP:
                writer.write_table(pa.Table.from_batches(batches).combine_chunks())
                batches, rows, groups = [], 0, groups + 1
        if rows or not groups:
            writer.write_table(pa.Table.from_batches(batches, INDEX_SCHEMA).combine_chunks())


def shard_rows(out: Location, result: ShardResult) -> tuple[list[str], list[list[str]]]:
    """A finished shard's keys and labels, in shard order: the result's own when it carries
    them (`write_shard`'s), else those its writer persisted in the shard's resume state (the
    sharding job's driver keeps results without them)."""
    if len(result.keys) == result.count:
        return result.keys, result.labels
    path = _state_path(out, result.name)
    state = storage.read_json(out.fs, path)
    keys, labels = state.get("keys", []), state.get("labels", [])
    if state.get("sha256") != result.sha256 or not len(keys) == len(labels) == result.count:
        raise ShardError(
            f"{path}: no longer the state of {result.name} as written by this run "
            f"(is another run writing {out}?)"
        )
    return keys, labels


class _Writable(io.RawIOBase):
    """`storage.atomic_output`'s writer as the file object pyarrow writes to."""

    def __init__(self, f: Any) -> None:
        self._f = f

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        return self._f.write(data)
