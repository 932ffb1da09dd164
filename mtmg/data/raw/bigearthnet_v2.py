"""BigEarthNet v2.0 / reBEN: `metadata.parquet` + `BigEarthNet-S2/<product>/<patch>/` band files
(what it shares with v1.0: `mtmg.data.raw.bigearthnet`)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import pyarrow.parquet as pq

from mtmg.data import labels, storage
from mtmg.data.raw.bigearthnet import BigEarthNetBase, check_labels, s2_header
from mtmg.data.raw.common import (
    SPLITS,
    DatasetError,
    Inventory,
    Item,
    Shared,
    assign_from_lists,
    find_split_files,
)

S2_V2_DIR = "BigEarthNet-S2"
S1_V2_DIR = "BigEarthNet-S1"
V2_SPLIT_NAMES = {"train": "train", "validation": "val", "val": "val", "test": "test"}


@dataclass(frozen=True)
class BigEarthNetV2(BigEarthNetBase):
    """reBEN: `metadata.parquet` + `BigEarthNet-S2/<product>/<patch>/<patch>_<band>.tif`."""

    name: str = "bigearthnet-v2"

    def _table(self, shared: Shared) -> dict[str, tuple[str, tuple, str]]:
        """metadata.parquet as patch_id -> (split as written there, the item's `extra`, S1 name
        or ""), read in batches with repeated values shared: as one dict a row the table
        would cost ~1 KB a patch."""
        fs, path = self.root.fs, self.root.child_path("metadata.parquet")
        if not storage.exists(fs, path):
            raise DatasetError(f"{path} not found: a BigEarthNet v2 root holds metadata.parquet")
        have = pq.read_schema(path, filesystem=fs).names
        missing = [c for c in ("patch_id", "labels", "split") if c not in have]
        if missing:
            raise DatasetError(f"{path} lacks the column(s) {missing}")
        cols = ["patch_id", "split", "labels", *(["s1_name"] if "s1_name" in have else [])]
        out = {}
        for batch in pq.read_table(path, filesystem=fs, columns=cols).to_batches(1 << 16):
            ids, splits, labs, *s1 = (batch.column(c).to_pylist() for c in cols)
            for i, key in enumerate(ids):
                extra = shared((("labels", tuple(map(shared, labs[i]))),))
                out[key] = (shared(splits[i]), extra, (s1[0][i] if s1 else None) or "")
        return out

    def scan(self) -> Inventory:
        fs, shared = self.root.fs, Shared()
        s2 = self.root.child_path(S2_V2_DIR)
        tree: dict[str, str] = {}  # patch -> its product folder (one string per product)
        for product in storage.list_dir(fs, s2, dirs_only=True):
            folder = f"{s2}/{product}"
            tree.update(dict.fromkeys(storage.list_dir(fs, folder, dirs_only=True), folder))
        if not tree:
            raise DatasetError(f"no patch folders found under {s2}/<product>/")
        table = self._table(shared)
        lists = (
            find_split_files(self.splits, [self.splits.path], ["{split}.csv"])
            if (self.splits)
            else None
        )
        if lists:
            by_split, excluded, rejected = assign_from_lists(
                tree, lists, self.splits, self.skip_bad
            )
        else:
            by_split = {s: [] for s in SPLITS}
            excluded, rejected = [], []
            for key in sorted(tree):
                row = table.get(key)
                if row is None:
                    excluded.append({"key": key, "reason": "not in metadata.parquet"})
                    continue
                split = V2_SPLIT_NAMES.get(row[0])
                if split is None:
                    raise DatasetError(f"metadata.parquet: unknown split {row[0]!r} ({key})")
                by_split[split].append(key)
        counts = Counter(V2_SPLIT_NAMES.get(row[0]) for row in table.values())
        info = {
            "split_source": lists or "metadata.parquet",
            "found_of_metadata": {s: [len(by_split[s]), counts[s]] for s in SPLITS},
        }
        items: dict[str, list[Item]] = {s: [] for s in SPLITS}
        for split, keys in by_split.items():
            for key in keys:
                row = table.get(key)
                if row is None:
                    raise DatasetError(f"patch {key} is listed but not in metadata.parquet")
                _, extra, s1_name = row
                if self.s1:
                    s1_parent = shared(f"{self.s1.path}/{'_'.join(s1_name.split('_')[:-3])}")
                    ref = (tree[key], s1_parent, s1_name)
                else:
                    ref = shared((tree[key], "", ""))
                items[split].append(Item(key, split, ref, extra))
        return Inventory(items, excluded, rejected, info)

    def read(self, item: Item) -> dict[str, Any]:
        names = check_labels(list(item.get("labels")), labels.BEN19, item.key, "metadata.parquet")
        sample, geo = self._read_patch(item, with_georef=True)
        sample["json"] = {"labels": names, **geo}
        return sample

    def header(self) -> dict[str, Any]:
        nomen = {
            "ben19": {"classes": list(labels.BEN19)},
            "ben5": {"classes": list(labels.BEN5), "from": "ben19", "map": list(labels.BEN19_TO_5)},
        }
        return s2_header("ben19", nomen, self.s1 is not None)
