"""The iterative update rules on the masked parameters (DESIGN.md §8): gradient ascent (ga), gradient difference
(gd), random labels (rl) and negative preference optimisation (npo), a number of steps each."""

from __future__ import annotations

import torch
import torch.nn.functional as Fn

from mape.method.models import Encoded, TaskModel
from mape.method.update import KeepClosest, MaskedParams, Progress, Target, UpdateReport, training_only
from mape.method.work import GRAD_WORK, Work


def _cycle(enc: Encoded, batch_size: int, device, seed: int):
    epoch = 0
    while True:
        yield from enc.batches(batch_size, device, shuffle_seed=seed + epoch)
        epoch += 1


def _rule_loss(rule: str, task: TaskModel, fx, fy, rbatch, ref_logp_fn, num_classes: int, gen):
    logits = task.logits(fx).float()
    if rule == "ga":
        return -Fn.cross_entropy(logits, fy)
    if rule == "rl":
        shift = torch.randint(1, num_classes, fy.shape, generator=gen).to(fy.device)
        loss = Fn.cross_entropy(logits, (fy + shift) % num_classes)
    elif rule == "gd":
        loss = -Fn.cross_entropy(logits, fy)
    elif rule == "npo":
        beta = 0.1
        logp = torch.log_softmax(logits, -1).gather(1, fy[:, None]).squeeze(1)
        ratio = logp - ref_logp_fn(fx, fy)
        loss = -(2.0 / beta) * Fn.logsigmoid(-beta * ratio).mean()
    else:
        raise ValueError(rule)
    rx, ry = rbatch
    return loss + Fn.cross_entropy(task.logits(rx).float(), ry)


def iterative_update(task: TaskModel, rule: str, mp: MaskedParams, forget: Encoded, retain: Encoded,
                     step, evaluate, target: Target, lr: float, batch_size: int = 32, seed: int = 0,
                     max_steps: int = 60, eval_every: int = 5, progress: Progress | None = None,
                     work: Work | None = None, trial_work: float = 0.0) -> UpdateReport:
    """``ga``/``gd``/``rl``/``npo``: Adam on the selected entries. ``step`` = number of optimizer steps.
    With ``step='auto'`` and ``work``: a block of ``eval_every`` steps (``GRAD_WORK`` per forget and retain
    batch example) and its check (``trial_work``) start only if both still fit; the work is spent as done."""
    model, device = task.model, task.device
    params = list(mp.masks)
    opt = torch.optim.Adam(params, lr=lr)
    gen = torch.Generator().manual_seed(seed)
    ref = task.clone() if rule == "npo" else None

    def ref_logp(x, y):
        with torch.no_grad():
            return torch.log_softmax(ref.logits(x).float(), -1).gather(1, y[:, None]).squeeze(1)

    auto = step == "auto"
    n_steps = max_steps if auto else int(step)
    kept = KeepClosest(mp, target)
    fbatches, rbatches = _cycle(forget, batch_size, device, seed), _cycle(retain, batch_size, device, seed + 7)
    step_work = GRAD_WORK * (min(batch_size, len(forget)) + (0 if rule == "ga" else min(batch_size, len(retain))))
    stopped = None
    with training_only(model, params, train=False):
        for i in range(1, n_steps + 1):
            if auto and work is not None and (i - 1) % eval_every == 0 and \
                    not work.fits(min(eval_every, n_steps - i + 1) * step_work + trial_work):
                stopped = f"work: {eval_every} more steps and a check would take the run past its budget " \
                          f"({work.budget:.0f}; {work.spent:.0f} spent)"
                break
            fx, fy = next(fbatches)
            rbatch = next(rbatches) if rule != "ga" else None
            loss = _rule_loss(rule, task, fx, fy, rbatch, ref_logp, len(task.classes), gen)
            mp.descend(opt, loss)
            if work is not None:
                work.spend(step_work)
            if progress:
                progress(f"{rule} steps", i / n_steps)
            if auto and (i % eval_every == 0 or i == n_steps):
                if work is not None:
                    work.spend(trial_work)
                if kept.record(i, evaluate()):
                    break
        if auto:
            kept.restore()
    final = kept.final
    reached = final is not None and target.met(final)
    return UpdateReport(rule, kept.chosen if auto else n_steps, auto, kept.trials, reached, mp.changed(), final=final,
                        stopped=stopped, work=work.to_json() if work is not None else None)
