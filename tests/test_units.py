"""Inside a selected unit (mape.evaluation.units, mape.serving.unit_figures, mape.serving.inside): exact checks on
tiny random models against brute-force computations, and the served preset ``tiny-bbc`` (trained in seconds
on a fresh cache) through mape.serving.inside, whose shared original must stay untouched."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mape.base.errors import MapeError
from mape.evaluation import units as U
from mape.method.adapters import unit_param_masks
from mape.method.gates import Gates
from mape.serving import inside, unit_figures as UF
from tests.tiny import tiny_bert, tiny_data

PADDED = 20  # tiny_data: examples 12.. have 3 padding tokens at the end


def _brute_force_attention(task, inputs, layer: int) -> np.ndarray:
    """softmax(q_h k_h^T / sqrt(d_h)) per head from the Q and K projections' outputs (hooks), on the
    example's tokens (no padding inside them)."""
    mods, seen = task.adapter.layers[layer], {}
    mask = inputs["attention_mask"][0].bool()
    batch = {k: v[:, mask] for k, v in inputs.items()}
    hs = [mods.q.register_forward_hook(lambda m, a, o: seen.__setitem__("q", o)),
          mods.k.register_forward_hook(lambda m, a, o: seen.__setitem__("k", o))]
    try:
        with torch.no_grad():
            task.model(**batch)
    finally:
        for h in hs:
            h.remove()
    H, d = task.adapter.num_heads, task.adapter.head_dim
    q = seen["q"][0].view(-1, H, d).transpose(0, 1)
    k = seen["k"][0].view(-1, H, d).transpose(0, 1)
    return torch.softmax(q @ k.transpose(1, 2) / math.sqrt(d), -1).numpy()


def test_head_attention_rows_sum_to_one_and_match_q_k():
    task, enc = tiny_bert(), tiny_data()
    inputs = enc.take([PADDED]).inputs
    impl = task.model.config._attn_implementation
    for layer in range(2):
        ref = _brute_force_attention(task, inputs, layer)
        for head in range(4):
            att = U.head_attention(task, inputs, layer, head)
            assert att.shape == (9, 9)  # the padding is left out
            np.testing.assert_allclose(att.sum(1), 1.0, atol=1e-6)
            np.testing.assert_allclose(att, ref[head], atol=1e-6)
    assert task.model.config._attn_implementation == impl  # the eager switch is put back


def test_before_after_identical_where_the_update_changed_nothing():
    """Only head 2 of layer 1 changes (its Q/K/V rows and O columns): every head of layer 0 and the other
    heads of layer 1 keep exactly their attention; head 2 of layer 1 does not."""
    before, enc = tiny_bert(), tiny_data()
    after = before.clone()
    heads = torch.zeros(2, 4)
    heads[1, 2] = 1
    masks = unit_param_masks(after.adapter, heads, torch.zeros(2, 24))
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p, m in masks.items():
            p.add_(torch.randn(p.shape, generator=g) * m)
    inputs = enc.take([3]).inputs
    for head in range(4):
        np.testing.assert_array_equal(U.head_attention(before, inputs, 0, head),
                                      U.head_attention(after, inputs, 0, head))
    for head in (0, 1, 3):
        np.testing.assert_allclose(U.head_attention(before, inputs, 1, head), U.head_attention(after, inputs, 1, head),
                                   rtol=0, atol=1e-7)
    assert np.abs(U.head_attention(before, inputs, 1, 2) - U.head_attention(after, inputs, 1, 2)).max() > 1e-3
    # and the filters of layer 0 fire exactly as before
    np.testing.assert_array_equal(U.filter_activation(before, enc, 0, 5), U.filter_activation(after, enc, 0, 5))


def test_gates_act_after_the_attention_and_at_the_filter_activation():
    """Gating head (0, 1) to 0 zeroes its output, not its pattern: layer 0's attention is unchanged and layer
    1's changes. Gating filter (1, 7) to 0 makes its measured activation exactly 0 and leaves the others."""
    task, enc = tiny_bert(), tiny_data()
    inputs = enc.take([0]).inputs
    plain = [U.head_attention(task, inputs, layer, 1) for layer in range(2)]
    heads = torch.ones(2, 4)
    heads[0, 1] = 0
    with Gates(task.adapter, heads=heads):
        gated = [U.head_attention(task, inputs, layer, 1) for layer in range(2)]
    np.testing.assert_array_equal(plain[0], gated[0])
    assert np.abs(plain[1] - gated[1]).max() > 0  # layer 1 reads what head (0, 1) no longer writes
    filters = torch.ones(2, 24)
    filters[1, 7] = 0
    other = U.filter_activation(task, enc, 1, 8)
    with Gates(task.adapter, filters=filters):
        assert np.all(U.filter_activation(task, enc, 1, 7) == 0)
        np.testing.assert_array_equal(U.filter_activation(task, enc, 1, 8), other)


@pytest.mark.parametrize("arch", ["bert", "distilbert"])
def test_filter_activation_matches_a_forward_hook(arch):
    """Per example: the masked token mean of act(up(x))[:, :, j], from a hook on the up projection."""
    task, enc = tiny_bert(arch=arch), tiny_data()
    layer, filt = 1, 11
    mods, seen = task.adapter.layers[layer], []
    act = task.model.config.hidden_act if arch == "bert" else task.model.config.activation
    fn = {"gelu": torch.nn.functional.gelu, "relu": torch.relu}[act]
    handle = mods.up[0].register_forward_hook(lambda m, a, o: seen.append(fn(o)[..., filt]))
    try:
        with torch.no_grad():
            task.model(**enc.inputs)  # the full width: padded positions are masked below
    finally:
        handle.remove()
    mask = enc.inputs["attention_mask"].float()
    expected = ((seen[0] * mask).sum(1) / mask.sum(1)).numpy()
    got = U.filter_activation(task, enc, layer, filt, batch_size=5)
    assert got.shape == (len(enc),)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_vit_cls_row_is_the_patch_grid():
    task, enc = tiny_bert(arch="vit"), tiny_data(image=True)
    att = U.head_attention(task, enc.take([2]).inputs, 1, 3)
    assert att.shape == (5, 5)  # [CLS] + 2 x 2 patches
    np.testing.assert_allclose(att.sum(1), 1.0, atol=1e-6)
    grid = U.patch_grid(task.model, att)
    assert grid.shape == (2, 2) == U.num_patches(task.model)
    np.testing.assert_array_equal(grid, att[0, 1:].reshape(2, 2))
    assert grid.sum() == pytest.approx(1.0 - att[0, 0], abs=1e-6)
    acts = U.filter_activation(task, enc, 0, 3)
    assert acts.shape == (len(enc),) and np.isfinite(acts).all()


def test_bad_units_get_a_clear_message():
    task, enc = tiny_bert(), tiny_data()
    with pytest.raises(MapeError, match="Layer must be a whole number from 0 to 1"):
        U.head_attention(task, enc.take([0]).inputs, 2, 0)
    with pytest.raises(MapeError, match="Head must be a whole number from 0 to 3"):
        U.head_attention(task, enc.take([0]).inputs, 0, 4)
    with pytest.raises(MapeError, match="Filter must be a whole number from 0 to 23"):
        U.filter_activation(task, enc, 0, 1.5)
    with pytest.raises(MapeError, match="not a vision Transformer"):
        U.patch_grid(task.model, np.eye(3))
    sel = np.zeros((2, 4), bool)
    sel[1, 2] = True
    scores = np.arange(8, dtype=float).reshape(2, 4)
    assert U.unit_summary(sel, scores, 1, 2) == {"selected": True, "n_selected": 1, "n_units": 8, "score": 6.0,
                                                 "rank": 2}


def test_unit_figures():
    att = np.full((3, 3), 1 / 3)
    fig = UF.attention_heatmap(att, ["[CLS]", "a", "a"], "Before", zmax=0.5)
    assert fig.data[0].z.shape == (3, 3) and fig.data[0].zmax == 0.5
    assert list(fig.layout.xaxis.ticktext) == ["[CLS]", "a", "a"]  # repeated tokens keep their own column
    assert UF.patch_heatmap(np.ones((2, 2)) / 4).data[0].z.shape == (2, 2)
    fig = UF.filter_activation_figure({"original": {"forget": np.ones(3), "retain": np.zeros(2)},
                                       "unlearned": {"forget": np.zeros(3), "retain": np.zeros(2)}})
    assert [t.name for t in fig.data] == ["before (original)", "after (MAPE)"] and fig.layout.boxmode == "group"
    assert list(fig.data[0].x) == ["forget (3)"] * 3 + ["retain (2)"] * 2
    with pytest.raises(ValueError):
        UF.attention_heatmap(np.ones((2, 3)))


# --------------------------------------------------------------------------- through mape.serving.inside

PRESET = "tiny-bbc"
TEXT = "The striker scored twice as the club won the cup final."


@pytest.fixture(scope="module")
def serving():
    from mape.serving import offer, owner

    offer.register_tiny_presets()
    owner.prepare_preset(PRESET)
    return owner


def _top_layer_delta(sv, layer: int, head: int) -> dict:
    """A delta that changes the query rows of one head of one layer only (as a run whose selection is that
    head alone, with a step that moved its queries)."""
    weights = sv.original_weights(PRESET)
    name = next(k for k in weights if k.endswith(f"layer.{layer}.attention.self.query.weight"))
    w = weights[name]
    hd = w.shape[0] // sv.info(PRESET)["heads"]
    rows = np.arange(head * hd, (head + 1) * hd)
    idx = (rows[:, None] * w.shape[1] + np.arange(w.shape[1])[None]).reshape(-1)
    vals = w.reshape(-1)[idx] + np.random.default_rng(0).normal(0, 0.5, len(idx)).astype(w.dtype)
    return {name: (idx.astype(np.int64), vals)}


def test_serving_head_attention_on_private_copies(serving):
    sv = serving
    info = sv.info(PRESET)
    L = info["layers"]
    delta = _top_layer_delta(sv, L - 1, 3)
    shared = sv.served_preset(PRESET).ws.task.model
    impl = shared.config._attn_implementation
    before = sv.original_weights(PRESET)
    out = inside.head_attention(PRESET, delta, TEXT, L - 1, 3)
    tokens = out["tokens"]
    assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]" and len(tokens) > 8
    for m in ("original", "unlearned"):
        assert out[m].shape == (len(tokens), len(tokens))
        np.testing.assert_allclose(out[m].sum(1), 1.0, atol=1e-5)
    assert np.abs(out["original"] - out["unlearned"]).max() > 1e-3  # the changed head
    for layer, head in ((0, 3), (L - 2, 0), (L - 1, 0)):  # frozen heads in unchanged layers (and beside it)
        o = inside.head_attention(PRESET, delta, TEXT, layer, head)
        np.testing.assert_allclose(o["original"], o["unlearned"], rtol=0, atol=0 if layer < L - 1 else 1e-7)
    acts = inside.filter_activation(PRESET, delta, np.arange(10), L - 2, 17)
    assert {len(acts["values"][m]["forget"]) for m in ("original", "unlearned")} == {10}
    assert len(acts["values"]["original"]["retain"]) == inside.UNIT_SAMPLE
    for g in ("forget", "retain"):
        np.testing.assert_array_equal(acts["values"]["original"][g], acts["values"]["unlearned"][g])
    # the shared original: no hooks, its attention implementation and weights as they were
    assert shared.config._attn_implementation == impl
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in shared.modules())
    after = sv.original_weights(PRESET)
    assert all(np.array_equal(before[k], after[k]) for k in before)
    with pytest.raises(MapeError, match="Head must"):
        inside.head_attention(PRESET, delta, TEXT, 0, info["heads"])
