"""Encoder specs -> frozen feature extractors, each with the identity its cached features are
keyed by (architecture, what its output is, and a fingerprint of the weights used).

Forms (`SPEC_FORMS`): `clip:RUN_DIR[@ALPHA]` interpolates a patch (or alpha-sweep) run's
theta_zs and theta_ft as the patching stage does; `student:ALIGN_DIR` is an aligned student;
`untrained:ALIGN_DIR|ALIGN.yaml` rebuilds that student as alignment started it (its
`--student-init` checkpoint, e.g. SSL4EO, or random from its seed); `NAME:CHECKPOINT` is any
open_clip model with a pretrained tag or checkpoint file (RemoteCLIP-style state dicts).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file
from torch import nn

from mtmg import config
from mtmg.errors import InputError, ModelLoadError
from mtmg.models import clip, student, weights
from mtmg.models.configs import check_model_name
from mtmg.models.pretrained import resolve_pretrained
from mtmg.stages.probe.config import SPEC_FORMS

THETAS = ("theta_zs.safetensors", "theta_ft.safetensors")
STUDENT_KINDS = ("student", "untrained")


@dataclass(frozen=True)
class Spec:
    """A parsed encoder spec: its kind and where its weights are."""

    text: str
    kind: str  # "clip", "student", "untrained" or "checkpoint"
    path: str  # a run dir, an align dir or YAML, or a checkpoint file / tag
    model: str | None = None  # open_clip name of a "checkpoint" spec
    alpha: float | None = None  # "clip": None is the run's chosen alpha
    label: str | None = None  # its rows' name (default: from its kind and weights)


@dataclass
class Encoder:
    """A frozen encoder: what its input is, how it is preprocessed, its features, its identity."""

    spec: str
    label: str
    view: str  # the loader's view of its input: "rgb", "ms" or "s1"
    size: int
    mean: tuple[float, ...] | None  # RGB normalisation (None: a student's scaled input)
    std: tuple[float, ...] | None
    module: nn.Module
    features: Callable[[torch.Tensor], torch.Tensor]
    identity: dict[str, Any]


def _bad(text: str, why: str) -> InputError:
    forms = "\n  ".join(SPEC_FORMS)
    return InputError(f"--encoders {text}: {why}; an encoder is one of\n  {forms}")


def parse(text: str) -> Spec:
    """The spec `text` (`[LABEL=]KIND:WHERE`), its files checked (an error names the spec and
    the path at fault)."""
    label, eq, body = text.partition("=")
    if eq and ":" not in label and label.strip():
        return dataclasses.replace(parse(body), text=text, label=label.strip())
    kind, sep, rest = text.partition(":")
    if not sep or not kind or not rest:
        raise _bad(text, "no KIND:WHERE")
    if kind == "clip":
        path, alpha = _split_alpha(text, rest)
        d = Path(path)
        for name in ("config.yaml", "patched.safetensors"):
            if not (d / name).is_file():
                raise _bad(text, f"{d} has no {name}: not a mtmg.patch or alpha-sweep output dir")
        theta_dir(d)
        return Spec(text, "clip", str(d.resolve()), alpha=alpha)
    if kind in STUDENT_KINDS:
        p = Path(rest)
        if kind == "untrained" and p.is_file() and p.suffix in (".yaml", ".yml"):
            return Spec(text, kind, str(p.resolve()))
        for name in ("student.json", "config.yaml"):
            if not (p / name).is_file():
                raise _bad(text, f"{p} has no {name}: not a mtmg.align output dir")
        return Spec(text, kind, str(p.resolve()))
    try:
        check_model_name(kind)
    except ModelLoadError as e:
        raise _bad(text, f"{kind!r} is no kind (clip, student, untrained) nor model ({e})") from e
    try:
        checkpoint = resolve_pretrained(kind, rest)
    except ModelLoadError as e:
        raise _bad(text, str(e).replace(" (--pretrained)", "")) from e
    return Spec(text, "checkpoint", checkpoint or rest, model=kind)


def _split_alpha(text: str, rest: str) -> tuple[str, float | None]:
    path, sep, tail = rest.rpartition("@")
    if not sep:
        return rest, None
    if tail == "chosen":
        return path, None
    try:
        alpha = float(tail)
    except ValueError:
        raise _bad(text, f"alpha {tail!r} is not a number") from None
    if not math.isfinite(alpha):
        raise _bad(text, f"alpha {tail!r} is not finite")
    return path, alpha


def input_of(spec: Spec) -> str:
    """The loader view an encoder reads: "rgb" for CLIP, a student's "ms" or "s1"."""
    if spec.kind not in STUDENT_KINDS:
        return "rgb"
    path = Path(spec.path)
    if path.is_file():  # an alignment YAML
        values = yaml.safe_load(path.read_text()) or {}
        return str(values.get("student_input", values.get("student-input", "ms")))
    return str(json.loads((path / "student.json").read_text())["spec"]["input"])


def theta_dir(run: Path) -> Path:
    """Where a patch run's theta_zs/theta_ft are: the run dir, or the fine-tune an alpha sweep
    swept (its config.yaml's `out`, or RUN/patch)."""
    conf = yaml.safe_load((run / "config.yaml").read_text()) or {}
    for d in (run, Path(str(conf.get("out", run))), run / "patch"):
        if all((d / t).is_file() for t in THETAS):
            return d
    raise InputError(f"{run}: no {' / '.join(THETAS)} here nor in its patch run {conf.get('out')}")


def build(spec: Spec, student_features: str, device: torch.device) -> Encoder:
    """The frozen encoder of `spec`, on `device`, in eval mode."""
    if spec.kind == "clip":
        enc = _clip_run(spec)
    elif spec.kind == "checkpoint":
        bundle = clip.load_clip(spec.model, spec.path)
        enc = _clip_encoder(spec, bundle, f"{spec.model} ({Path(spec.path).name})")
    else:
        enc = _student(spec, student_features)
    enc.module.to(device).eval().requires_grad_(False)
    enc.label = spec.label or enc.label
    return enc


def _clip_encoder(spec: Spec, bundle: clip.ClipBundle, label: str) -> Encoder:
    visual = bundle.model.visual
    identity = {
        "arch": bundle.name,
        "features": "image embedding",
        "weights": weights.weights_fingerprint(visual),
    }
    size, mean, std = bundle.image_size, bundle.mean, bundle.std
    return Encoder(spec.text, label, "rgb", size, mean, std, visual, visual, identity)


def _clip_run(spec: Spec) -> Encoder:
    """theta(alpha) of a patch or alpha-sweep run in its open_clip model (the run's own
    preprocessing, from its patched checkpoint)."""
    run = Path(spec.path)
    conf = yaml.safe_load((run / "config.yaml").read_text()) or {}
    alpha = spec.alpha
    if alpha is None:
        summary = run / "summary.json"
        if not summary.is_file():
            raise _bad(spec.text, f"{run} has no summary.json to read the chosen alpha from")
        alpha = float(json.loads(summary.read_text())["alpha"])
    own = run / "model_config.json"
    model_config = str(own) if own.is_file() else conf.get("model_config")
    bundle = clip.load_clip(
        conf["model"], str(run / "patched.safetensors"), model_config=model_config
    )
    thetas = theta_dir(run)
    zs, ft = (load_file(str(thetas / t)) for t in THETAS)
    weights.load_image_state(bundle.model, weights.interpolate(zs, ft, alpha))
    names = {0.0: "zero-shot CLIP", 1.0: "fine-tuned CLIP"}
    label = names.get(alpha, "patched CLIP") + f" (alpha={alpha:g})"
    return _clip_encoder(spec, bundle, label)


def _student(spec: Spec, which: str) -> Encoder:
    """The aligned student, or the same architecture as alignment started it."""
    if spec.kind == "student":
        net = student.load_student(spec.path).student
        label = "aligned MS encoder"
    else:
        net, init = _untrained(spec)
        label = f"untrained MS encoder ({'random' if init is None else 'checkpoint'} init)"
    forward = net.trunk if which == "trunk" else net
    arch = net.spec.to_json()
    if which == "trunk":  # the projection's width does not change the trunk's features
        arch.pop("embed_dim")
    identity = {
        "arch": arch,
        "features": which,
        "weights": weights.weights_fingerprint(forward),
    }
    s = net.spec
    label = label.replace("MS", "S1") if s.input == "s1" else label
    return Encoder(spec.text, label, s.input, s.img_size, None, None, net, forward, identity)


def _untrained(spec: Spec) -> tuple[student.Student, str | None]:
    """The alignment stage's student builder on the run's (or the YAML's) options."""
    from mtmg.stages.align import driver as align

    path = Path(spec.path)
    yaml_file = path if path.is_file() else path / "config.yaml"
    values = config.load_yaml(align.AlignConfig, yaml_file)
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    values.setdefault("data", "")
    values.setdefault("out", "")
    cfg = align.AlignConfig(**values)
    embed_dim = 512
    if path.is_dir():
        embed_dim = json.loads((path / "student.json").read_text())["spec"]["embed_dim"]
    net, _ = align.build_student(cfg, embed_dim)
    return net, cfg.student_init
