"""A request's samples and its forget target (DESIGN.md §6): what an unseen example's loss looks like in the forget
set's class mix, the seeded retain / check samples and the target the automatic step aims for."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mape.base.errors import MapeError
from mape.base.metrics import example_losses
from mape.data.forget import ForgetSet
from mape.method.models import Encoded, TaskModel
from mape.method.scoring import sample_retain
from mape.method.update import (
    Check,
    Target,
    check,
)
from mape.run.config import CHECK_RETAIN, CHECK_SIZE, CHECK_UNSEEN, REFERENCE_SIZE, WHOLE_CLASS_SLACK
from mape.run.workspace import Workspace


def retrained_prior_shift(ws: Workspace, forget: ForgetSet) -> np.ndarray:
    """δ_c = log(π'_c / π_c) per class: how the training set's class prior changes when D_f leaves it.

    A classifier's logits carry its training prior (logit_c ≈ log p(x|c) + log π_c), so a model retrained
    without D_f sees every example of a depleted class with its logit lowered by δ_c. For a random set
    δ ≈ 0; for part of a class it is not: on BBC ``class:tech:120`` (120 of 321 tech articles) δ_tech =
    −0.40 and +0.07 for the others, which turns the original's median loss on unseen tech articles 0.0132
    into 0.0209 — the retrained model's median loss on the forgotten articles is 0.0215 (its quartiles
    0.021–0.023 against 0.020–0.023 for the shifted estimate). Without the shift the original's unseen
    losses equal its training losses there and the target would say "already forgotten"."""
    k = len(ws.dataset.classes)
    n = np.bincount(ws.train_y, minlength=k).astype(np.float64)
    after = n - np.bincount(ws.train_y[forget.indices], minlength=k)
    with np.errstate(divide="ignore", invalid="ignore"):
        delta = np.log((after / max(after.sum(), 1.0)) / (n / n.sum()))
    return np.clip(np.nan_to_num(delta, nan=0.0, neginf=-50.0), -50.0, 50.0)


def shift_prior(probs: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """Probabilities with each class's log-probability moved by ``delta`` and renormalised."""
    logp = np.log(np.clip(np.asarray(probs, dtype=np.float64), 1e-300, 1.0)) + delta[None, :]
    p = np.exp(logp - logp.max(1, keepdims=True))
    return p / p.sum(1, keepdims=True)


def forget_target_estimate(ws: Workspace, forget: ForgetSet) -> tuple[float, str]:
    """(forget accuracy a model that never saw D_f would score, where the estimate comes from).
    0 for a whole class. Otherwise the original's accuracy per class, weighted by the forget set's
    class mix, on examples it never trained on (:meth:`Workspace.unseen_reference`), with the class
    prior a model retrained without D_f would have (:func:`retrained_prior_shift`)."""
    if forget.forget_class is not None:
        return 0.0, "whole class"
    probs, ys, where = ws.unseen_reference()
    if getattr(ws, "scenario", None) is None:
        probs = shift_prior(probs, retrained_prior_shift(ws, forget))
        where += " (prior shifted to the retained class mix)"
    correct = probs.argmax(1) == ys
    fy = ws.train_y[forget.indices]
    if getattr(ws, "scenario", None) is not None:  # issue 15: altered examples are judged by their true class
        from mape.data.scenarios import poisoned_forget_target

        return poisoned_forget_target(ws.scenario, ws.train_y, forget.indices, probs.argmax(1), ys), \
            f"original's accuracy on {where}"
    accs = [correct[ys == c].mean() if (ys == c).any() else correct.mean() for c in fy]
    return float(np.mean(accs)), f"original's accuracy on {where}"


def unseen_loss_reference(ws: Workspace, forget: ForgetSet, seed: int = 0, size: int = REFERENCE_SIZE) -> np.ndarray:
    """Per-example losses a model that never saw D_f would have on it: the original's losses on unseen
    examples (:meth:`Workspace.unseen_reference`) under the retained class prior
    (:func:`retrained_prior_shift`), drawn per class in D_f's class mix (seeded)."""
    probs, ys, _ = ws.unseen_reference()
    if getattr(ws, "scenario", None) is not None:  # issue 15: losses vs the training label, true class's inputs
        from mape.data.scenarios import loss_reference

        return loss_reference(ws.scenario, ws.train_y, forget.indices, probs, ys, seed, size)
    losses = example_losses(shift_prior(probs, retrained_prior_shift(ws, forget)), ys)
    fy = ws.train_y[forget.indices]
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(fy, return_counts=True)
    parts = []
    for c, n in zip(classes, counts):
        pool = losses[ys == c] if (ys == c).any() else losses
        parts.append(rng.choice(pool, max(1, int(round(size * n / len(fy)))), replace=True))
    return np.concatenate(parts)


LOSS_BINS = np.linspace(-7.0, 2.0, 37)  # log10 of the per-example loss (1e-7 .. 100)


def loss_histograms(losses: dict[str, np.ndarray]) -> dict:
    """{"log10_edges": edges, name: share of examples per bin} for per-example losses (clipped into the
    range): the forget set's loss distribution under each model next to that of unseen examples."""
    out: dict = {"log10_edges": [round(float(e), 4) for e in LOSS_BINS]}
    for name, values in losses.items():
        v = np.log10(np.clip(np.asarray(values, dtype=np.float64), 10 ** LOSS_BINS[0], 10 ** LOSS_BINS[-1]))
        counts, _ = np.histogram(v, LOSS_BINS)
        out[name] = [round(float(c) / max(len(v), 1), 6) for c in counts]
        out.setdefault("median", {})[name] = float(np.median(values)) if len(values) else None
    return out


def forget_target(ws: Workspace, forget: ForgetSet, retain_acc: float, tolerance: float, seed: int = 0,
                  retain_losses: np.ndarray | None = None, retain_labels=None, retain_correct=None,
                  unseen_losses: np.ndarray | None = None) -> Target:
    """What D_f should look like after unlearning (DESIGN.md §8.1, ``mape.method.update`` docstring): for a whole class,
    accuracy 0; otherwise the accuracy *and* the loss distribution of unseen examples of its classes.
    ``retain_losses`` / ``unseen_losses``: the starting model's losses on the retain and unseen check samples,
    whose separation a step may not lower beyond sampling noise (:meth:`Target.feasible`);
    ``retain_labels`` / ``retain_correct``: that sample's labels
    and which of them the starting model gets right — when D_f is part of its classes (not all classes: a
    partial class), the examples of those classes it gets right become the focus that a step may not break
    (:meth:`Target.class_flips_allowed`)."""
    fa, source = forget_target_estimate(ws, forget)
    if forget.forget_class is not None:
        return Target(fa, retain_acc, tolerance, slack=WHOLE_CLASS_SLACK, source=source,
                      retain_reference_losses=retain_losses, unseen_reference_losses=unseen_losses,
                      whole_class=True)
    focus = None
    if retain_labels is not None and retain_correct is not None:
        classes = np.unique(ws.train_y[forget.indices])
        if len(classes) < len(ws.dataset.classes):
            focus = np.isin(np.asarray(retain_labels), classes) & np.asarray(retain_correct, dtype=bool)
    return Target(fa, retain_acc, tolerance, source=f"{source}; loss distribution of the same examples",
                  reference_losses=unseen_loss_reference(ws, forget, seed), retain_reference_losses=retain_losses,
                  unseen_reference_losses=unseen_losses, retain_focus=focus)


def start_target(ws: Workspace, forget: ForgetSet, start: Check, check_retain: Encoded, tolerance: float,
                 seed: int = 0) -> Target:
    """:func:`forget_target` for a run that has measured its starting model: ``start`` is the
    :class:`~mape.method.update.Check` of that model on the retain check sample ``check_retain``."""
    return forget_target(ws, forget, start.retain_acc, tolerance, seed, start.retain_losses,
                         check_retain.labels.numpy(), start.retain_correct, start.unseen_losses)


@dataclass
class RequestSamples:
    """The samples one request works on (seeded; shared by MAPE and the baselines)."""
    forget_enc: Encoded
    retain_all: np.ndarray      # every retain index
    retain_enc: Encoded         # the retain sample for gradients / Fisher / retain batches
    retain_eval_idx: np.ndarray  # the fixed retain sample for retain accuracy and MIA
    check_f: Encoded            # forget check sample of the auto step size
    check_r: Encoded            # retain check sample of the auto step size
    check_u: Encoded            # unseen check sample of the auto step size (never trained on; retained classes)

    def check(self, task: TaskModel, forget: Encoded | None = None) -> Check:
        """The auto step's check of ``task`` (on ``forget`` instead of the forget check sample if given)."""
        return check(task, self.check_f if forget is None else forget, self.check_r, unseen=self.check_u)

    @property
    def trial_work(self) -> int:
        """Counted work of one check (forward passes over the three check samples)."""
        return len(self.check_f) + len(self.check_r) + len(self.check_u)


def request_samples(ws: Workspace, forget: ForgetSet, forgotten: np.ndarray, seed: int,
                    retain_sample: int | None) -> RequestSamples:
    retain_all = np.setdiff1d(np.arange(len(ws.train_y)), forgotten)
    if len(retain_all) == 0:
        raise MapeError("Nothing would be left to retain after this request.")
    size = retain_sample or (2048 if ws.device.type == "cuda" else 512)
    retain_eval_idx = ws.retain_eval_indices(forgotten)
    rng = np.random.default_rng(seed)
    forget_enc = ws.train_enc.take(forget.indices)
    check_f = forget_enc.take(np.sort(rng.choice(len(forget_enc), min(CHECK_SIZE, len(forget_enc)), replace=False)))
    check_r = ws.train_enc.take(np.sort(rng.choice(retain_eval_idx, min(CHECK_RETAIN, len(retain_eval_idx)),
                                                   replace=False)))
    return RequestSamples(forget_enc, retain_all, ws.train_enc.take(sample_retain(retain_all, size, seed)),
                          retain_eval_idx, check_f, check_r, unseen_check(ws, forget, seed))


def unseen_check(ws: Workspace, forget: ForgetSet, seed: int, size: int = CHECK_UNSEEN) -> Encoded:
    """A seeded sample of examples the original never trained on (the training examples a training limit left
    out when there are some, else the test split), of the classes D_f leaves in the model (all but a forgotten
    whole class)."""
    unseen = ws.dataset.unseen
    if unseen is not None and len(unseen):
        y, take = np.asarray(unseen.y), lambda idx: ws.task.encode(unseen.take(idx))
    else:
        y, take = ws.test_y, ws.test_enc.take
    pool = np.flatnonzero(y != forget.forget_class) if forget.forget_class is not None else np.arange(len(y))
    rng = np.random.default_rng(seed + 99)
    return take(np.sort(rng.choice(pool, min(size, len(pool)), replace=False)))
