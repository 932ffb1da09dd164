"""Writing a shard set's tars, one per task (then `mtmg.data.catalog` writes its
`index.parquet` and `manifest.json`).

Writing is deterministic (fixed mtime, owner and member order) and atomic (temporary name, then
a rename), so re-running gives byte-identical shards and a crash never leaves a torn tar. Each
finished shard's result is kept in OUT/.mtmg/shards/ so a rerun skips it while its inputs and
bytes are unchanged. What the set is, and reading it: `mtmg.data.shards`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from mtmg.data import grids, storage
from mtmg.data.raw.common import (
    Item,
    Layout,
    SampleError,
    gdal_env,
    input_fingerprint,
)
from mtmg.data.shards import FORMAT_VERSION
from mtmg.data.storage import Location

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


def state_path(out: Location, name: str) -> str:
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
    fs, final, state = out.fs, out.child_path(task.name), state_path(out, task.name)
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
    fs, final, state = out.fs, out.child_path(task.name), state_path(out, task.name)
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
