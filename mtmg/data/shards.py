"""The shard set on disk, and reading it: WebDataset tars, `manifest.json`, `index.parquet`.

Layout of OUT (README "Shard format"):
    manifest.json                 what the set holds; written last, so its presence = complete
    index.parquet                 one row per sample: key, split, shard, labels
    <split>/<split>-NNNNNN.tar    one sample per source patch, `__key__` = the source id
    .mtmg/                        resume state of the writer (`mtmg.data.shard_writer`)
A sample's multispectral pixels are, by the manifest's `format_version`: format 1, `ms.npy`,
every band on the 10 m grid; format 2 (the default), the bands on their native grids in
`ms10.zst`/`ms20.zst`/`ms60.zst` (`mtmg.data.grids`).
Reading trusts nothing on disk: members outside the format are refused before anything decodes
them, arrays load without pickles and with the format's dtype and shape, and every shard must
hold the samples the manifest counts (`mtmg.verify`, whose command also checks sha256).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from mtmg.data import storage
from mtmg.data.storage import Location
from mtmg.data.verify import ShardError, ShardReader, decode_sample
from mtmg.errors import InputError

FORMAT = "mtmg-shards"
FORMAT_VERSION = 2  # what the writer makes by default
FORMAT_VERSIONS = (1, 2)  # what readers read


def load_manifest(out: str | Location) -> dict[str, Any]:
    """Read OUT/manifest.json; a clear error when OUT is not a finished shard set."""
    loc = out if isinstance(out, Location) else storage.location(out)
    path = loc.child_path("manifest.json")
    if not storage.exists(loc.fs, path):
        raise FileNotFoundError(
            f"{path} not found: {loc} is not a finished shard set "
            "(run `python data_prep/shard.py DATASET --root RAW --out OUT` first)"
        )
    try:
        manifest = storage.read_json(loc.fs, path)
    except ValueError as e:
        raise ShardError(f"{path}: unreadable ({e}); re-run data_prep/shard.py for {loc}") from e
    version = manifest.get("format_version") if isinstance(manifest, dict) else None
    if version not in FORMAT_VERSIONS or manifest.get("format") != FORMAT:
        raise ShardError(
            f"{path}: not an mtmg shard manifest of a version this mtmg reads "
            f"({', '.join(map(str, FORMAT_VERSIONS))}; it says {version!r})"
        )
    return manifest


def shard_list(
    out: str | Location, split: str, manifest: dict | None = None
) -> list[tuple[str, int]]:
    """(path or, for an object-store shard set, URI; sample count) of a split's shards, in order."""
    loc = out if isinstance(out, Location) else storage.location(out)
    manifest = manifest or load_manifest(loc)
    if split not in manifest["splits"] or not manifest["splits"][split]["shards"]:
        have = [s for s, v in manifest["splits"].items() if v["count"]]
        raise InputError(f"{loc}: no {split!r} split in this shard set (it has {have})")
    return [(loc.join(s["name"]).uri, s["count"]) for s in manifest["splits"][split]["shards"]]


def shard_paths(out: str | Location, split: str, manifest: dict | None = None) -> list[str]:
    """Paths (or URIs) of a split's shards, in order."""
    return [url for url, _ in shard_list(out, split, manifest)]


def iter_samples(out: str | Location, split: str, *, decode: bool = True) -> Iterator[dict]:
    """Every sample of a split in shard order, decoded (`ms.npy` -> array, `json` -> dict,
    `cls` -> int; image bytes stay bytes), or with `decode=False` as raw bytes.

    Either way only members the format defines are read (others raise ShardError before any is
    decoded) and each shard must hold the samples the manifest counts.
    """
    loc = out if isinstance(out, Location) else storage.location(out)
    manifest = load_manifest(loc)
    urls = shard_paths(loc, split, manifest)
    for sample in ShardReader(loc, split, manifest)({"url": url} for url in urls):
        yield decode_sample(sample, manifest["bands"]) if decode else sample


def summary_table(manifest: dict[str, Any]) -> str:
    """A small text table of a manifest: split, shards, samples; then the totals."""
    lines = [f"{'split':<6} {'shards':>6} {'samples':>9}"]
    for split, v in manifest["splits"].items():
        lines.append(f"{split:<6} {len(v['shards']):>6} {v['count']:>9}")
    s = manifest["summary"]
    lines.append(
        f"inputs {s['inputs']} = written {s['written']} + excluded {s['excluded']} "
        f"+ rejected {s['rejected']}"
    )
    return "\n".join(lines)


def dumps(obj: Any) -> str:
    return json.dumps(obj, indent=1, sort_keys=True)
