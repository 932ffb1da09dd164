"""A finished shard set's catalogue: `manifest.json` (what the set holds, written last) and
`index.parquet` (one row per sample: key, split, shard, labels), built from the results of
`mtmg.data.shard_writer.write_shard`."""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

import mtmg
from mtmg.data import grids, storage
from mtmg.data.raw.common import SPLITS, Inventory, Layout
from mtmg.data.raw.s2patch import NATIVE_GROUPS
from mtmg.data.shard_writer import ShardResult, state_path
from mtmg.data.shards import FORMAT
from mtmg.data.storage import Location
from mtmg.data.verify import ShardError


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
    path = state_path(out, result.name)
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
