"""Evaluation entries: a shard set and the label set to score it in, `PATH[:NOMENCLATURE]`.

`--eval-data shards/ben:ben5 shards/ben:ben43 shards/eurosat` scores BigEarthNet in its 5- and
43-class nomenclatures and EuroSAT in its default; a path alone keeps the set's default
(`loader.ShardSet.nomenclature`). The suffix is split off at the last ':' only when it reads as
a nomenclature name ([a-z0-9_]+) and the whole entry is not an existing path, so URIs such as
`s3://bucket/ben` and `gs://b/ben:ben5` parse as expected.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from mtmg.data import loader
from mtmg.errors import InputError

NOMENCLATURE = re.compile(r"[a-z0-9_]+")


@dataclass(frozen=True)
class EvalEntry:
    """A shard set to evaluate (`path`) in one of its nomenclatures (None: its default)."""

    path: str
    nomenclature: str | None = None

    @classmethod
    def parse(cls, entry: str) -> EvalEntry:
        """`PATH` or `PATH:NOMENCLATURE` (see the module's docstring)."""
        head, sep, tail = entry.rpartition(":")
        if not sep or not head or head.endswith(":") or not NOMENCLATURE.fullmatch(tail):
            return cls(entry)
        if "://" not in entry and Path(entry).exists():  # a local path that holds ':'
            return cls(entry)
        return cls(head, tail)

    def __str__(self) -> str:
        return self.path if self.nomenclature is None else f"{self.path}:{self.nomenclature}"

    def absolute(self) -> EvalEntry:
        """The entry with a local path made absolute (Ray workers change their cwd)."""
        if "://" in self.path:
            return self
        return replace(self, path=str(Path(self.path).expanduser().resolve()))

    def open(self, option: str = "--eval-data") -> loader.ShardSet:
        """The shard set, its nomenclature checked: InputError naming the entry and the
        nomenclatures the set has."""
        ds = loader.ShardSet.open(self.path)
        have = sorted(ds.manifest["nomenclatures"])
        if self.nomenclature is not None and self.nomenclature not in have:
            raise InputError(
                f"{option} {self}: {ds.name} has no nomenclature {self.nomenclature!r} "
                f"(it has {', '.join(have)})"
            )
        return ds


def parse_all(entries: Iterable[str]) -> list[EvalEntry]:
    """Every entry parsed, local paths absolute."""
    return [EvalEntry.parse(e).absolute() for e in entries]


def absolute(entry: str) -> str:
    """An entry as text with its local path made absolute (`PATH[:NOMENCLATURE]`)."""
    return str(EvalEntry.parse(entry).absolute())


def check(entries: Iterable[str], option: str = "--eval-data") -> list[EvalEntry]:
    """Every entry parsed and opened (its nomenclature checked) before anything is trained;
    an entry given twice is an error naming it."""
    parsed = parse_all(entries)
    seen: set[tuple[str, str]] = set()
    for e in parsed:
        ds = e.open(option)
        key = (e.path, ds.nomenclature(e.nomenclature))
        if key in seen:
            raise InputError(f"{option} {e}: the same set and nomenclature given twice")
        seen.add(key)
    return parsed


def remap(targets: torch.Tensor, ds: loader.ShardSet, nomenclature: str | None) -> torch.Tensor:
    """Targets decoded in the set's stored nomenclature, in `nomenclature` instead (the map of
    `loader.Targets.of`): one decoding pass serves every nomenclature of a set."""
    return loader.Targets.of(ds, nomenclature).remap(targets)
