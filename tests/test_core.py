"""Exact checks of gates, scores, search and updates on tiny random models."""

import numpy as np
import pytest
import torch
import torch.nn.functional as Fn

from mape.base.errors import MapeError
from mape.method.adapters import adapter_for, unit_param_counts, unit_param_masks
from mape.method.gates import Gates
from mape.method.iterative import iterative_update
from mape.method.models import Encoded
from mape.method.scoring import contrast_scores, mask_gradients, norm_scores, resolve_objective, unit_scores
from mape.method.search import block_cost, refine_layer, search, warm_start
from mape.method.update import MaskedParams, Target, so_direction, so_update
from tests.tiny import tiny_bert, tiny_data

ARCHS = ["bert", "roberta", "distilbert", "vit"]


@pytest.mark.parametrize("arch", ARCHS)
def test_adapter_finds_every_layer(arch):
    task = tiny_bert(arch=arch)
    a = task.adapter
    assert (a.num_layers, a.num_heads, a.head_dim, a.num_filters) == (2, 4, 4, 24)


def test_unknown_architecture_is_a_clear_error():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    with pytest.raises(MapeError, match="no attention heads"):
        adapter_for(model)


@pytest.mark.parametrize("arch", ARCHS)
def test_gates_at_one_change_nothing(arch):
    task = tiny_bert(arch=arch)
    enc = tiny_data(image=arch == "vit")
    x, _ = next(enc.batches(64))
    with torch.no_grad():
        plain = task.logits(x)
        with Gates(task.adapter):
            gated = task.logits(x)
    assert torch.equal(plain, gated)


@pytest.mark.parametrize("arch", ARCHS)
def test_gate_zero_equals_zeroing_the_units_parameters(arch):
    """Closing head (0,1) and filter (1,5) = zeroing the O columns / down column they feed."""
    task = tiny_bert(arch=arch)
    enc = tiny_data(image=arch == "vit")
    x, _ = next(enc.batches(64))
    a = task.adapter
    heads, filters = torch.ones(2, 4), torch.ones(2, 24)
    heads[0, 1] = 0
    filters[1, 5] = 0
    with torch.no_grad():
        with Gates(a, heads, filters):
            gated = task.logits(x)
        a.layers[0].o.weight[:, 4:8] = 0
        a.layers[1].down.weight[:, 5] = 0
        zeroed = task.logits(x)
    torch.testing.assert_close(gated, zeroed, rtol=1e-5, atol=1e-6)


def test_gates_detach_even_when_the_body_raises():
    task = tiny_bert()
    with pytest.raises(RuntimeError):
        with Gates(task.adapter):
            raise RuntimeError("boom")
    assert all(not m.o._forward_pre_hooks and not m.down._forward_pre_hooks for m in task.adapter.layers)


def test_unit_param_masks_cover_exactly_the_units_parameters():
    task = tiny_bert()
    a = task.adapter
    heads, filters = torch.zeros(2, 4, dtype=torch.bool), torch.zeros(2, 24, dtype=torch.bool)
    heads[1, 2] = True
    filters[0, 3] = True
    masks = unit_param_masks(a, heads, filters)
    per_head, per_filter = unit_param_counts(a)
    assert sum(int(m.sum()) for m in masks.values()) == per_head + per_filter
    assert per_head == 3 * (4 * 16 + 4) + 16 * 4 and per_filter == 16 + 1 + 16
    q = a.layers[1].q.weight
    assert masks[q][8:12].all() and masks[q].sum() == 4 * 16
    assert masks[a.layers[1].o.weight][:, 8:12].all()
    assert masks[a.layers[0].up[0].bias][3] and masks[a.layers[0].up[0].bias].sum() == 1
    assert masks[a.layers[0].down.weight][:, 3].all()


def _loss_at(task, enc, heads, filters):
    with torch.no_grad(), Gates(task.adapter, heads, filters):
        return sum(float(Fn.cross_entropy(task.logits(x), y, reduction="sum")) for x, y in enc.batches(8))


def test_mask_gradients_match_finite_differences():
    task = tiny_bert(dtype=torch.float64)
    forget, retain = tiny_data(16, seed=2), tiny_data(24, seed=3)
    mg = mask_gradients(task, forget, retain, batch_size=8)
    eps = 1e-5
    ones_h, ones_f = torch.ones(2, 4, dtype=torch.float64), torch.ones(2, 24, dtype=torch.float64)
    for (l, h) in [(0, 0), (1, 3)]:
        hp, hm = ones_h.clone(), ones_h.clone()
        hp[l, h] += eps
        hm[l, h] -= eps
        fd = (_loss_at(task, forget, hp, ones_f) - _loss_at(task, forget, hm, ones_f)) / (2 * eps)
        assert float(mg.forget_heads.grad_sum[l, h]) == pytest.approx(fd, rel=1e-5, abs=1e-7)
    # Fisher in per-example units: Σ_b s_b² / N with s_b the per-batch summed-loss gradient
    s = []
    for x, y in retain.batches(8):
        one = type(retain)({k: v for k, v in x.items()}, y)
        fp, fm = ones_f.clone(), ones_f.clone()
        fp[1, 7] += eps
        fm[1, 7] -= eps
        s.append((_loss_at(task, one, ones_h, fp) - _loss_at(task, one, ones_h, fm)) / (2 * eps))
    brute = sum(v * v for v in s) / len(retain)
    assert float(mg.retain_filters.fisher[1, 7]) == pytest.approx(brute, rel=1e-5)
    assert mg.retain_filters.batch_grads.shape == (3, 2, 24)


def test_mlr_and_mlf_scores_follow_the_formulas():
    task = tiny_bert(dtype=torch.float64)
    mg = mask_gradients(task, tiny_data(16, seed=2), tiny_data(24, seed=3), batch_size=8)
    hs, fs = unit_scores("mlr", mg)
    torch.testing.assert_close(fs, mg.forget_filters.grad_sum + 0.5 * mg.retain_filters.fisher)
    hs, _ = unit_scores("mlf", mg)
    torch.testing.assert_close(hs, -mg.forget_heads.grad_sum + 0.5 * mg.forget_heads.fisher)


def test_norm_scores_match_parameter_gradient_norms():
    task = tiny_bert(dtype=torch.float64)
    forget = tiny_data(16, seed=2)
    hs, fs = norm_scores(task, forget, batch_size=8)
    model = task.model
    model.zero_grad()
    loss = sum(Fn.cross_entropy(task.logits(x), y, reduction="sum") for x, y in forget.batches(8)) / len(forget)
    loss.backward()
    m = task.adapter.layers[1]
    head2 = sum(float(p.grad[8:12].pow(2).sum())
                for p in (m.q.weight, m.q.bias, m.k.weight, m.k.bias, m.v.weight, m.v.bias))
    head2 += float(m.o.weight.grad[:, 8:12].pow(2).sum())
    assert float(hs[1, 2]) == pytest.approx(head2 ** 0.5, rel=1e-6)
    fil = float(m.up[0].weight.grad[5].pow(2).sum() + m.up[0].bias.grad[5] ** 2 + m.down.weight.grad[:, 5].pow(2).sum())
    assert float(fs[1, 5]) == pytest.approx(fil ** 0.5, rel=1e-6)
    model.zero_grad()


def _unit_outputs_one_by_one(task, enc):
    """Brute force for the contrast scores: each example alone, cut to its real tokens, every unit's output
    captured whole and averaged over the tokens by hand."""
    a = task.adapter
    heads, filters = [], []
    for i in range(len(enc)):
        x = {k: v[i:i + 1] for k, v in enc.inputs.items()}
        if "attention_mask" in x:
            n = int(x["attention_mask"].sum())
            x = {k: v[:, :n] for k, v in x.items()}
        seen = {}
        hooks = [m.o.register_forward_pre_hook(lambda mod, args, l=l: seen.__setitem__(("h", l), args[0].clone()))
                 for l, m in enumerate(a.layers)]
        hooks += [m.down.register_forward_pre_hook(lambda mod, args, l=l: seen.__setitem__(("f", l), args[0].clone()))
                  for l, m in enumerate(a.layers)]
        with torch.no_grad():
            task.model(**x)
        for h in hooks:
            h.remove()
        heads.append([seen[("h", l)][0].reshape(-1, a.num_heads, a.head_dim).norm(dim=-1).mean(0).numpy()
                      for l in range(a.num_layers)])
        filters.append([seen[("f", l)][0].mean(0).numpy() for l in range(a.num_layers)])
    return np.array(heads, dtype=np.float64), np.array(filters, dtype=np.float64)


@pytest.mark.parametrize("arch", ["bert", "vit"])
def test_contrast_scores_match_a_brute_force_computation(arch):
    """(mean over D_f − mean over D_r) / std over D_r of each unit's token-averaged output, padding excluded,
    equals the computation example by example (batches of 5 with padding trimmed, against one at a time)."""
    task = tiny_bert(arch=arch, seed=3)
    data = tiny_data(24, image=arch == "vit", seed=4)
    forget, retain = data.take(np.arange(9)), data.take(np.arange(9, 24))
    heads, filters = contrast_scores(task, forget, retain, batch_size=5)
    for got, (f, r) in zip((heads, filters), zip(_unit_outputs_one_by_one(task, forget),
                                                 _unit_outputs_one_by_one(task, retain))):
        expected = (f.mean(0) - r.mean(0)) / (r.std(0) + 1e-6)
        assert got.shape == expected.shape and np.allclose(got.numpy(), expected, atol=1e-4, rtol=1e-4)
    sel, _ = search(task, forget, retain, objective="contrast", sparsity=0.75)
    assert np.allclose(sel.head_scores, heads.numpy()) and sel.heads.sum() == 2 and sel.filters.sum() == 12
    assert sel.heads.reshape(-1)[np.argsort(-heads.numpy().reshape(-1))[:2]].all()  # the top contrasts
    assert sel.filters.reshape(-1)[np.argsort(-filters.numpy().reshape(-1))[:12]].all()


def test_auto_objective_is_contrast_only_on_a_backdoors_poisoned_examples():
    assert resolve_objective("auto", True) == "contrast" and resolve_objective("auto", False) == "mlr"
    assert resolve_objective("mlr", True) == "mlr" and resolve_objective("random", True) == "random"
    with pytest.raises(ValueError, match="resolve 'auto'"):
        search(tiny_bert(), tiny_data(), tiny_data(), objective="auto")


def test_warm_start_budgets():
    rng = np.random.default_rng(0)
    hs, fs = rng.normal(size=(6, 12)), rng.normal(size=(6, 1536))
    h, f = warm_start(hs, fs, 0.9)
    assert h.sum() == round(0.1 * 72) and f.sum() == round(0.1 * 6 * 1536)
    assert hs[h].min() >= hs[~h].max()
    h, f = warm_start(hs, fs, 0.9, joint=True, unit_params=(100, 10))
    used = h.sum() * 100 + f.sum() * 10
    assert used <= 0.1 * (72 * 100 + 9216 * 10) and used > 0.1 * (72 * 100 + 9216 * 10) - 100


def test_block_cost_on_singletons_equals_diagonal_score():
    rng = np.random.default_rng(1)
    G, S = torch.tensor(rng.normal(size=10)), torch.tensor(rng.normal(size=(5, 10)))
    fisher = (S * S).sum(0) / 40
    for i in range(10):
        P = torch.zeros(10, dtype=torch.bool)
        P[i] = True
        assert block_cost(G, S, 40, P) == pytest.approx(float(G[i] + 0.5 * fisher[i]))


def test_refinement_never_worse_than_warm_start_and_swaps_counted():
    rng = np.random.default_rng(2)
    for trial in range(20):
        U, B, n = 30, 6, 48
        G = torch.tensor(rng.normal(size=U))
        S = torch.tensor(rng.normal(size=(B, U)) * rng.uniform(0.5, 3))
        scores = (G + 0.5 * (S * S).sum(0) / n).numpy()
        sel = np.zeros(U, dtype=bool)
        sel[np.argsort(-scores)[:6]] = True
        before = block_cost(G, S, n, torch.as_tensor(~sel))
        new, swaps = refine_layer(G, S, n, scores, sel)
        after = block_cost(G, S, n, torch.as_tensor(~new))
        assert new.sum() == sel.sum()
        assert after <= before + 1e-12
        assert (swaps == 0) == (after == pytest.approx(before)) or swaps > 0
        assert (new != sel).sum() <= 2 * swaps


def test_search_reports_progress_and_respects_budget():
    task = tiny_bert()
    events = []
    sel, mg = search(task, tiny_data(16, seed=2), tiny_data(24, seed=3), sparsity=0.75, batch_size=8,
                     progress=lambda stage, f, s: events.append((stage, f, s is not None)))
    assert sel.heads.sum() == 2 and sel.filters.sum() == 12
    assert sel.heads.sum(1).tolist() == np.asarray(sel.heads).sum(1).tolist()
    stages = [e[0] for e in events]
    assert "forget gradients" in stages and "warm start" in stages and "greedy refinement" in stages
    assert events[-1][1] == 1.0 and events[-1][2]


def test_random_objective_is_seeded():
    task = tiny_bert()
    a, _ = search(task, None, None, objective="random", seed=5, sparsity=0.5)
    b, _ = search(task, None, None, objective="random", seed=5, sparsity=0.5)
    c, _ = search(task, None, None, objective="random", seed=6, sparsity=0.5)
    assert (a.filters == b.filters).all() and not (a.filters == c.filters).all()


def _state(task):
    return {k: v.detach().clone() for k, v in task.model.state_dict().items()}


@pytest.mark.parametrize("rule", ["so", "ga", "gd", "rl", "npo"])
def test_updates_touch_only_selected_units(rule):
    task = tiny_bert()
    forget, retain = tiny_data(16, seed=2), tiny_data(24, seed=3)
    sel, mg = search(task, forget, retain, sparsity=0.75, batch_size=8, with_params=True)
    before = _state(task)
    masks = unit_param_masks(task.adapter, torch.as_tensor(sel.heads), torch.as_tensor(sel.filters))
    mp = MaskedParams(masks)
    target = Target(forget_acc=0.0, retain_acc=0.0, tolerance=1.0)
    if rule == "so":
        d = so_direction(mp, mg.param_forget_grad, mg.param_retain_fisher)
        report = so_update(task, mp, d, 0.1, None, target)
    else:
        report = iterative_update(task, rule, mp, forget, retain, 3, None, target, lr=1e-2, batch_size=8)
    after = _state(task)
    by_name = dict(task.model.named_parameters())
    changed = 0
    for name, v in after.items():
        p = by_name.get(name)
        if p is None or p not in masks:
            assert torch.equal(v, before[name]), name  # bit-identical
        else:
            assert torch.equal(v[~masks[p]], before[name][~masks[p]]), name
            changed += int((v != before[name]).sum())
    assert changed > 0 and changed == report.params_changed <= mp.count


def test_so_auto_step_picks_a_reported_trial():
    task = tiny_bert()
    forget, retain = tiny_data(16, seed=2), tiny_data(24, seed=3)
    sel, mg = search(task, forget, retain, sparsity=0.5, batch_size=8, with_params=True)
    mp = MaskedParams(unit_param_masks(task.adapter, torch.as_tensor(sel.heads), torch.as_tensor(sel.filters)))
    d = so_direction(mp, mg.param_forget_grad, mg.param_retain_fisher)
    from mape.method.update import model_accuracy

    def evaluate():
        return model_accuracy(task, forget), model_accuracy(task, retain)

    fa0, ra0 = evaluate()
    report = so_update(task, mp, d, "auto", evaluate, Target(forget_acc=0.0, retain_acc=ra0, tolerance=0.5))
    assert report.auto and report.trials
    assert report.step in [t["step"] for t in report.trials]
    chosen = [t for t in report.trials if t["step"] == report.step][0]
    assert evaluate() == (chosen["forget_acc"], chosen["retain_acc"])


def _scripted_so(fa_of, ra_of, target):
    """so_update's auto step on one scalar parameter p = η, with accuracies scripted as functions of η."""
    p = torch.nn.Parameter(torch.zeros(1))
    mp = MaskedParams({p: torch.ones(1, dtype=torch.bool)})
    evaluate = lambda: (fa_of(float(p.detach())), ra_of(float(p.detach())))  # noqa: E731
    return so_update(None, mp, {p: torch.ones(1)}, "auto", evaluate, target), float(p.detach())


def test_so_auto_step_does_not_go_below_the_grid_when_its_smallest_step_only_costs_retain():
    target = Target(forget_acc=0.89, retain_acc=0.97, tolerance=0.02)
    # η = 0.01 reaches the target (0.90 ≤ 0.89 + slack) but breaks retain accuracy; it does not overshoot
    report, applied = _scripted_so(lambda eta: 0.95 - 5 * eta, lambda eta: 0.97 if eta < 0.004 else 0.5, target)
    assert [t["step"] for t in report.trials] == [0.01] and applied == pytest.approx(0.01)
    assert not report.reached_target  # reported honestly: the retain check failed


def test_so_auto_step_goes_below_the_grid_when_its_smallest_step_overshoots():
    target = Target(forget_acc=0.89, retain_acc=0.97, tolerance=0.02)
    # η = 0.01 → 0.45 and 0.0033 → 0.78 overshoot (< 0.87); 0.0011 → 0.89 is on target
    report, applied = _scripted_so(lambda eta: 0.95 - 50 * eta, lambda eta: 0.97, target)
    assert [round(t["step"], 6) for t in report.trials] == [0.01, 0.003333, 0.001111]
    assert report.step == pytest.approx(0.01 / 9) == applied and report.reached_target


def test_so_auto_step_bisects_between_a_short_step_below_the_grid_and_the_overshoot():
    target = Target(forget_acc=0.50, retain_acc=0.97, tolerance=0.02, slack=0.02)
    fa_of = lambda eta: 1.0 - 100 * eta  # noqa: E731  (0.01 → 0.0 overshoots; 0.0033 → 0.67 short)
    report, applied = _scripted_so(fa_of, lambda eta: 0.97, target)
    assert len(report.trials) == 4  # 0.01, 0.0033, then two bisections between them
    lo, hi = 0.01 / 3, 0.01
    assert all(lo < t["step"] < hi for t in report.trials[2:])
    best = min(abs(t["forget_acc"] - 0.5) for t in report.trials)
    assert abs(fa_of(applied) - 0.5) == pytest.approx(best)


def test_so_auto_step_keeps_the_smallest_grid_step_when_it_lands_within_the_slack():
    target = Target(forget_acc=0.89, retain_acc=0.97, tolerance=0.02)
    report, applied = _scripted_so(lambda eta: 0.95 - 7 * eta, lambda eta: 0.97, target)  # 0.01 → 0.88
    assert [t["step"] for t in report.trials] == [0.01] and applied == pytest.approx(0.01)


def _reference_refine(G, S, n, scores, selected):
    """Plain-Python statement of the greedy pass (DESIGN.md §6), for comparison."""
    selected = selected.copy()
    cost = lambda sel: float(G[~sel].sum() + 0.5 * (S[:, ~sel].sum(1) ** 2).sum() / n)  # noqa: E731
    swaps = 0
    for u in [int(i) for i in np.argsort(scores, kind="stable") if selected[i]]:
        current = cost(selected)
        best_v, best_cost = None, None
        for v in np.flatnonzero(~selected):
            trial = selected.copy()
            trial[u], trial[v] = False, True
            c = cost(trial)
            if best_cost is None or c < best_cost:
                best_v, best_cost = v, c
        if best_cost < current - 1e-12:
            selected[u], selected[best_v] = False, True
            swaps += 1
    return selected, swaps


def test_refinement_matches_the_plain_statement():
    rng = np.random.default_rng(7)
    for _ in range(10):
        U, B, n = 16, 5, 40
        G, S = rng.normal(size=U), rng.normal(size=(B, U)) * 2
        scores = G + 0.5 * (S * S).sum(0) / n
        sel = np.zeros(U, dtype=bool)
        sel[np.argsort(-scores)[:4]] = True
        fast, k_fast = refine_layer(torch.tensor(G), torch.tensor(S), n, scores, sel)
        slow, k_slow = _reference_refine(G, S, n, scores, sel)
        assert (fast == slow).all() and k_fast == k_slow


def test_predict_proba_runs_text_by_length_and_returns_rows_in_input_order():
    task = tiny_bert()
    g = torch.Generator().manual_seed(3)
    n = 40
    ids = torch.randint(3, 50, (n, 12), generator=g)
    lengths = torch.randint(2, 13, (n,), generator=g)
    mask = (torch.arange(12)[None, :] < lengths[:, None]).long()
    enc = Encoded({"input_ids": ids, "attention_mask": mask}, torch.zeros(n, dtype=torch.long))
    order = enc.length_order()
    assert (np.diff(lengths.numpy()[order]) >= 0).all()
    with torch.no_grad():  # one example at a time: no padding beyond its own length, no reordering
        one_by_one = torch.cat([torch.softmax(task.logits({k: v[i:i + 1, :int(lengths[i])]
                                                           for k, v in enc.inputs.items()}), -1)
                                for i in range(n)]).numpy()
    np.testing.assert_allclose(task.predict_proba(enc, batch_size=8), one_by_one, atol=1e-5)
    images, vit = tiny_data(6, image=True), tiny_bert(arch="vit")
    assert images.length_order() is None
    with torch.no_grad():
        expected = torch.softmax(vit.logits(images.inputs), -1).numpy()
    np.testing.assert_allclose(vit.predict_proba(images, batch_size=4), expected, atol=1e-6)
