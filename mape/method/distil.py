"""The distilled push: what the automatic ``so`` update does, instead of ``so`` follow-up steps, when its first
step stops short of the target and the run's work budget pays for at least one block of it.

A ``so`` step moves the selected units along one direction, the ascent of D_f's loss; when D_f shares its
label with retained examples, that direction also lowers the label on them, and the retain check (the class
focus) stops it early. On ViT · MNIST ``backdoor:patch:0:80`` (80 images with a corner patch, relabelled 0)
the so follow-ups left the attack working on 62 / 1 / 8 % of triggered test images for seeds 0 / 1 / 2 (a
retrained model: 0.6 %), and seed 1 reached its target only with clean test accuracy 92.2 → 89.2 %, because
pushing the poisoned images off 0 pushed clean 0s off as well.

Here the selected units take Adam steps (the preset's learning rate) on

    mean over D_f's examples left  −log(1 − p_y(x))          (push each off its label; bounded per example)
  + DISTIL_WEIGHT · KL(p_start(·|x) ‖ p(·|x)) over the retain sample   (keep every retained prediction)

so the retained examples of D_f's label are held where they were while the forget examples move: the
update finds what separates them (on the backdoor, the trigger) instead of lowering the label for all.
The examples pushed are those :func:`mape.run.unlearn._left_to_forget` names at the current point (more
confident than unseen examples of the same rank; for a whole class: those still classified right). Every
``DISTIL_EVERY`` steps the model is checked like a step-size trial, the closest check to the target is kept
(feasible first: :class:`mape.method.update.KeepClosest`, which starts from the ``so`` result, so the phase never
ends worse than it began by the target's own measure), and it stops when the target is reached, nothing is
left to push at a feasible point, ``DISTIL_MAX_STEPS`` were taken, or the run's counted work would pass its
budget. Nothing left at a point that broke the retain check (a block pushed all of a class off its label and
retained examples with it: vit-mnist ``class:3`` seed 0 on an Intel CPU, retain check 95.7 % after the first
block) is not a reason to stop: the next block is a repair block, the retain term alone (that case then ends at
0 % of the class, test accuracy on the other classes 92.3 %, as the original and the retrained model). With it the same
case ends at ASR 1.6 / 1.1 / 1.0 % and clean test accuracy 91.6 / 91.6 / 92.0 % (original 92.2, retrained
92.7). On the BBC presets half a retrain's work (1.5 epochs) cannot pay for a block after the search and the
first step, so their runs are unchanged.
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as Fn

from mape.method.models import Encoded, TaskModel
from mape.method.update import Check, KeepClosest, MaskedParams, Target, training_only
from mape.method.work import GRAD_WORK, Work

DISTIL_WEIGHT = 30.0  # weight of the retain distillation term (a stand-alone trial, vit-mnist backdoor seed 0,
# 300 steps from the original: 10 kept clean test accuracy a little higher, 91.9 against 91.3-91.6 %, but turned
# 2 of the 26 retained 0s of the check wrong, which the class focus does not allow; 30 turned at most 1)
DISTIL_EVERY = 25     # Adam steps between two checks
DISTIL_FORGET_BATCH = 32
DISTIL_RETAIN_BATCH = 64
DISTIL_MAX_STEPS = 400


def first_block_work(n_forget: int, n_retain: int, trial_work: float, scan_work: float) -> float:
    """Counted work of one block: ``DISTIL_EVERY`` steps (full batches), its scan of D_f and its check."""
    bf, br = min(DISTIL_FORGET_BATCH, n_forget), min(DISTIL_RETAIN_BATCH, n_retain)
    return DISTIL_EVERY * GRAD_WORK * (bf + br) + trial_work + scan_work


def push_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean −log(1 − p_y): 0 once an example is off its label, ≈ −log(1 − p) while it is still on it."""
    p = torch.softmax(logits.float(), -1).gather(1, y[:, None]).squeeze(1)
    return -torch.log1p(-p.clamp(max=1.0 - 1e-6)).mean()


def retain_kl(logits: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """KL(start ‖ now) per example, averaged: how far the retained predictions moved."""
    return Fn.kl_div(torch.log_softmax(logits.float(), -1), ref_logp, log_target=True, reduction="batchmean")


def distil_steps(task: TaskModel, mp: MaskedParams, forget_enc: Encoded, retain_enc: Encoded,
                 ref_logp: torch.Tensor, lr: float, seed: int, evaluate: Callable[[], Check], target: Target,
                 start: Check, left_fn: Callable[[], np.ndarray], work: Work, trial_work: float,
                 scan_work: float) -> dict:
    """Run the distilled push from the current point (whose check is ``start``). ``ref_logp``: the starting
    model's log-probabilities on ``retain_enc``; ``left_fn()``: the D_f positions still to push (a scan,
    ``scan_work``). Returns {"steps": chosen step count, "trials": check records, "final": the kept Check,
    "stopped": why it ended, "seconds"}; the parameters are left at the kept checkpoint."""
    t0 = time.perf_counter()
    kept = KeepClosest(mp, target)
    kept.record(0, start)
    params = list(mp.masks)
    opt = torch.optim.Adam(params, lr=lr)
    gen = torch.Generator().manual_seed(seed)
    bf, br = min(DISTIL_FORGET_BATCH, len(forget_enc)), min(DISTIL_RETAIN_BATCH, len(retain_enc))
    block = first_block_work(len(forget_enc), len(retain_enc), trial_work, scan_work)
    steps, stopped, last = 0, "steps: the most distilled push steps were taken", start
    with training_only(task.model, params, train=False):
        while steps < DISTIL_MAX_STEPS:
            if not work.fits(block):
                stopped = f"work: another {DISTIL_EVERY} push steps and a check would pass the run's budget"
                break
            left = left_fn()
            work.spend(scan_work)
            if len(left) == 0 and target.feasible_check(last):
                stopped = "nothing left to push"
                break
            # nothing left but the retain check broken (the last block overshot): a block of the retain term alone
            pool = forget_enc.take(left) if len(left) else None
            for _ in range(DISTIL_EVERY):
                fi = None if pool is None else \
                    torch.randint(0, len(pool), (min(bf, len(pool)),), generator=gen).numpy()
                ri = torch.randint(0, len(retain_enc), (br,), generator=gen)
                rx = {k: v.to(task.device) for k, v in retain_enc.take(ri.numpy()).inputs.items()}
                loss = DISTIL_WEIGHT * retain_kl(task.logits(rx), ref_logp[ri].to(task.device))
                if fi is not None:
                    fb = pool.take(fi)
                    fx = {k: v.to(task.device) for k, v in fb.inputs.items()}
                    loss = push_loss(task.logits(fx), fb.labels.to(task.device)) + loss
                mp.descend(opt, loss)
                work.spend(GRAD_WORK * ((0 if fi is None else len(fi)) + br))
            steps += DISTIL_EVERY
            work.spend(trial_work)
            c = last = evaluate()
            kept.record(steps, c)
            if target.reached(c.forget_acc, c.forget_losses) and target.feasible_check(c):
                stopped = "target reached"
                break
    kept.restore()
    for t in kept.trials:
        t["round"] = "distil"
    return {"steps": kept.chosen, "taken": steps, "trials": kept.trials[1:], "final": kept.final,
            "stopped": stopped, "seconds": time.perf_counter() - t0}
