"""open_clip architecture configs: the small ones mtmg ships, registered on import, and users'
JSON configs, validated before open_clip sees them (an invalid file registered with open_clip
would break every later registration)."""

from __future__ import annotations

import difflib
import inspect
import json
import logging
import os
from collections.abc import Mapping
from copy import deepcopy
from pathlib import Path
from typing import Any

import open_clip
import torch
from open_clip.coca_model import CoCa
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg, CustomTextCLIP
from torch import nn

from mtmg.errors import ModelLoadError

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).parent / "model_configs"  # shipped open_clip configs (JSON)

_OPEN_CLIP_CONFIG_DIR = Path(open_clip.__file__).parent / "model_configs"
_TOP_LEVEL_KEYS = (
    {p for cls in (CLIP, CustomTextCLIP, CoCa) for p in inspect.signature(cls.__init__).parameters}
    - {"self", "cast_dtype"}
) | {"custom_text"}


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
            instantiate_on_meta(cfg)
    except Exception as e:  # any construction failure means the config is unusable
        return f"the architecture does not build ({type(e).__name__}: {e})"
    return None


def instantiate_on_meta(cfg: Mapping[str, Any]) -> nn.Module:
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


def check_model_name(name: str) -> None:
    """Refuse a name open_clip does not know, suggesting close ones and --model-config."""
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


def model_config(name: str) -> dict[str, Any]:
    """The registered open_clip config of `name`."""
    cfg = open_clip.get_model_config(name)
    if cfg is None:
        raise ModelLoadError(f"unknown open_clip model {name!r}")
    return cfg
