"""Head and filter gates as forward pre-hooks (transformers 5 has no ``head_mask``).

``m_h`` (L×H) multiplies each head's slice of the attention output projection's input; ``m_f``
(L×F) multiplies each filter's activation at the FFN down projection's input. With every gate at 1
the model computes exactly what it computed without gates (multiplying by 1.0 is exact).

    with Gates(adapter) as gates:          # all ones
        gates.heads.requires_grad_(True)    # mask gradients, see mape.method.scoring
        loss = model(**batch).loss

The hooks are removed on exit, also when the body raises, so a failed run never leaves gates
attached to a shared model.
"""

from __future__ import annotations

import torch

from mape.method.adapters import Adapter


class Gates:
    def __init__(self, adapter: Adapter, heads: torch.Tensor | None = None,
                 filters: torch.Tensor | None = None, device: torch.device | str | None = None):
        device = device or adapter.layers[0].o.weight.device
        L, H, F = adapter.num_layers, adapter.num_heads, adapter.num_filters
        self.adapter = adapter
        self.heads = torch.ones(L, H, device=device) if heads is None else heads.to(device)
        self.filters = torch.ones(L, F, device=device) if filters is None else filters.to(device)
        self._handles: list = []

    def _head_hook(self, layer: int):
        hd = self.adapter.head_dim

        def hook(module, args):
            x = args[0]
            gate = self.heads[layer].to(x.dtype).repeat_interleave(hd)
            return (x * gate,) + tuple(args[1:])
        return hook

    def _filter_hook(self, layer: int):
        def hook(module, args):
            x = args[0]
            return (x * self.filters[layer].to(x.dtype),) + tuple(args[1:])
        return hook

    def attach(self) -> "Gates":
        if self._handles:
            return self
        for l, mods in enumerate(self.adapter.layers):
            self._handles.append(mods.o.register_forward_pre_hook(self._head_hook(l)))
            self._handles.append(mods.down.register_forward_pre_hook(self._filter_hook(l)))
        return self

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def __enter__(self) -> "Gates":
        return self.attach()

    def __exit__(self, *exc) -> None:
        self.detach()
