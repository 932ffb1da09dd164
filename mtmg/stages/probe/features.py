"""Frozen features of a split, extracted once and cached.

The cache holds `<key>.safetensors` (features, targets) and `<key>.json` (what the key stands
for, and the sample keys). The key hashes the encoder's identity (architecture, output, weights
fingerprint), the shard set (its manifest), the split and the preprocessing, so a changed input
is extracted again and an unchanged one is read back. Targets are kept in the set's stored
nomenclature; `loader.Targets.remap` maps them to any label set the manifest derives from it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from mtmg.data import loader
from mtmg.engine import evaluate
from mtmg.stages.probe.encoders import Encoder

log = logging.getLogger(__name__)
FORMAT = 1  # bump when what is cached changes meaning


@dataclass
class Features:
    """One split's features in sample-key order, with targets in the stored nomenclature."""

    keys: list[str]
    x: torch.Tensor  # [N, D] float32
    y: torch.Tensor  # [N, C] multi-hot (multi-label) or [N] class indices (single-label)
    path: Path  # the cache file
    cached: bool  # read back from the cache rather than extracted


def cache_root(cache_dir: str | None) -> Path:
    return Path(cache_dir or Path.home() / ".cache" / "mtmg").expanduser() / "features"


def describe(enc: Encoder, ds: loader.ShardSet, split: str) -> dict[str, Any]:
    """What the features of `enc` on `split` of `ds` depend on: the cache key's content."""
    manifest = json.dumps(ds.manifest, sort_keys=True, default=str).encode()
    return {
        "format": FORMAT,
        "encoder": enc.identity,
        "shards": {"root": ds.root, "manifest_sha256": hashlib.sha256(manifest).hexdigest()},
        "split": split,
        "preprocessing": {
            "view": enc.view,
            "size": enc.size,
            "mean": enc.mean,
            "std": enc.std,
            "augment": None,
        },
    }


def extract(
    enc: Encoder,
    ds: loader.ShardSet,
    split: str,
    device: torch.device,
    *,
    cache_dir: str | None,
    batch_size: int,
    workers: int,
) -> Features:
    """The features of `split`, from the cache when it has them, else extracted and cached."""
    desc = describe(enc, ds, split)
    key = hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()[:24]
    root = cache_root(cache_dir)
    path, meta = root / f"{key}.safetensors", root / f"{key}.json"
    got = _read(path, meta, desc)
    if got is not None:
        log.info("features of %s on %s/%s: reused %s", enc.label, ds.name, split, path)
        return got
    keys, x, y = _compute(enc, ds, split, device, batch_size, workers)
    root.mkdir(parents=True, exist_ok=True)
    _atomic(path, lambda tmp: save_file({"x": x, "y": y}, tmp))
    _atomic(meta, lambda tmp: Path(tmp).write_text(json.dumps({**desc, "keys": keys})))
    log.info(
        "features of %s on %s/%s: %s extracted -> %s",
        enc.label,
        ds.name,
        split,
        tuple(x.shape),
        path,
    )
    return Features(keys, x, y, path, cached=False)


def _read(path: Path, meta: Path, desc: dict[str, Any]) -> Features | None:
    """The cached features if both files are there and say they are `desc`'s; else None."""
    if not (path.is_file() and meta.is_file()):
        return None
    try:
        doc = json.loads(meta.read_text())
        tensors = load_file(str(path))
    except (OSError, ValueError, SafetensorError):
        return None  # unreadable: extracted again and rewritten
    keys = doc.pop("keys", None)
    if doc != json.loads(json.dumps(desc)) or keys is None or len(keys) != len(tensors["x"]):
        return None
    return Features(keys, tensors["x"], tensors["y"], path, cached=True)


def _atomic(path: Path, write: Any) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        write(str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _compute(
    enc: Encoder, ds: loader.ShardSet, split: str, device: torch.device, batch: int, workers: int
) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """Features of every sample of `split` with the evaluation preprocessing (no augmentation),
    in sample-key order."""
    stored = loader.Targets.of(ds, ds.manifest["label_nomenclature"])
    norm = {} if enc.mean is None else {"mean": enc.mean, "std": enc.std}
    dec = loader.Decoder.of(ds, enc.view, stored, enc.size, **norm)
    batches = loader.make_loader(ds, split, dec, batch_size=batch, train=False, num_workers=workers)
    keys, x, y = evaluate.predict(lambda b: enc.features(b[enc.view]), batches, device)
    order = sorted(range(len(keys)), key=keys.__getitem__)
    return [keys[i] for i in order], x[order].contiguous(), y[order].contiguous()
