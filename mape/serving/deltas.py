"""Compact unlearned models: the entries MAPE changed (a *delta*), applied to a copy of the original."""

from __future__ import annotations

import numpy as np


def extract_delta(original, updated) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The entries where ``updated`` differs from ``original`` (two nn.Modules of one architecture):
    {parameter name: (flat int64 indices, float values)}. MAPE changes only the selected units, so this
    is a small fraction of the model and is what a session keeps instead of a whole copy."""
    import torch

    ref = dict(original.named_parameters())
    delta = {}
    with torch.no_grad():
        for name, p in updated.named_parameters():
            a, b = ref[name].detach().reshape(-1), p.detach().reshape(-1).to(ref[name].device)
            idx = torch.nonzero(a != b).squeeze(1)
            if idx.numel():
                delta[name] = (idx.cpu().numpy().astype(np.int64), b[idx].cpu().numpy().copy())
    return delta


def apply_delta(model, delta: dict) -> None:
    """Write a delta (from :func:`extract_delta`) into ``model`` in place."""
    import torch

    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, (idx, vals) in delta.items():
            p = params[name]
            flat = p.data.view(-1)
            flat[torch.as_tensor(idx, device=p.device)] = torch.as_tensor(vals, dtype=p.dtype, device=p.device)


def delta_entries(delta: dict) -> int:
    return int(sum(len(i) for i, _ in delta.values()))
