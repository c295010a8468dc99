"""Budgets, the warm start and the greedy block-diagonal refinement (DESIGN.md §6).

Vocabulary: a unit is *selected* when its parameters will be updated and *frozen* otherwise.
Sparsity S is the fraction of units frozen.

Warm start: the diagonal scores rank the units globally (per unit type, or jointly under a
parameter budget); this fixes k_l, the number selected in layer l.

Refinement, per layer and unit type with k_l fixed: the cost of freezing a set P is the estimated
rise of the objective's loss, ``Σ_{i∈P} G_i + ½ Σ_b (Σ_{i∈P} s_b,i)² / N`` (scale convention in
``mape.method.scoring``), which on a single unit equals its diagonal score. Starting from the warm-start
frozen set, each selected unit (ascending score) is tried in the frozen set in place of the frozen
unit whose removal gives the lowest cost; the swap is kept only if it lowers the cost. So the cost
never rises above the warm start's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

SearchProgress = Callable[[str, float, "Selection | None"], None]


@dataclass
class Selection:
    heads: np.ndarray          # (L, H) bool: selected for update
    filters: np.ndarray        # (L, F) bool
    head_scores: np.ndarray    # (L, H) float
    filter_scores: np.ndarray  # (L, F) float
    swaps_heads: int = 0
    swaps_filters: int = 0
    stage: str = "warm start"

    @property
    def swaps(self) -> int:
        return self.swaps_heads + self.swaps_filters

    def counts(self) -> dict:
        return {"heads_per_layer": self.heads.sum(1).tolist(), "filters_per_layer": self.filters.sum(1).tolist()}

    def to_json(self) -> dict:
        return {"heads": self.heads.astype(int).tolist(), "filters": self.filters.astype(int).tolist(),
                "swaps": self.swaps, "swaps_heads": self.swaps_heads, "swaps_filters": self.swaps_filters,
                "selected_heads": int(self.heads.sum()), "selected_filters": int(self.filters.sum()),
                **self.counts()}


def top_k_mask(scores: np.ndarray, k: int) -> np.ndarray:
    """Boolean mask of the k highest scores (ties broken by position, deterministic)."""
    flat = scores.reshape(-1)
    order = np.argsort(-flat, kind="stable")
    mask = np.zeros(flat.shape, dtype=bool)
    mask[order[:k]] = True
    return mask.reshape(scores.shape)


def separate_budget(n_units: int, sparsity: float) -> int:
    return int(round((1.0 - sparsity) * n_units))


def warm_start(head_scores: np.ndarray, filter_scores: np.ndarray, sparsity: float,
               joint: bool = False, unit_params: tuple[int, int] = (1, 1)) -> tuple[np.ndarray, np.ndarray]:
    """Selected heads and filters from the diagonal scores.

    Separate budgets: (1−S)·L·H heads and (1−S)·L·F filters. Joint budget: units in descending score
    (scores are loss changes, comparable across types) until (1−S) of all unit parameters is used.
    """
    if not joint:
        return (top_k_mask(head_scores, separate_budget(head_scores.size, sparsity)),
                top_k_mask(filter_scores, separate_budget(filter_scores.size, sparsity)))
    per_head, per_filter = unit_params
    scores = np.concatenate([head_scores.reshape(-1), filter_scores.reshape(-1)])
    cost = np.concatenate([np.full(head_scores.size, per_head), np.full(filter_scores.size, per_filter)])
    budget = (1.0 - sparsity) * cost.sum()
    chosen = np.zeros(scores.shape, dtype=bool)
    used = 0
    for i in np.argsort(-scores, kind="stable"):
        if used + cost[i] <= budget:
            chosen[i] = True
            used += cost[i]
    nh = head_scores.size
    return chosen[:nh].reshape(head_scores.shape), chosen[nh:].reshape(filter_scores.shape)


def block_cost(grad: torch.Tensor, batch_grads: torch.Tensor, n: int, frozen: torch.Tensor) -> float:
    """Σ_{i∈P} G_i + ½ Σ_b (Σ_{i∈P} s_b,i)² / N for one layer (grad (U,), batch_grads (B, U))."""
    s = batch_grads[:, frozen].sum(1)
    return float(grad[frozen].sum() + 0.5 * (s * s).sum() / n)


def refine_layer(grad: torch.Tensor, batch_grads: torch.Tensor, n: int, scores: np.ndarray,
                 selected: np.ndarray) -> tuple[np.ndarray, int]:
    """One greedy pass of swaps for one layer; returns the new selected mask and the swap count.

    Runs without host synchronisation inside the loop (accept/reject is a tensor), so on a GPU the
    pass costs kernel launches only. Candidates outside the frozen set get +inf.
    """
    device = batch_grads.device
    frozen = torch.as_tensor(~selected, device=device)
    if bool(frozen.all()) or not bool(frozen.any()):
        return selected.copy(), 0
    fz = frozen.to(batch_grads.dtype)
    s_frozen = (batch_grads * fz).sum(1)                     # (B,)
    g_frozen = (grad * fz).sum()
    cost = g_frozen + 0.5 * (s_frozen * s_frozen).sum() / n
    swaps = torch.zeros((), dtype=torch.long, device=device)
    inf = torch.tensor(float("inf"), dtype=grad.dtype, device=device)
    for u in np.argsort(scores, kind="stable"):
        if not selected[u]:
            continue
        s_new = (s_frozen + batch_grads[:, u])[:, None] - batch_grads   # (B, U): swap u in, v out
        cand = torch.where(frozen, g_frozen + grad[u] - grad + 0.5 * (s_new * s_new).sum(0) / n, inf)
        best = torch.argmin(cand)
        accept = cand[best] < cost
        frozen[u] = frozen[u] | accept
        frozen[best] = frozen[best] & ~accept
        s_frozen = torch.where(accept, s_new[:, best], s_frozen)
        g_frozen = torch.where(accept, g_frozen + grad[u] - grad[best], g_frozen)
        cost = torch.where(accept, cand[best], cost)
        swaps = swaps + accept.long()
    return (~frozen).cpu().numpy(), int(swaps)


def refine(grad: torch.Tensor, batch_grads: torch.Tensor, n: int, scores: np.ndarray,
           selected: np.ndarray, passes: int = 1, on_layer: Callable[[int, np.ndarray], None] | None = None):
    """Refine every layer of one unit type; grad (L, U), batch_grads (B, L, U)."""
    selected = selected.copy()
    total = 0
    for _ in range(passes):
        made = 0
        for l in range(selected.shape[0]):
            selected[l], k = refine_layer(grad[l], batch_grads[:, l], n, scores[l], selected[l])
            made += k
            if on_layer:
                on_layer(l, selected)
        total += made
        if made == 0:
            break
    return selected, total


def search(task, forget, retain, objective: str = "mlr", sparsity: float = 0.9, joint: bool = False,
           passes: int = 1, seed: int = 0, batch_size: int = 32, with_params: bool = False,
           progress: SearchProgress | None = None):
    """The MAPE mask search: scores, warm start, greedy refinement. Returns (Selection, MaskGrads|None).

    ``progress(stage, fraction, selection)`` is called during the gradient passes (selection None),
    after the warm start and after every refined layer, so a UI can redraw the heatmaps live.
    """
    from mape.method.adapters import unit_param_counts
    from mape.method.scoring import contrast_scores, mask_gradients, norm_scores, unit_scores

    def report(stage, frac, sel=None):
        if progress:
            progress(stage, frac, sel)

    adapter = task.adapter
    mg = None
    norm = None
    if objective in ("mlr", "mlf") or with_params:
        mg = mask_gradients(task, forget, retain, batch_size, with_params=with_params,
                            progress=lambda st, f: report(st, f))
    if objective == "auto":
        raise ValueError("resolve 'auto' first (mape.method.scoring.resolve_objective)")
    if objective == "norm":
        norm = norm_scores(task, forget, batch_size, grads=mg.param_forget_grad if with_params else None)
    if objective == "contrast":
        norm = contrast_scores(task, forget, retain, batch_size)
    hs, fs = unit_scores(objective, mg, seed=seed, shape=adapter.shape, norm=norm)
    hs, fs = hs.double().numpy(), fs.double().numpy()
    heads, filters = warm_start(hs, fs, sparsity, joint, unit_param_counts(adapter))
    sel = Selection(heads, filters, hs, fs, stage="warm start")
    report("warm start", 1.0, sel)
    if objective not in ("mlr", "mlf") or passes <= 0:
        return sel, mg
    sign = 1.0 if objective == "mlr" else -1.0
    stats = ((mg.forget_heads, mg.retain_heads), (mg.forget_filters, mg.retain_filters))
    L = adapter.num_layers
    for kind, (fstat, rstat) in zip(("heads", "filters"), stats):
        curv = rstat if objective == "mlr" else fstat
        grad = sign * fstat.grad_sum
        scores = hs if kind == "heads" else fs
        current = sel.heads if kind == "heads" else sel.filters

        def on_layer(l, selected, kind=kind):
            setattr(sel, kind, selected.copy())
            sel.stage = f"greedy {kind}: layer {l + 1}/{L}"
            report("greedy refinement", (l + 1 + (L if kind == "filters" else 0)) / (2 * L), sel)

        refined, swaps = refine(grad, curv.batch_grads, curv.n, scores, current, passes, on_layer)
        setattr(sel, kind, refined)
        setattr(sel, f"swaps_{kind}", swaps)
    sel.stage = "done"
    return sel, mg
