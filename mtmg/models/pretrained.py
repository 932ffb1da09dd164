"""Pretrained weights without waiting on the network: a tag from the local Hugging Face or
open_clip cache, downloaded only when the hub answers within seconds, otherwise a ModelLoadError
that says which file to fetch and how to pass it; or a local checkpoint file."""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import open_clip
from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

from mtmg.errors import ModelLoadError

log = logging.getLogger(__name__)

HUB_HOST = "huggingface.co"  # probed before any hub download; tests point it elsewhere
HUB_PORT = 443
NETWORK_TIMEOUT_S = 3.0
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")


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
