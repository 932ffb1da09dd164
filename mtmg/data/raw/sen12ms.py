"""SEN12MS: `ROIs<id>_<season>/s2_<scene>/ROIs<id>_<season>_s2_<scene>_p<patch>.tif` + `lc_...`.

S2 is L1C, 13 bands in L1C order (B8A 9th). Scene labels are multi-label in the simplified
10-class IGBP scheme: a class is present when it covers at least 10 % of the patch's IGBP map
(band 1 of the `lc` file), as in the SEN12MS reference code. The official split lists name
train and test s2 files; mtmg holds out a deterministic 10 % of the training scenes as `val`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from mtmg.data import bands, labels, storage
from mtmg.data.raw.common import (
    SPLITS,
    DatasetError,
    Inventory,
    Item,
    Layout,
    SampleError,
    as_uint16,
    georef,
    hash_split,
    open_raster,
)
from mtmg.data.storage import Location


def _scene(key: str) -> str:
    return key.rsplit("_p", 1)[0]


def _lc_path(s2_path: str) -> str:
    return s2_path.replace("/s2_", "/lc_").replace("_s2_", "_lc_")


@dataclass(frozen=True)
class SEN12MS(Layout):
    root: Location
    splits: Location | None = None
    skip_bad: bool = False
    seed: int = 0
    val_fraction: float = 0.1
    fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)
    size: tuple[int, int] | None = None
    name: str = "sen12ms"

    def _tree(self) -> dict[str, str]:
        fs, root = self.root.fs, self.root.path
        tree = {}
        for season in storage.list_dir(fs, root, dirs_only=True):
            if not season.startswith("ROIs"):
                continue
            for scene in storage.list_dir(fs, f"{root}/{season}", dirs_only=True):
                if not scene.startswith("s2_"):
                    continue
                for fname in storage.list_dir(fs, f"{root}/{season}/{scene}"):
                    if fname.endswith(".tif"):
                        key = fname[: -len(".tif")]
                        tree[key] = f"{root}/{season}/{scene}/{fname}"
        if not tree:
            raise DatasetError(f"no ROIs*/s2_*/*.tif files found in {root}")
        return tree

    def scan(self) -> Inventory:
        tree = self._tree()
        where = self.splits or self.root
        lists = {
            s: where.child_path(f"{s}_list.txt")
            for s in ("train", "test")
            if storage.exists(where.fs, where.child_path(f"{s}_list.txt"))
        }
        by_split: dict[str, list[str]] = {s: [] for s in SPLITS}
        excluded, rejected = [], []
        if lists:
            listed = {}
            for split, path in lists.items():
                text = storage.read_bytes(where.fs, path).decode()
                for line in filter(None, (ln.strip() for ln in text.splitlines())):
                    listed[line.removesuffix(".tif")] = split
            val_scenes = self._val_scenes({_scene(k) for k, s in listed.items() if s == "train"})
            for key in sorted(tree):
                if key not in listed:
                    excluded.append({"key": key, "reason": "not in the split lists"})
                    continue
                split = "val" if _scene(key) in val_scenes else listed[key]
                by_split[split].append(key)
            info = {"split_source": lists, "val": f"{self.val_fraction:.0%} of training scenes"}
        else:
            for key in sorted(tree):
                by_split[hash_split(_scene(key), self.fractions, self.seed)].append(key)
            info = {"split_source": f"hash of the scene, fractions {list(self.fractions)}"}
        items = {s: [Item(k, s, (tree[k],)) for k in keys] for s, keys in by_split.items()}
        return Inventory(items, excluded, rejected, info)

    def _val_scenes(self, train_scenes: set[str]) -> set[str]:
        """A deterministic `val_fraction` of the training scenes (at least one of two or more)."""
        if len(train_scenes) < 2:
            return set()
        ranked = sorted(
            train_scenes, key=lambda s: hashlib.sha256(f"{self.seed}:{s}".encode()).digest()
        )
        return set(ranked[: max(1, round(self.val_fraction * len(train_scenes)))])

    def sample_size(self, item: Item) -> tuple[int, int]:
        with open_raster(self.root, item.ref[0], item.key, georef=False) as ds:
            return ds.height, ds.width

    def sources(self, item: Item) -> list[tuple[Location, str]]:
        return [(self.root, item.ref[0]), (self.root, _lc_path(item.ref[0]))]

    def read(self, item: Item) -> dict[str, Any]:
        path = item.ref[0]
        with open_raster(self.root, path, item.key, georef=True) as ds:
            arr = ds.read()
            geo = georef(ds)
        if arr.shape[0] != len(bands.SEN12MS_S2_FILE_ORDER):
            raise SampleError(item.key, f"expected 13 S2 bands, found {arr.shape[0]}", path)
        if self.size is not None and arr.shape[1:] != tuple(self.size):
            raise SampleError(item.key, f"is {arr.shape[1]}x{arr.shape[2]}, expected {self.size}")
        lc_path = _lc_path(path)
        with open_raster(self.root, lc_path, item.key, georef=False) as ds:
            igbp = ds.read(1)
        if igbp.shape != arr.shape[1:]:
            raise SampleError(item.key, f"land-cover map is {igbp.shape}", lc_path)
        if igbp.max() > 17:
            raise SampleError(item.key, f"IGBP code {int(igbp.max())} is not in 1..17", lc_path)
        simple = np.asarray(labels.IGBP17_TO_10)[igbp.astype(np.int64)]
        valid = simple[simple >= 0]
        fractions = np.bincount(valid, minlength=10) / max(valid.size, 1)
        names = [
            c
            for c, f in zip(labels.SEN12MS_IGBP10, fractions, strict=True)
            if f >= labels.SEN12MS_MULTILABEL_THRESHOLD
        ]
        record = {
            "labels": names,
            "class_fractions": [round(float(f), 4) for f in fractions],
            "source": path[len(self.root.path) + 1 :],
            **geo,
        }
        return {"ms.npy": as_uint16(arr, item.key, path), "json": record}

    def header(self) -> dict[str, Any]:
        return {
            "task": "multi-label",
            "metric": "macro mAP",
            "modality": "S2 L1C",
            "bands": list(bands.S2_L1C),
            "gsd_m": 10,
            "label_nomenclature": "igbp10",
            "nomenclatures": {"igbp10": {"classes": list(labels.SEN12MS_IGBP10)}},
            "templates": list(labels.SATELLITE_TEMPLATES),
            "fields": {
                "ms.npy": "uint16 13 x H x W reflectance x 10000 in the L1C band order listed",
                "json": "labels (classes covering >= 10 %), class fractions, georeferencing",
            },
        }
