"""mtmg.models with real open_clip on CPU: configs, offline pretrained resolution, strict loads,
PAINT's weight-space operations. No downloads, no mocks (only the probed host/port is pointed at a
closed local port)."""

from __future__ import annotations

import json
import math
import re
import socket
import time
from pathlib import Path

import open_clip
import pytest
import torch
from safetensors.torch import save_file

from mtmg.errors import ModelLoadError
from mtmg.models import configs, pretrained, student
from mtmg.models.clip import ClipBundle, load_clip
from mtmg.models.configs import register_model_config
from mtmg.models.pretrained import resolve_pretrained
from mtmg.models.weights import (
    image_state,
    interpolate,
    load_image_state,
    save_checkpoint,
    text_state,
    weights_fingerprint,
)

TINY = "mtmg-tiny-vit"
TINY_STUDENT = {"depth": 2, "embed_dim": 64, "num_heads": 2, "patch_size": 8}
HUB_TAG = (
    "ViT-B-32",
    "laion2b_s34b_b79k",
)  # an hf-hub entry: laion/CLIP-ViT-B-32-laion2B-s34B-b79K


@pytest.fixture(scope="module")
def tiny() -> ClipBundle:
    torch.manual_seed(0)
    return load_clip(TINY)


def _tiny_cfg() -> dict:
    return json.loads((configs.CONFIG_DIR / f"{TINY}.json").read_text())


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- configs and building


def test_shipped_configs_registered_on_import():
    shipped = sorted(p.stem for p in configs.CONFIG_DIR.glob("*.json"))
    assert shipped == ["mtmg-demo-vit", "mtmg-small-vit", "mtmg-tiny-vit"]
    assert set(shipped) <= set(open_clip.list_models())


def test_tiny_builds_and_trains(tiny):
    assert tiny.name == TINY and tiny.pretrained is None and tiny.checkpoint is None
    assert (tiny.image_size, tiny.embed_dim) == (32, 32)
    assert tiny.mean == pytest.approx(open_clip.OPENAI_DATASET_MEAN)
    assert tiny.std == pytest.approx(open_clip.OPENAI_DATASET_STD)
    model = load_clip(TINY).model.train()
    images = torch.randn(8, 3, 32, 32)
    tokens = tiny.tokenizer(["a satellite image of a forest."] * 8)
    assert tokens.shape == (8, 77)
    best = math.inf
    for _ in range(3):
        t0 = time.perf_counter()
        img, txt, scale = model(images, tokens)[:3]
        logits = scale * img @ txt.T
        loss = torch.nn.functional.cross_entropy(logits, torch.arange(8))
        loss.backward()
        best = min(best, time.perf_counter() - t0)
    assert img.shape == txt.shape == (8, 32)
    assert model.visual.conv1.weight.grad is not None


def test_small_config_builds():
    bundle = load_clip("mtmg-small-vit")
    assert (bundle.image_size, bundle.embed_dim) == (64, 64)
    with torch.no_grad():
        out = bundle.model.encode_image(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 64)


def test_user_config_registration(tmp_path):
    cfg = _tiny_cfg()
    cfg["embed_dim"] = 16
    path = tmp_path / "mtmg-test-user-arch.json"
    path.write_text(json.dumps(cfg))
    assert register_model_config(path) == "mtmg-test-user-arch"
    assert "mtmg-test-user-arch" in open_clip.list_models()
    bundle = load_clip("mtmg-test-user-arch", model_config=str(path))
    assert bundle.embed_dim == 16
    with torch.no_grad():
        assert bundle.model.encode_image(torch.randn(1, 3, 32, 32)).shape == (1, 16)


@pytest.mark.parametrize(
    "content, needle",
    [
        ("{not json", "not valid JSON"),
        (json.dumps({"embed_dim": 8, "vision_cfg": {}}), "missing keys ['text_cfg']"),
        (json.dumps({**_tiny_cfg(), "embed_dim": "32"}), "embed_dim must be a positive integer"),
        (json.dumps({**_tiny_cfg(), "colour": 1}), "unknown top-level keys ['colour']"),
        (
            json.dumps({**_tiny_cfg(), "vision_cfg": {**_tiny_cfg()["vision_cfg"], "widht": 64}}),
            "widht",
        ),
        (
            json.dumps({**_tiny_cfg(), "text_cfg": {**_tiny_cfg()["text_cfg"], "heads": 3}}),
            "does not build",
        ),
    ],
)
def test_broken_user_config_errors(tmp_path, content, needle):
    path = tmp_path / "mtmg-test-broken.json"
    path.write_text(content)
    with pytest.raises(ModelLoadError) as info:
        register_model_config(path)
    assert str(path) in str(info.value) and needle in str(info.value)
    assert "mtmg-test-broken" not in open_clip.list_models()
    open_clip.add_model_config(configs.CONFIG_DIR)  # the registry still rescans cleanly


def test_config_file_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="not found"):
        register_model_config(tmp_path / "absent.json")
    txt = tmp_path / "arch.txt"
    txt.write_text(json.dumps(_tiny_cfg()))
    with pytest.raises(ModelLoadError, match=r"\.json"):
        register_model_config(txt)
    shadow = tmp_path / "ViT-B-32.json"
    shadow.write_text(json.dumps(_tiny_cfg()))
    with pytest.raises(ModelLoadError, match="built-in"):
        register_model_config(shadow)
    assert open_clip.get_model_config("ViT-B-32")["embed_dim"] == 512


def test_unknown_model_name():
    with pytest.raises(ModelLoadError) as info:
        load_clip("ViT-B-33")
    assert "ViT-B-32" in str(info.value) and "--model-config" in str(info.value)


def test_vit_b32_architecture_smoke():
    bundle = load_clip("ViT-B-32")  # random weights, nothing downloaded
    assert (bundle.image_size, bundle.embed_dim) == (224, 512)
    with torch.no_grad():
        img = bundle.model.encode_image(torch.randn(2, 3, 224, 224))
        txt = bundle.model.encode_text(bundle.tokenizer(["an aerial view of a harbour."]))
    assert img.shape == (2, 512) and txt.shape == (1, 512)


# ---------------------------------------------------------------- pretrained resolution


def test_unknown_tag_lists_known_tags():
    with pytest.raises(ModelLoadError) as info:
        resolve_pretrained("ViT-B-32", "laion9b_nope")
    assert "laion2b_s34b_b79k" in str(info.value)
    with pytest.raises(ModelLoadError, match="known tags: none"):
        resolve_pretrained(TINY, "openai")
    assert resolve_pretrained(TINY, None) is None and resolve_pretrained(TINY, "") is None


def test_hub_tag_fails_fast_when_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.monotonic()
    with pytest.raises(ModelLoadError) as info:
        load_clip(*HUB_TAG, cache_dir=str(tmp_path))
    assert time.monotonic() - t0 < 10
    msg = str(info.value)
    assert "ViT-B-32/laion2b_s34b_b79k" in msg and "not available offline" in msg
    assert "HF_HUB_OFFLINE" in msg and "--pretrained /path/to/" in msg
    assert "open_clip_pytorch_model.bin" in msg


def test_hub_tag_fails_fast_when_hub_unreachable(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    port = _closed_port()
    monkeypatch.setattr(pretrained, "HUB_HOST", "127.0.0.1")
    monkeypatch.setattr(pretrained, "HUB_PORT", port)
    t0 = time.monotonic()
    with pytest.raises(ModelLoadError) as info:
        resolve_pretrained(*HUB_TAG, cache_dir=str(tmp_path))
    assert time.monotonic() - t0 < 10
    assert f"127.0.0.1:{port} is unreachable" in str(info.value)
    assert "--pretrained" in str(info.value)


def test_openai_tag_message_names_quickgelu(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="ViT-B-32-quickgelu"):
        resolve_pretrained("ViT-B-32", "openai", cache_dir=str(tmp_path))


def test_cached_hub_tag_resolves_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    repo = tmp_path / "models--laion--CLIP-ViT-B-32-laion2B-s34B-b79K"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    weights = repo / "snapshots" / commit / "open_clip_pytorch_model.bin"
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"stand-in")
    assert resolve_pretrained(*HUB_TAG, cache_dir=str(tmp_path)) == str(weights)


# ---------------------------------------------------------------- checkpoints


def _same_state(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_local_checkpoints_load(tiny, tmp_path):
    st = save_checkpoint(tiny.model, tmp_path / "tiny.safetensors")
    loaded = load_clip(TINY, str(st))
    assert loaded.checkpoint == str(st.resolve()) and loaded.pretrained == str(st)
    assert _same_state(tiny.model, loaded.model)
    pt = tmp_path / "tiny.pt"
    torch.save({"state_dict": tiny.model.state_dict()}, pt)
    assert _same_state(tiny.model, load_clip(TINY, str(pt)).model)


def test_remote_sensing_clips_load_as_published(tiny, tmp_path):
    """RemoteCLIP publishes plain state dicts; SkyCLIP and GeoRSCLIP open_clip training
    checkpoints (`state_dict` of a DDP model, `module.` prefixes, optimiser beside it)."""
    state = tiny.model.state_dict()
    remoteclip = tmp_path / "RemoteCLIP-tiny.pt"
    torch.save(state, remoteclip)
    skyclip = tmp_path / "epoch_20.pt"
    torch.save(
        {
            "epoch": 20,
            "name": "skyclip",
            "optimizer": {"state": {}, "param_groups": []},
            "state_dict": {f"module.{k}": v for k, v in state.items()},
        },
        skyclip,
    )
    for path in (remoteclip, skyclip):
        assert _same_state(tiny.model, load_clip(TINY, str(path)).model), path.name
    torch.save({f"module.{k}": v for k, v in list(state.items())[:-1]}, skyclip)
    with pytest.raises(ModelLoadError, match="1 missing keys"):
        load_clip(TINY, str(skyclip))


def test_missing_and_unreadable_checkpoints(tmp_path):
    absent = tmp_path / "absent.safetensors"
    with pytest.raises(ModelLoadError, match=str(absent)):
        load_clip(TINY, str(absent))
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00not a checkpoint")
    with pytest.raises(ModelLoadError, match=f"could not read checkpoint {garbage}"):
        load_clip(TINY, str(garbage))


def test_checkpoint_of_other_architecture_fails(tmp_path):
    small = save_checkpoint(load_clip("mtmg-small-vit").model, tmp_path / "small.safetensors")
    with pytest.raises(ModelLoadError) as info:
        load_clip(TINY, str(small))
    msg = str(info.value)
    assert str(small.resolve()) in msg and "does not match architecture mtmg-tiny-vit" in msg
    assert "shape mismatches" in msg and "unexpected keys" in msg


def test_save_checkpoint_loads_in_plain_open_clip(tiny, tmp_path):
    path = save_checkpoint(tiny.model, tmp_path / "sub" / "patched.safetensors")
    assert [p.name for p in path.parent.iterdir()] == ["patched.safetensors"]  # no temp left
    other = open_clip.create_model(TINY, pretrained=str(path)).eval()
    images, tokens = torch.randn(2, 3, 32, 32), tiny.tokenizer(["a", "b"])
    with torch.no_grad():
        assert torch.equal(other.encode_image(images), tiny.model.encode_image(images))
        assert torch.equal(other.encode_text(tokens), tiny.model.encode_text(tokens))
    with pytest.raises(ValueError, match="safetensors"):
        save_checkpoint(tiny.model, tmp_path / "patched.pt")


# ---------------------------------------------------------------- weight-space operations


def test_image_state_is_fp32_cpu_copy_of_visual(tiny):
    state = image_state(tiny.model)
    visual = {k for k in tiny.model.state_dict() if k.startswith("visual.")}
    assert set(state) == visual and "visual.conv1.weight" in state
    assert all(v.dtype == torch.float32 and v.device.type == "cpu" for v in state.values())
    state["visual.conv1.weight"].zero_()
    assert tiny.model.visual.conv1.weight.abs().sum() > 0
    assert not set(text_state(tiny.model)) & visual


def _pair(tiny):
    zs = image_state(tiny.model)
    ft = {k: v + torch.randn_like(v) for k, v in zs.items()}
    return zs, ft


def test_interpolate_endpoints_exact_and_midpoint(tiny):
    zs, ft = _pair(tiny)
    for alpha, ref in ((0, zs), (0.0, zs), (1, ft), (1.0, ft)):
        out = interpolate(zs, ft, alpha)
        assert out.keys() == ref.keys() and all(torch.equal(out[k], ref[k]) for k in ref)
        assert all(out[k] is not ref[k] for k in ref)
    mid = interpolate(zs, ft, 0.5)
    assert all(torch.allclose(mid[k], (zs[k] + ft[k]) / 2, atol=1e-6) for k in zs)
    ext = interpolate(zs, ft, 1.5)
    assert all(torch.allclose(ext[k], -0.5 * zs[k] + 1.5 * ft[k], atol=1e-5) for k in zs)


def test_interpolate_rejects_bad_inputs(tiny):
    zs, ft = _pair(tiny)
    for bad in (math.nan, math.inf):
        with pytest.raises(ValueError, match="finite"):
            interpolate(zs, ft, bad)
    for bad in (True, "0.5", None):
        with pytest.raises(TypeError):
            interpolate(zs, ft, bad)
    extra = {**ft, "visual.extra": torch.zeros(1)}
    with pytest.raises(ValueError, match=r"only in theta_ft \['visual.extra'\]"):
        interpolate(zs, extra, 0.5)
    key = "visual.conv1.weight"
    with pytest.raises(ValueError, match="shape"):
        interpolate(zs, {**ft, key: ft[key][:1]}, 0.0)


def test_load_image_state_is_strict(tiny):
    model = load_clip(TINY).model
    before_text = weights_fingerprint(text_state(model))
    state = {k: v.half() for k, v in image_state(tiny.model).items()}  # cast back to fp32
    load_image_state(model, state)
    assert model.visual.conv1.weight.dtype == torch.float32
    assert torch.equal(model.visual.conv1.weight, tiny.model.visual.conv1.weight.half().float())
    assert weights_fingerprint(text_state(model)) == before_text
    missing = dict(state)
    missing.pop("visual.conv1.weight")
    with pytest.raises(ModelLoadError, match="1 missing"):
        load_image_state(model, missing)
    with pytest.raises(ModelLoadError, match="1 unexpected"):
        load_image_state(model, {**state, "logit_scale": torch.zeros(())})
    with pytest.raises(ModelLoadError, match="shape"):
        load_image_state(model, {**state, "visual.conv1.weight": torch.zeros(1)})


def test_weights_fingerprint(tiny):
    fp = weights_fingerprint(tiny.model)
    assert fp == weights_fingerprint(tiny.model.state_dict()) and len(fp) == 16
    assert int(fp, 16) >= 0
    state = image_state(tiny.model)
    base = weights_fingerprint(state)
    assert base == weights_fingerprint(image_state(tiny.model))
    changed = dict(state)
    changed["visual.proj"] = state["visual.proj"].clone()
    changed["visual.proj"][0, 0] += 1
    assert weights_fingerprint(changed) != base
    assert weights_fingerprint({k: v.half() for k, v in state.items()}) != base
    renamed = {("x" + k if k == "visual.proj" else k): v for k, v in state.items()}
    assert weights_fingerprint(renamed) != base
    assert weights_fingerprint({"a": torch.zeros(2, 3)}) != weights_fingerprint(
        {"a": torch.zeros(3, 2)}
    )


def test_quick_gelu_travels_with_the_weights(tmp_path):
    """A QuickGELU model (OpenAI's tags) is rebuilt as such from a bundle's build_kwargs and
    from a checkpoint mtmg saved; without them open_clip would build GELU and compute other
    features from the same weights."""
    from open_clip.transformer import QuickGELU

    from mtmg.models import weights

    def quick(model) -> bool:
        return any(isinstance(m, QuickGELU) for m in model.modules())

    torch.manual_seed(0)
    ref = load_clip("mtmg-tiny-vit", None, build_kwargs={"force_quick_gelu": True})
    assert quick(ref.model) and ref.build_kwargs == {"force_quick_gelu": True}
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        want = ref.model.encode_image(x)
    path = weights.save_checkpoint(
        ref.model, tmp_path / "q.safetensors", build_kwargs=ref.build_kwargs
    )
    back = load_clip("mtmg-tiny-vit", str(path))
    assert quick(back.model) and back.build_kwargs == {"force_quick_gelu": True}
    plain = load_clip(
        "mtmg-tiny-vit", str(weights.save_checkpoint(ref.model, tmp_path / "p.safetensors"))
    )
    assert not quick(plain.model)
    with torch.no_grad():
        assert torch.allclose(back.model.encode_image(x), want)
        assert not torch.allclose(plain.model.encode_image(x), want)


# ---------------------------------------------------------------- the align student's checkpoints


def _corrupt_checkpoints(tmp_path: Path) -> list[Path]:
    """Truncated, empty and garbage files in each format `--student-init` takes."""
    good_st = tmp_path / "good.safetensors"
    save_file({"pos_embed": torch.zeros(1, 17, 64)}, good_st)
    good_pt = tmp_path / "good.pth"
    torch.save({"pos_embed": torch.zeros(1, 17, 64)}, good_pt)
    files = {
        "truncated.safetensors": good_st.read_bytes()[:-100],
        "empty.safetensors": b"",
        "garbage.safetensors": b"\x00not a checkpoint at all",
        "truncated.pth": good_pt.read_bytes()[:-100],
        "garbage.pth": b"\x00not a checkpoint at all",
    }
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    return [tmp_path / name for name in files]


def test_unreadable_student_init_names_the_file(tmp_path):
    """A corrupt `--student-init` is a ValueError naming the file (the CLI's "error: ...", exit
    2), not a safetensors or torch traceback."""
    spec = student.StudentSpec("vit_small_patch16_224", "ms", 32, 16, TINY_STUDENT)
    for path in _corrupt_checkpoints(tmp_path):
        with pytest.raises(ValueError, match=f"^{re.escape(str(path))}: not a .*readable"):
            student.load_trunk(student.build_student(spec), str(path))


def test_unreadable_student_weights_name_the_file(tmp_path):
    spec = student.StudentSpec("vit_small_patch16_224", "ms", 32, 16, TINY_STUDENT)
    student.save_student(student.build_student(spec), tmp_path, {"note": "test"})
    weights = tmp_path / "student.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(ValueError, match=f"^{re.escape(str(weights))}: not a readable"):
        student.load_student(tmp_path)


@pytest.mark.parametrize("name", ["truncated.safetensors", "empty.safetensors", "garbage.pth"])
def test_unreadable_clip_checkpoint_names_the_file(tmp_path, name):
    path = {p.name: p for p in _corrupt_checkpoints(tmp_path)}[name]
    with pytest.raises(ModelLoadError, match=f"could not read checkpoint {re.escape(str(path))}"):
        load_clip(TINY, str(path))
