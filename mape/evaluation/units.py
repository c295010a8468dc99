"""Inside one unit: a head's attention pattern and an FFN filter's activation (DESIGN.md §11, "Inside a
selected unit"). No gradio here; every function returns plain NumPy arrays.

- :func:`head_attention`: the attention probabilities of head (l, h) on one example, token × token, with
  the padding left out (each row sums to 1 over the example's tokens);
- :func:`patch_grid`: for a ViT, the [CLS] row of such a matrix over the image's patches, as the patch grid;
- :func:`filter_activation`: how strongly filter (l, j) fires on each example of a batch: its activation
  at the input of the FFN down projection (after the nonlinearity; where the filter gate of §4 sits),
  averaged over the example's tokens.

These functions change the model they are given for a moment (the eager attention implementation, a
forward hook) and put it back afterwards, but they are meant for *private copies* only: the app calls them
through :mod:`mape.serving.inside`, which clones the shared models under their locks.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch

from mape.base.errors import MapeError

EAGER = "eager"


def check_head(adapter, layer: int, head: int) -> tuple[int, int]:
    """(layer, head) as ints, or :class:`MapeError` with the valid ranges."""
    return (check_index(layer, adapter.num_layers, "Layer"), check_index(head, adapter.num_heads, "Head"))


def check_filter(adapter, layer: int, filt: int) -> tuple[int, int]:
    """(layer, filter) as ints, or :class:`MapeError` with the valid ranges."""
    return (check_index(layer, adapter.num_layers, "Layer"), check_index(filt, adapter.num_filters, "Filter"))


def check_index(value, n: int, what: str) -> int:
    """``value`` as an int in [0, n), or :class:`MapeError` ("<what> must be a whole number from 0 to n-1")."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise MapeError(f"{what} must be a whole number from 0 to {n - 1}.") from None
    if not number.is_integer() or not 0 <= number < n:
        raise MapeError(f"{what} must be a whole number from 0 to {n - 1} (got {value}).")
    return int(number)


@contextmanager
def eager_attention(model):
    """The model with the eager attention implementation (the one that returns the probabilities), put back
    on exit. Changes ``model``: use it on a private copy."""
    config = model.config
    before = getattr(config, "_attn_implementation", None)
    if before != EAGER:
        if hasattr(model, "set_attn_implementation"):
            model.set_attn_implementation(EAGER)
        else:  # pragma: no cover - older transformers
            config._attn_implementation = EAGER
    try:
        yield model
    finally:
        if before not in (None, EAGER):
            if hasattr(model, "set_attn_implementation"):
                model.set_attn_implementation(before)
            else:  # pragma: no cover
                config._attn_implementation = before


@torch.no_grad()
def attention_maps(task, inputs: dict, layer: int) -> np.ndarray:
    """Attention probabilities of every head of ``layer`` on one example: (H, T, T), T = the example's
    tokens without padding. ``inputs``: the model inputs of a batch of one (``Encoded.inputs`` of one
    example). ``task``: a :class:`~mape.models.TaskModel` (a private copy, see the module docstring)."""
    layer = check_index(layer, task.adapter.num_layers, "Layer")
    model = task.model
    batch = _one(inputs, task.device)
    was_training = model.training
    model.eval()
    try:
        with eager_attention(model):
            out = model(**batch, output_attentions=True)
    finally:
        model.train(was_training)
    attentions = getattr(out, "attentions", None)
    if not attentions or attentions[layer] is None:
        raise MapeError(f"{type(model).__name__} does not return its attention probabilities.")
    att = attentions[layer][0].float().cpu().numpy()  # (H, T, T)
    mask = batch.get("attention_mask")
    if mask is not None:
        keep = mask[0].bool().cpu().numpy()
        att = att[:, keep][:, :, keep]
    return att


def head_attention(task, inputs: dict, layer: int, head: int) -> np.ndarray:
    """Attention probabilities of head (``layer``, ``head``) on one example: (T, T), row i = where token i
    looks; padding left out, so each row sums to 1."""
    layer, head = check_head(task.adapter, layer, head)
    return attention_maps(task, inputs, layer)[head]


def _one(inputs: dict, device) -> dict:
    """A batch of one on ``device``, cut to the example's tokens (trailing padding dropped)."""
    batch = {k: (v if v.dim() else v[None]) for k, v in inputs.items()}
    if any(v.shape[0] != 1 for v in batch.values()):
        raise MapeError("head_attention explains one example at a time.")
    mask = batch.get("attention_mask")
    if mask is not None and mask.dim() == 2:
        width = int(mask[0].nonzero().max()) + 1 if mask.any() else mask.shape[1]
        batch = {k: (v[:, :width] if v.dim() == 2 else v) for k, v in batch.items()}
    return {k: v.to(device) for k, v in batch.items()}


def num_patches(model) -> tuple[int, int] | None:
    """(rows, columns) of a vision model's patch grid; None for a model without ``image_size`` /
    ``patch_size`` in its config."""
    config = model.config
    size, patch = getattr(config, "image_size", None), getattr(config, "patch_size", None)
    if size is None or patch is None:
        return None
    size = size if isinstance(size, (tuple, list)) else (size, size)
    patch = patch if isinstance(patch, (tuple, list)) else (patch, patch)
    return int(size[0]) // int(patch[0]), int(size[1]) // int(patch[1])


def patch_grid(model, attention: np.ndarray) -> np.ndarray:
    """The [CLS] row (row 0) of a ViT head's (T, T) attention over the image's patches, as the patch grid
    (rows, columns). The patches are the last rows × columns tokens (after [CLS] and, for DeiT, the
    distillation token)."""
    grid = num_patches(model)
    if grid is None:
        raise MapeError("This model has no patch grid (not a vision Transformer).")
    n = grid[0] * grid[1]
    att = np.asarray(attention)
    if att.ndim != 2 or att.shape[1] < n + 1:
        raise MapeError(f"An attention matrix over {n} patches and [CLS] was expected, got shape {att.shape}.")
    return att[0, -n:].reshape(grid)


@torch.no_grad()
def filter_activation(task, enc, layer: int, filt: int, batch_size: int = 32) -> np.ndarray:
    """Per example, the mean over its tokens (padding left out) of filter (``layer``, ``filt``)'s activation,
    the input of the FFN down projection at that position: (N,), in ``enc``'s order. ``enc``: an
    :class:`~mape.models.Encoded`; ``task``: a private copy (a forward hook is attached meanwhile)."""
    layer, filt = check_filter(task.adapter, layer, filt)
    model, seen = task.model, []

    def grab(module, args):
        seen.append(args[0][..., filt].float())

    out = []
    handle = task.adapter.layers[layer].down.register_forward_pre_hook(grab)
    was_training = model.training
    model.eval()
    try:
        for batch, _ in enc.batches(batch_size, task.device):
            seen.clear()
            model(**batch)
            act = seen[0]  # (B, T)
            mask = batch.get("attention_mask")
            if mask is not None and mask.dim() == 2 and act.dim() == 2:
                m = mask.to(act.dtype)
                out.append(((act * m).sum(1) / m.sum(1).clamp_min(1)).cpu())
            else:
                out.append(act.reshape(act.shape[0], -1).mean(1).cpu())
    finally:
        handle.remove()
        model.train(was_training)
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.float32)


def unit_summary(selected: np.ndarray, scores: np.ndarray | None, layer: int, index: int) -> dict:
    """Whether unit (``layer``, ``index``) of a run's selection (an (L, U) 0/1 grid) was selected, its score
    from the search and its rank among all units of its type (1 = highest score)."""
    sel = np.asarray(selected).astype(bool)
    out = {"selected": bool(sel[layer, index]), "n_selected": int(sel.sum()), "n_units": int(sel.size)}
    if scores is not None:
        sc = np.asarray(scores, dtype=float)
        value = sc[layer, index]
        out["score"] = float(value)
        out["rank"] = int((sc > value).sum()) + 1
    return out
