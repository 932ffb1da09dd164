"""Weight-space operations on open_clip models: image-tower states, PAINT interpolation,
strict loading, fingerprints and full-checkpoint export."""

from __future__ import annotations

import hashlib
import json
import math
import numbers
import os
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from mtmg.errors import ModelLoadError

VISUAL_PREFIX = "visual."  # open_clip's image tower: the weights PAINT interpolates
BUILD_KWARGS_KEY = "mtmg_open_clip_kwargs"  # safetensors metadata: how to rebuild the model


def image_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """fp32 CPU copies of every image-tower tensor (`visual.*`): theta for PAINT.

    Non-floating tensors (e.g. BatchNorm counters in timm towers) are copied with their dtype.
    """
    state = {k: _fp32_copy(v) for k, v in model.state_dict().items() if k.startswith(VISUAL_PREFIX)}
    if not state:
        raise ValueError("model has no image tower: no 'visual.*' tensors in its state dict")
    return state


def text_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every tensor outside the image tower (text tower, logit scale): what zero-shot heads
    depend on. Detached views, not copies; meant for `weights_fingerprint`."""
    return {k: v.detach() for k, v in model.state_dict().items() if not k.startswith(VISUAL_PREFIX)}


def _fp32_copy(t: torch.Tensor) -> torch.Tensor:
    dtype = torch.float32 if t.is_floating_point() else t.dtype
    return t.detach().to(device="cpu", dtype=dtype, copy=True)


def interpolate(
    theta_zs: Mapping[str, torch.Tensor], theta_ft: Mapping[str, torch.Tensor], alpha: float
) -> dict[str, torch.Tensor]:
    """PAINT's patch: `(1 - alpha) * theta_zs + alpha * theta_ft` element-wise, in fp32.

    alpha may lie outside [0, 1] (extrapolation) but must be finite. alpha = 0 and 1 return copies
    of theta_zs / theta_ft exactly. Non-floating tensors are not interpolated: they are taken from
    the nearer endpoint (theta_ft for alpha >= 0.5).
    """
    a = _check_alpha(alpha)
    _check_compatible(theta_zs, theta_ft)
    if a == 0.0:
        return {k: _fp32_copy(v) for k, v in theta_zs.items()}
    if a == 1.0:
        return {k: _fp32_copy(v) for k, v in theta_ft.items()}
    out = {}
    for k, zs in theta_zs.items():
        ft = theta_ft[k]
        if zs.is_floating_point():
            out[k] = (1.0 - a) * zs.detach().float() + a * ft.detach().float()
        else:
            out[k] = (ft if a >= 0.5 else zs).detach().clone()
    return out


def _check_alpha(alpha: Any) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real):
        raise TypeError(f"alpha must be a real number, got {type(alpha).__name__} {alpha!r}")
    a = float(alpha)
    if not math.isfinite(a):
        raise ValueError(f"alpha must be finite, got {alpha!r}")
    return a


def _check_compatible(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> None:
    only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
    if only_a or only_b:
        raise ValueError(
            f"the two weight states have different keys: {len(only_a)} only in theta_zs "
            f"{only_a[:5]}, {len(only_b)} only in theta_ft {only_b[:5]}"
        )
    shapes = [
        f"{k}: {list(a[k].shape)} vs {list(b[k].shape)}" for k in a if a[k].shape != b[k].shape
    ]
    if shapes:
        raise ValueError(f"the two weight states differ in shape: {'; '.join(shapes[:5])}")


def load_image_state(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Load an image-tower state strictly: exactly the model's `visual.*` keys, nothing else;
    each tensor is cast to the dtype and device of the model tensor it replaces."""
    own = {k: v for k, v in model.state_dict().items() if k.startswith(VISUAL_PREFIX)}
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    shapes = [
        f"{k}: state {list(state[k].shape)} vs model {list(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shapes:
        raise ModelLoadError(
            f"image-tower state does not match the model: {len(missing)} missing {missing[:5]}, "
            f"{len(unexpected)} unexpected {unexpected[:5]}, {len(shapes)} shape mismatches "
            f"{shapes[:5]}"
        )
    visual = {
        k[len(VISUAL_PREFIX) :]: v.detach().to(device=own[k].device, dtype=own[k].dtype)
        for k, v in state.items()
    }
    model.visual.load_state_dict(visual, strict=True)


def weights_fingerprint(state_or_model: nn.Module | Mapping[str, torch.Tensor]) -> str:
    """A 16-hex-digit SHA-256 digest of tensor names, dtypes, shapes and values, in key order.

    Cost: reads every byte once (plus a device-to-host copy for GPU tensors, figures in
    bench/results/NOTES.md); fingerprint a state once and reuse the string.
    """
    if isinstance(state_or_model, nn.Module):
        state: Mapping[str, torch.Tensor] = state_or_model.state_dict()
    else:
        state = state_or_model
    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key]
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"weights_fingerprint: {key!r} is a {type(t).__name__}, not a tensor")
        h.update(json.dumps([key, str(t.dtype), list(t.shape)]).encode() + b"\n")
        h.update(_tensor_bytes(t))
    return h.hexdigest()[:16]


def _tensor_bytes(t: torch.Tensor) -> memoryview:
    flat = t.detach().to("cpu").contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy())


def save_checkpoint(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    metadata: Mapping[str, str] | None = None,
    build_kwargs: Mapping[str, Any] | None = None,
) -> Path:
    """Write the FULL model state dict (text tower included) as .safetensors, atomically.

    `open_clip.create_model(NAME, pretrained=path)` (and `load_clip`) load it strictly.
    `build_kwargs` (a ClipBundle's: QuickGELU, preprocessing) go into the file's metadata, so
    `load_clip(NAME, path)` rebuilds the same architecture (open_clip alone needs
    `force_quick_gelu=True` for models trained with QuickGELU, e.g. OpenAI's).
    """
    p = Path(path)
    if p.suffix != ".safetensors":
        raise ValueError(f"save_checkpoint writes safetensors: {p} must end in .safetensors")
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    meta = {"format": "pt", "producer": "mtmg", **dict(metadata or {})}
    if build_kwargs:
        meta[BUILD_KWARGS_KEY] = json.dumps(dict(build_kwargs))
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.{uuid.uuid4().hex}.tmp")
    try:
        save_file(state, str(tmp), metadata=meta)
        os.replace(tmp, p)
    finally:
        tmp.unlink(missing_ok=True)
    return p
