"""Baselines (mape.evaluation.baselines) on a tiny ViT trained on a few hundred real MNIST digits."""

import dataclasses
import functools
import os

import numpy as np
import pytest
import torch

from mape.base import cache
from mape.base.errors import MapeError
from mape.data.forget import select_forget
from mape.evaluation.baseline_rules import salun_mask, ssd_dampen
from mape.evaluation.baselines import (
    BASE_METHODS,
    BaselineConfig,
    finetune,
    layer_params,
    param_stats,
    parse_method,
    parse_methods,
    relearn_curve,
    run_method,
)
from mape.method.recipe import Recipe
from mape.run.unlearn import evaluate_model
from mape.run.workspace import Workspace

TINY_VIT = dict(image_size=14, patch_size=7, num_channels=1, hidden_size=16, num_hidden_layers=2,
                num_attention_heads=4, intermediate_size=24, hidden_dropout_prob=0.0,
                attention_probs_dropout_prob=0.0)
TINY_RECIPE = Recipe(epochs=8, lr=3e-3, batch_size=32, weight_decay=0.0, seed=0)


@functools.lru_cache(maxsize=None)
def tiny_workspace(n_train: int = 400, n_test: int = 300) -> Workspace:
    """A Workspace around a tiny ViT (2 layers × 4 heads × 24 filters) trained in-process (~2 s) on
    ``n_train`` real MNIST digits resized to 14×14; retrained models go to the usual cache."""
    from mape.data.datasets import load_mnist, subsample_train
    from mape.data.presets import build_start_model, get_preset
    from mape.method.train import train

    preset = dataclasses.replace(get_preset("vit-mnist"), name="tiny-vit-mnist", vit_config=TINY_VIT,
                                 recipe=TINY_RECIPE)
    ds = subsample_train(load_mnist(seed=0), n_train, 0)
    test_idx = np.sort(np.random.default_rng(0).choice(len(ds.test), n_test, replace=False))
    ds = dataclasses.replace(ds, test=ds.test.take(test_idx))
    task = build_start_model(preset, ds.classes)
    train(task, task.encode(ds.train), preset.recipe)
    key = cache.cache_key({"tests": "tiny-vit-mnist", "vit": TINY_VIT, "recipe": preset.recipe.to_json(),
                           "n_train": n_train, "n_test": n_test})
    return Workspace(preset, ds, task, torch.device("cpu"), key, n_train)


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    saved = os.environ.get("MAPE_CACHE")
    if saved is None:
        os.environ["MAPE_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: thread hand-offs cost more than they save on a shared CPU
    try:
        yield tiny_workspace()
    finally:
        torch.set_num_threads(threads)
        if saved is None:
            os.environ.pop("MAPE_CACHE", None)


@pytest.fixture(scope="module")
def forget(ws):
    return select_forget("random:32", ws.dataset, 0)


def _params_equal(a: torch.nn.Module, b: torch.nn.Module, exclude: set) -> bool:
    return all(torch.equal(p, q) for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters())
               if n not in exclude)


# --------------------------------------------------------------------------- method names


def test_method_names_parse():
    assert parse_method("mape") == parse_method("MAPE")
    m = parse_method("mape")
    assert (m.kind, m.objective, m.update) == ("mape", "auto", "so")  # mlr, or contrast on a backdoor's poison
    m = parse_method("mape+ga")
    assert (m.name, m.kind, m.objective, m.update) == ("mape+ga", "mape", "auto", "ga")
    m = parse_method("mape-norm+rl")
    assert (m.name, m.objective, m.update) == ("mape-norm+rl", "norm", "rl")
    assert parse_method("mape-auto+so").name == "mape" and parse_method("mape-mlr+so").name == "mape-mlr"
    assert parse_method("mape-contrast").objective == "contrast"
    assert parse_method("mape-random").objective == "random"
    assert (parse_method("gd").kind, parse_method("gd").update) == ("full", "gd")
    assert (parse_method("salun").kind, parse_method("salun").update) == ("salun", "rl")
    assert parse_method("l1-sparse").kind == "l1-sparse"
    for name in BASE_METHODS:
        assert parse_method(name).name == name
    assert [s.name for s in parse_methods(" mape, so ,mape,, ft")] == ["mape", "so", "ft"]


@pytest.mark.parametrize("bad", ["bogus", "mape+xx", "mape-foo", "mape+", "salun+ga", ""])
def test_unknown_method_lists_valid_names(bad):
    with pytest.raises(MapeError) as err:
        parse_methods(bad) if bad == "" else parse_method(bad)
    text = str(err.value)
    assert "mape-random" in text and "l1-sparse" in text and "mape+ga" in text
    assert "\n" not in text


# --------------------------------------------------------------------------- every method runs


@pytest.mark.parametrize("method", list(BASE_METHODS) + ["mape+ga"])
def test_every_method_runs_and_reports(ws, forget, method):
    run = run_method(ws, method, forget, seed=0)
    metrics = run.metrics or evaluate_model(ws, run.task, forget, ws.retain_eval_indices(forget.indices), 0)
    for key in ("forget_acc", "retain_acc", "test_acc", "mia"):
        assert 0.0 <= metrics[key] <= 1.0
    assert run.time_s >= 0 and isinstance(run.params_changed, int)
    assert run.task is not ws.task
    if method != "ssd":  # SSD may legitimately find nothing to dampen
        assert run.params_changed > 0
    assert run.params_changed <= ws.total_params
    if method.startswith("mape"):
        assert run.params_changed <= run.details["params_selected"]
        assert run.metrics is not None


def test_the_original_model_is_never_modified(ws, forget):
    before = {n: p.detach().clone() for n, p in ws.task.model.named_parameters()}
    for method in ("ga", "ssd", "l1-sparse", "salun"):
        run_method(ws, method, forget, seed=1)
    assert all(torch.equal(p, before[n]) for n, p in ws.task.model.named_parameters())


@pytest.mark.parametrize("method", ["so", "ga", "gd", "rl"])
def test_full_parameter_rules_leave_embeddings_bit_identical(ws, forget, method):
    run = run_method(ws, method, forget, seed=0)
    scope = {id(p) for p in layer_params(run.task)}
    inside = {n for n, p in run.task.model.named_parameters() if id(p) in scope}
    names = [n for n, _ in ws.task.model.named_parameters()]
    assert any("embeddings" in n for n in names) and any("classifier" in n for n in names)
    assert _params_equal(ws.task.model, run.task.model, exclude=inside)  # embeddings, final LN, classifier
    assert run.params_changed > 0.5 * sum(p.numel() for p in layer_params(run.task))


# --------------------------------------------------------------------------- SalUn / SSD / l1-sparse


@pytest.mark.parametrize("fraction", [0.5, 0.1, 0.33])
def test_salun_mask_covers_the_requested_fraction_of_top_saliency(ws, forget, fraction):
    task = ws.task.clone()
    enc = ws.train_enc.take(forget.indices)
    params = layer_params(task)
    masks = salun_mask(task, enc, fraction, params=params)
    total = sum(p.numel() for p in params)
    assert sum(int(m.sum()) for m in masks.values()) == int(round(fraction * total))
    grads = param_stats(task, enc, params, "grad", 32)
    sal = torch.cat([grads[p].abs().reshape(-1) for p in params])
    chosen = torch.cat([masks[p].reshape(-1) for p in params])
    assert float(sal[chosen].min()) >= float(sal[~chosen].max())


def test_salun_default_is_half_the_layer_parameters(ws, forget):
    run = run_method(ws, "salun", forget, seed=0)
    total = sum(p.numel() for p in layer_params(run.task))
    assert run.details["mask_entries"] == int(round(0.5 * total))
    assert run.params_changed <= run.details["mask_entries"]


@pytest.mark.parametrize("alpha", [10.0, 1.0])
def test_ssd_dampens_only_where_forget_fisher_dominates(ws, alpha):
    forget = select_forget("class:1:24", ws.dataset, 0)
    task = ws.task.clone()
    enc = ws.train_enc.take(forget.indices)
    retain = ws.train_enc.take(np.setdiff1d(np.arange(len(ws.train_y)), forget.indices)[:128])
    params = layer_params(task)
    ff = param_stats(task, enc, params, "fisher", 32)
    fr = param_stats(task, retain, params, "fisher", 32)
    before = {p: p.detach().clone() for p in params}
    rep = ssd_dampen(task, enc, retain, alpha=alpha, lam=1.0, params=params)
    changed = 0
    for p in params:
        allowed = ff[p] > alpha * fr[p]
        diff = p.detach() != before[p]
        assert not bool((diff & ~allowed).any()), "SSD changed an entry with F_f <= alpha F_r"
        assert bool((p.detach().abs() <= before[p].abs()).all()), "SSD increased a magnitude"
        assert bool((torch.sign(p.detach()) * torch.sign(before[p]) >= 0).all())
        changed += int(diff.sum())
    assert rep.selected == sum(int((ff[p] > alpha * fr[p]).sum()) for p in params)
    if alpha == 1.0:
        assert changed > 0 and rep.selected > 0
    # embeddings and classifier are outside SSD's scope
    scope = {id(p) for p in params}
    assert all(torch.equal(p, q) for p, q in zip(ws.task.model.parameters(), task.model.parameters())
               if id(q) not in scope)


def test_l1_sparse_changes_parameters_and_sparsifies(ws, forget):
    ft = run_method(ws, "ft", forget, seed=0)
    l1 = run_method(ws, "l1-sparse", forget, seed=0)
    assert l1.params_changed > 0
    zeros = lambda t: sum(int((p == 0).sum()) for p in t.model.parameters() if p.dim() > 1)  # noqa: E731
    assert zeros(l1.task) > zeros(ft.task)
    assert l1.details["steps"] == ft.details["steps"] >= 1


def test_finetune_step_cap(ws, forget):
    task = ws.task.clone()
    steps = finetune(task, ws.train_enc.take(np.arange(200)), ws.preset.recipe, epochs=1, max_steps=3)
    assert steps == 3


def test_relearn_curve_shape_and_copy(ws, forget):
    enc = ws.train_enc.take(forget.indices)
    before = [p.detach().clone() for p in ws.task.model.parameters()]
    flags = [p.requires_grad for p in ws.task.model.parameters()]
    curve = relearn_curve(ws.task, enc, steps=3, recipe=ws.preset.recipe)
    assert len(curve) == 4 and all(0.0 <= v <= 1.0 for v in curve)
    assert all(torch.equal(a, b) for a, b in zip(before, ws.task.model.parameters()))
    assert flags == [p.requires_grad for p in ws.task.model.parameters()]
    small = relearn_curve(ws.task, enc, steps=1, recipe=ws.preset.recipe, max_eval=8)
    assert len(small) == 2 and all(abs(8 * v - round(8 * v)) < 1e-9 for v in small)


def test_retrain_time_is_the_recorded_training_time(ws):
    forget = select_forget("random:20", ws.dataset, 7)
    first = run_method(ws, "retrain", forget, seed=7)
    second = run_method(ws, "retrain", forget, seed=7)
    assert second.details["cached"] is True
    assert second.time_s == pytest.approx(first.time_s, rel=0.5)
    assert all(torch.equal(p, q) for p, q in zip(first.task.model.parameters(), second.task.model.parameters()))


def test_successive_request_builds_on_the_previous_model(ws):
    f1 = select_forget("random:16", ws.dataset, 0)
    f2 = select_forget("random:16", ws.dataset, 1)
    r1 = run_method(ws, "ga", f1, seed=0)
    r2 = run_method(ws, "ga", f2, seed=0, base=r1.task, already_forgotten=f1.indices)
    assert r2.params_changed > 0 and r2.task is not r1.task


def test_config_validation():
    with pytest.raises(MapeError):
        BaselineConfig(salun_fraction=0.0).validate()
    with pytest.raises(MapeError):
        BaselineConfig(ssd_alpha=-1).validate()
    with pytest.raises(MapeError):
        BaselineConfig(sparsity=1.0).validate()
    # the settings shared with MAPE are checked by the engine's rule, before any method runs
    with pytest.raises(MapeError, match="tolerance must be a number from 0 to 1"):
        BaselineConfig(tolerance=5.0).validate()
    with pytest.raises(MapeError, match="damping must be a positive number"):
        BaselineConfig(damping=0.0).validate()
    with pytest.raises(MapeError, match="retain sample size must be a whole number of at least 1"):
        BaselineConfig(retain_sample=0).validate()
    BaselineConfig().validate()


def test_baselines_draw_the_same_check_samples_as_unlearn(ws, forget, monkeypatch):
    """The auto step of every baseline sees exactly the forget / retain / unseen check samples MAPE sees."""
    import mape.run.targets
    from mape.evaluation.baselines import _context
    from mape.run.config import UnlearnConfig
    from mape.run.unlearn import unlearn

    seen = []
    real = mape.run.targets.check  # the auto step's check: (task, forget, retain check sample, unseen=...)

    def recording(task, f, r, *a, unseen=None):
        seen.append((f, r, unseen))
        return real(task, f, r, *a, unseen=unseen)

    monkeypatch.setattr(mape.run.targets, "check", recording)
    unlearn(ws, forget, UnlearnConfig(seed=3))
    ctx = _context(ws, forget, 3, BaselineConfig(), forget.indices)
    assert len(seen) >= 1 and seen[0][2] is not None and len(seen[0][2]) > 0
    for mine, theirs in ((ctx.check_f, seen[0][0]), (ctx.check_r, seen[0][1]), (ctx.samples.check_u, seen[0][2])):
        assert torch.equal(mine.labels, theirs.labels)
        assert all(torch.equal(mine.inputs[k], theirs.inputs[k]) for k in mine.inputs)


def test_damping_defaults_to_the_engine(ws, forget):
    from mape.run.config import UnlearnConfig

    run = run_method(ws, "so", forget, seed=0)
    assert run.details["damping"] == UnlearnConfig().damping
