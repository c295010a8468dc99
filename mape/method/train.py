"""The training recipe shared by the original model, the retrain reference and fine-tuning baselines."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as Fn

from mape.method.models import Encoded, TaskModel
from mape.method.recipe import Recipe


def embedding_params(model) -> set:
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    return set(emb.parameters()) if emb is not None else set()


def train(task: TaskModel, data: Encoded, recipe: Recipe,
          progress: Callable[[str, float], None] | None = None, stage: str = "training",
          epochs: int | None = None, max_steps: int | None = None, l1: float = 0.0,
          seed: int | None = None) -> int:
    """Fine-tune ``task`` in place with AdamW, a linear schedule with warm-up and gradient clipping
    (seeded, dropout on), for ``epochs`` (default: the recipe's) or at most ``max_steps`` steps.
    ``l1`` > 0 adds a proximal L1 step on the weight matrices after each optimiser step, with γ
    decaying linearly to 0 (the l1-sparse baseline). Returns the number of optimiser steps."""
    epochs = recipe.epochs if epochs is None else epochs
    seed = recipe.seed if seed is None else seed
    model, device = task.model, task.device
    frozen = embedding_params(model) if recipe.freeze_embeddings else set()
    params = [p for p in model.parameters() if p not in frozen]
    saved = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(p not in frozen)
    decay = [p for p in params if p.dim() > 1]
    no_decay = [p for p in params if p.dim() <= 1]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": recipe.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=recipe.lr)
    steps_per_epoch = (len(data) + recipe.batch_size - 1) // recipe.batch_size
    total = max(1, steps_per_epoch * epochs)
    if max_steps is not None:
        total = min(total, max_steps)
    warm = max(1, int(recipe.warmup * total))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warm, max(0.0, (total - s) / max(1, total - warm))))
    torch.manual_seed(seed)
    model.train()
    step = 0
    try:
        for epoch in range(epochs):
            for x, y in data.batches(recipe.batch_size, device, shuffle_seed=seed * 1000 + epoch):
                loss = Fn.cross_entropy(task.logits(x).float(), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                lr_now = opt.param_groups[0]["lr"]
                opt.step()
                sched.step()
                if l1 > 0:
                    shrink = lr_now * l1 * (1.0 - step / total)
                    with torch.no_grad():
                        for p in decay:
                            p.copy_(torch.sign(p) * (p.abs() - shrink).clamp_min(0))
                step += 1
                if progress:
                    progress(stage, step / total)
                if step >= total:
                    break
            if step >= total:
                break
    finally:
        model.eval()
        for p, flag in zip(model.parameters(), saved):
            p.requires_grad_(flag)
            p.grad = None
    return step
