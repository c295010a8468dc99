"""The follow-up step loop of the automatic step (DESIGN.md §7–§8.5): further masked steps on what is left to
forget, each bounded by the run's counted-work budget and stopped when it brings no progress or does harm.

:func:`follow_up_steps` is the ``so`` update. With ``step='auto'`` and a loss-distribution target (not a whole class)
its first step already goes along the follow-ups' direction below, ĝ_f − ĝ_r on all of D_f
(:func:`contrasted_gradient`; its gradients are counted as work, and the search's ∇θ L(D_f) is used when the budget
cannot pay for them). When one step cannot reach the target within
the retain tolerance, up to ``config.so_steps - 1`` further steps follow from the chosen point, each recomputing
its gradient there on the examples :func:`_still_to_forget` names (at most ``FOLLOW_UP_FORGET``, the
most confident), minus that of the first ``FOLLOW_UP_RETAIN`` examples of the retain sample (repairing
what the previous steps cost): d = M ⊙ (Î_r + λ)⁻¹ ⊙ (ĝ_f,left − ĝ_r), both gradients scaled to unit
norm when the forget one is on the log loss. The retain Fisher Î_r is kept.
Follow-ups stop early — and say why in ``stopped`` — when the next one would take the run's counted work
past ``work``'s budget (:func:`run_budget`: half of a retrain's work, the search's already spent), or when a
step from a feasible point is not feasible or does not bring D_f closer to the target at all
(:func:`_no_follow_up`; the step is undone: first, do no harm). Work is counted in forward-example units
(:class:`mape.method.work.Work`): the first step's trials and a
follow-up's cost alike: a follow-up's gradients cost ``GRAD_WORK`` per example, each step-size trial
``trial_work`` (a whole-class trial, with ``retain_check_size``: the examples it checks plus the retain
and unseen check samples), and its scan of D_f (which examples are left) one unit per example — skipped when
``check_covers_forget`` (the check sample is all of D_f, in order: the chosen trial's check already
measured it); a follow-up starts only if its scan, its gradients and one trial fit, and its trials stop
when the next would not. (With the scan uncounted, BBC ``class:tech:120`` seed 2's follow-up ran 19.7 s
after an 18.9 s search, its counted work within budget.) Counting instead of timing keeps a seeded run
identical on every machine. For a whole class, with ``evaluate_on`` (the check with the forget examples
at given positions of D_f instead of the sample), the follow-ups go on while any example of D_f — all of
it is measured — is still classified right, even when the check sample already reads 0 %, and their
step-size trials check those examples (``forget_checked`` in the trial records) instead of the sample
(vit-mnist class:3 seed 1: 1.25 % of the class left after the check read 0 %; 0.75 % with these checks).
The report lists every step's trials (``round`` = step number), ``step_seconds`` and ``work``.
With ``distil`` (``unlearn`` passes :func:`distil_follow_up`): when the first step stops short of the target,
``distil(report)`` is asked first and, when it returns True (the work budget paid for it), the distilled push
of :mod:`mape.method.distil` has replaced the follow-ups (its trials have ``round`` = ``"distil"``) — unless the
push kept no checkpoint (every check farther from the target than the first step): then the follow-ups run from
the first step's point after all, and the report keeps the push's record and trials.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from mape.base.metrics import example_losses
from mape.method.models import Encoded, TaskModel
from mape.method.scoring import param_stats
from mape.method.update import SO_GRID, Check, MaskedParams, Target, UpdateReport, so_direction, so_update
from mape.method.work import GRAD_WORK, Work, retrain_work
from mape.run.config import FOLLOW_UP_FORGET, FOLLOW_UP_RETAIN, RUN_WORK_SHARE, Progress, UnlearnConfig
from mape.run.targets import RequestSamples
from mape.run.workspace import Workspace


def run_budget(ws: Workspace, smp: "RequestSamples") -> Work:
    """The counted work a run may do: ``RUN_WORK_SHARE`` of retraining without D_f (the user's alternative,
    :func:`mape.method.update.retrain_work`: the preset's epochs over every retained example)."""
    retrain = retrain_work(ws.preset.recipe.epochs, len(smp.retain_all))
    return Work(RUN_WORK_SHARE * retrain, retrain=retrain)


def search_work(n_forget: int, n_retain: int) -> float:
    """The search's model work in forward-example units: one gradient pass over D_f and the retain sample
    (its greedy refinement is arithmetic on the stored gate gradients, not counted: the budget errs short)."""
    return GRAD_WORK * (n_forget + n_retain)


def _still_to_forget(task, forget_enc: Encoded, target: Target, batch_size: int,
                     cap: int | None = None) -> tuple[np.ndarray, str, np.ndarray]:
    """(forget examples the next step works on, loss it ascends, the model's probabilities on D_f): a scan of
    D_f, then :func:`_left_to_forget` on its losses (for a whole class: on which examples are still right)."""
    probs = task.predict_proba(forget_enc, batch_size)
    y = forget_enc.labels.numpy()
    return _left_to_forget(example_losses(probs, y), probs.argmax(1) == y, target, cap), "logce", probs


def _left_to_forget(losses: np.ndarray, correct: np.ndarray | None, target: Target,
                    cap: int | None = None) -> np.ndarray:
    """The forget examples the next step works on. Against a loss distribution: the examples more confident
    than the unseen example of the same rank (1-D optimal transport matching). For a whole class: those still
    classified correctly (``correct``). The step ascends the log loss for both, so near-certain examples move
    too (on the cross-entropy, ViT · MNIST ``class:3`` kept 26.5 % over 3 seeds under the same work budget; on
    the log loss, with :func:`_follow_up_grid`'s step sizes, 19.0 % over 5). With ``cap``: at most that many of
    them, the most confident (lowest loss) — a follow-up gradient needs a direction, not every example, and
    these are furthest from unseen."""
    if target.reference_losses is None:
        left = np.flatnonzero(correct)
    else:
        ranks = np.argsort(np.argsort(losses, kind="stable"), kind="stable")
        matched = np.quantile(target.reference_losses, (ranks + 0.5) / len(losses))
        left = np.flatnonzero(losses < matched)
    if cap is not None and len(left) > cap:
        left = np.sort(left[np.argsort(losses[left], kind="stable")[:cap]])
    return left


def _measured_on(c: Check, probs: np.ndarray, labels: np.ndarray, idx: np.ndarray) -> Check:
    """``c`` with its forget part measured on the D_f positions ``idx`` (``probs``: the same model on D_f)."""
    p, y = probs[idx], labels[idx]
    return Check(float((p.argmax(1) == y).mean()), c.retain_acc, example_losses(p, y), c.retain_losses,
                 c.retain_correct, c.unseen_losses)


def _follow_up_grid(previous_step: float) -> tuple:
    """Step sizes a follow-up tries: from the grid value at or just below a third of the previous step's
    (if that already overshoots, so_update goes down from there), not from the smallest — the trials saved
    pay for more follow-ups under the work budget."""
    start = max([i for i, g in enumerate(SO_GRID) if g <= previous_step / 3 * (1 + 1e-9)] or [0])
    return SO_GRID[start:]


_NO_FOLLOW_UP = {"stalled": "did not bring the forget set closer to the target",
                 "infeasible": "would break what the retain check allows"}


def _no_follow_up(target: Target, before: Check | None, after: Check | None) -> str | None:
    """Why a follow-up step from ``before`` to ``after`` is undone (None: it is kept). From a feasible point a
    step is kept only if it stays feasible (within the retain tolerance, the focus and the separation: a
    follow-up may not buy forgetting with harm the first step was not allowed to do) and brings D_f closer to
    the target at all (its miss falls; the run's work budget, not a progress rate, bounds how long small
    steps go on)."""
    if before is None or after is None or not target.feasible_check(before):
        return None
    if not target.feasible_check(after):
        return "infeasible"
    if target.miss(after.forget_acc, after.forget_losses) >= target.miss(before.forget_acc, before.forget_losses):
        return "stalled"
    return None


def contrasted_gradient(task, params: list, forget_enc: Encoded, repair_enc: Encoded, batch_size: int,
                        loss: str = "logce") -> dict:
    """ĝ_f − ĝ_r: the gradient of the mean log loss (``loss``) on ``forget_enc`` minus that of the cross-entropy on
    the repair retain examples, each scaled to unit norm — the direction of every step against a loss distribution
    (the first and the follow-ups). The forget gradient alone also lowers the model's confidence on everything: on
    BBC ``class:tech:120`` seed 2 every step along it moved the retain losses up (rank +0.21 to +0.40) while, in the
    model's own frame, D_f did not move at all, and the run ended at gap 0.178 (original 0.181, MIA 29.9 % against
    the retrained model's 100 %); along ĝ_f − ĝ_r the first step η = 0.01 reached the target with the retain losses
    unmoved (+0.002): gap 0.010, MIA 99.4 % (BENCHMARKS "Why seed 2 barely moves")."""
    grad_f = _unit(param_stats(task, forget_enc, params, "grad", batch_size, loss=loss))
    grad_r = _unit(param_stats(task, repair_enc, params, "grad", batch_size))
    return {p: grad_f[p] - grad_r[p] for p in params}


def _unit(grad: dict) -> dict:
    norm = float(np.sqrt(sum(float((g.double() ** 2).sum()) for g in grad.values())))
    return {p: g / max(norm, 1e-30) for p, g in grad.items()}


def follow_up_steps(task, mp: MaskedParams, mg, forget_enc: Encoded, retain_enc: Encoded, config: UnlearnConfig,
              evaluate, target: Target, progress: Progress | None, work: Work | None = None,
              trial_work: float = 0.0, evaluate_on=None, check_covers_forget: bool = False,
              retain_check_size: int | None = None, distil=None) -> UpdateReport:
    """The ``so`` update, and with ``step='auto'`` its follow-up steps: see the module docstring."""
    prog = (lambda s, f: progress(s, f)) if progress else None
    work = Work(float("inf")) if work is None else work
    params = list(mp.masks)
    repair_enc = retain_enc.take(np.arange(min(len(retain_enc), FOLLOW_UP_RETAIN)))
    t_first = time.perf_counter()
    first_grad, first_grad_work = mg.param_forget_grad, GRAD_WORK * (len(forget_enc) + len(repair_enc))
    if config.step == "auto" and target.reference_losses is not None and work.fits(first_grad_work + trial_work):
        first_grad = contrasted_gradient(task, params, forget_enc, repair_enc, config.batch_size)
        work.spend(first_grad_work)
    report = so_update(task, mp, so_direction(mp, first_grad, mg.param_retain_fisher, config.damping),
                       config.step, evaluate, target, progress=prog, work=work, trial_work=trial_work)
    seconds = [time.perf_counter() - t_first]
    if config.step == "auto" and not report.reached_target and distil is not None \
            and _distilled(report, seconds, distil, work, mp):
        return report
    pushed = report.distil  # a push that kept nothing: its record and trials stay in the report
    steps, trials = [report.step], report.trials if pushed else [{**t, "round": 1} for t in report.trials]
    stopped, last = None, report.final

    def out_of_work(need: float) -> str | None:
        return _out_of_work(work, need)

    check_class = target.whole_class and evaluate_on is not None
    while config.step == "auto" and len(steps) < config.so_steps and (check_class or not report.reached_target):
        class_round = check_class and last is not None
        t_step = time.perf_counter()  # the follow-up's clock includes its scan
        if check_covers_forget and not class_round and target.reference_losses is not None and last is not None \
                and last.forget_losses is not None and len(last.forget_losses) == len(forget_enc):
            # the chosen trial's check already measured every example of D_f at this point: no scan
            left, loss_kind, probs = _left_to_forget(last.forget_losses, None, target, FOLLOW_UP_FORGET), "logce", None
        else:  # scan D_f (counted: |D_f| forward passes), and only if a follow-up could still run after it
            least_trial = 1 + retain_check_size if class_round and retain_check_size is not None else trial_work
            stopped = out_of_work(len(forget_enc) + GRAD_WORK * (1 + len(repair_enc)) + least_trial)
            if stopped:
                break
            left, loss_kind, probs = _still_to_forget(task, forget_enc, target, config.batch_size,
                                                      cap=FOLLOW_UP_FORGET)
            work.spend(len(forget_enc))
        if len(left) == 0:
            if class_round:  # measured on all of D_f, not only on the check sample
                report.reached_target = target.feasible_check(last)
            break
        step_eval, extra, round_trial_work = evaluate, {}, trial_work
        if class_round:  # the trials check the class examples still right (all of D_f was measured), not a
            def step_eval(left=left):  # check sample that may already say 0
                return evaluate_on(left)
            last, extra = _measured_on(last, probs, forget_enc.labels.numpy(), left), {"forget_checked": len(left)}
            if retain_check_size is not None:  # its trials check those examples and the retain check sample
                round_trial_work = len(left) + retain_check_size
        grad_need = GRAD_WORK * (len(left) + len(repair_enc))
        stopped = out_of_work(grad_need + round_trial_work)
        if stopped:
            break
        if progress:
            progress(f"so step {len(steps) + 1}: gradients on {len(left)} example(s) not yet forgotten", 0.0)
        contrast = contrasted_gradient(task, params, forget_enc.take(left), repair_enc, config.batch_size, loss_kind)
        work.spend(grad_need)
        here = MaskedParams(mp.masks)  # the next step starts from the current point
        direction = so_direction(here, contrast, mg.param_retain_fisher, config.damping)
        report = so_update(task, here, direction, "auto", step_eval, target, progress=prog, work=work,
                           trial_work=round_trial_work, grid=_follow_up_grid(steps[-1]))
        trials += [{**t, "round": len(steps) + 1, **extra} for t in report.trials]
        seconds.append(time.perf_counter() - t_step)
        why = _no_follow_up(target, last, report.final)
        if why:
            here.set_offset(direction, 0.0)  # undo: first, do no harm
            report.reached_target = target.met(last)
            report.final = last
            stopped = f"{why}: step {len(steps) + 1} {_NO_FOLLOW_UP[why]} (undone)"
            break
        steps.append(report.step)
        last = report.final
    report.distil = pushed or report.distil
    return _finished(report, steps, trials, stopped, seconds, config, work, mp)


def _distilled(report: UpdateReport, seconds: list, distil, work: Work, mp: MaskedParams) -> bool:
    """Ask ``distil(report)`` for the distilled push (:mod:`mape.method.distil`) in place of so follow-ups; True
    when it ran (the work budget paid for it), reached the target or kept a checkpoint, and ``report`` is final.
    A push that kept nothing (every check farther from the target than the first step, e.g. all of a class off
    its label but the retain check broken) returns False with ``report.distil`` set: the so follow-ups run."""
    report.trials = [{**t, "round": 1} for t in report.trials]
    report.step_seconds = seconds
    if distil(report):
        report.work = work.to_json()
        report.params_changed = mp.changed()
        return report.reached_target or report.distil["steps"] > 0
    report.trials = [{k: v for k, v in t.items() if k != "round"} for t in report.trials]
    return False


def _out_of_work(work: Work, need: float) -> str | None:
    """Why another follow-up cannot run (``need`` more example passes would exceed the budget), or None."""
    if work.fits(need):
        return None
    return (f"work: another follow-up step ({need:.0f} example passes) would take the run past its budget "
            f"({work.budget:.0f}, half of a retrain's work; {work.spent:.0f} spent)")


def _finished(report: UpdateReport, steps: list, trials: list, stopped: str | None, seconds: list,
              config: UnlearnConfig, work: Work, mp: MaskedParams) -> UpdateReport:
    """The report of the first step and its follow-ups: every step, every trial (with its round), why they stopped."""
    if len(steps) > 1 or stopped:
        report.step = steps if len(steps) > 1 else steps[0]
        report.trials = trials
    report.stopped = stopped
    if config.step == "auto":
        report.step_seconds = seconds
        report.work = work.to_json()
    report.params_changed = mp.changed()
    return report


def _start_log_probs(model: TaskModel, enc: Encoded, batch_size: int) -> torch.Tensor:
    """The model's log-probabilities on ``enc`` (CPU, in ``enc``'s order)."""
    out = []
    model.model.eval()
    with torch.no_grad():
        for x, _ in enc.batches(batch_size, model.device):
            out.append(torch.log_softmax(model.logits(x).float(), -1).cpu())
    return torch.cat(out)


def distil_follow_up(ws: Workspace, task: TaskModel, start_model: TaskModel, mp: MaskedParams,
                      smp: RequestSamples, config: UnlearnConfig, evaluate, target: Target, report: UpdateReport,
                      work: Work) -> bool:
    """After a first ``so`` step that stopped short of the target, the distilled push (:mod:`mape.method.distil`) from
    there instead of ``so`` follow-ups, held to the starting model's predictions on the retain sample; ``report``
    records it. False (nothing done) when the run's work budget cannot pay for its first block of steps (the
    BBC presets: half a retrain's work is 1.5 epochs there, less than a block after the search): then the
    cheaper ``so`` follow-ups run."""
    from mape.method.distil import distil_steps, first_block_work

    if report.final is None or not work.fits(len(smp.retain_enc) + first_block_work(
            len(smp.forget_enc), len(smp.retain_enc), smp.trial_work, len(smp.forget_enc))):
        return False
    ref_logp = _start_log_probs(start_model, smp.retain_enc, config.batch_size)
    work.spend(len(smp.retain_enc))
    left = lambda: _still_to_forget(task, smp.forget_enc, target, config.batch_size)[0]  # noqa: E731
    out = distil_steps(task, mp, smp.forget_enc, smp.retain_enc, ref_logp, config.lr or ws.preset.recipe.lr,
                       config.seed, evaluate, target, report.final, left, work, smp.trial_work, len(smp.forget_enc))
    report.trials = (report.trials or []) + out["trials"]
    report.final = out["final"]
    report.reached_target = target.met(out["final"])
    report.distil = {"steps": out["steps"], "taken": out["taken"], "stopped": out["stopped"]}
    if report.step_seconds is not None:
        report.step_seconds.append(out["seconds"])
    return True
