"""Trials that start before their inputs exist: a value to wait for, at a lower priority.

The alpha sweep starts its Tune trials while Ray Train fine-tunes, so that their processes
start (import Ray Tune and torch) meanwhile; the trials then wait at a `Handoff` for the object
refs of the weights the fine-tune produces. `put` hands them over (refs inside the value stay
refs: trials `ray.get` the weights from the object store, not through this actor); `fail` makes
every waiting and later `get` raise. Their worker processes run at the lowest CPU priority
(`LOW_PRIORITY_ENV`), so that starting up takes only CPU time the fine-tune leaves idle; they
keep it after the fine-tune (an unprivileged process cannot raise its priority again), when
nothing else of the sweep competes for the CPUs. This module imports nothing beyond Ray and
`ray_private` (the actor lives in a worker of its own, and the priority is set before a worker
imports anything else).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import ray

from mtmg.runtime import ray_private

NICE = 19  # the early trials' niceness: they take CPU time only when nothing else wants it


def lower_priority() -> None:
    """Worker set-up hook: this process (and what it starts) runs at niceness `NICE`."""
    os.nice(max(0, NICE - os.nice(0)))


# A runtime env's variables that make Ray run `lower_priority` as a worker process starts,
# before it loads an actor: what `runtime_env={"worker_process_setup_hook": ...}` sets, in the
# one part of a runtime env that Ray Tune lets a sweep add to its trial actors' (`env_vars`).
LOW_PRIORITY_ENV = ray_private.setup_hook_env(f"{__name__}.lower_priority")


class HandoffFailed(RuntimeError):
    """The driver could not make the value (`Handoff.fail`)."""


@ray.remote(num_cpus=0, max_concurrency=1000)
class Handoff:
    """`await get()` returns the value once the driver `put`s it (or raises after `fail`)."""

    def __init__(self) -> None:
        self._ready = asyncio.Event()
        self._value: Any = None
        self._error: str | None = None

    async def put(self, value: Any) -> None:
        self._value = value
        self._ready.set()

    async def fail(self, reason: str) -> None:
        self._error = reason
        self._ready.set()

    async def get(self) -> Any:
        await self._ready.wait()
        if self._error is not None:
            raise HandoffFailed(self._error)
        return self._value
