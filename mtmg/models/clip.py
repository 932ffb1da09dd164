"""open_clip models, offline-proof: build a CLIP with its pretrained weights, strictly.

Importing this module registers the small architectures shipped in `mtmg/models/model_configs/`
(`mtmg-tiny-vit`, `mtmg-small-vit`, `mtmg-demo-vit`) with open_clip (`configs`). Weights are
resolved without waiting on the network (`pretrained`). Every load is strict (`strict=True`); a
mismatching checkpoint is reported by file, key and shape.

PAINT's weight-space operations (`image_state`, `interpolate`, `load_image_state`,
`save_checkpoint`) live in `mtmg.models.weights`.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import open_clip
import torch
from open_clip.factory import load_state_dict as _read_state_dict
from torch import nn

from mtmg.errors import ModelLoadError
from mtmg.models.configs import (
    check_model_name,
    instantiate_on_meta,
    model_config,
    register_model_config,
)
from mtmg.models.pretrained import resolve_pretrained
from mtmg.models.weights import BUILD_KWARGS_KEY

log = logging.getLogger(__name__)

__all__ = ["ClipBundle", "ModelLoadError", "load_clip", "stored_build_kwargs"]


@dataclass
class ClipBundle:
    """An open_clip model with what callers need beside it (not picklable: holds the model)."""

    model: nn.Module
    name: str  # open_clip architecture name
    pretrained: str | None  # as asked: a tag, a file path, or None (random init)
    checkpoint: str | None  # the local file actually loaded (None: random init)
    tokenizer: Callable[..., torch.Tensor]
    image_size: int
    mean: tuple[float, ...]  # CLIP normalisation, from the model's preprocess cfg
    std: tuple[float, ...]
    embed_dim: int
    preprocess: Callable[..., torch.Tensor]  # open_clip's eval transform for PIL images
    # what a rebuild needs beside the weights (QuickGELU, the tag's preprocessing): pass it as
    # `load_clip(..., build_kwargs=...)` where the model is re-created from a state dict
    build_kwargs: dict[str, Any] = field(default_factory=dict)


def load_clip(
    name: str,
    pretrained: str | None = None,
    *,
    model_config: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    cache_dir: str | None = None,
    build_kwargs: Mapping[str, Any] | None = None,
) -> ClipBundle:
    """Build open_clip model `name` with `pretrained` weights (see resolve_pretrained), strictly.

    A tag's QuickGELU flag and preprocessing (mean/std/interpolation) are applied, as open_clip
    would for the tag, although the weights are passed to open_clip as a local file.
    """
    if model_config:
        registered = register_model_config(model_config)
        if registered != name:
            log.warning(
                "--model-config registered %r but the model asked for is %r", registered, name
            )
    check_model_name(name)
    checkpoint = resolve_pretrained(name, pretrained, cache_dir=cache_dir)
    kwargs: dict[str, Any] = {}
    if pretrained and open_clip.is_pretrained_cfg(name, pretrained):
        tag_cfg = open_clip.get_pretrained_cfg(name, pretrained)
        kwargs = {
            "force_quick_gelu": bool(tag_cfg.get("quick_gelu", False)),
            "image_mean": tag_cfg.get("mean"),
            "image_std": tag_cfg.get("std"),
            "image_interpolation": tag_cfg.get("interpolation"),
            "image_resize_mode": tag_cfg.get("resize_mode"),
        }
    elif checkpoint and checkpoint.endswith(".safetensors"):
        kwargs = stored_build_kwargs(checkpoint)  # what save_checkpoint recorded, if anything
    if build_kwargs:
        kwargs = dict(build_kwargs)
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            name, pretrained=checkpoint, precision=precision, device=device, **kwargs
        )
    except Exception as e:  # strict-load failures surface as RuntimeError, reads as anything
        if checkpoint is None:
            raise
        raise _checkpoint_error(name, checkpoint, e) from e
    model.eval()
    pp = model.visual.preprocess_cfg
    return ClipBundle(
        model=model,
        name=name,
        pretrained=pretrained or None,
        checkpoint=checkpoint,
        tokenizer=open_clip.get_tokenizer(name),
        image_size=_square_size(pp["size"], name),
        mean=tuple(float(m) for m in pp["mean"]),
        std=tuple(float(s) for s in pp["std"]),
        embed_dim=int(open_clip.get_model_config(name)["embed_dim"]),
        preprocess=preprocess,
        build_kwargs=kwargs,
    )


def stored_build_kwargs(path: str) -> dict[str, Any]:
    """The open_clip build arguments (QuickGELU, preprocessing) a checkpoint was saved with."""
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
    except Exception:  # noqa: BLE001 - not readable here: the load itself will say why
        return {}
    try:
        return dict(json.loads(meta.get(BUILD_KWARGS_KEY, "{}")))
    except (TypeError, ValueError):
        return {}


def _square_size(size: int | tuple[int, ...], name: str) -> int:
    sizes = {int(size)} if isinstance(size, int) else {int(s) for s in size}
    if len(sizes) != 1:
        raise ModelLoadError(f"model {name}: non-square image size {size} is not supported")
    return sizes.pop()


def _checkpoint_error(name: str, path: str, err: Exception) -> ModelLoadError:
    try:
        state = _read_state_dict(path)
    except Exception as e:  # torch.load / safetensors raise many types on bad files
        return ModelLoadError(f"could not read checkpoint {path}: {type(e).__name__}: {e}")
    expected = {
        k: tuple(v.shape) for k, v in instantiate_on_meta(model_config(name)).state_dict().items()
    }
    got = {k: tuple(getattr(v, "shape", ())) for k, v in state.items()}
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    shapes = [
        f"{k}: checkpoint {list(got[k])} vs model {list(expected[k])}"
        for k in sorted(set(got) & set(expected))
        if got[k] != expected[k]
    ]
    if not (missing or unexpected or shapes):
        return ModelLoadError(f"loading checkpoint {path} into {name} failed: {err}")
    parts = [
        f"{len(items)} {label} (e.g. {', '.join(items[:4])})"
        for label, items in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatches", shapes),
        )
        if items
    ]
    return ModelLoadError(
        f"checkpoint {path} does not match architecture {name}: {'; '.join(parts)}. "
        "Check --model (and --model-config) against the checkpoint"
    )
