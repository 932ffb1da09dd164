"""open_clip models, offline-proof: configs, pretrained weights, strict loads, image-tower states.

Importing this module registers the tiny architectures shipped in `mtmg/model_configs/`
(`mtmg-tiny-vit`, `mtmg-small-vit`) with open_clip. Weights are resolved without waiting on the
network: a pretrained tag is used from the local Hugging Face / open_clip cache, downloaded only
when the hub answers within seconds, and otherwise fails at once with instructions. Every load is
strict (`strict=True`); a mismatching checkpoint is reported by file, key and shape.

PAINT's weight-space operations live here too: `image_state` (theta of the image tower, fp32),
`interpolate` ((1 - alpha) * theta_zs + alpha * theta_ft) and `load_image_state`.
"""

from __future__ import annotations

import difflib
import hashlib
import inspect
import json
import logging
import math
import numbers
import os
import socket
import threading
import uuid
from collections.abc import Callable, Mapping
from copy import deepcopy
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import open_clip
import torch
from open_clip.coca_model import CoCa
from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME
from open_clip.factory import load_state_dict as _read_state_dict
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg, CustomTextCLIP
from safetensors.torch import save_file
from torch import nn

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).parent / "model_configs"  # shipped open_clip configs (JSON)
HUB_HOST = "huggingface.co"  # probed before any hub download; tests point it elsewhere
HUB_PORT = 443
NETWORK_TIMEOUT_S = 3.0
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")
VISUAL_PREFIX = "visual."  # open_clip's image tower: the weights PAINT interpolates

_OPEN_CLIP_CONFIG_DIR = Path(open_clip.__file__).parent / "model_configs"
_TOP_LEVEL_KEYS = (
    {p for cls in (CLIP, CustomTextCLIP, CoCa) for p in inspect.signature(cls.__init__).parameters}
    - {"self", "cast_dtype"}
) | {"custom_text"}


class ModelLoadError(RuntimeError):
    """A model config, pretrained tag or checkpoint could not be loaded; says how to proceed."""


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


# ---------------------------------------------------------------- model configs


def register_model_config(path: str | os.PathLike) -> str:
    """Register a custom open_clip config JSON with open_clip; returns its name (the file stem).

    The file is validated first (JSON, required keys, known fields, and the architecture is built
    on the meta device, which allocates nothing), because open_clip re-reads every registered file
    whenever a config is added and an invalid one would break all later registrations.
    """
    p = Path(path).expanduser().resolve()
    cfg = _read_model_config(p)
    name = p.stem
    for builtin in (_OPEN_CLIP_CONFIG_DIR / p.name, CONFIG_DIR / p.name):
        if builtin.is_file() and builtin.resolve() != p and json.loads(builtin.read_text()) != cfg:
            raise ModelLoadError(
                f"model config {p}: its name {name!r} (the file stem) is a built-in architecture "
                "with a different config; rename the file"
            )
    open_clip.add_model_config(p)
    if open_clip.get_model_config(name) != cfg:
        raise ModelLoadError(f"model config {p}: open_clip did not register it as {name!r}")
    log.info("registered open_clip model config %s from %s", name, p)
    return name


def _read_model_config(p: Path) -> dict[str, Any]:
    if not p.is_file():
        raise ModelLoadError(f"model config {p} not found")
    if p.suffix != ".json":
        raise ModelLoadError(f"model config {p}: must be a .json file in open_clip's format")
    try:
        cfg = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelLoadError(f"model config {p} is not valid JSON: {e}") from e
    problem = _config_problem(cfg)
    if problem:
        raise ModelLoadError(f"{p} is not a valid open_clip model config: {problem}")
    return cfg


def _config_problem(cfg: Any) -> str | None:
    if not isinstance(cfg, dict):
        return "the top level must be a JSON object"
    missing = [k for k in ("embed_dim", "vision_cfg", "text_cfg") if k not in cfg]
    if missing:
        return f"missing keys {missing} (an open_clip config has embed_dim, vision_cfg, text_cfg)"
    dim = cfg["embed_dim"]
    if isinstance(dim, bool) or not isinstance(dim, int) or dim <= 0:
        return f"embed_dim must be a positive integer, got {dim!r}"
    for key in ("vision_cfg", "text_cfg"):
        if not isinstance(cfg[key], dict):
            return f"{key} must be a JSON object"
    unknown = sorted(set(cfg) - _TOP_LEVEL_KEYS)
    if unknown:
        return f"unknown top-level keys {unknown} (known: {sorted(_TOP_LEVEL_KEYS)})"
    try:
        CLIPVisionCfg(**cfg["vision_cfg"])
        CLIPTextCfg(**cfg["text_cfg"])
        if "hf_model_name" not in cfg["text_cfg"]:  # HF text towers fetch their config online
            _instantiate_on_meta(cfg)
    except Exception as e:  # any construction failure means the config is unusable
        return f"the architecture does not build ({type(e).__name__}: {e})"
    return None


def _instantiate_on_meta(cfg: Mapping[str, Any]) -> nn.Module:
    """Build the architecture of an open_clip config without allocating memory."""
    kwargs = deepcopy(dict(cfg))
    custom = kwargs.pop("custom_text", False) or "hf_model_name" in kwargs["text_cfg"]
    cls = CoCa if "multimodal_cfg" in kwargs else CustomTextCLIP if custom else CLIP
    with torch.device("meta"):
        return cls(**kwargs)


def _register_shipped_configs() -> None:
    if any(p.stem not in open_clip.list_models() for p in CONFIG_DIR.glob("*.json")):
        open_clip.add_model_config(CONFIG_DIR)


_register_shipped_configs()


def _check_model_name(name: str) -> None:
    models = open_clip.list_models()
    if name in models:
        return
    lower = {m.lower(): m for m in models}
    close = [lower[m] for m in difflib.get_close_matches(name.lower(), list(lower), 5, 0.6)]
    hint = f"; close matches: {', '.join(close)}" if close else ""
    raise ModelLoadError(
        f"unknown open_clip model {name!r}{hint}. A custom architecture needs its config JSON: "
        "--model-config PATH (the file stem is the model name)"
    )


# ---------------------------------------------------------------- pretrained weights


def resolve_pretrained(
    name: str, pretrained: str | None, *, cache_dir: str | None = None
) -> str | None:
    """The local weights file for `pretrained`, without waiting on the network.

    `pretrained` is None/"" (random init: returns None), an open_clip tag of `name` (looked up in
    the local HF cache, or open_clip's URL cache, under `cache_dir` if given; downloaded only if the
    hub answers within NETWORK_TIMEOUT_S and HF_HUB_OFFLINE is unset), or a local file path
    (.pt/.pth/.bin/.safetensors). Raises ModelLoadError with what to do otherwise.
    """
    if not pretrained:
        return None
    if open_clip.is_pretrained_cfg(name, pretrained):
        return _resolve_tag(
            name, pretrained, open_clip.get_pretrained_cfg(name, pretrained), cache_dir
        )
    looks_like_path = (
        os.sep in pretrained
        or "/" in pretrained
        or Path(pretrained).suffix.lower() in CHECKPOINT_SUFFIXES
        or os.path.exists(pretrained)
    )
    if looks_like_path:
        return _check_checkpoint_file(pretrained)
    tags = open_clip.list_pretrained_tags_by_model(name)
    known = ", ".join(tags) if tags else "none (open_clip has no pretrained weights for it)"
    raise ModelLoadError(
        f"unknown pretrained tag {pretrained!r} for model {name}; known tags: {known}. "
        f"--pretrained also takes a local checkpoint file ({'/'.join(CHECKPOINT_SUFFIXES)})"
    )


def _check_checkpoint_file(path: str) -> str:
    p = Path(path).expanduser()
    if not p.is_file():
        raise ModelLoadError(f"checkpoint file {p} not found (--pretrained)")
    if p.suffix.lower() not in CHECKPOINT_SUFFIXES:
        raise ModelLoadError(f"checkpoint {p}: expected one of {', '.join(CHECKPOINT_SUFFIXES)}")
    return str(p.resolve())


def _hf_source(tag_cfg: Mapping[str, Any]) -> tuple[str, list[str]] | None:
    """(repo id, candidate filenames, safetensors first) as open_clip.download_pretrained uses."""
    hub = tag_cfg.get("hf_hub", "")
    if not hub or not open_clip.pretrained.has_hf_hub():
        return None
    repo_id, filename = os.path.split(hub)
    filename = filename or HF_WEIGHTS_NAME
    if filename == HF_WEIGHTS_NAME:
        return repo_id, [HF_SAFE_WEIGHTS_NAME, filename]
    if filename.endswith((".bin", ".pth")):
        return repo_id, [filename[:-4] + ".safetensors", filename]
    return repo_id, [filename]


def _cached_weights(tag_cfg: Mapping[str, Any], cache_dir: str | None) -> str | None:
    hf = _hf_source(tag_cfg)
    if hf is not None:
        from huggingface_hub import try_to_load_from_cache

        repo_id, filenames = hf
        for fname in filenames:
            hit = try_to_load_from_cache(repo_id, fname, cache_dir=cache_dir)
            if isinstance(hit, str) and os.path.isfile(hit):
                return hit
        return None
    url = tag_cfg.get("url", "")
    if url:  # open_clip.download_pretrained_from_url's cache layout
        target = Path(cache_dir or "~/.cache/clip").expanduser() / os.path.basename(url)
        return str(target) if target.is_file() else None
    return None


def _resolve_tag(name: str, tag: str, tag_cfg: Mapping[str, Any], cache_dir: str | None) -> str:
    if "file" in tag_cfg:
        return _check_checkpoint_file(tag_cfg["file"])
    cached = _cached_weights(tag_cfg, cache_dir)
    if cached:
        log.info("pretrained %s/%s found in the local cache: %s", name, tag, cached)
        return cached
    hf = _hf_source(tag_cfg)
    host = HUB_HOST if hf else urlparse(tag_cfg.get("url", "")).hostname or HUB_HOST
    port = HUB_PORT if hf else 443
    if _env_true("HF_HUB_OFFLINE"):
        reason = "HF_HUB_OFFLINE is set"
    elif not _can_connect(host, port, NETWORK_TIMEOUT_S):
        reason = f"{host}:{port} is unreachable"
    else:
        try:
            path = open_clip.download_pretrained(dict(tag_cfg), cache_dir=cache_dir)
        except Exception as e:  # open_clip wraps hub/urllib errors in assorted types
            raise ModelLoadError(
                _offline_message(name, tag, tag_cfg, f"download failed: {e}")
            ) from e
        if not path or not os.path.isfile(path):
            raise ModelLoadError(_offline_message(name, tag, tag_cfg, "download gave no file"))
        return str(path)
    raise ModelLoadError(_offline_message(name, tag, tag_cfg, reason))


def _offline_message(name: str, tag: str, tag_cfg: Mapping[str, Any], reason: str) -> str:
    hf = _hf_source(tag_cfg)
    if hf:
        repo_id, files = hf
        fetch = (
            f"download {' or '.join(files)} from https://huggingface.co/{repo_id} "
            f"(e.g. `hf download {repo_id} {files[-1]}`)"
        )
        fname = files[-1]
    else:
        fetch, fname = f"download {tag_cfg.get('url', '?')}", "weights.pt"
    msg = (
        f"pretrained weights for {name}/{tag} are not available offline ({reason}) and are not "
        f"in the local cache. On a machine with network, {fetch}, copy the file here and pass its "
        f"local path: --pretrained /path/to/{fname}"
    )
    if tag_cfg.get("quick_gelu") and not name.endswith("-quickgelu"):
        msg += f" (these weights use QuickGELU: pair the file with model {name}-quickgelu)"
    return msg


def _env_true(var: str) -> bool:
    return os.environ.get(var, "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def _can_connect(host: str, port: int, timeout: float) -> bool:
    """A TCP connect within `timeout` s; DNS is bounded too (the probe runs in a thread)."""
    ok: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                ok.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=probe, name="mtmg-net-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(ok)


# ---------------------------------------------------------------- building


def load_clip(
    name: str,
    pretrained: str | None = None,
    *,
    model_config: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    cache_dir: str | None = None,
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
    _check_model_name(name)
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
    )


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
        k: tuple(v.shape) for k, v in _instantiate_on_meta(_config(name)).state_dict().items()
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


def _config(name: str) -> dict[str, Any]:
    cfg = open_clip.get_model_config(name)
    if cfg is None:
        raise ModelLoadError(f"unknown open_clip model {name!r}")
    return cfg


# ---------------------------------------------------------------- weight-space operations


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

    Cost: reads every byte once (about 0.3-0.6 s per GB on one core, plus a device-to-host
    copy for GPU tensors); fingerprint a state once and reuse the string.
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
    model: nn.Module, path: str | os.PathLike, *, metadata: Mapping[str, str] | None = None
) -> Path:
    """Write the FULL model state dict (text tower included) as .safetensors, atomically.

    `open_clip.create_model(NAME, pretrained=path)` (and `load_clip`) load it strictly.
    """
    p = Path(path)
    if p.suffix != ".safetensors":
        raise ValueError(f"save_checkpoint writes safetensors: {p} must end in .safetensors")
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    meta = {"format": "pt", "producer": "mtmg", **dict(metadata or {})}
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.{uuid.uuid4().hex}.tmp")
    try:
        save_file(state, str(tmp), metadata=meta)
        os.replace(tmp, p)
    finally:
        tmp.unlink(missing_ok=True)
    return p
