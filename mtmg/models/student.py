"""The multispectral student of stage 2: a timm ViT whose patch embedding takes the stored bands
(13 Sentinel-2 bands, or Sentinel-1 VV/VH), plus a linear projection into CLIP's embedding space.

`StudentSpec` is everything needed to rebuild a student; it is saved as `student.json` next to
`student.safetensors`, and `load_student(DIR)` gives back an `AlignedEncoder` for inference.
SSL4EO-S12 checkpoints (torchgeo's ViT-S/16 weights: a plain timm state dict) initialise the
trunk; a load that would leave trunk weights uninitialised is refused unless allowed.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from mtmg.data import bands, storage, transforms

log = logging.getLogger(__name__)

WRAPPER_KEYS = ("model", "state_dict", "teacher", "student")  # where checkpoints nest weights
PREFIXES = ("module.", "backbone.", "encoder.", "model.")  # DDP / SSL framework key prefixes
ENCODER_PREFIXES = ("base_encoder.", "encoder_q.")  # MoCo's query encoder (SSL4EO's own files)
HEAD_PREFIXES = ("head.", "fc_norm.", "head_drop.")  # classifier parts the student does not use


@dataclass(frozen=True)
class StudentSpec:
    """How to build a student: timm architecture and input, and the CLIP width it maps to."""

    arch: str = "vit_small_patch16_224"
    input: str = "ms"  # "ms" (13 S2 bands, L1C order) or "s1" (VV, VH)
    img_size: int = 224
    embed_dim: int = 512  # the teacher's embedding width
    timm_args: dict[str, Any] = field(default_factory=dict)  # e.g. depth, embed_dim, patch_size

    @property
    def in_chans(self) -> int:
        return len(self.band_names)

    @property
    def band_names(self) -> tuple[str, ...]:
        if self.input == "ms":
            return bands.S2_L1C
        if self.input == "s1":
            return bands.S1
        raise ValueError(f"unknown student input {self.input!r} (ms or s1)")

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "in_chans": self.in_chans, "bands": self.band_names}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> StudentSpec:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


class Student(nn.Module):
    """timm ViT trunk (pooled features) -> linear projection to the teacher's width."""

    def __init__(self, spec: StudentSpec) -> None:
        super().__init__()
        import timm

        try:
            self.trunk = timm.create_model(
                spec.arch,
                pretrained=False,
                num_classes=0,
                in_chans=spec.in_chans,
                img_size=spec.img_size,
                **spec.timm_args,
            )
        except (RuntimeError, TypeError) as e:
            raise ValueError(f"cannot build {spec.arch!r} with {spec.timm_args}: {e}") from e
        self.proj = nn.Linear(self.trunk.num_features, spec.embed_dim)
        self.spec = spec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.trunk(x))


def build_student(spec: StudentSpec) -> Student:
    """A randomly initialised student (seed torch first for a reproducible one)."""
    import timm

    if spec.arch not in timm.list_models():
        raise ValueError(f"unknown timm model {spec.arch!r} (see timm.list_models('vit_*'))")
    return Student(spec)


def default_img_size(arch: str) -> int:
    """The input size the timm architecture was designed for (224 for ViT-S/16)."""
    import timm

    cfg = timm.get_pretrained_cfg(arch)
    return int(cfg.input_size[-1]) if cfg is not None else 224


# ----------------------------------------------------------------------- SSL4EO initialisation


def _read_safetensors(path: str) -> dict[str, torch.Tensor]:
    """The tensors of a .safetensors file; a truncated or corrupt one is a ValueError naming it."""
    try:
        return load_file(path)
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{path}: not a readable safetensors file ({e})") from e


def _read_state_dict(path: str) -> dict[str, torch.Tensor]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"student init checkpoint {path} not found")
    if path.endswith(".safetensors"):
        sd: Any = _read_safetensors(path)
    else:
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ValueError(f"{path}: not a PyTorch checkpoint readable safely: {e}") from e
    for key in WRAPPER_KEYS:
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
            break
    if not isinstance(sd, dict) or not all(torch.is_tensor(v) for v in sd.values()):
        raise ValueError(f"{path}: expected a state dict of tensors (optionally under 'model')")
    out = {}
    for k, v in sd.items():
        for p in PREFIXES:
            if k.startswith(p):
                k = k[len(p) :]
        out[k] = v
    for p in ENCODER_PREFIXES:  # keep the query encoder; drop momentum encoder and predictor
        if any(k.startswith(p) for k in out):
            return {k[len(p) :]: v for k, v in out.items() if k.startswith(p)}
    return out


@dataclass
class InitReport:
    """What an initialisation loaded: counts, and the keys that did not match."""

    path: str
    loaded: int
    missing: list[str]
    unexpected: list[str]
    ignored: list[str]  # classifier keys of the checkpoint the student has no use for

    def __str__(self) -> str:
        return (
            f"{self.path}: {self.loaded} tensors loaded, {len(self.missing)} missing "
            f"{self.missing[:5]}, {len(self.unexpected)} unexpected {self.unexpected[:5]}, "
            f"{len(self.ignored)} classifier tensors ignored"
        )


def load_trunk(student: Student, path: str, allow_partial: bool = False) -> InitReport:
    """Initialise the trunk from a timm-style checkpoint (bare, or nested under "model").

    The position embedding is resampled to the student's grid; a patch embedding for another
    number of bands is an error. Missing trunk keys are refused unless `allow_partial`.
    """
    sd = _read_state_dict(path)
    trunk = student.trunk
    own = trunk.state_dict()
    ignored = sorted(k for k in sd if k.startswith(HEAD_PREFIXES) and k not in own)
    sd = {k: v for k, v in sd.items() if k not in ignored}
    pe = sd.get("patch_embed.proj.weight")
    if pe is not None and "patch_embed.proj.weight" in own:
        want = own["patch_embed.proj.weight"].shape
        if pe.shape[1] != want[1]:
            raise ValueError(
                f"{path}: the checkpoint's patch embedding takes {pe.shape[1]} bands, the student "
                f"{want[1]} ({', '.join(student.spec.band_names)})"
            )
    if "pos_embed" in sd and "pos_embed" in own and sd["pos_embed"].shape != own["pos_embed"].shape:
        from timm.layers import resample_abs_pos_embed

        sd["pos_embed"] = resample_abs_pos_embed(
            sd["pos_embed"],
            list(trunk.patch_embed.grid_size),
            num_prefix_tokens=getattr(trunk, "num_prefix_tokens", 1),
        )
    bad = [
        f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}"
        for k, v in sd.items()
        if k in own and v.shape != own[k].shape
    ]
    if bad:
        raise ValueError(f"{path}: tensors of other shapes than the student's: {bad[:5]}")
    result = trunk.load_state_dict(sd, strict=False)
    report = InitReport(
        path,
        len(sd) - len(result.unexpected_keys),
        sorted(result.missing_keys),
        sorted(result.unexpected_keys),
        ignored,
    )
    if report.missing and not allow_partial:
        raise ValueError(
            f"{report}\nthis would leave {len(report.missing)} student trunk tensors "
            "uninitialised; check the checkpoint and --student (architecture, timm args), or pass "
            "--allow-partial-init to accept it"
        )
    log.info("student init: %s", report)
    return report


# ---------------------------------------------------------------------------------- inference


class AlignedEncoder(nn.Module):
    """A trained student for inference: multispectral (or S1) patches -> CLIP embeddings."""

    def __init__(self, student: Student, meta: dict[str, Any]) -> None:
        super().__init__()
        self.student, self.meta = student.eval(), meta

    @property
    def spec(self) -> StudentSpec:
        return self.student.spec

    def preprocess(self, array: np.ndarray, stored_bands: list[str]) -> torch.Tensor:
        """One patch as stored (C x H x W: S2 reflectance x 10000 or S1 dB) -> model input."""
        if self.spec.input == "s1":
            x = transforms.s1_input(array[bands.reorder_indices(tuple(stored_bands), bands.S1)])
        else:
            x = transforms.ms_input(array, list(stored_bands))
        return transforms.resize(x, self.spec.img_size)

    @torch.no_grad()
    def encode(self, x: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Embeddings of a batch of model inputs (B x C x S x S), in the teacher's space."""
        emb = self.student(x.to(next(self.student.parameters()).device))
        return torch.nn.functional.normalize(emb, dim=-1) if normalize else emb


def save_student(student: Student, out: str | Path, meta: dict[str, Any]) -> None:
    """`student.safetensors` + `student.json` (the spec and `meta`), both written atomically."""
    from safetensors.torch import save

    loc = storage.location(str(out))
    state = {k: v.detach().cpu().contiguous() for k, v in student.state_dict().items()}
    storage.write_bytes_atomic(loc.fs, loc.child_path("student.safetensors"), save(state))
    doc = {
        "spec": student.spec.to_json(),
        **meta,
        "load_with": "mtmg.models.student.load_student(DIR).encode(x)",
    }
    storage.write_json_atomic(loc.fs, loc.child_path("student.json"), doc)


def load_student(path: str | Path, device: str | torch.device = "cpu") -> AlignedEncoder:
    """The aligned encoder saved by `python -m mtmg.align` in directory `path`, strictly."""
    path = Path(path)
    meta_path, weights_path = path / "student.json", path / "student.safetensors"
    for p in (meta_path, weights_path):
        if not p.is_file():
            raise FileNotFoundError(f"{p} not found: not an mtmg.align output directory")
    meta = json.loads(meta_path.read_text())
    student = Student(StudentSpec.from_json(meta["spec"]))
    student.load_state_dict(_read_safetensors(str(weights_path)), strict=True)
    return AlignedEncoder(student.to(device), meta)
