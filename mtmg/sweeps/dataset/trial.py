"""The dataset sweep's trial, in its own process: fine-tune on one --patching entry (jointly for
a mixture), select alpha, evaluate every evaluation dataset."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from mtmg.data import evalsets
from mtmg.stages.patch import driver as patch
from mtmg.sweeps import common, trials


@dataclass(frozen=True)
class DatasetTrialInputs:
    """What every trial needs, put in the object store once."""

    base: dict[str, Any]  # PatchConfig fields
    zeroshot: dict[str, torch.Tensor]  # the whole CLIP model's state (theta_zs)
    heads: list[torch.Tensor]  # per evaluation dataset, in `paths` order
    paths: list[str]  # every evaluation entry, PATH[:NOMENCLATURE] (patching sets first)
    labels: list[str]  # of `paths`
    entries: dict[str, tuple[str, ...]]  # --patching entry label ("A" or "A+B") -> shard sets
    supported: list[str]
    resources: trials.TrialResources
    build_kwargs: dict[str, Any] | None = None  # open_clip rebuild arguments (QuickGELU, ...)
    nomenclatures: list[str] | None = None  # of `paths`, resolved (None: the sets' defaults)

    def key(self, path: str, nomenclature: str) -> str:
        """The entry of `paths` that a result row of (path, resolved nomenclature) scores."""
        nomens = self.nomenclatures or [None] * len(self.paths)
        for entry, nomen in zip(self.paths, nomens, strict=True):
            if evalsets.EvalEntry.parse(entry).path == path and nomen in (None, nomenclature):
                return entry
        raise KeyError((path, nomenclature))


def trial_sets(inputs: DatasetTrialInputs, mix: tuple[str, ...]) -> list[tuple[str, str, None]]:
    """(role, path, nomenclature) of a trial patching on `mix`: its sets, then the others (an
    evaluation entry may name another nomenclature of a patching set)."""
    sets = [("patching", p, None) for p in mix]
    sets += [("supported", s, None) for s in inputs.supported if s not in mix]
    for key in inputs.paths:
        if key not in mix and key not in inputs.supported:
            e = evalsets.EvalEntry.parse(key)
            sets.append(("eval", e.path, e.nomenclature))
    return sets


def _entry(path: str, nomenclature: str | None) -> str:
    return str(evalsets.EvalEntry(path, nomenclature))


def trial(params: dict[str, Any], inputs: DatasetTrialInputs) -> None:
    """One --patching entry: fine-tune (jointly for a mixture), select alpha, evaluate every
    evaluation dataset."""
    from ray import tune

    device = inputs.resources.start()
    mix = inputs.entries[params["patching"]]
    for p in mix:
        common.check_patchable(p)
    cfg = patch.PatchConfig(**{**inputs.base, "data": mix[0], "joint_data": mix[1:]})
    sets = trial_sets(inputs, mix)
    head_weights = [inputs.heads[inputs.paths.index(_entry(p, n))] for _, p, n in sets]
    res = trials.run_patch(
        cfg, sets, inputs.zeroshot, head_weights, device, build_kwargs=inputs.build_kwargs
    )
    alpha = res["alpha"]
    val_p, val_s = trials.val_values(res["rows"], alpha)
    test = {inputs.key(*k): v for k, v in trials.eval_values(res["rows"], alpha, True).items()}
    by_label = {inputs.labels[inputs.paths.index(k)]: v for k, v in test.items()}
    gains = {k: v["gain"] for k, v in by_label.items()}
    own = [test[p]["gain"] for p in mix]
    tune.report(
        {
            "alpha": alpha,
            "val_patching": val_p,
            "val_supported": val_s,
            "self_gain": sum(own) / len(own),
            "mean_gain": sum(gains.values()) / len(gains),
            "gain": gains,
            "zeroshot": {k: v["zeroshot"] for k, v in by_label.items()},
            "patched": {k: v["patched"] for k, v in by_label.items()},
            "finetuned": {k: v["finetuned"] for k, v in by_label.items()},
            "metric": {k: v["metric"] for k, v in by_label.items()},
            "train_loss": res["stats"][-1]["train_loss"] if res["stats"] else None,
            "done_training": True,
        }
    )
