"""Architecture adapters: where the heads and FFN filters of each Transformer layer live.

An adapter names, for every layer, the attention output projection (its input is the concatenation
of the heads), the FFN down projection (its input is one activation per filter), and the Q/K/V and
FFN up projections whose rows belong to those units. Gates (``mape.method.gates``) hook the two inputs;
``unit_param_masks`` maps a selection of units to the parameter entries they own (DESIGN.md §4).

Adding an architecture = one entry in ``LAYOUTS``: the path of the layer list and, for each role, the
candidate sub-module paths inside a layer (the first that exists wins; transformers versions move
modules around, e.g. ViT's ``attention.output.dense`` became ``attention.o_proj``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mape.base.errors import MapeError

LAYOUTS: dict[str, dict[str, list[str]]] = {
    "bert": {
        "layers": ["bert.encoder.layer", "encoder.layer"],
        "q": ["attention.self.query"], "k": ["attention.self.key"], "v": ["attention.self.value"],
        "o": ["attention.output.dense"], "up": ["intermediate.dense"], "down": ["output.dense"],
    },
    "roberta": {
        "layers": ["roberta.encoder.layer", "encoder.layer"],
        "q": ["attention.self.query"], "k": ["attention.self.key"], "v": ["attention.self.value"],
        "o": ["attention.output.dense"], "up": ["intermediate.dense"], "down": ["output.dense"],
    },
    "distilbert": {
        "layers": ["distilbert.transformer.layer", "transformer.layer"],
        "q": ["attention.q_lin"], "k": ["attention.k_lin"], "v": ["attention.v_lin"],
        "o": ["attention.out_lin"], "up": ["ffn.lin1"], "down": ["ffn.lin2"],
    },
    "vit": {
        "layers": ["vit.layers", "vit.encoder.layer", "layers", "encoder.layer"],
        "q": ["attention.q_proj", "attention.attention.query"],
        "k": ["attention.k_proj", "attention.attention.key"],
        "v": ["attention.v_proj", "attention.attention.value"],
        "o": ["attention.o_proj", "attention.output.dense"],
        "up": ["mlp.fc1", "intermediate.dense"], "down": ["mlp.fc2", "output.dense"],
    },
    "llama": {
        "layers": ["model.layers", "layers"],
        "q": ["self_attn.q_proj"], "k": ["self_attn.k_proj"], "v": ["self_attn.v_proj"],
        "o": ["self_attn.o_proj"], "up": ["mlp.up_proj", "mlp.gate_proj"], "down": ["mlp.down_proj"],
    },
}
ALIASES = {"xlm-roberta": "roberta", "camembert": "roberta", "deit": "vit", "mistral": "llama",
           "qwen2": "llama", "qwen3": "llama"}
ROLES = ("q", "k", "v", "o", "up", "down")


@dataclass
class LayerModules:
    q: nn.Linear
    k: nn.Linear
    v: nn.Linear
    o: nn.Linear      # attention output projection: input = concatenated heads
    up: list[nn.Linear]  # FFN up projection(s): row j belongs to filter j (LLaMA has gate+up)
    down: nn.Linear   # FFN down projection: input j = filter j


@dataclass
class Adapter:
    arch: str
    layers: list[LayerModules]
    num_heads: int
    head_dim: int
    num_filters: int

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def shape(self) -> dict[str, tuple[int, int]]:
        return {"heads": (self.num_layers, self.num_heads), "filters": (self.num_layers, self.num_filters)}


def _get(root: nn.Module, path: str) -> nn.Module | None:
    try:
        return root.get_submodule(path)
    except AttributeError:
        return None


def first_attr(root: nn.Module, paths: list[str]) -> nn.Module | None:
    for path in paths:
        module = _get(root, path)
        if module is not None:
            return module
    return None


def _num_heads(model: nn.Module) -> int | None:
    config = getattr(model, "config", None)
    for name in ("num_attention_heads", "n_heads", "n_head"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _build(model: nn.Module, arch: str, layout: dict[str, list[str]]) -> Adapter | None:
    layer_list = first_attr(model, layout["layers"])
    if not isinstance(layer_list, nn.ModuleList) or len(layer_list) == 0:
        return None
    layers = []
    for layer in layer_list:
        found = {role: first_attr(layer, layout[role]) for role in ("q", "k", "v", "o", "down")}
        ups = [m for m in (_get(layer, p) for p in layout["up"]) if isinstance(m, nn.Linear)]
        if not ups or any(not isinstance(m, nn.Linear) for m in found.values()):
            return None
        layers.append(LayerModules(up=ups, **found))
    heads = _num_heads(model)
    o_in = layers[0].o.in_features
    if heads is None or o_in % heads:
        return None
    return Adapter(arch=arch, layers=layers, num_heads=heads, head_dim=o_in // heads,
                   num_filters=layers[0].down.in_features)


def adapter_for(model: nn.Module) -> Adapter:
    """The adapter for ``model``; :class:`MapeError` when its heads and filters cannot be found."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    arch = ALIASES.get(model_type, model_type)
    order = [arch] if arch in LAYOUTS else []
    order += [a for a in LAYOUTS if a not in order]
    for name in order:
        adapter = _build(model, name, LAYOUTS[name])
        if adapter is not None:
            return adapter
    raise MapeError(
        f"Model type '{model_type or type(model).__name__}' has no attention heads and FFN filters "
        f"this tool knows; supported: {', '.join(sorted(LAYOUTS))} (and {', '.join(sorted(ALIASES))})."
    )


def unit_param_masks(adapter: Adapter, heads: torch.Tensor, filters: torch.Tensor) -> dict[nn.Parameter, torch.Tensor]:
    """Boolean masks over the parameter entries owned by the selected units (DESIGN.md §4).

    Head (l, h): rows of Q, K, V weight and bias for that head and the matching columns of the output
    projection weight. Filter (l, j): row j (and bias j) of the up projection(s), column j of the down
    projection. With grouped-query attention (fewer K/V heads) a head owns its Q rows and O columns
    only, since its K/V rows are shared with other heads.
    """
    masks: dict[nn.Parameter, torch.Tensor] = {}

    def add(param: nn.Parameter | None, mask: torch.Tensor) -> None:
        if param is None:
            return
        mask = mask.to(param.device)
        masks[param] = masks[param] | mask if param in masks else mask

    hd = adapter.head_dim
    for l, mods in enumerate(adapter.layers):
        rows = heads[l].bool().cpu().repeat_interleave(hd)  # (H*hd,)
        for proj in (mods.q, mods.k, mods.v):
            if proj.out_features != rows.numel():
                continue  # shared K/V heads (GQA)
            add(proj.weight, rows[:, None].expand_as(proj.weight))
            add(proj.bias, rows)
        add(mods.o.weight, rows[None, :].expand_as(mods.o.weight))
        frows = filters[l].bool().cpu()
        for up in mods.up:
            add(up.weight, frows[:, None].expand_as(up.weight))
            add(up.bias, frows)
        add(mods.down.weight, frows[None, :].expand_as(mods.down.weight))
    return {p: m.contiguous() for p, m in masks.items()}


def unit_param_counts(adapter: Adapter) -> tuple[int, int]:
    """Number of parameters owned by one head and by one filter (same in every layer)."""
    mods = adapter.layers[0]
    hd = adapter.head_dim
    per_head = hd * mods.o.out_features  # O columns
    for proj in (mods.q, mods.k, mods.v):
        if proj.out_features == adapter.num_heads * hd:
            per_head += hd * (proj.in_features + (proj.bias is not None))
    per_filter = mods.down.out_features + sum(u.in_features + (u.bias is not None) for u in mods.up)
    return per_head, per_filter
