"""How a split's samples are divided and grouped: every rank's part of the shards (`partition`),
the samples kept in sample mode (`EveryNth`), batches stacked (`collate`) and re-batched to an
exact size in the training process (`Rebatch`), and training passes chained (`cycle`)."""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Rebatch:
    """Worker batches -> batches of exactly `size` in the same sample order (the last one
    partial only with `partial`); a full batch with nothing pending passes through uncopied."""

    size: int
    partial: bool

    def __call__(self, batches: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        pending: list[dict[str, Any]] = []
        for batch in batches:
            n = len(batch["__key__"])
            if not pending and n == self.size:
                yield batch
                continue
            pending += ({k: v[i] for k, v in batch.items()} for i in range(n))
            while len(pending) >= self.size:
                yield collate(pending[: self.size])
                del pending[: self.size]
        if pending and self.partial:
            yield collate(pending)


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack tensors (in a loader worker straight into shared memory, as torch's own collate
    does, so the batch is not copied again on its way out); other fields (the `__key__` of each
    sample) become lists."""
    from torch.utils.data import default_collate

    return {
        k: default_collate([s[k] for s in samples])
        if isinstance(v, torch.Tensor)
        else [s[k] for s in samples]
        for k, v in samples[0].items()
    }


@dataclass(frozen=True)
class Part:
    """What one rank reads: shard paths, and (sample mode) which global sample indices."""

    urls: tuple[str, ...]
    offsets: tuple[int, ...]  # global index of each url's first sample
    rank: int
    world: int
    by_sample: bool
    count: int  # samples this rank yields


def partition(
    shard_list: list[tuple[str, int]],
    rank: int,
    world: int,
    *,
    shuffle: bool,
    seed: int,
    epoch: int,
) -> list[Part]:
    """Every rank's part, computed identically on all ranks (so step counts agree)."""
    order = list(range(len(shard_list)))
    if shuffle:
        random.Random(f"{seed}:{epoch}").shuffle(order)
    urls = [shard_list[i][0] for i in order]
    counts = [shard_list[i][1] for i in order]
    offsets = list(itertools.accumulate([0, *counts[:-1]]))
    if len(urls) >= world:
        return [
            Part(
                tuple(urls[r::world]),
                tuple(offsets[r::world]),
                r,
                world,
                False,
                sum(counts[r::world]),
            )
            for r in range(world)
        ]
    total = sum(counts)
    return [
        Part(tuple(urls), tuple(offsets), r, world, True, len(range(r, total, world)))
        for r in range(world)
    ]


def full_batches(parts: list[Part], batch_size: int, where: str) -> int:
    """Full batches every rank runs in a training epoch (the smallest part decides);
    ValueError naming `where` when a rank has less than one batch."""
    fewest = min(p.count for p in parts)
    if fewest < batch_size:
        raise ValueError(
            f"{where}: {fewest} samples per rank is less than one batch of {batch_size}; "
            "lower --batch-size"
        )
    return fewest // batch_size


class EveryNth:
    """Keep the samples whose global index (url offset + position in its shard) is ours."""

    def __init__(self, part: Part) -> None:
        self.start = dict(zip(part.urls, part.offsets, strict=True))
        self.rank, self.world = part.rank, part.world

    def __call__(self, src: Iterator[dict]) -> Iterator[dict]:
        pos: dict[str, int] = {}
        for sample in src:
            url = sample["__url__"]
            i = self.start[url] + pos.get(url, 0)
            pos[url] = pos.get(url, 0) + 1
            if i % self.world == self.rank:
                yield sample


def cycle(make: Callable[[int], Iterable[Any]], steps: int) -> Iterator[Any]:
    """Exactly `steps` batches from the training loaders `make(0)`, `make(1)`, ...: a set whose
    epoch is shorter than `steps` starts over with a new pass (reshuffled by its number), as in
    joint patching, where an epoch is the longest set's."""
    done, p = 0, 0
    while done < steps:
        got = 0
        for batch in make(p):
            yield batch
            done, got = done + 1, got + 1
            if done == steps:
                return
        if not got:
            raise ValueError(f"pass {p} of a training loader gave no batch")
        p += 1
