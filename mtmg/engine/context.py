"""Where a stage's worker runs: rank, world size, device, and where its reports and
checkpoints go. Plain PyTorch: `mtmg.runtime.train` builds the context of a Ray Train worker
(reports and checkpoints through Ray Train), a Tune trial passes its own reporter, and a test
or a notebook uses the default (a single process that keeps nothing)."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

Reporter = Callable[[dict[str, Any], str | None], None]  # f(metrics, checkpoint dir or None)


@dataclass
class WorkerContext:
    """Rank, world size and device of one worker, and the hooks its loop reports through."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")
    reporter: Reporter | None = None  # where metrics and checkpoints go; None: nowhere
    resume: Callable[[], str | None] | None = None  # the latest checkpoint dir to resume from
    tracker: Any = None  # rank 0's `mtmg.tracking.Run` (--report-to), else None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def load_checkpoint(self) -> str | None:
        """Directory of the latest checkpoint of this run (after a restart), if any."""
        return self.resume() if self.resume is not None else None

    @contextlib.contextmanager
    def checkpoint_dir(self) -> Iterator[str]:
        """A temporary directory for rank 0 to fill before `report(..., checkpoint=dir)`."""
        with tempfile.TemporaryDirectory(prefix="mtmg-ckpt-") as d:
            yield d

    def report(self, metrics: dict[str, Any], checkpoint: str | None = None) -> None:
        """Metrics (every rank calls this) and, from rank 0, a checkpoint directory."""
        if self.reporter is not None:
            self.reporter(metrics, checkpoint)

    def wrap(self, module: torch.nn.Module) -> torch.nn.Module:
        """Move to the device; DDP-wrap when running with more than one worker."""
        module = module.to(self.device)
        if self.world > 1 and dist.is_initialized():
            ids = [self.device.index] if self.device.type == "cuda" else None
            return torch.nn.parallel.DistributedDataParallel(module, device_ids=ids)
        return module

    def all_gather(self, obj: Any) -> list[Any]:
        if self.world == 1 or not dist.is_initialized():
            return [obj]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj: Any) -> Any:
        if self.world == 1 or not dist.is_initialized():
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]
