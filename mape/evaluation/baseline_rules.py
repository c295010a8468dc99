"""The update rules of the published baselines: SalUn's saliency mask, SSD's selective dampening and SCRUB's
teacher-student distillation (each on a private copy of the model)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as Fn

from mape.base.errors import MapeError
from mape.method.models import Encoded, TaskModel
from mape.method.scoring import param_stats
from mape.method.update import (
    KeepClosest,
    MaskedParams,
    Target,
    UpdateReport,
    training_only,
)
from mape.run.config import Progress


def layer_params(task: TaskModel) -> list[torch.nn.Parameter]:
    """All parameters of the Transformer layers (the full-parameter baselines' scope)."""
    from mape.method.adapters import LAYOUTS, first_attr

    a = task.adapter
    layers = first_attr(task.model, LAYOUTS[a.arch]["layers"])
    if layers is None:  # pragma: no cover - the adapter found them a moment ago
        raise MapeError("Cannot find the Transformer layers of this model.")
    return [p for p in layers.parameters()]


def salun_mask(task: TaskModel, forget_enc: Encoded, fraction: float = 0.5, batch_size: int = 32,
               params: list | None = None) -> dict[torch.nn.Parameter, torch.Tensor]:
    """SalUn's saliency mask: the top ``fraction`` of entries by |∇θ L(D_f)|, ranked globally over
    ``params`` (default: the Transformer layers). Exactly round(fraction · N) entries are selected."""
    params = params if params is not None else layer_params(task)
    grads = param_stats(task, forget_enc, params, "grad", batch_size)
    flat = torch.cat([grads[p].abs().reshape(-1).float().cpu() for p in params])
    n = flat.numel()
    k = int(round(fraction * n))
    chosen = torch.zeros(n, dtype=torch.bool)
    if k >= n:
        chosen[:] = True
    elif k > 0:
        thr = torch.kthvalue(flat, n - k + 1).values  # the k-th largest value
        chosen = flat > thr
        ties = torch.nonzero(flat == thr).squeeze(1)
        chosen[ties[: k - int(chosen.sum())]] = True
    masks, start = {}, 0
    for p in params:
        masks[p] = chosen[start:start + p.numel()].view_as(p).to(p.device)
        start += p.numel()
    return masks


@dataclass
class SSDReport:
    alpha: float
    lam: float
    selected: int           # entries with F_f > α·F_r
    candidates: int         # entries considered
    mean_factor: float      # mean dampening factor over the selected entries

    def to_json(self) -> dict:
        return asdict(self)


@torch.no_grad()
def ssd_dampen(task: TaskModel, forget_enc: Encoded, retain_enc: Encoded, alpha: float = 10.0, lam: float = 1.0,
               batch_size: int = 32, params: list | None = None, fishers: tuple[dict, dict] | None = None) -> SSDReport:
    """Selective synaptic dampening in place: θ ← θ · min(λ F_r / F_f, 1) where F_f > α F_r."""
    params = params if params is not None else layer_params(task)
    if fishers is None:
        with torch.enable_grad():
            ff = param_stats(task, forget_enc, params, "fisher", batch_size)
            fr = param_stats(task, retain_enc, params, "fisher", batch_size)
    else:
        ff, fr = fishers
    selected, total, factor_sum = 0, 0, 0.0
    for p in params:
        sel = ff[p] > alpha * fr[p]
        beta = torch.where(sel, (lam * fr[p] / ff[p].clamp_min(1e-30)).clamp(max=1.0), torch.ones_like(ff[p]))
        if bool(sel.any()):
            p.copy_(torch.where(sel, p * beta.to(p.dtype), p))
        selected += int(sel.sum())
        total += p.numel()
        factor_sum += float(beta[sel].sum())
    return SSDReport(alpha, lam, selected, total, factor_sum / selected if selected else 1.0)


SCRUB_T = 4.0           # distillation temperature (Kurmanji et al., 2023)


SCRUB_MAX_EPOCHS = 3    # "msteps": epochs that include the max (forget) pass; later epochs only repair


def _distill_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, t: float = SCRUB_T) -> torch.Tensor:
    """KL(teacher ‖ student) at temperature t, scaled by t² (per example, mean over the batch)."""
    log_s = torch.log_softmax(student_logits / t, -1)
    p_t = torch.softmax(teacher_logits / t, -1)
    return Fn.kl_div(log_s, p_t, reduction="batchmean") * t * t


def scrub(task: TaskModel, forget: Encoded, retain: Encoded, evaluate, target: Target, lr: float,
          batch_size: int = 32, seed: int = 0, max_epochs: int = 5, params: list | None = None,
          progress: Progress | None = None) -> UpdateReport:
    """SCRUB (Kurmanji et al., 2023, "Towards Unbounded Machine Unlearning"): the model is a student of
    the original (the frozen teacher). Each epoch has a *max* pass over D_f — ascend KL(teacher ‖ student),
    moving away from the teacher on the forget set — (only in the first ``SCRUB_MAX_EPOCHS`` epochs) and a
    *min* pass over the retain sample — descend KL(teacher ‖ student) + cross-entropy, staying with the
    teacher elsewhere — with Adam at ``lr`` on ``params`` (default: the Transformer layers, as the other
    full-parameter baselines). After every max pass (recorded as epoch − ½) and every epoch the check samples
    are measured against ``target``; the state closest to it is kept (auto number of epochs, the same rule as
    the other iterative methods).
    As in the authors' code the student trains with dropout on (train mode): at the start student and
    teacher are equal and the max pass's KL gradient would be exactly zero without it."""
    params = params if params is not None else layer_params(task)
    mp = MaskedParams({p: torch.ones_like(p, dtype=torch.bool) for p in params})
    teacher = task.clone()
    model, device = task.model, task.device
    opt = torch.optim.Adam(params, lr=lr)
    kept = KeepClosest(mp, target)
    teacher.model.eval()
    torch.manual_seed(seed)

    def teacher_logits(x):
        with torch.no_grad():
            return teacher.logits(x).float()

    def sgd_step(loss):
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    with training_only(model, params, train=True):
        for epoch in range(1, max_epochs + 1):
            model.train()  # evaluate() measures in eval mode
            if epoch <= SCRUB_MAX_EPOCHS:
                for x, _ in forget.batches(batch_size, device, shuffle_seed=seed * 1000 + epoch):
                    sgd_step(-_distill_kl(task.logits(x).float(), teacher_logits(x)))
                if kept.record(epoch - 0.5, evaluate()):  # after the max pass: it may already be there
                    break
                model.train()
            for x, y in retain.batches(batch_size, device, shuffle_seed=seed * 1000 + 500 + epoch):
                logits = task.logits(x).float()
                sgd_step(_distill_kl(logits, teacher_logits(x)) + Fn.cross_entropy(logits, y))
            settled = kept.record(epoch, evaluate())
            if progress:
                progress("scrub epochs", epoch / max_epochs)
            if settled:
                break
        kept.restore()
    final = kept.final
    return UpdateReport("scrub", kept.chosen, True, kept.trials, target.met(final), mp.changed(), final=final)
