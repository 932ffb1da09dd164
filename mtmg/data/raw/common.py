"""What every raw-dataset layout shares: items, plans, sample errors, GeoTIFF reads, splits."""

from __future__ import annotations

import contextlib
import hashlib
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.io import DatasetReader

from mtmg.data import storage
from mtmg.data.storage import Location
from mtmg.errors import MtmgError

SPLITS: tuple[str, ...] = ("train", "val", "test")


class SampleError(MtmgError):
    """A bad input sample: names the sample key, the file and what is wrong with it."""

    def __init__(self, key: str, reason: str, file: str | None = None) -> None:
        super().__init__(key, reason, file)
        self.key, self.reason, self.file = key, reason, file

    def __str__(self) -> str:
        where = f" ({self.file})" if self.file else ""
        return f"sample {self.key}{where}: {self.reason}"

    def to_dict(self) -> dict[str, str]:
        return {"key": self.key, "reason": self.reason, "file": self.file or ""}


class DatasetError(MtmgError):
    """The dataset as a whole cannot be read (missing root, no samples, bad split file...)."""


@dataclass(frozen=True, slots=True)
class Item:
    """One source sample: its key (the source id), split and layout-specific references.

    The driver holds one per patch (590k for BigEarthNet v1), so it has no `__dict__`, and
    layouts point `ref` and `extra` at shared values (`Shared`) where they can.
    """

    key: str
    split: str
    ref: tuple[str, ...]
    extra: tuple[tuple[str, Any], ...] = ()

    def get(self, name: str, default: Any = None) -> Any:
        return dict(self.extra).get(name, default)


class Shared(dict):
    """One object per distinct value: `shared(v)` gives the first object equal to `v`, so the
    items of a large archive share their folders, label tuples and refs instead of a copy each."""

    def __call__(self, value: Any) -> Any:
        return self.setdefault(value, value)


@dataclass
class Inventory:
    """What a layout found: items per split, samples left out by policy, bad samples."""

    items: dict[str, list[Item]]
    excluded: list[dict[str, str]] = field(default_factory=list)
    rejected: list[dict[str, str]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def n_items(self) -> int:
        return sum(len(v) for v in self.items.values())


class Layout:
    """A raw dataset on disk. Subclasses implement `scan` (driver) and `read` (in a Ray task)."""

    name: str = ""

    def scan(self) -> Inventory:
        raise NotImplementedError

    def read(self, item: Item) -> dict[str, Any]:
        """Fields of the sample as written to the tar (`ms.npy`, `s1.npy`, `rgb.jpg`, `json`...)."""
        raise NotImplementedError

    def header(self) -> dict[str, Any]:
        """Manifest fields that describe the dataset (modality, bands, classes, templates...)."""
        raise NotImplementedError

    def sample_size(self, item: Item) -> tuple[int, int] | None:
        """Height and width of an item's 10 m grid, read cheaply; None where sizes may vary."""
        return None

    def sources(self, item: Item) -> list[tuple[Location, str]]:
        """The files `read(item)` reads: what a finished shard's resume state fingerprints."""
        raise NotImplementedError

    def ref_id(self, item: Item) -> Any:
        """The item's references as its shard's resume state fingerprints them: `ref`, unless
        the layout stores it in a compact form."""
        return item.ref


def input_fingerprint(layout: Layout, items: Sequence[Item]) -> str:
    """A digest of what a shard is made of: each item, and (path, size, mtime_ns) of every file
    it is read from. Cheap: one directory listing per folder, no file is opened."""
    h, listings = hashlib.sha256(), {}
    for item in items:
        h.update(repr((item.key, item.split, layout.ref_id(item), item.extra)).encode())
        for loc, path in layout.sources(item):
            folder, name = path.rsplit("/", 1)
            if (loc.uri, folder) not in listings:
                listings[(loc.uri, folder)] = storage.file_stats(loc.fs, folder)
            h.update(repr((path, listings[(loc.uri, folder)].get(name))).encode())
    return h.hexdigest()


# ----------------------------------------------------------------------------- GeoTIFF reads

# Only the bands' pixels are needed from most files: skipping the georeferencing lookup (CRS
# parsing through PROJ) makes an open much cheaper (bench/results/NOTES.md). Georeferencing is
# read from one band.
_FAST_OPEN = {"GEOREF_SOURCES": "NONE"}


@contextlib.contextmanager
def gdal_env() -> Iterator[None]:
    """GDAL settings for many small files: no directory listing or .aux.xml probing per open."""
    if rasterio.env.local._env is not None:  # already inside one
        yield
        return
    with rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR", GDAL_PAM_ENABLED="NO"):
        yield


@contextlib.contextmanager
def open_raster(
    loc: Location, path: str, key: str, *, georef: bool = True
) -> Iterator[rasterio.io.DatasetReader]:
    """Open a GeoTIFF (local path or object-store file); failures become SampleError."""
    opts = {} if georef else _FAST_OPEN
    try:
        with gdal_env(), warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            if loc.is_local:
                # DatasetReader is what rasterio.open returns; constructed directly it skips
                # rasterio.open's per-call Env/session set-up (bench/results/NOTES.md).
                with DatasetReader(path, **opts) as ds:
                    yield ds
            else:
                data = storage.read_bytes(loc.fs, path)
                with rasterio.MemoryFile(data) as mem, mem.open(**opts) as ds:
                    yield ds
    except FileNotFoundError as e:
        raise SampleError(key, "file is missing", path) from e
    except (RasterioError, OSError) as e:
        msg = str(e)
        reason = "file is missing" if "No such file" in msg else f"unreadable GeoTIFF: {msg}"
        raise SampleError(key, reason, path) from e


def as_uint16(arr: np.ndarray, key: str, path: str) -> np.ndarray:
    """Reflectances as uint16; refuses float data and values outside 0..65535."""
    if arr.dtype == np.uint16:
        return arr
    if not np.issubdtype(arr.dtype, np.integer):
        raise SampleError(key, f"expected integer reflectances, got {arr.dtype}", path)
    if arr.size and (arr.min() < 0 or arr.max() > 65535):
        raise SampleError(key, f"values {arr.min()}..{arr.max()} do not fit uint16", path)
    return arr.astype(np.uint16)


def upsample(
    arr: np.ndarray, factor: int, method: str, ds: rasterio.io.DatasetReader | None = None
) -> np.ndarray:
    """Bring a coarser band onto the 10 m grid.

    nearest: each pixel repeated factor x factor (the source band is `out[::f, ::f]`, exactly);
    bilinear, bicubic: GDAL's bilinear (what torchgeo does) or cubic resampling, read from `ds`.
    """
    if factor == 1:
        return arr
    if method == "nearest":
        return arr.repeat(factor, axis=0).repeat(factor, axis=1)
    h, w = arr.shape
    how = {"bilinear": Resampling.bilinear, "bicubic": Resampling.cubic}[method]
    return ds.read(1, out_shape=(h * factor, w * factor), resampling=how)


def georef(ds: rasterio.io.DatasetReader) -> dict[str, Any]:
    """CRS and affine transform of a dataset as JSON-friendly values."""
    crs = ds.crs
    epsg = crs.to_epsg() if crs else None
    return {
        "crs": f"EPSG:{epsg}" if epsg else (crs.to_wkt() if crs else None),
        "transform": list(ds.transform)[:6],
    }


# ------------------------------------------------------------------------------------- splits


def read_split_list(loc: Location, path: str) -> list[str]:
    """Names from a split file: one per line, CRLF-safe; `s2,s1` lines (MM splits) give `s2`."""
    text = storage.read_bytes(loc.fs, path).decode("utf-8-sig")
    names = []
    for line in text.splitlines():
        line = line.strip()
        if line:
            names.append(line.split(",")[0].strip())
    return names


def hash_split(key: str, fractions: Sequence[float], seed: int) -> str:
    """Deterministic train/val/test assignment of a key by hashing (independent of tree order)."""
    h = int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8], "big") / 2**64
    acc = 0.0
    for split, frac in zip(SPLITS, fractions, strict=True):
        acc += frac
        if h < acc:
            return split
    return SPLITS[-1]


def find_split_files(
    loc: Location, dirs: Sequence[str], patterns: Sequence[str]
) -> dict[str, str] | None:
    """First directory holding a file per split; patterns use {split}, e.g. '{split}.csv'."""
    for d in dirs:
        for pattern in patterns:
            paths = {s: f"{d}/{pattern.format(split=s)}" for s in SPLITS}
            present = {s: p for s, p in paths.items() if storage.exists(loc.fs, p)}
            if present:
                return present
    return None


def assign_from_lists(
    tree: dict[str, Any],
    lists: dict[str, str],
    loc: Location,
    skip_bad: bool,
    key_fn: Callable[[str], str] = str,
) -> tuple[dict[str, list[str]], list[dict[str, str]], list[dict[str, str]]]:
    """Split the tree's keys by user split files.

    Returns (keys per split, excluded, rejected). A listed name the tree lacks, or one listed in
    two split files, is bad input: an error naming it and the split file(s), or a rejection with
    `skip_bad` (a name in two files is then left out of both).
    """
    listed: dict[str, str] = {}  # name -> its split; a list per name would cost ~90 bytes
    twice: dict[str, list[str]] = {}  # names in more than one split file -> those splits
    for split, path in lists.items():
        for name in map(key_fn, read_split_list(loc, path)):
            first = listed.setdefault(name, split)
            if first != split and split not in twice.setdefault(name, [first]):
                twice[name].append(split)
    out: dict[str, list[str]] = {s: [] for s in SPLITS}
    rejected = []
    for name, split in listed.items():
        splits = twice.get(name, [split])
        if len(splits) > 1:
            files = " and ".join(lists[s] for s in splits)
            err = SampleError(
                name, f"listed in {len(splits)} split files ({files})", lists[splits[1]]
            )
        elif name not in tree:
            path = lists[splits[0]]
            err = SampleError(name, f"listed in split file but not in the tree ({splits[0]})", path)
        else:
            out[splits[0]].append(name)
            continue
        if not skip_bad:
            raise err
        rejected.append({**err.to_dict(), "split": splits[0]})
    excluded = [
        {"key": k, "reason": "not in any split file"} for k in sorted(tree) if k not in listed
    ]
    return {s: sorted(v) for s, v in out.items()}, excluded, rejected


def majority_size(layout: Layout, items: Sequence[Item], probe: int = 16) -> tuple[int, int] | None:
    """The most common 10 m grid size among the first `probe` items (None if sizes may vary)."""
    return majority(layout.sample_size, items, probe)


def majority(look: Callable[[Item], Any], items: Sequence[Item], probe: int = 16) -> Any:
    """The most common answer of `look` among the first `probe` items whose files it can read
    (None when it answers None for one of them, or none can be read)."""
    found = []
    for item in items[:probe]:
        try:
            value = look(item)
        except SampleError:
            continue
        if value is None:
            return None
        found.append(value)
    return Counter(found).most_common(1)[0][0] if found else None
