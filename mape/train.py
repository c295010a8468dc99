"""The training recipe shared by the original model, the retrain reference and fine-tuning baselines."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

import torch
import torch.nn.functional as Fn

from mape.models import Encoded, TaskModel


@dataclass(frozen=True)
class Recipe:
    epochs: int = 3
    lr: float = 5e-5
    batch_size: int = 16
    weight_decay: float = 0.01
    warmup: float = 0.06
    seed: int = 0
    freeze_embeddings: bool = False   # saves time on the CPU; embeddings stay frozen in unlearning anyway

    def to_json(self) -> dict:
        return asdict(self)


def _embedding_params(model) -> set:
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    return set(emb.parameters()) if emb is not None else set()


def train(task: TaskModel, data: Encoded, recipe: Recipe,
          progress: Callable[[str, float], None] | None = None, stage: str = "training") -> None:
    """Fine-tune ``task`` in place with AdamW and a linear schedule (seeded, dropout on)."""
    model, device = task.model, task.device
    frozen = _embedding_params(model) if recipe.freeze_embeddings else set()
    params = [p for p in model.parameters() if p not in frozen]
    saved = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(p not in frozen)
    decay = [p for p in params if p.dim() > 1]
    no_decay = [p for p in params if p.dim() <= 1]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": recipe.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=recipe.lr)
    steps_per_epoch = (len(data) + recipe.batch_size - 1) // recipe.batch_size
    total = max(1, steps_per_epoch * recipe.epochs)
    warm = max(1, int(recipe.warmup * total))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warm, max(0.0, (total - s) / max(1, total - warm))))
    torch.manual_seed(recipe.seed)
    model.train()
    step = 0
    try:
        for epoch in range(recipe.epochs):
            for x, y in data.batches(recipe.batch_size, device, shuffle_seed=recipe.seed * 1000 + epoch):
                loss = Fn.cross_entropy(task.logits(x).float(), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                sched.step()
                step += 1
                if progress:
                    progress(stage, step / total)
    finally:
        model.eval()
        for p, flag in zip(model.parameters(), saved):
            p.requires_grad_(flag)
            p.grad = None
