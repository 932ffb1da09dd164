"""Zero-shot classification heads from CLIP's text tower (PAINT / wise-ft style), never pickled.

A head is a pure function of (text-tower weights, class names, templates): each class is the
renormalised mean of its L2-normalised prompt embeddings, scaled by `logit_scale.exp()`. The head
L2-normalises image features and has no bias; it is frozen (a buffer, not a parameter). Heads are
cached as safetensors files keyed by a hash of everything they depend on.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

if TYPE_CHECKING:  # open_clip: not imported where trials run
    from mtmg.models.clip import ClipBundle

log = logging.getLogger(__name__)

PLACEHOLDER = "{c}"  # where a template takes the class name: template.format(c=classname)
CACHE_VERSION = "1"  # bump when the head computation changes: old cache entries stop matching


def _check_template(template: object, where: str) -> str:
    if not isinstance(template, str):
        raise TypeError(f"{where}: a template must be a string, got {type(template).__name__}")
    if PLACEHOLDER not in template:
        raise ValueError(f"{where}: template {template!r} has no {PLACEHOLDER} for the class name")
    try:
        template.format(c="x")
    except (KeyError, IndexError, ValueError) as e:
        raise ValueError(
            f"{where}: template {template!r} must use only {PLACEHOLDER} "
            f"({type(e).__name__}: {e}); write literal braces as {{{{ and }}}}"
        ) from e
    return template


def _check_templates(templates: Sequence[str], source: str = "templates") -> list[str]:
    if isinstance(templates, str):
        raise TypeError(f"{source}: expected a list of templates, got one string")
    out = [_check_template(t, f"{source}[{i}]") for i, t in enumerate(templates)]
    if not out:
        raise ValueError(f"{source}: no templates")
    return out


def _check_classnames(classnames: Sequence[str]) -> list[str]:
    if isinstance(classnames, str):
        raise TypeError("classnames: expected a list of class names, got one string")
    names = list(classnames)
    if not names:
        raise ValueError("classnames: empty")
    if not all(isinstance(c, str) for c in names):
        raise TypeError("classnames must be strings")
    return names  # duplicates allowed: CLIP's ImageNet names two pairs of classes alike


@torch.no_grad()
def build_zeroshot_weights(
    bundle_or_model: ClipBundle | nn.Module,
    tokenizer: Callable[[list[str]], torch.Tensor] | None,
    classnames: Sequence[str],
    templates: Sequence[str],
    *,
    batch_size: int = 256,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """Zero-shot head weights [C, D] (fp32, CPU): open_clip's `build_zero_shot_classifier` (per
    class, the renormalised mean of the L2-normalised embeddings of `template.format(c=classname)`
    over templates) times `logit_scale.exp()`.

    `tokenizer` may be None when a ClipBundle is given (its tokenizer is used). About
    `batch_size` prompts are encoded at a time on `device` (default: the model's), in eval mode;
    the model's train/eval flag is restored and the model is not otherwise touched.
    """
    from open_clip.zero_shot_classifier import build_zero_shot_classifier

    from mtmg.models.clip import ClipBundle

    model = bundle_or_model.model if isinstance(bundle_or_model, ClipBundle) else bundle_or_model
    if tokenizer is None:
        if not isinstance(bundle_or_model, ClipBundle):
            raise ValueError("build_zeroshot_weights: pass a tokenizer or a ClipBundle")
        tokenizer = bundle_or_model.tokenizer
    names = _check_classnames(classnames)
    temps = _check_templates(templates)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    formats = [functools.partial(_fill, t) for t in temps]
    was_training = model.training
    model.eval()
    try:
        per_class = build_zero_shot_classifier(
            model, tokenizer, names, formats, max(1, batch_size // len(temps)), device
        )
    finally:
        model.train(was_training)
    scale = model.logit_scale.detach().float().exp().reshape(()).cpu()
    return (per_class.T.float().cpu() * scale).contiguous()


def _fill(template: str, classname: str) -> str:
    return template.format(c=classname)


class ZeroShotHead(nn.Module):
    """Frozen linear head without bias: logits = normalize(features) @ weights.T.

    The weights are a buffer (in state_dict, moved by .to(), never trained).
    """

    weights: torch.Tensor

    def __init__(self, weights: torch.Tensor) -> None:
        super().__init__()
        if weights.ndim != 2:
            raise ValueError(f"zero-shot weights must be [classes, dim], got {list(weights.shape)}")
        self.register_buffer("weights", weights.detach().to(torch.float32, copy=True))

    @classmethod
    def from_weights(cls, weights: torch.Tensor) -> ZeroShotHead:
        return cls(weights)

    @property
    def num_classes(self) -> int:
        return self.weights.shape[0]

    @property
    def embed_dim(self) -> int:
        return self.weights.shape[1]

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        features = F.normalize(image_features, dim=-1)
        return features @ self.weights.to(features.dtype).t()

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, embed_dim={self.embed_dim}"


def head_cache_key(
    model_name: str,
    weights_fingerprint: str,
    dataset: str,
    classnames: Sequence[str],
    templates: Sequence[str],
) -> str:
    """SHA-256 hex of a canonical JSON of everything a head depends on (order-sensitive)."""
    payload = {
        "version": CACHE_VERSION,
        "model": model_name,
        "fingerprint": weights_fingerprint,
        "dataset": dataset,
        "classnames": list(classnames),
        "templates": list(templates),
    }
    blob = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def cached_zeroshot_weights(
    cache_dir: str | os.PathLike,
    *,
    model_name: str,
    fingerprint: str,
    dataset: str,
    classnames: Sequence[str],
    templates: Sequence[str],
    build: Callable[[], torch.Tensor],
) -> torch.Tensor:
    """Head weights from `<cache_dir>/<key>.safetensors`, or `build()` them and cache them.

    `fingerprint` should identify the text tower (e.g. `weights_fingerprint(text_state(model))`),
    so that one head serves every image-tower alpha. The file's metadata holds model, dataset,
    class names and templates; an unreadable or inconsistent entry is rebuilt. Writes are atomic.
    """
    names, temps = _check_classnames(classnames), _check_templates(templates)
    key = head_cache_key(model_name, fingerprint, dataset, names, temps)
    path = Path(cache_dir) / f"{key}.safetensors"
    meta = {
        "format": "pt",
        "mtmg_head_version": CACHE_VERSION,
        "model": model_name,
        "fingerprint": fingerprint,
        "dataset": dataset,
        "classnames": json.dumps(names, ensure_ascii=False),
        "templates": json.dumps(temps, ensure_ascii=False),
    }
    if path.is_file():
        weights = _read_cached(path, meta, len(names))
        if weights is not None:
            log.debug("zero-shot head cache hit: %s", path)
            return weights
    weights = build()
    if not isinstance(weights, torch.Tensor) or weights.ndim != 2 or weights.shape[0] != len(names):
        shape = list(weights.shape) if isinstance(weights, torch.Tensor) else type(weights).__name__
        raise ValueError(f"build() must return a [{len(names)}, D] tensor, got {shape}")
    weights = weights.detach().to(device="cpu", dtype=torch.float32).contiguous()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        save_file({"weights": weights}, str(tmp), metadata=meta)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    log.info(
        "cached zero-shot head for %s/%s (%d classes): %s", model_name, dataset, len(names), path
    )
    return weights


def _read_cached(path: Path, meta: dict[str, str], num_classes: int) -> torch.Tensor | None:
    try:
        with safe_open(str(path), framework="pt") as f:
            stored = f.metadata() or {}
            weights = f.get_tensor("weights")
    except Exception as e:  # safetensors raises several types on truncated/corrupt files
        log.warning("zero-shot head cache %s unreadable (%s); rebuilding", path, e)
        return None
    if stored != meta or weights.ndim != 2 or weights.shape[0] != num_classes:
        log.warning("zero-shot head cache %s does not match its key; rebuilding", path)
        return None
    return weights


def load_templates(path: str | os.PathLike) -> list[str]:
    """Prompt templates from a file: a JSON list of strings (a .json file, or text starting with
    '['), or one template per line (blank lines and lines starting with '#' skipped). Every
    template needs the {c} placeholder and no other format field."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"templates file {p} not found")
    text = p.read_text(encoding="utf-8")
    if p.suffix.lower() == ".json" or text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"templates file {p}: invalid JSON: {e}") from e
        if not isinstance(data, list):
            raise ValueError(f"templates file {p}: a JSON templates file must be a list of strings")
        return _check_templates(data, source=f"templates file {p}")
    templates = [
        _check_template(line.strip(), f"templates file {p}, line {n}")
        for n, line in enumerate(text.splitlines(), start=1)
        if line.strip() and not line.lstrip().startswith("#")
    ]
    if not templates:
        raise ValueError(f"templates file {p}: no templates")
    return templates


def dataset_heads(
    bundle: ClipBundle,
    model_name: str,
    datasets: Sequence[tuple[Any, str | None]],
    cache_dir: str | os.PathLike | None = None,
    templates_file: str | os.PathLike | None = None,
) -> list[torch.Tensor]:
    """Zero-shot head weights of every `(ShardSet, nomenclature)`, cached on disk.

    Class names and templates come from each shard set's manifest (templates overridable by a
    file); the cache key holds the text tower's fingerprint, so one head serves every alpha.
    """
    from mtmg.models.weights import text_state, weights_fingerprint

    cache = cache_dir or os.path.join(os.path.expanduser("~"), ".cache", "mtmg", "heads")
    fingerprint = weights_fingerprint(text_state(bundle.model))
    override = load_templates(templates_file) if templates_file else None
    out = []
    for ds, nomen in datasets:
        names = ds.prompt_names(nomen)
        templates = override or ds.manifest["templates"]
        out.append(
            cached_zeroshot_weights(
                cache,
                model_name=model_name,
                fingerprint=fingerprint,
                dataset=f"{ds.name}:{ds.nomenclature(nomen)}",
                classnames=names,
                templates=templates,
                build=lambda n=names, t=templates: build_zeroshot_weights(
                    bundle.model, bundle.tokenizer, n, t
                ),
            )
        )
    return out
