"""What a shard set on disk is checked against, and `python -m mtmg.verify SET [SET ...]`.

Every reader (`mtmg.data.shards.iter_samples`, `mtmg.data.loader.make_loader`) runs the
cheap checks as it reads: only members the shard format defines are opened (no pickle or
torch file is ever decoded), arrays load without pickles and with the format's dtype and
shape, and each shard must have the size the manifest records and hold the samples it counts,
each with the members its `fields` list. Opening a set (`ShardSet.open`) checks that every
shard file exists. The command adds what needs every byte: each shard's sha256 against
manifest.json.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pyarrow.fs as pafs
from tqdm import tqdm

from mtmg import errors, logs
from mtmg.data import bands, grids, storage, tarstream
from mtmg.data.storage import Location
from mtmg.errors import MtmgError

# the members a sample may hold, per format version; anything else (a pickle, a torch file...)
# is refused unread
_COMMON = ["s1.npy", "json", "cls", *(f"rgb.{e}" for e in ("jpg", "jpeg", "png", "tif", "tiff"))]
MEMBERS_OF = {1: frozenset(["ms.npy", *_COMMON]), 2: frozenset([*grids.MEMBERS, *_COMMON])}
MEMBERS = MEMBERS_OF[1] | MEMBERS_OF[2]
ARRAYS = {"ms.npy": np.dtype(np.uint16), "s1.npy": np.dtype(np.float32)}
RECOVER = "re-shard that set (data_prep/shard.py) or check it with `python -m mtmg.verify SET`"


class ShardError(MtmgError, ValueError):
    """A shard set on disk that is not what its manifest and the shard format say."""


def check_files(out: str | Location, manifest: dict[str, Any]) -> None:
    """Every shard the manifest lists exists: one listing per split folder, nothing read."""
    loc = out if isinstance(out, Location) else storage.location(out)
    names = [s["name"] for v in manifest["splits"].values() for s in v["shards"]]
    folders = {n.rsplit("/", 1)[0] for n in names}
    have = {d: set(storage.list_dir(loc.fs, loc.child_path(d))) for d in folders}
    missing = [n for n in names if n.rsplit("/", 1)[1] not in have[n.rsplit("/", 1)[0]]]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise ShardError(
            f"{loc}: shard(s) listed in manifest.json are missing: "
            f"{', '.join(loc.join(n).uri for n in missing[:3])}{more}; re-run the "
            "data_prep/shard.py command that wrote the set (it writes missing shards again)"
        )


def check_members(sample: dict[str, Any], allowed: frozenset[str] = MEMBERS) -> dict[str, Any]:
    """The sample itself if it holds only members the shard format defines, else ShardError.

    Runs before anything is decoded: a `.pyd` or `.pth` member would run code when unpickled.
    """
    extra = sorted(k for k in sample if not k.startswith("__") and k not in allowed)
    if extra:
        names = ", ".join(f"{sample.get('__key__')}.{k}" for k in extra)
        raise ShardError(
            f"{sample.get('__url__')}: member(s) {names} are not part of the shard format "
            f"(a sample holds {', '.join(sorted(allowed))}); refusing to read it: {RECOVER}"
        )
    return sample


def read_bands(sample: dict[str, Any], names: Sequence[str], method: str = "nearest") -> np.ndarray:
    """Bands `names` of a format 2 sample on its 10 m grid (`grids.read_bands`); a member that
    does not decode is a ShardError naming the sample and its shard."""
    with _naming(sample):
        return grids.read_bands(sample, names, method)


def read_groups(sample: dict[str, Any], names: Sequence[str]) -> list[grids.Group]:
    """The decoded grid groups holding bands `names` (`grids.read_groups`), errors as above."""
    with _naming(sample):
        return grids.read_groups(sample, names)


@contextlib.contextmanager
def _naming(sample: dict[str, Any]) -> Iterator[None]:
    try:
        yield
    except grids.GroupError as e:
        where = f"{sample.get('__url__')}: sample {sample.get('__key__')}"
        raise ShardError(f"{where}: {e}; {RECOVER}") from e


def load_array(sample: dict[str, Any], member: str, channels: int) -> np.ndarray:
    """`ms.npy` (uint16) or `s1.npy` (float32, finite) as the format defines it: C x H x W with
    C = `channels`, loaded without unpickling anything."""
    where = f"{sample.get('__url__')}: sample {sample.get('__key__')}: {member}"
    try:
        arr = np.load(io.BytesIO(sample[member]), allow_pickle=False)
    except (ValueError, EOFError, OSError) as e:  # object arrays (pickles) included
        raise ShardError(f"{where} is not a plain array ({e}); {RECOVER}") from e
    want = ARRAYS[member]
    if arr.dtype != want or arr.ndim != 3 or arr.shape[0] != channels:
        raise ShardError(
            f"{where} is {arr.dtype} {' x '.join(map(str, arr.shape))}, the format stores "
            f"{want} {channels} x H x W; {RECOVER}"
        )
    if want.kind == "f" and not np.isfinite(arr).all():
        raise ShardError(f"{where} holds non-finite values; {RECOVER}")
    return arr


def load_json(sample: dict[str, Any]) -> dict[str, Any]:
    """A sample's `json` member: an object with a `labels` list."""
    try:
        meta = json.loads(sample["json"])
    except (KeyError, ValueError):
        meta = None
    if not isinstance(meta, dict) or not isinstance(meta.get("labels"), list):
        raise ShardError(
            f"{sample.get('__url__')}: sample {sample.get('__key__')}: no json member holding "
            f"an object with a 'labels' list; {RECOVER}"
        )
    return meta


def decode_sample(sample: dict[str, Any], band_names: Sequence[str]) -> dict[str, Any]:
    """A checked sample's members as values: arrays, the json object, the class index; image
    bytes stay bytes. Either format gives `ms.npy` on the 10 m grid (format 2's grid members
    upsampled by nearest neighbour)."""
    out = {k: v for k, v in sample.items() if k not in grids.MEMBERS}
    if grids.has_groups(sample):
        out["ms.npy"] = read_bands(sample, band_names)
    for member, channels in (("ms.npy", len(band_names)), ("s1.npy", len(bands.S1))):
        if member in sample:
            out[member] = load_array(sample, member, channels)
    out["json"] = load_json(sample)
    if "cls" in out:
        out["cls"] = int(out["cls"])
    return out


class ShardReader:
    """WebDataset stage: shard URLs -> samples, each shard checked as it is read: its size as
    the manifest records it, every sample with the members the manifest's `fields` list and no
    other (`check_members`), as many samples as the manifest counts. A truncated, corrupt or
    replaced shard is an error naming it, not a shorter epoch. Picklable, for loader workers.

    Members whose suffix is in `skip` (say {"ms20.zst", "ms60.zst"} for a view that decodes
    only the 10 m grid) are not read: checked by name like the others, then left out of the
    samples yielded."""

    def __init__(
        self,
        out: str | Location,
        split: str,
        manifest: dict[str, Any],
        *,
        skip: frozenset[str] = frozenset(),
    ) -> None:
        loc = out if isinstance(out, Location) else storage.location(out)
        entries = manifest["splits"][split]["shards"]
        self.expect = {loc.join(e["name"]).uri: (e["count"], e.get("bytes")) for e in entries}
        self.fields = tuple(f.replace("<ext>", "") for f in manifest.get("fields", {}))
        self.allowed = MEMBERS_OF[manifest.get("format_version", 1)]
        self.skip = frozenset(skip)

    def __call__(self, src: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for shard in src:
            yield from self.read(shard["url"])

    def read(self, url: str) -> Iterator[dict[str, Any]]:
        (count, size), loc, n = self.expect[url], storage.location(url), 0
        try:
            have = loc.fs.get_file_info(loc.path).size
            if size is not None and have != size:
                raise ShardError(
                    f"{url}: {have} bytes, manifest.json records {size} (a truncated "
                    f"or replaced shard); {RECOVER}"
                )
            with _open(loc) as f:
                for sample in tarstream.samples(f, url, size=have, skip=self.skip):
                    n += 1
                    self.complete(check_members(sample, self.allowed))
                    for k in self.skip.intersection(sample):  # seen by name, never read
                        del sample[k]
                    yield sample
        except (tarstream.TarStreamError, OSError) as e:
            raise ShardError(
                f"{url}: unreadable or truncated after {n} samples ({e}); {RECOVER}"
            ) from e
        if n != count:
            raise ShardError(
                f"{url}: {n} samples, manifest.json counts {count} (a truncated or replaced "
                f"shard); {RECOVER}"
            )

    def complete(self, sample: dict[str, Any]) -> dict[str, Any]:
        """The sample itself if it holds every member the manifest's `fields` list."""
        have = {"rgb." if k.startswith("rgb.") else k for k in sample}  # fields say rgb.<ext>
        lacks = [f for f in self.fields if f not in have]
        if lacks:
            raise ShardError(
                f"{sample['__url__']}: sample {sample['__key__']} lacks {', '.join(lacks)} (a "
                f"truncated shard?); {RECOVER}"
            )
        return sample


def _open(loc: Location) -> Any:
    """A shard for reading front to back: a buffered local file (seekable, so skipped members
    cost a seek), else a stream with a read buffer (skipped members are read and dropped)."""
    if loc.is_local:
        return open(loc.path, "rb")
    return loc.fs.open_input_stream(loc.path, buffer_size=1 << 20)


# ------------------------------------------------------------------------------ the command


def check_shard(loc: Location, entry: dict[str, Any]) -> str | None:
    """What is wrong with one shard of a manifest (None: nothing): presence, size, sha256."""
    path = loc.child_path(entry["name"])
    info = loc.fs.get_file_info(path)
    if info.type != pafs.FileType.File:
        return "missing"
    if "bytes" in entry and info.size != entry["bytes"]:
        return f"{info.size} bytes, manifest.json records {entry['bytes']}"
    if storage.file_sha256(loc.fs, path)[0] != entry["sha256"]:
        return "sha256 differs from manifest.json (corrupt or replaced)"
    return None


def verify(sets: list[str], workers: int = 4, progress: bool = True) -> tuple[int, list[str]]:
    """Every shard of every set checked (`check_shard`); (shards checked, one line per bad one)."""
    from mtmg.data.shards import load_manifest  # mtmg.data.shards imports this module

    jobs = []
    for s in sets:
        loc = storage.location(s)
        manifest = load_manifest(loc)
        jobs += [(loc, e) for v in manifest["splits"].values() for e in v["shards"]]
    with ThreadPoolExecutor(max(1, workers)) as pool:
        found = list(
            tqdm(
                pool.map(lambda j: check_shard(*j), jobs),
                total=len(jobs),
                unit="shard",
                desc="verifying",
                disable=not logs.progress(progress),
            )
        )
    pairs = zip(jobs, found, strict=True)
    return len(jobs), [f"{loc.join(e['name'])}: {why}" for (loc, e), why in pairs if why]


def main(argv: list[str] | None = None) -> int:
    """`python -m mtmg.verify SET [SET ...]`: exit 0 when every shard is intact, else 2."""
    ap = argparse.ArgumentParser(
        prog="python -m mtmg.verify",
        description="Check shard sets (OUT of data_prep/shard.py) against their manifest.json: "
        "every shard present, its size and sha256 as recorded. Loaders check members, arrays "
        "and sample counts as they read; this reads every byte.",
        epilog="exit status: 0 all intact, 2 a bad shard (one line each) or no shard set",
    )
    ap.add_argument("sets", nargs="+", metavar="SET", help="shard set directory or URI")
    ap.add_argument(
        "--workers", type=int, default=min(8, os.cpu_count() or 1), help="shards hashed at once"
    )
    ap.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="show a progress bar",
    )
    logs.add_flags(ap)
    args = ap.parse_args(argv)
    logs.setup(args.verbosity or 0)
    try:
        n, bad = verify(args.sets, args.workers, args.progress)
    except errors.USER_ERRORS as e:
        return errors.failed(e)
    for line in bad:
        print(f"bad shard {line}", file=sys.stderr)
    if bad:
        print(
            f"error: {len(bad)} of {n} shards are bad; re-run the data_prep/shard.py command "
            "that wrote the set: it rewrites shards whose bytes no longer match",
            file=sys.stderr,
        )
        return 2
    print(f"ok: {n} shards intact in {len(args.sets)} set(s)")
    return 0
