"""The training recipe (epochs, learning rate, batch, …) of a preset: plain data, no torch, so that the presets
and the page can be read before torch is imported."""

from __future__ import annotations

from dataclasses import asdict, dataclass


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
