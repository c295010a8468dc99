"""Mask gradients and unit scores (DESIGN.md §5).

One pass over the forget set and one over a retain sample, with parameters frozen and the gates
requiring grad, gives per batch b the gradient of the batch's *mean* loss with respect to the gates.

Scale convention (used everywhere in this package):
- ``s_b = n_b · g_b`` is the gradient of batch b's *summed* loss;
- ``G_f = Σ_b s_b`` over the forget set: the gradient of the summed forget loss (signed);
- ``F = Σ_b s_b² / N``: the diagonal empirical Fisher in per-example units (for equal batches this is
  n_b · mean_b g_b², the "mean of squared per-batch gradients scaled to per-example units");
- the block cost of freezing a set P (``mape.method.search``) uses the same scaling,
  ``Σ_{i∈P} G_f,i + ½ Σ_b (Σ_{i∈P} s_b,i)² / N``, so on a single unit it equals the diagonal score.

Objectives (higher = selected for update):
``mlr``: SC = G_f + ½ F_r;  ``mlf``: SC = −G_f + ½ F_f;  ``norm``: the L2 norm of the unit's
parameter gradient on the forget loss;  ``random``: seeded uniform scores;  ``contrast``: how much more the
unit responds to D_f than to the retain sample, (mean_f a − mean_r a) / std_r a, with a(x) the unit's output
on x averaged over its tokens (a filter: its activation; a head: the norm of its output slice). ``auto``
(the default) resolves per request (:func:`resolve_objective`): ``contrast`` for the poisoned examples of a
backdoor, ``mlr`` otherwise.

Why ``contrast`` for a backdoor: its poisoned examples are fit with near-certainty (CE ≈ 0), so their gate
gradient G_f vanishes and ``mlr`` reduces to ½ F_r — the units the clean task leans on most (ViT · MNIST
``backdoor:patch:0:80``: 2 heads and 39 of 51 filters in layer 0; gating them off leaves ASR at 100 % and
clean accuracy at 32 %). What the poisoned examples share and clean ones lack is the trigger; the units that
respond to it are the ones whose output on D_f stands out from their output on retained examples.

With ``with_params=True`` the same pass also accumulates, for the parameters the units own, the
gradient of the mean forget loss and the per-example diagonal Fisher on the retain sample, which the
``so`` update needs; this saves a second pass on the CPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as Fn

from mape.method.adapters import unit_param_masks
from mape.method.gates import Gates
from mape.method.models import Encoded, TaskModel

OBJECTIVES = ("auto", "mlr", "mlf", "norm", "random", "contrast")
Progress = Callable[[str, float], None]


@dataclass
class GateStats:
    """Gradient statistics of one gate tensor (heads L×H or filters L×F)."""
    grad_sum: torch.Tensor      # Σ_b s_b (gradient of the summed loss)
    fisher: torch.Tensor        # Σ_b s_b² / N (per-example units)
    batch_grads: torch.Tensor | None  # (B, L, U) per-batch summed-loss gradients s_b
    n: int


@dataclass
class MaskGrads:
    forget_heads: GateStats
    forget_filters: GateStats
    retain_heads: GateStats
    retain_filters: GateStats
    param_forget_grad: dict = field(default_factory=dict)    # param -> ∇ mean forget loss
    param_retain_fisher: dict = field(default_factory=dict)  # param -> per-example diag Fisher


def _unit_params(task: TaskModel) -> list[torch.nn.Parameter]:
    a = task.adapter
    L, H, F = a.num_layers, a.num_heads, a.num_filters
    return list(unit_param_masks(a, torch.ones(L, H), torch.ones(L, F)).keys())


def _summed_loss(logits: torch.Tensor, y: torch.Tensor, loss: str) -> torch.Tensor:
    """``ce``: the summed cross-entropy. ``logce``: Σ log ℓ_i — every example counts by its relative change
    in loss, so near-certain examples (ℓ ≈ 1e-5, whose CE gradient vanishes) move as much as unsure ones."""
    if loss == "ce":
        return Fn.cross_entropy(logits, y, reduction="sum")
    if loss == "logce":
        per = Fn.cross_entropy(logits, y, reduction="none")
        return torch.log(per + 1e-12).sum()
    raise ValueError(f"unknown loss {loss!r}")


def _gate_pass(task: TaskModel, enc: Encoded, batch_size: int, keep_batches: bool,
               params: list | None, param_mode: str | None, progress: Progress | None, stage: str,
               loss_kind: str = "ce"):
    """One pass; returns (head GateStats, filter GateStats, {param: accumulated tensor})."""
    model, device = task.model, task.device
    was_training = model.training
    model.eval()  # no dropout: the scores are a property of θ*
    saved = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    params = params or []
    for p in params:
        p.requires_grad_(True)
    acc = {p: torch.zeros_like(p, dtype=torch.float32) for p in params}
    a = task.adapter
    sum_h = torch.zeros(a.num_layers, a.num_heads, device=device)
    sum_f = torch.zeros(a.num_layers, a.num_filters, device=device)
    sq_h, sq_f = torch.zeros_like(sum_h), torch.zeros_like(sum_f)
    per_h, per_f = [], []
    n_total = len(enc)
    n_batches = (n_total + batch_size - 1) // batch_size
    gates = Gates(a, device=device)
    gates.heads.requires_grad_(True)
    gates.filters.requires_grad_(True)
    try:
        with gates:
            for i, (x, y) in enumerate(enc.batches(batch_size, device)):
                loss = _summed_loss(task.logits(x).float(), y, loss_kind)
                grads = torch.autograd.grad(loss, [gates.heads, gates.filters] + params)
                gh, gf = grads[0].detach(), grads[1].detach()
                sum_h += gh
                sum_f += gf
                sq_h += gh * gh
                sq_f += gf * gf
                if keep_batches:
                    per_h.append(gh)
                    per_f.append(gf)
                for p, g in zip(params, grads[2:]):
                    acc[p] += (g * g) if param_mode == "fisher" else g
                if progress:
                    progress(stage, (i + 1) / n_batches)
    finally:
        for p, flag in zip(model.parameters(), saved):
            p.requires_grad_(flag)
        model.train(was_training)
    stats = [GateStats(s, q / n_total, torch.stack(b) if keep_batches else None, n_total)
             for s, q, b in ((sum_h, sq_h, per_h), (sum_f, sq_f, per_f))]
    # "grad": Σ_b s_b / N = gradient of the mean loss; "fisher": Σ_b s_b² / N = per-example Fisher
    acc = {p: v / n_total for p, v in acc.items()}
    return stats[0], stats[1], acc


def param_stats(task: TaskModel, enc: Encoded, params: list, mode: str, batch_size: int, loss: str = "ce") -> dict:
    """Per parameter: ``grad`` = ∇ of the mean loss, ``fisher`` = per-example diagonal Fisher
    (Σ_b s_b² / N with s_b the summed-loss gradient of batch b; the scale convention above).
    ``loss``: ``ce`` (cross-entropy) or ``logce`` (mean log cross-entropy, see :func:`_summed_loss`)."""
    _, _, acc = _gate_pass(task, enc, batch_size, False, params, mode, None, mode, loss_kind=loss)
    return acc


def mask_gradients(task: TaskModel, forget: Encoded, retain: Encoded, batch_size: int = 32,
                   with_params: bool = False, progress: Progress | None = None) -> MaskGrads:
    """Gate gradients on D_f and on a retain sample (optionally parameter statistics too)."""
    params = _unit_params(task) if with_params else None
    fh, ff, pf = _gate_pass(task, forget, batch_size, True, params, "grad" if with_params else None,
                            progress, "forget gradients")
    rh, rf, pr = _gate_pass(task, retain, batch_size, True, params, "fisher" if with_params else None,
                            progress, "retain gradients")
    return MaskGrads(fh, ff, rh, rf, param_forget_grad=pf, param_retain_fisher=pr)


def norm_scores(task: TaskModel, forget: Encoded, batch_size: int = 32,
                grads: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """L2 norm of each unit's parameter gradient on the forget loss (objective ``norm``)."""
    if grads is None:
        _, _, grads = _gate_pass(task, forget, batch_size, False, _unit_params(task), "grad", None, "norm")
    a = task.adapter
    hd = a.head_dim
    heads = torch.zeros(a.num_layers, a.num_heads)
    filters = torch.zeros(a.num_layers, a.num_filters)
    for l, m in enumerate(a.layers):
        for proj in (m.q, m.k, m.v):
            if proj.out_features != a.num_heads * hd:
                continue
            g = grads[proj.weight].pow(2).sum(1)
            if proj.bias is not None:
                g = g + grads[proj.bias].pow(2)
            heads[l] += g.view(a.num_heads, hd).sum(1).cpu()
        heads[l] += grads[m.o.weight].pow(2).sum(0).view(a.num_heads, hd).sum(1).cpu()
        for up in m.up:
            g = grads[up.weight].pow(2).sum(1)
            filters[l] += (g + grads[up.bias].pow(2) if up.bias is not None else g).cpu()
        filters[l] += grads[m.down.weight].pow(2).sum(0).cpu()
    return heads.sqrt(), filters.sqrt()


def resolve_objective(objective: str, backdoor_poisoned: bool) -> str:
    """``auto``: ``contrast`` when D_f is the poisoned set of a backdoor (the trigger is what its examples
    share), ``mlr`` otherwise; any other objective stands as given."""
    if objective != "auto":
        return objective
    return "contrast" if backdoor_poisoned else "mlr"


def _unit_outputs(task: TaskModel, enc: Encoded, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per example, each unit's output averaged over the example's tokens (padding excluded): heads
    (N, L, H) the norm of the head's slice of the attention output projection's input; filters (N, L, F) the
    activation at the FFN down projection's input."""
    a = task.adapter
    L, H = a.num_layers, a.num_heads
    seen: dict = {}
    weights: list = [None]

    def token_mean(x: torch.Tensor) -> torch.Tensor:  # (B, T, U) -> (B, U)
        w = weights[0]
        if w is None or w.shape[1] != x.shape[1]:
            return x.float().mean(1)
        return (x.float() * w[..., None]).sum(1) / w.sum(1, keepdim=True)

    def head_hook(l):
        def hook(module, args):
            x = args[0]
            seen[("h", l)] = token_mean(x.reshape(*x.shape[:2], H, -1).float().norm(dim=-1))
        return hook

    def filter_hook(l):
        def hook(module, args):
            seen[("f", l)] = token_mean(args[0])
        return hook

    handles = []
    for l, mods in enumerate(a.layers):
        handles.append(mods.o.register_forward_pre_hook(head_hook(l)))
        handles.append(mods.down.register_forward_pre_hook(filter_hook(l)))
    heads, filters = [], []
    try:
        with torch.no_grad():
            for x, _ in enc.batches(batch_size, task.device):
                mask = x.get("attention_mask")
                weights[0] = mask.float() if mask is not None else None
                task.logits(x)
                heads.append(torch.stack([seen[("h", l)] for l in range(L)], 1).cpu())
                filters.append(torch.stack([seen[("f", l)] for l in range(L)], 1).cpu())
    finally:
        for h in handles:
            h.remove()
    return torch.cat(heads), torch.cat(filters)


def contrast_scores(task: TaskModel, forget: Encoded, retain: Encoded,
                    batch_size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Objective ``contrast``: (mean over D_f − mean over the retain sample) / std over the retain sample of
    each unit's token-averaged output (see the module docstring); heads L×H, filters L×F."""
    def standardised(f: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        f, r = f.double(), r.double()
        std = r.std(0, unbiased=False) if len(r) > 1 else torch.zeros_like(r[0])
        return ((f.mean(0) - r.mean(0)) / (std + 1e-6)).float()

    fh, ff = _unit_outputs(task, forget, batch_size)
    rh, rf = _unit_outputs(task, retain, batch_size)
    return standardised(fh, rh), standardised(ff, rf)


def unit_scores(objective: str, mg: MaskGrads | None, seed: int = 0, shape=None,
                norm: tuple | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores (heads L×H, filters L×F) on the CPU for an objective; higher = selected for update."""
    if objective == "mlr":
        return ((mg.forget_heads.grad_sum + 0.5 * mg.retain_heads.fisher).cpu(),
                (mg.forget_filters.grad_sum + 0.5 * mg.retain_filters.fisher).cpu())
    if objective == "mlf":
        return ((-mg.forget_heads.grad_sum + 0.5 * mg.forget_heads.fisher).cpu(),
                (-mg.forget_filters.grad_sum + 0.5 * mg.forget_filters.fisher).cpu())
    if objective in ("norm", "contrast"):
        return norm  # computed by the caller (norm_scores / contrast_scores)
    if objective == "random":
        gen = torch.Generator().manual_seed(seed)
        (L, H), (_, F) = shape["heads"], shape["filters"]
        return torch.rand(L, H, generator=gen), torch.rand(L, F, generator=gen)
    raise ValueError(f"unknown objective {objective!r}")


def sample_retain(retain_idx: np.ndarray, size: int, seed: int) -> np.ndarray:
    """A seeded sample of at most ``size`` retain indices (sorted)."""
    if len(retain_idx) <= size:
        return np.sort(retain_idx)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(retain_idx, size=size, replace=False))
