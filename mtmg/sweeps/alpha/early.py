"""Early trials: the sweep overlapped with its own fine-tune, and trial processes that start fast.

The driver's one switch is `fine_tune_then_tune`, taken when the sweep fine-tunes itself;
without it (`--run`, a finished fine-tune reused) the sweep prepares, loads and tunes in turn.

- Threads: while Ray Train fine-tunes, a background thread prepares what does not depend on
  theta_ft (decoded splits, the packed tower); the driver would only wait, and the training
  workers leave CPUs idle.
- Trials that start during the fine-tune (`trial_slots`: CPU trials of a new sweep on the
  embedded Ray): their processes boot and import torch meanwhile, at the lowest CPU priority
  (`mtmg.runtime.handoff.LOW_PRIORITY_ENV`, nice 19: on CPU time the fine-tune leaves idle),
  holding trial slots (`mtmg.runtime.cluster.TRIAL_SLOT`), not the CPUs Ray Train's workers
  hold, and wait at a `Handoff` actor for the refs of the fine-tune's weights (`shared_refs`).
- TorchScript packing (`pack_visual`): a CPU trial loads the image tower with torch alone, so
  its process starts without importing open_clip.

A trial process imports this module: torch and the standard library only at its top.
"""

from __future__ import annotations

import io
import threading
import uuid
import warnings
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, Protocol

import torch


class Loaded(Protocol):
    """The sweep's inputs once theta_ft exists (`inputs.SweptRun`)."""

    shared: dict[str, Any]


def pack_visual(visual: torch.nn.Module, script: bool = True) -> tuple[str, Any]:
    """The image tower for the object store: ("torchscript", bytes) where it scripts, else
    ("module", the module), whose process then imports open_clip to unpickle it.

    The sweep scripts towers for CPU trials only: on GPUs TorchScript's own CUDA paths (fusion,
    autocast) would meet bf16 evaluation, and a trial process's start matters less there.
    """
    if not script:
        return "module", visual
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scripted = torch.jit.script(visual.eval())
            buf = io.BytesIO()
            torch.jit.save(scripted, buf)
        return "torchscript", buf.getvalue()
    except Exception:  # noqa: BLE001 - not scriptable (e.g. some timm towers): send it as is
        return "module", visual


def unpack_visual(packed: tuple[str, Any]) -> torch.nn.Module:
    """The image tower `pack_visual` packed."""
    kind, obj = packed
    if kind == "torchscript":
        with warnings.catch_warnings():  # torch marks TorchScript deprecated; it works
            warnings.simplefilter("ignore", FutureWarning)
            return torch.jit.load(io.BytesIO(obj), map_location="cpu")
    return obj


_HANDED: dict[str, dict[str, Any]] = {}  # the refs a Handoff gave this process, by its key


def shared_refs(shared: dict[str, Any]) -> dict[str, Any]:
    """The object-store refs of the sweep's shared inputs: `shared` itself, or, for a trial
    started during the fine-tune, what its `Handoff` hands over (waited for once per process)."""
    handoff = shared.get("handoff")
    if handoff is None:
        return shared
    key = shared["key"]
    if key not in _HANDED:
        import ray

        _HANDED.clear()
        _HANDED[key] = ray.get(handoff.get.remote())
    return _HANDED[key]


def in_background(fn: Callable[..., Any], *args: Any, name: str = "mtmg-prepare") -> Future:
    """`fn(*args)` in a daemon thread (a Ctrl-C'd sweep does not wait for it to finish)."""
    fut: Future = Future()

    def target() -> None:
        try:
            fut.set_result(fn(*args))
        except BaseException as e:  # noqa: BLE001 - handed to whoever waits for the result
            fut.set_exception(e)

    threading.Thread(target=target, name=name, daemon=True).start()
    return fut


def trial_slots(
    on_cluster: bool, resuming: bool, cpus: float, gpus: float
) -> dict[str, float] | None:
    """The resources a trial started during the fine-tune holds: the embedded Ray's trial
    slots (`cpus` of them), not the CPUs Ray Train's workers hold; None where the trials wait
    for the fine-tune: GPU trials, a resumed sweep, and a cluster, where they would hold CPUs
    idle for as long as the fine-tune takes."""
    import ray

    from mtmg.runtime.cluster import TRIAL_SLOT

    if on_cluster or resuming or gpus or ray.cluster_resources().get(TRIAL_SLOT, 0) < cpus:
        return None
    return {TRIAL_SLOT: cpus}


def fine_tune_then_tune(
    fine_tune: Callable[[Callable[[], None]], None],
    prepare: Callable[[], Any],
    load: Callable[[Any], Loaded],
    tune: Callable[..., Any],
    slots: dict[str, float] | None,
    forget: Callable[[], None],
) -> tuple[Any, Loaded]:
    """Fine-tune, prepare and tune, overlapped: (Tune's ResultGrid, the loaded inputs).

    `fine_tune(on_train_start)` runs the fine-tune; `prepare()` starts in a thread once Ray
    Train has the job; `load(prepared)` adds theta_ft; `tune(shared, resources=, trial_env=)`
    runs Ray Tune. With `slots` (`trial_slots`), Tune starts from `on_train_start`, its trials
    holding them, and the fine-tune runs in a thread; `forget()` deletes the experiment of a
    failed fine-tune then.
    """
    ready: list[Future] = []

    def started() -> None:  # not before: its Python work would slow the fine-tune's launch
        ready.append(in_background(prepare))

    def fine_tuned(on_train_start: Callable[[], None] | None = None) -> Loaded:
        def hook() -> None:
            started()
            if on_train_start is not None:
                on_train_start()

        fine_tune(hook)
        if not ready:  # the fine-tune had nothing left to train
            started()
        return load(ready[0].result())

    if slots is None:
        got = fine_tuned()
        return tune(got.shared), got
    return _tune_while_fine_tuning(fine_tuned, tune, slots, forget)


def _tune_while_fine_tuning(
    fine_tuned: Callable[[Callable[[], None]], Loaded],
    tune: Callable[..., Any],
    slots: dict[str, float],
    forget: Callable[[], None],
) -> tuple[Any, Loaded]:
    """Run `fine_tuned(on_train_start)` in a thread and Tune, from `on_train_start`, here.

    Tune runs in the main thread, so Ctrl-C stops it as usual; the trials have not run then:
    the sweep ends, and `--resume` fine-tunes from Ray Train's checkpoint and runs them. When
    the fine-tune fails, the waiting trials fail with it and the experiment is deleted (nothing
    in it to resume).
    """
    from mtmg.runtime.handoff import LOW_PRIORITY_ENV, Handoff
    from mtmg.sweeps import outputs

    handoff = Handoff.remote()
    training = threading.Event()

    def hand_over() -> Loaded:
        try:
            got = fine_tuned(training.set)
        except BaseException as e:
            handoff.fail.remote(f"the sweep's fine-tune failed: {outputs.error_text(e)}")
            raise
        handoff.put.remote(got.shared)
        return got

    job = in_background(hand_over, name="mtmg-fine-tune")
    job.add_done_callback(lambda _: training.set())
    training.wait()
    if job.done() and job.exception() is not None:
        job.result()  # failed before its Train job: raises
    shared = {"handoff": handoff, "key": uuid.uuid4().hex}
    grid = tune(shared, resources=slots, trial_env=LOW_PRIORITY_ENV)
    if not job.done() and any(r.error is None for r in grid):  # trials left waiting: Ctrl-C
        raise KeyboardInterrupt(
            "alpha sweep interrupted during its fine-tune; run it again with --resume"
        )
    try:
        return grid, job.result()
    except BaseException:
        forget()
        raise
