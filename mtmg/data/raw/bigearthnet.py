"""BigEarthNet: what v1.0 and v2.0 share, and the v1.0 layout (per-patch folders + JSON).

Both store S2 L2A as 12 uint16 band files at 10/20/60 m; mtmg reads them in the canonical order
B01..B08, B8A, B09, B11, B12 (never a glob sort, which puts B8A last), as one 12 x H x W array on
the 10 m grid (shard format 1) or on their native grids (format 2). v2.0 / reBEN:
`mtmg.data.raw.bigearthnet_v2`; v1's official lists: `mtmg.data.raw.bigearthnet_official`.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from mtmg.data import bands, labels, storage
from mtmg.data.raw.bigearthnet_official import (
    OFFICIAL_COUNTS,
    official_exclusions,
    official_s2_to_s1,
    official_splits,
    official_version,
)
from mtmg.data.raw.common import (
    SPLITS,
    DatasetError,
    Inventory,
    Item,
    Layout,
    SampleError,
    assign_from_lists,
    find_split_files,
    open_raster,
)
from mtmg.data.raw.s2patch import grid_size, on_one_grid, read_s1, read_s2
from mtmg.data.storage import Location

S2_V1_DIR = "BigEarthNet-v1.0"
S1_V1_DIR = "BigEarthNet-S1-v1.0"


def check_labels(names: list[str], classes: tuple[str, ...], key: str, path: str) -> list[str]:
    """`names` as a list, each a class of `classes`; an unknown one is a bad sample."""
    unknown = [n for n in names if n not in classes]
    if unknown:
        raise SampleError(key, f"unknown label name(s) {unknown}", path)
    return list(names)


def normalise_s1_json(meta: dict[str, Any]) -> dict[str, Any]:
    """S1 JSONs spell `lry` as `lly` and the date as ISO `acquisition_time`; use S2 spellings."""
    meta = dict(meta)
    coords = dict(meta.get("coordinates", {}))
    if "lly" in coords:
        coords["lry"] = coords.pop("lly")
    meta["coordinates"] = coords
    if "acquisition_time" in meta:
        meta["acquisition_date"] = meta.pop("acquisition_time").replace("T", " ")
    return meta


def s2_header(nomenclature: str, nomenclatures: dict, has_s1: bool) -> dict[str, Any]:
    """The manifest fields of a BigEarthNet S2 set (and its S1 pairs), either version."""
    head = {
        "task": "multi-label",
        "metric": "macro mAP",
        "modality": "S2 L2A",
        "bands": list(bands.S2_L2A),
        "gsd_m": 10,
        "label_nomenclature": nomenclature,
        "nomenclatures": nomenclatures,
        "templates": list(labels.SATELLITE_TEMPLATES),
        "fields": {
            "ms.npy": "uint16 C x H x W reflectance x 10000, bands as listed, 10 m grid",
            "json": "source labels (names) and metadata",
        },
    }
    if has_s1:
        head["s1_bands"] = list(bands.S1)
        head["fields"]["s1.npy"] = "float32 2 x H x W backscatter in dB (VV, VH)"
    return head


@dataclass(frozen=True)
class BigEarthNetBase(Layout):
    """What v1 and v2 share: an item's ref is (folder of its S2 patch folder, folder of its S1
    patch folder or "", S1 patch name or ""); the S2 patch folder is named by the key. Items
    in one folder share its string, so an archive's items hold only their keys and S1 names.
    """

    root: Location
    s1: Location | None = None
    splits: Location | None = None
    skip_bad: bool = False
    resample: str = "nearest"
    size: tuple[int, int] | None = None
    one_grid: bool = False  # every band stored at the 10 m size (nothing to resample)
    native: bool = False  # read bands as stored, in grid groups (shard format 2)

    def sample_size(self, item: Item) -> tuple[int, int]:
        path = f"{patch_dir(item)}/{item.key}_B02.tif"
        with open_raster(self.root, path, item.key, georef=False) as ds:
            return ds.height, ds.width

    def on_one_grid(self, item: Item) -> bool:
        """Whether the patch stores every band at the size of its 10 m bands."""
        return on_one_grid(self.root, self._band_paths(item), item.key)

    def _band_paths(self, item: Item) -> dict[str, str]:
        return {b: f"{patch_dir(item)}/{item.key}_{b}.tif" for b in bands.S2_L2A}

    def sources(self, item: Item) -> list[tuple[Location, str]]:
        out = [(self.root, path) for path in self._band_paths(item).values()]
        s1_dir, s1_name = s1_patch(item)
        if s1_dir:
            out += [(self.s1, f"{s1_dir}/{s1_name}_{pol}.tif") for pol in bands.S1]
        return out

    def _read_patch(self, item: Item, with_georef: bool) -> tuple[dict[str, Any], dict[str, Any]]:
        """The sample's arrays (S2, and S1 when paired) and the georeferencing record."""
        key, (s1_dir, s1_name) = item.key, s1_patch(item)
        sample, geo = read_s2(
            self.root,
            self._band_paths(item),
            key,
            self.size,
            self.resample,
            with_georef,
            one_grid=self.one_grid,
            native=self.native,
        )
        if s1_dir:
            sample["s1.npy"] = read_s1(self.s1, s1_dir, s1_name, key, grid_size(sample))
            geo["s1"] = {"patch": s1_name}
        return sample, geo

    def ref_id(self, item: Item) -> tuple[str, str]:
        """(S2 patch folder, S1 patch folder or ""): the ref of mtmg before refs were compact,
        so shards written then are still kept by a rerun."""
        return patch_dir(item), s1_patch(item)[0]


def patch_dir(item: Item) -> str:
    """The item's S2 patch folder."""
    return f"{item.ref[0]}/{item.key}"


def s1_patch(item: Item) -> tuple[str, str]:
    """The item's S1 patch folder and name; ("", "") when it has none."""
    _, parent, name = item.ref
    return (f"{parent}/{name}", name) if parent else ("", "")


# ---------------------------------------------------------------------------------- v1.0


@dataclass(frozen=True)
class BigEarthNetV1(BigEarthNetBase):
    """`BigEarthNet-v1.0/<patch>/<patch>_<band>.tif` + `<patch>_labels_metadata.json`."""

    name: str = "bigearthnet"

    def s2_dir(self) -> str:
        root = self.root.path
        if storage.is_dir(self.root.fs, f"{root}/{S2_V1_DIR}"):
            return f"{root}/{S2_V1_DIR}"
        return root

    def scan(self) -> Inventory:
        fs, s2 = self.root.fs, self.s2_dir()
        tree = {n: None for n in storage.list_dir(fs, s2, dirs_only=True)}
        if not tree:
            raise DatasetError(f"no BigEarthNet-S2 patch folders found in {s2}")
        user = find_split_files(
            self.splits or self.root,
            [(self.splits or self.root).path, s2],
            ["{split}.csv", "bigearthnet-{split}.csv"],
        )
        if user:
            by_split, excluded, rejected = assign_from_lists(
                tree, user, self.splits or self.root, self.skip_bad
            )
            info = {"split_source": {s: p for s, p in user.items()}}
        else:
            by_split, excluded, rejected = self._official(tree)
            info = {
                "split_source": f"official 19-class splits ({official_version()})",
                "found_of_official": {s: [len(by_split[s]), OFFICIAL_COUNTS[s]] for s in SPLITS},
            }
        s1_dir, s1_names = self._pair_s1(tree) if self.s1 else ("", {})
        no_s1 = (s2, "", "")  # one tuple for every item without an S1 patch
        items: dict[str, list[Item]] = {s: [] for s in SPLITS}
        for split, keys in by_split.items():
            for key in keys:
                s1_name = s1_names.get(key, "")
                if self.s1 and not s1_name:
                    err = SampleError(key, f"no S1 patch in {self.s1} pairs with it")
                    if not self.skip_bad:
                        raise err
                    rejected.append({**err.to_dict(), "split": split})
                    continue
                items[split].append(Item(key, split, (s2, s1_dir, s1_name) if s1_name else no_s1))
        return Inventory(items, excluded, rejected, info)

    def _official(self, tree: dict) -> tuple[dict, list, list]:
        sets, excl = official_splits(), official_exclusions()
        by_split = {s: sorted(k for k in tree if k in sets[s]) for s in SPLITS}
        assigned = set().union(*map(set, by_split.values()))
        excluded = []
        for key in sorted(set(tree) - assigned):
            reason = next((r for r, names in excl.items() if key in names), None)
            excluded.append(
                {"key": key, "reason": reason or "not in the official splits (no 19-class label)"}
            )
        if not assigned:
            raise DatasetError(
                f"none of the {len(tree)} patches in {self.s2_dir()} is in the official splits; "
                "give your own split files with --splits DIR (train.csv, val.csv, test.csv)"
            )
        return by_split, excluded, []

    def _pair_s1(self, s2_keys: Collection[str]) -> tuple[str, dict[str, str]]:
        """The folder of the S1 patch folders, and S2 name -> S1 name: the official mapping,
        else the S1 JSON's corresponding_s2_patch."""
        fs, s1_dir = self.s1.fs, self.s1.path
        if storage.is_dir(fs, f"{s1_dir}/{S1_V1_DIR}"):
            s1_dir = f"{s1_dir}/{S1_V1_DIR}"
        present = set(storage.list_dir(fs, s1_dir, dirs_only=True))
        if not present:
            raise DatasetError(f"no BigEarthNet-S1 patch folders found in {s1_dir}")
        pairs = {k: v for k, v in official_s2_to_s1(s2_keys).items() if v in present}
        for s1_name in sorted(present - set(pairs.values())):
            path = f"{s1_dir}/{s1_name}/{s1_name}_labels_metadata.json"
            try:
                meta = storage.read_json(fs, path)
            except (OSError, ValueError):
                continue
            s2_name = meta.get("corresponding_s2_patch") if isinstance(meta, dict) else None
            if s2_name and s2_name not in pairs:
                pairs[s2_name] = s1_name
        return s1_dir, pairs

    def read(self, item: Item) -> dict[str, Any]:
        key = item.key
        json_path = f"{patch_dir(item)}/{key}_labels_metadata.json"
        try:
            meta = storage.read_json(self.root.fs, json_path)
        except (OSError, ValueError) as e:
            raise SampleError(key, f"missing or unreadable metadata JSON: {e}", json_path) from e
        if not isinstance(meta, dict) or not isinstance(meta.get("labels"), list):
            raise SampleError(key, "metadata JSON is not an object with a 'labels' list", json_path)
        names = check_labels(meta["labels"], labels.BEN43, key, json_path)
        # v1 patches carry their georeferencing in the JSON: skip parsing it from the GeoTIFF
        sample, geo = self._read_patch(item, with_georef=False)
        if "s1" in geo:
            s1_dir, s1_name = s1_patch(item)
            s1_json = f"{s1_dir}/{s1_name}_labels_metadata.json"
            try:
                s1_meta = storage.read_json(self.s1.fs, s1_json)
            except (OSError, ValueError) as e:
                raise SampleError(key, f"unreadable S1 metadata JSON: {e}", s1_json) from e
            if not isinstance(s1_meta, dict):
                raise SampleError(key, "S1 metadata JSON is not an object", s1_json)
            geo["s1"].update(normalise_s1_json(s1_meta))
        sample["json"] = {"labels": names, "source": meta, **geo}
        return sample

    def sources(self, item: Item) -> list[tuple[Location, str]]:
        out = super().sources(item)
        out.append((self.root, f"{patch_dir(item)}/{item.key}_labels_metadata.json"))
        s1_dir, s1_name = s1_patch(item)
        if s1_dir:
            out.append((self.s1, f"{s1_dir}/{s1_name}_labels_metadata.json"))
        return out

    def header(self) -> dict[str, Any]:
        return s2_header("ben43", labels.ben_nomenclatures(), self.s1 is not None)
