"""A finished shard set as the loaders see it (its manifest, splits and shards), and the
targets its labels become in a requested nomenclature."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
import torch

from mtmg.data import grids, labels, shards, storage, verify
from mtmg.errors import InputError


@dataclass(frozen=True)
class ShardSet:
    """A finished shard set (OUT of `data_prep/shard.py`) and what its manifest says."""

    root: str
    manifest: dict = field(repr=False, compare=False)

    @classmethod
    def open(cls, path: str) -> ShardSet:
        """The set at `path`; ShardError naming any shard file its manifest lists but is gone."""
        loc = storage.location(path)
        manifest = shards.load_manifest(loc)
        verify.check_files(loc, manifest)
        return cls(loc.uri, manifest)

    @property
    def name(self) -> str:
        return self.manifest["dataset"]

    @property
    def task(self) -> str:
        return self.manifest["task"]

    @property
    def has_ms(self) -> bool:
        return self.manifest["modality"].startswith("S2")

    @property
    def upsample(self) -> str:
        """How this set's 20/60 m bands reach the 10 m grid when decoded: the method it was
        sharded with (`shard.py --resample`, format 2), else nearest."""
        method = self.manifest.get("resampling", {}).get("method")
        return method if method in grids.UPSAMPLING else "nearest"

    def nomenclature(self, name: str | None = None) -> str:
        """The nomenclature to use: `name`, else BigEarthNet-19 where offered, else the stored."""
        options = self.manifest["nomenclatures"]
        if name is None:
            name = "ben19" if "ben19" in options else self.manifest["label_nomenclature"]
        if name not in options:
            raise InputError(f"{self.root}: no nomenclature {name!r} (it has {sorted(options)})")
        return name

    def classes(self, nomenclature: str | None = None) -> list[str]:
        return list(self.manifest["nomenclatures"][self.nomenclature(nomenclature)]["classes"])

    def prompt_names(self, nomenclature: str | None = None) -> list[str]:
        entry = self.manifest["nomenclatures"][self.nomenclature(nomenclature)]
        return list(entry.get("prompt_names") or entry["classes"])

    def shards(self, split: str) -> list[tuple[str, int]]:
        """(path, sample count) of a split's shards; KeyError naming the split if it is empty."""
        return shards.shard_list(self.root, split, self.manifest)  # paths or URIs

    def count(self, split: str) -> int:
        return self.manifest["splits"].get(split, {}).get("count", 0)


@dataclass(frozen=True)
class Targets:
    """Label names in the stored nomenclature -> a training target in the requested one."""

    source: tuple[str, ...]
    mapping: tuple[int, ...] | None  # stored index -> target index (-1: dropped); None = same
    n_classes: int
    multi_label: bool

    @classmethod
    def of(cls, ds: ShardSet, nomenclature: str | None = None) -> Targets:
        want = ds.nomenclature(nomenclature)
        stored = ds.manifest["label_nomenclature"]
        noms = ds.manifest["nomenclatures"]
        mapping = None
        if want != stored:
            entry = noms[want]
            if entry.get("from") != stored:
                raise InputError(f"{ds.root}: no map from {stored} to {want}")
            mapping = tuple(-1 if j is None else j for j in entry["map"])
        return cls(
            tuple(noms[stored]["classes"]),
            mapping,
            len(noms[want]["classes"]),
            ds.task == "multi-label",
        )

    def __call__(self, names: list[str]) -> torch.Tensor:
        if not self.multi_label:
            idx = self.source.index(names[0])
            return torch.tensor(self.mapping[idx] if self.mapping else idx, dtype=torch.long)
        index, target = self._lookup
        out = np.zeros(self.n_classes, dtype=np.float32)
        for name in names:
            j = target[index[name]]  # KeyError for a name outside the stored classes
            if j >= 0:
                out[j] = 1.0
        return torch.from_numpy(out)

    def remap(self, stored: torch.Tensor) -> torch.Tensor:
        """Targets decoded in the stored nomenclature as these targets would decode them."""
        return labels.TargetMap(self.mapping, self.n_classes)(stored)

    @functools.cached_property
    def _lookup(self) -> tuple[dict[str, int], tuple[int, ...]]:
        """Stored class name -> stored index, and stored index -> target index (-1: dropped)."""
        index = {c: i for i, c in enumerate(self.source)}
        return index, self.mapping or tuple(range(len(self.source)))
