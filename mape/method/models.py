"""Task models: a Hugging Face classifier plus the encoder that turns raw examples into tensors.

``TaskModel`` is what every other module works with: ``encode`` a split once into tensors
(``Encoded``), iterate over batches, and call ``logits``. Text batches are trimmed to their longest
sequence, so short sentences cost little.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import torch
from torch import nn

from mape.base.errors import MapeError
from mape.method.adapters import Adapter, adapter_for


@dataclass
class Encoded:
    """A split as tensors (on the CPU): model inputs and integer labels."""
    inputs: dict[str, torch.Tensor]
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, idx) -> "Encoded":
        idx = torch.as_tensor(np.asarray(idx, dtype=np.int64))
        return Encoded({k: v[idx] for k, v in self.inputs.items()}, self.labels[idx])

    def with_labels(self, labels: torch.Tensor) -> "Encoded":
        return Encoded(self.inputs, labels)

    def length_order(self) -> np.ndarray | None:
        """Indices that sort the examples by token count (stable); None for inputs without a mask."""
        mask = self.inputs.get("attention_mask")
        if mask is None or mask.dim() != 2:
            return None
        return np.argsort(mask.sum(1).numpy(), kind="stable")

    def batches(self, batch_size: int, device="cpu",
                shuffle_seed: int | None = None) -> Iterator[tuple[dict, torch.Tensor]]:
        order = torch.arange(len(self))
        if shuffle_seed is not None:
            order = torch.randperm(len(self), generator=torch.Generator().manual_seed(shuffle_seed))
        for start in range(0, len(self), batch_size):
            idx = order[start:start + batch_size]
            batch = {k: v[idx] for k, v in self.inputs.items()}
            if "attention_mask" in batch:
                width = int(batch["attention_mask"].sum(1).max())
                batch = {k: (v[:, :width] if v.dim() == 2 else v) for k, v in batch.items()}
            yield {k: v.to(device) for k, v in batch.items()}, self.labels[idx].to(device)


@dataclass
class ImageFormat:
    """How raw uint8 images become ``pixel_values``: resize, channels, normalisation."""
    size: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def encode(self, images: np.ndarray) -> torch.Tensor:
        x = torch.as_tensor(np.asarray(images), dtype=torch.float32) / 255.0
        if x.dim() == 3:
            x = x[:, None]  # (N, 1, H, W)
        elif x.dim() == 4 and x.shape[-1] in (1, 3, 4):
            x = x[..., :3].permute(0, 3, 1, 2) if x.shape[-1] != 1 else x.permute(0, 3, 1, 2)
        if x.shape[1] != self.channels:
            x = x.mean(1, keepdim=True) if self.channels == 1 else x.expand(-1, self.channels, -1, -1)
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = torch.nn.functional.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        mean = torch.tensor(self.mean).view(1, -1, 1, 1)
        std = torch.tensor(self.std).view(1, -1, 1, 1)
        return ((x - mean) / std).contiguous()


@dataclass
class TaskModel:
    model: nn.Module
    modality: str                    # "text" | "image"
    classes: list[str]
    tokenizer: object | None = None
    max_length: int = 128
    image_format: ImageFormat | None = None
    _adapter: Adapter | None = field(default=None, repr=False)

    @property
    def adapter(self) -> Adapter:
        if self._adapter is None:
            self._adapter = adapter_for(self.model)
        return self._adapter

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device) -> "TaskModel":
        self.model.to(device)
        return self

    def clone(self) -> "TaskModel":
        """A deep copy of the network (shares the tokenizer); the adapter is rebuilt for the copy."""
        return TaskModel(copy.deepcopy(self.model), self.modality, self.classes, self.tokenizer,
                         self.max_length, self.image_format)

    def encode_inputs(self, xs) -> dict[str, torch.Tensor]:
        if self.modality == "text":
            tok = self.tokenizer(list(xs), truncation=True, max_length=self.max_length,
                                 padding="max_length", return_tensors="pt")
            keep = ("input_ids", "attention_mask", "token_type_ids")
            return {k: v for k, v in tok.items() if k in keep}
        return {"pixel_values": self.image_format.encode(xs)}

    def encode(self, split) -> Encoded:
        """Encode a ``mape.data.datasets.Split`` (texts or uint8 images plus labels)."""
        if len(split) == 0:
            raise MapeError("Cannot encode an empty split.")
        return Encoded(self.encode_inputs(split.x), torch.as_tensor(np.asarray(split.y), dtype=torch.long))

    def logits(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model(**inputs).logits

    @torch.no_grad()
    def predict_proba(self, enc: Encoded, batch_size: int = 64) -> np.ndarray:
        """Class probabilities (N, C) in eval mode, as a NumPy array, in ``enc``'s order.

        Text is run shortest first so that each batch is cut to its own longest example (on AG News
        this halves the padded tokens and the time); the rows are put back in order afterwards."""
        order = enc.length_order()
        run = enc if order is None else enc.take(order)
        was_training = self.model.training
        self.model.eval()
        out = [torch.softmax(self.logits(x).float(), -1).cpu() for x, _ in run.batches(batch_size, self.device)]
        self.model.train(was_training)
        probs = torch.cat(out).numpy()
        if order is None:
            return probs
        restored = np.empty_like(probs)
        restored[order] = probs
        return restored


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
