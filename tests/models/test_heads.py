"""mtmg.models.heads with the real tiny open_clip model on CPU: head weights, head logits, the
safetensors cache and template files."""

from __future__ import annotations

import json

import open_clip
import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open

from mtmg.models.clip import ClipBundle, load_clip
from mtmg.models.heads import (
    ZeroShotHead,
    build_zeroshot_weights,
    cached_zeroshot_weights,
    head_cache_key,
    load_templates,
)
from mtmg.models.weights import text_state, weights_fingerprint

CLASSES = ["forest", "sea and ocean", "urban fabric"]
TEMPLATES = ["a satellite image of {c}.", "an aerial view of {c}.", "{c} seen from above."]


@pytest.fixture(scope="module")
def tiny() -> ClipBundle:
    torch.manual_seed(0)
    bundle = load_clip("mtmg-tiny-vit")
    with torch.no_grad():
        bundle.model.logit_scale.fill_(2.5)  # not the init value: the scale must really be used
    return bundle


def test_weights_shape_and_norm(tiny):
    w = build_zeroshot_weights(tiny, None, CLASSES, TEMPLATES)
    assert w.shape == (len(CLASSES), tiny.embed_dim)
    assert w.dtype == torch.float32 and w.device.type == "cpu"
    scale = tiny.model.logit_scale.exp().item()
    assert torch.allclose(w.norm(dim=-1), torch.full((len(CLASSES),), scale), rtol=1e-5)


def test_weights_match_manual_and_open_clip(tiny):
    model, tok = tiny.model, tiny.tokenizer
    w = build_zeroshot_weights(model, tok, CLASSES, TEMPLATES, batch_size=2)
    with torch.no_grad():
        rows = []
        for c in CLASSES:
            emb = F.normalize(model.encode_text(tok([t.format(c=c) for t in TEMPLATES])), dim=-1)
            rows.append(F.normalize(emb.mean(0), dim=-1))
        manual = torch.stack(rows) * model.logit_scale.exp()
    assert torch.allclose(w, manual, atol=1e-5)
    fns = [lambda c, t=t: t.format(c=c) for t in TEMPLATES]
    reference = open_clip.build_zero_shot_classifier(model, tok, CLASSES, fns)  # [D, C]
    assert torch.allclose(w, reference.T * model.logit_scale.exp(), atol=1e-5)


def test_weights_invariant_to_template_order_and_batching(tiny):
    w = build_zeroshot_weights(tiny, None, CLASSES, TEMPLATES)
    assert torch.allclose(
        w, build_zeroshot_weights(tiny, None, CLASSES, TEMPLATES[::-1]), atol=1e-5
    )
    assert torch.allclose(
        w, build_zeroshot_weights(tiny, None, CLASSES, TEMPLATES, batch_size=1), atol=1e-6
    )


def test_build_leaves_model_untouched(tiny):
    before = weights_fingerprint(tiny.model)
    tiny.model.train()
    try:
        build_zeroshot_weights(tiny, None, CLASSES, TEMPLATES)
        assert tiny.model.training
    finally:
        tiny.model.eval()
    assert weights_fingerprint(tiny.model) == before


def test_classes_may_share_a_name(tiny):
    """CLIP's ImageNet names call two pairs of classes alike ("missile", "sunglasses")."""
    w = build_zeroshot_weights(tiny, None, ["forest", "river", "forest"], TEMPLATES)
    torch.testing.assert_close(w[0], w[2])
    assert not torch.allclose(w[0], w[1])


@pytest.mark.parametrize(
    "classnames, templates, error, needle",
    [
        (CLASSES, ["a photo of a thing."], ValueError, "no {c}"),
        (CLASSES, ["a {x} of {c}."], ValueError, "must use only {c}"),
        (CLASSES, [], ValueError, "no templates"),
        (CLASSES, "a photo of {c}.", TypeError, "one string"),
        ([], TEMPLATES, ValueError, "empty"),
    ],
)
def test_build_rejects_bad_inputs(tiny, classnames, templates, error, needle):
    with pytest.raises(error, match=needle.replace("{", r"\{").replace("}", r"\}")):
        build_zeroshot_weights(tiny, None, classnames, templates)


def test_head_logits_equal_manual_computation(tiny):
    w = build_zeroshot_weights(tiny, None, CLASSES, TEMPLATES)
    head = ZeroShotHead.from_weights(w)
    assert (head.num_classes, head.embed_dim) == (3, tiny.embed_dim)
    assert list(head.parameters()) == [] and not head.weights.requires_grad
    assert set(head.state_dict()) == {"weights"}
    with torch.no_grad():
        feats = tiny.model.encode_image(torch.randn(4, 3, 32, 32))
    manual = (feats / feats.norm(dim=-1, keepdim=True)) @ w.T
    assert torch.allclose(head(feats), manual, atol=1e-5)
    assert torch.allclose(head(3.0 * feats), manual, atol=1e-5)  # features are normalised
    feats.requires_grad_(True)
    head(feats).sum().backward()
    assert feats.grad is not None
    w.zero_()
    assert head.weights.abs().sum() > 0  # the head holds its own copy
    with pytest.raises(ValueError, match="classes, dim"):
        ZeroShotHead(torch.zeros(3))


def test_cache_key():
    key = head_cache_key("m", "fp", "eurosat", CLASSES, TEMPLATES)
    assert key == head_cache_key("m", "fp", "eurosat", list(CLASSES), tuple(TEMPLATES))
    assert len(key) == 64 and int(key, 16) >= 0
    others = {
        head_cache_key("m2", "fp", "eurosat", CLASSES, TEMPLATES),
        head_cache_key("m", "fp2", "eurosat", CLASSES, TEMPLATES),
        head_cache_key("m", "fp", "resisc45", CLASSES, TEMPLATES),
        head_cache_key("m", "fp", "eurosat", CLASSES[::-1], TEMPLATES),
        head_cache_key("m", "fp", "eurosat", CLASSES, TEMPLATES[:2]),
    }
    assert len(others) == 5 and key not in others


def test_cached_weights_build_once(tiny, tmp_path, caplog):
    calls = []

    def build(templates=TEMPLATES):
        calls.append(1)
        return build_zeroshot_weights(tiny, None, CLASSES, templates)

    fp = weights_fingerprint(text_state(tiny.model))
    kw = dict(model_name=tiny.name, fingerprint=fp, dataset="eurosat", classnames=CLASSES)
    first = cached_zeroshot_weights(tmp_path, templates=TEMPLATES, build=build, **kw)
    key = head_cache_key(tiny.name, fp, "eurosat", CLASSES, TEMPLATES)
    path = tmp_path / f"{key}.safetensors"
    assert [p.name for p in tmp_path.iterdir()] == [path.name] and len(calls) == 1
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    assert meta["model"] == tiny.name and meta["dataset"] == "eurosat"
    assert json.loads(meta["classnames"]) == CLASSES and json.loads(meta["templates"]) == TEMPLATES

    second = cached_zeroshot_weights(tmp_path, templates=TEMPLATES, build=build, **kw)
    assert len(calls) == 1 and torch.equal(first, second)

    fewer = TEMPLATES[:2]
    cached_zeroshot_weights(tmp_path, templates=fewer, build=lambda: build(fewer), **kw)
    assert len(calls) == 2 and len(list(tmp_path.iterdir())) == 2

    path.write_bytes(b"truncated")
    again = cached_zeroshot_weights(tmp_path, templates=TEMPLATES, build=build, **kw)
    assert len(calls) == 3 and torch.equal(again, first)
    assert "unreadable" in caplog.text


def test_cached_weights_check_build_result(tmp_path):
    with pytest.raises(ValueError, match=r"\[3, D\]"):
        cached_zeroshot_weights(
            tmp_path,
            model_name="m",
            fingerprint="f",
            dataset="d",
            classnames=CLASSES,
            templates=TEMPLATES,
            build=lambda: torch.zeros(2, 4),
        )
    assert list(tmp_path.iterdir()) == []


def test_load_templates_text_and_json(tmp_path):
    txt = tmp_path / "templates.txt"
    txt.write_text(
        "# remote sensing prompts\n\na satellite image of {c}.\n  an aerial view of {c}.  \n"
    )
    assert load_templates(txt) == ["a satellite image of {c}.", "an aerial view of {c}."]
    js = tmp_path / "templates.json"
    js.write_text(json.dumps(TEMPLATES))
    assert load_templates(js) == TEMPLATES


@pytest.mark.parametrize(
    "name, content, error, needle",
    [
        ("t.txt", "a satellite image of {c}.\na photo.\n", ValueError, "line 2"),
        ("t.txt", "a {0} of {c}.\n", ValueError, "must use only"),
        ("t.txt", "# only a comment\n\n", ValueError, "no templates"),
        ("t.json", '["a photo of {c}.", "a photo."]', ValueError, "no"),
        ("t.json", '{"t": "a photo of {c}."}', ValueError, "list of strings"),
        ("t.json", '["a photo of {c}.", 3]', TypeError, "must be a string"),
        ("t.json", '["a photo of {c}."', ValueError, "invalid JSON"),
    ],
)
def test_load_templates_errors(tmp_path, name, content, error, needle):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(error) as info:
        load_templates(path)
    assert str(path) in str(info.value) and needle in str(info.value)


def test_load_templates_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.txt"):
        load_templates(tmp_path / "absent.txt")
