"""Model-ready batches from a shard set: a WebDataset pipeline over `manifest.json`.

Stage order as in open_clip (shard split by rank -> split by loader worker -> shuffle ->
decode -> batch in workers -> re-batch in the main process). Distributed contract:
- every rank reads a disjoint part (whole shards when there are at least as many shards as
  ranks, else every `world`-th sample), and every loader worker a disjoint part of that;
- training: shard order and sample order shuffled from (seed, epoch); every rank runs exactly
  `steps` full batches, the same number on all ranks (DDP collectives never wait);
- evaluation: every sample exactly once across ranks, in a fixed order, last batch partial.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import webdataset as wds

from mtmg.data import verify
from mtmg.data.batching import EveryNth, Part, Rebatch, collate, cycle, full_batches, partition
from mtmg.data.decoder import STUDENT_INPUTS, VIEWS, Decoder, device_batch, view_inputs
from mtmg.data.shardset import ShardSet, Targets


@dataclass
class Loader:
    """An iterable of batches for one rank, with its length when known."""

    loader: Any
    steps: int | None  # training: exact batches per epoch on every rank
    samples: int  # samples this rank sees
    batch_size: int

    def __iter__(self) -> Iterator[dict[str, Any]]:
        it = iter(self.loader)
        return itertools.islice(it, self.steps) if self.steps is not None else it

    def __len__(self) -> int:
        return self.steps if self.steps is not None else -(-self.samples // self.batch_size)


def make_loader(
    ds: ShardSet,
    split: str,
    decoder: Decoder,
    *,
    batch_size: int,
    train: bool,
    rank: int = 0,
    world: int = 1,
    num_workers: int = 2,
    seed: int = 0,
    epoch: int = 0,
    shuffle_buffer: int = 1000,
) -> Loader:
    """Batches of `split` for this rank (see the module docstring for the guarantees)."""
    parts = partition(ds.shards(split), rank, world, shuffle=train, seed=seed, epoch=epoch)
    part = parts[rank]
    stages: list[Any] = [
        wds.SimpleShardList(list(part.urls)),
        wds.split_by_worker,
        # size, members and count checked; members the decoder never reads are skipped
        verify.ShardReader(ds.root, split, ds.manifest, skip=decoder.unread),
    ]
    if part.by_sample:
        stages.append(EveryNth(part))
    if train:
        stages.append(wds.shuffle(shuffle_buffer, seed=hash((seed, epoch, rank)) & 0xFFFFFFFF))
    stages += [wds.map(decoder), wds.batched(batch_size, collation_fn=collate, partial=True)]
    pipe = wds.DataPipeline(*stages)
    local = part.urls
    loader = wds.WebLoader(pipe, batch_size=None, num_workers=min(num_workers, len(local)))
    # re-batch in the main process: full batches whatever the per-worker leftovers
    loader = loader.compose(Rebatch(batch_size, partial=not train))
    steps = full_batches(parts, batch_size, f"{ds.root} {split}") if train else None
    return Loader(loader, steps, part.count, batch_size)


__all__ = [  # the loading API in one place; each name is defined in its own module
    "STUDENT_INPUTS",
    "VIEWS",
    "Decoder",
    "Loader",
    "Part",
    "ShardSet",
    "Targets",
    "collate",
    "cycle",
    "device_batch",
    "full_batches",
    "make_loader",
    "partition",
    "view_inputs",
]
