"""Issue 27 item 4: the distilled push (mape.method.distil) that follows a first so step that stopped short."""

import numpy as np
import torch

from mape.method.adapters import unit_param_masks
from mape.method.distil import DISTIL_EVERY, distil_steps, first_block_work, push_loss
from mape.method.update import MaskedParams, Target, check
from mape.method.work import Work
from tests.tiny import tiny_bert, tiny_data


def _setup():
    task = tiny_bert(3, seed=0, arch="vit")
    forget, retain = tiny_data(12, 3, seed=1, image=True), tiny_data(48, 3, seed=2, image=True)
    forget = type(forget)(forget.inputs, torch.zeros(len(forget), dtype=torch.long))  # all labelled 0
    a = task.adapter
    heads = torch.zeros(a.num_layers, a.num_heads, dtype=torch.bool)
    heads[0, 1] = True
    filters = torch.zeros(a.num_layers, a.num_filters, dtype=torch.bool)
    filters[:, :6] = True
    mp = MaskedParams(unit_param_masks(a, heads, filters))
    with torch.no_grad():
        ref = torch.log_softmax(task.logits(retain.inputs).float(), -1)
    return task, forget, retain, mp, ref


def _run(task, forget, retain, mp, ref, target, budget=1e9, seed=0):
    evaluate = lambda: check(task, forget, retain)  # noqa: E731
    start = evaluate()
    work = Work(budget)
    left = lambda: np.flatnonzero(task.predict_proba(forget).argmax(1) == 0)  # noqa: E731
    out = distil_steps(task, mp, forget, retain, ref, 2e-3, seed, evaluate, target, start, left, work,
                       trial_work=len(forget) + len(retain), scan_work=len(forget))
    return out, start, work


def test_push_loss_is_zero_off_the_label_and_large_on_it():
    logits = torch.tensor([[10.0, 0.0, 0.0], [-10.0, 0.0, 0.0]])
    y = torch.zeros(2, dtype=torch.long)
    on, off = push_loss(logits[:1], y[:1]), push_loss(logits[1:], y[1:])
    assert float(on) > 5 and float(off) < 1e-3


def test_distil_moves_only_selected_entries_pushes_the_forget_set_and_repeats_exactly():
    task, forget, retain, mp, ref = _setup()
    frozen = {n: p.detach().clone() for n, p in task.model.named_parameters()}
    target = Target(forget_acc=0.0, retain_acc=1.0, tolerance=1.0)  # any retain accuracy is feasible here
    out, start, work = _run(task, forget, retain, mp, ref, target)
    assert out["final"].forget_acc <= start.forget_acc
    assert out["taken"] % DISTIL_EVERY == 0 and 0 < work.spent <= work.budget
    for n, p in task.model.named_parameters():  # everything outside the selection is bit-identical
        m = next((mk for q, mk in mp.masks.items() if q is p), None)
        outside = ~m if m is not None else torch.ones_like(p, dtype=torch.bool)
        assert torch.equal(p.detach()[outside], frozen[n][outside])
    after = {n: p.detach().clone() for n, p in task.model.named_parameters()}
    task2, forget2, retain2, mp2, ref2 = _setup()
    _run(task2, forget2, retain2, mp2, ref2, target)
    assert all(torch.equal(after[n], p.detach()) for n, p in task2.model.named_parameters())


def test_distil_keeps_the_start_when_no_check_is_feasible_and_never_outspends_its_budget():
    task, forget, retain, mp, ref = _setup()
    before = {p: p.detach().clone() for p in mp.masks}
    strict = Target(forget_acc=0.0, retain_acc=2.0, tolerance=0.0)  # nothing is feasible: no check is better
    out, start, _ = _run(task, forget, retain, mp, ref, strict)
    assert out["steps"] == 0 and out["final"] is start
    assert all(torch.equal(p.detach(), v) for p, v in before.items())  # back at the start
    small = first_block_work(len(forget), len(retain), len(forget) + len(retain), len(forget)) - 1
    out, _, work = _run(task, forget, retain, mp, ref, Target(0.0, 1.0, tolerance=1.0), budget=small)
    assert out["taken"] == 0 and work.spent == 0 and out["stopped"].startswith("work")


def test_distil_repairs_with_the_retain_term_alone_when_nothing_is_left_but_the_retain_check_is_broken():
    """A block that pushed every forget example off its label but broke the retain check is not the end: the next
    block has nothing to push, so its steps take the retain distillation term alone (no forget example is
    passed), and the push stops only once nothing is left at a feasible point."""
    from mape.method.distil import DISTIL_RETAIN_BATCH
    from mape.method.work import GRAD_WORK

    task, forget, retain, mp, ref = _setup()
    gen = torch.Generator().manual_seed(3)
    mp.set_offset({p: torch.randn(p.shape, generator=gen) * 0.5 for p in mp.masks}, 1.0)  # away from ref's model
    evaluate = lambda: check(task, forget, retain)  # noqa: E731
    start = evaluate()

    class BrokenAtStart(Target):  # the start's retain check is broken, every later check is feasible; the
        # forget accuracy target is out of reach, so only 'nothing left' can stop the push
        def feasible_check(self, c):
            return c is not start

    frozen = {n: p.detach().clone() for n, p in task.model.named_parameters()}

    def kl():
        with torch.no_grad():
            logp = torch.log_softmax(task.logits(retain.inputs).float(), -1)
        return float(torch.nn.functional.kl_div(logp, ref, log_target=True, reduction="batchmean"))

    kl_start, work, trial, scan = kl(), Work(1e9), len(forget) + len(retain), len(forget)
    out = distil_steps(task, mp, forget, retain, ref, 2e-3, 0, evaluate, BrokenAtStart(-1.0, 1.0, 1.0), start,
                       lambda: np.array([], dtype=int), work, trial_work=trial, scan_work=scan)
    assert out["taken"] == DISTIL_EVERY and out["steps"] == DISTIL_EVERY and out["stopped"] == "nothing left to push"
    br = min(DISTIL_RETAIN_BATCH, len(retain))  # retain examples only, then a check; two scans
    assert work.spent == DISTIL_EVERY * GRAD_WORK * br + trial + 2 * scan
    assert kl() < 0.5 * kl_start  # the retained predictions went back towards the starting model's
    for n, p in task.model.named_parameters():
        m = next((mk for q, mk in mp.masks.items() if q is p), None)
        if m is None:
            assert torch.equal(p.detach(), frozen[n])
        else:
            assert torch.equal(p.detach()[~m], frozen[n][~m])
