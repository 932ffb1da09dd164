"""open_clip models, offline-proof: configs, pretrained weights, strict loads, image-tower states.

Importing this module registers the small architectures shipped in `mtmg/model_configs/`
(`mtmg-tiny-vit`, `mtmg-small-vit`, `mtmg-demo-vit`) with open_clip. Weights are resolved without
waiting on the network: a pretrained tag is used from the local Hugging Face / open_clip cache,
downloaded only when the hub answers within seconds, and otherwise fails at once with
instructions. Every load is strict (`strict=True`); a mismatching checkpoint is reported by
file, key and shape.

PAINT's weight-space operations (`image_state`, `interpolate`, `load_image_state`,
`save_checkpoint`) live in `mtmg.models.weights`.
"""

from __future__ import annotations

import difflib
import inspect
import json
import logging
import os
import socket
import threading
from collections.abc import Callable, Mapping
from copy import deepcopy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import open_clip
import torch
from open_clip.coca_model import CoCa
from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME
from open_clip.factory import load_state_dict as _read_state_dict
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg, CustomTextCLIP
from torch import nn

from mtmg.errors import MtmgError

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).parent / "model_configs"  # shipped open_clip configs (JSON)
HUB_HOST = "huggingface.co"  # probed before any hub download; tests point it elsewhere
HUB_PORT = 443
NETWORK_TIMEOUT_S = 3.0
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")

_OPEN_CLIP_CONFIG_DIR = Path(open_clip.__file__).parent / "model_configs"
_TOP_LEVEL_KEYS = (
    {p for cls in (CLIP, CustomTextCLIP, CoCa) for p in inspect.signature(cls.__init__).parameters}
    - {"self", "cast_dtype"}
) | {"custom_text"}


class ModelLoadError(MtmgError):
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
    # what a rebuild needs beside the weights (QuickGELU, the tag's preprocessing): pass it as
    # `load_clip(..., build_kwargs=...)` where the model is re-created from a state dict
    build_kwargs: dict[str, Any] = field(default_factory=dict)


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


BUILD_KWARGS_KEY = "mtmg_open_clip_kwargs"  # safetensors metadata written by save_checkpoint


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
