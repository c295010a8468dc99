"""Captum attributions for the before/after comparison (DESIGN.md §11, item 7).

One verb, *attribute*:

* :func:`attribute_text` — integrated gradients on the word-embedding output of a Hugging Face
  sequence classifier (BERT / RoBERTa / DistilBERT style), one score per token;
* :func:`attribute_image` — integrated gradients (or plain saliency) on the pixels of a ViT-style
  image classifier, one score per pixel (summed over channels).

Conventions:

* The attributed quantity is, by default, the softmax **probability** of the target class
  (``output="prob"``); ``output="logit"`` attributes the raw logit instead. The target defaults to
  the model's predicted class on the input.
* Integrated gradients satisfy *completeness*: the attributions sum to f(input) − f(baseline).
  ``delta`` is Captum's convergence delta, i.e. ``sum(attributions) − (f(input) − f(baseline))``
  (it shrinks as ``n_steps`` grows). Text scores are reported after summing over the hidden
  dimension and dividing by the L2 norm over tokens, so they are unit-length; ``delta`` refers to
  the raw, unnormalised attributions.
* Text baseline: the same token sequence with every non-special token replaced by the pad token
  (special tokens such as [CLS]/[SEP] are kept), so only the content words are "removed".
* Image baseline: an all-zeros tensor **in the model's normalised input space** (for the usual
  mean/std normalisation this is the mean image, e.g. mid-grey — not black).
* The model is put in ``eval()`` mode; its training flag, every parameter's ``requires_grad`` and
  its device are restored afterwards, and no parameter ``.grad`` is created (parameters are frozen
  during the computation: gradients are taken with respect to activations / inputs only).
* ``internal_batch_size`` bounds how many interpolation steps are run through the model at once.
"""

from __future__ import annotations

import contextlib
import inspect
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from captum.attr import IntegratedGradients, LayerIntegratedGradients, Saliency

from mape.base.errors import MapeError

_OUTPUTS = ("prob", "logit")
_IMAGE_METHODS = ("ig", "saliency")


def _finite_or_none(x: float) -> float | None:
    return float(x) if math.isfinite(float(x)) else None


@dataclass
class TextAttribution:
    """Per-token attribution of one text: ``tokens[i]`` has score ``scores[i]``."""

    tokens: list[str]
    scores: list[float]
    target: int
    prob: float
    delta: float

    def to_json(self) -> dict:
        return {
            "tokens": list(self.tokens),
            "scores": [float(s) for s in self.scores],
            "target": int(self.target),
            "prob": float(self.prob),
            "delta": _finite_or_none(self.delta),
        }


@dataclass
class ImageAttribution:
    """Per-pixel attribution map ``heatmap`` (H, W), summed over channels."""

    heatmap: np.ndarray
    target: int
    prob: float
    delta: float  # NaN for saliency (no completeness property)

    def to_json(self) -> dict:
        return {
            "heatmap": np.asarray(self.heatmap, dtype=float).tolist(),
            "target": int(self.target),
            "prob": float(self.prob),
            "delta": _finite_or_none(self.delta),
        }


# --------------------------------------------------------------------------- model housekeeping


def _model_device(model: torch.nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@contextlib.contextmanager
def _attribution_mode(model: torch.nn.Module, device) -> Iterator[torch.device]:
    """eval(), frozen parameters, grad enabled, on ``device``; everything restored on exit."""
    device = torch.device(device)
    was_training = model.training
    old_device = _model_device(model)
    flags = [(p, p.requires_grad, p.grad is None) for p in model.parameters()]
    try:
        if old_device != device:
            model.to(device)
        model.eval()
        for p, _, _ in flags:
            p.requires_grad_(False)
        with torch.inference_mode(False), torch.enable_grad():
            yield device
    finally:
        for p, req, had_no_grad in flags:
            p.requires_grad_(req)
            if had_no_grad:
                p.grad = None
        if old_device != device:
            model.to(old_device)
        model.train(was_training)


def _logits(out) -> torch.Tensor:
    return out.logits if hasattr(out, "logits") else out


def _check_output(output: str) -> None:
    if output not in _OUTPUTS:
        raise MapeError(f"Unknown attribution output '{output}'; choose one of {', '.join(_OUTPUTS)}.")


def _accepts(model: torch.nn.Module, name: str) -> bool:
    try:
        return name in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


# --------------------------------------------------------------------------- text


def _special_mask(tokenizer, enc: dict, input_ids: torch.Tensor) -> torch.Tensor:
    if "special_tokens_mask" in enc:
        return torch.as_tensor(enc["special_tokens_mask"], dtype=torch.bool).reshape(input_ids.shape)
    special = [i for i in tokenizer.all_special_ids if i != tokenizer.unk_token_id]
    return torch.isin(input_ids, torch.tensor(special, dtype=input_ids.dtype))


def _pad_id(tokenizer) -> int:
    for cand in (tokenizer.pad_token_id, tokenizer.unk_token_id, 0):
        if cand is not None:
            return int(cand)
    return 0


def attribute_text(
    model,
    tokenizer,
    text: str,
    target: int | None = None,
    *,
    max_length: int = 128,
    n_steps: int = 32,
    internal_batch_size: int = 8,
    device="cpu",
    output: str = "prob",
) -> TextAttribution:
    """Integrated gradients of the target class w.r.t. each token's word embedding.

    Returns the tokens (as the tokenizer produced them, special tokens included), their scores
    (summed over the hidden dimension, L2-normalised over tokens), the target class, its
    probability on the input and Captum's convergence delta.
    """
    _check_output(output)
    if not isinstance(text, str) or not text.strip():
        raise MapeError("Type some text to explain.")
    enc = tokenizer(text, truncation=True, max_length=max_length, return_tensors="pt",
                    return_special_tokens_mask=True)
    input_ids = enc["input_ids"]
    special = _special_mask(tokenizer, enc, input_ids)
    with _attribution_mode(model, device) as dev:
        input_ids = input_ids.to(dev)
        attention_mask = enc.get("attention_mask", torch.ones_like(input_ids)).to(dev)
        use_tt = "token_type_ids" in enc and _accepts(model, "token_type_ids")
        extra = (attention_mask, enc["token_type_ids"].to(dev)) if use_tt else (attention_mask,)
        baseline = input_ids.clone()
        baseline[~special.to(dev)] = _pad_id(tokenizer)

        def logits_of(ids, mask, token_type_ids=None):
            kwargs = {"input_ids": ids, "attention_mask": mask}
            if token_type_ids is not None:
                kwargs["token_type_ids"] = token_type_ids
            return _logits(model(**kwargs))

        def forward(*args):
            logits = logits_of(*args)
            return torch.softmax(logits, dim=-1) if output == "prob" else logits

        with torch.no_grad():
            probs = torch.softmax(logits_of(input_ids, *extra).float(), dim=-1)[0]
        tgt = int(probs.argmax()) if target is None else int(target)
        if not 0 <= tgt < probs.numel():
            raise MapeError(f"Target class {tgt} is out of range: the model has {probs.numel()} classes.")
        lig = LayerIntegratedGradients(forward, model.get_input_embeddings())
        attrs, delta = lig.attribute(
            inputs=input_ids, baselines=baseline, target=tgt, additional_forward_args=extra,
            n_steps=n_steps, internal_batch_size=internal_batch_size, return_convergence_delta=True,
        )
        per_token = attrs.detach().float().sum(dim=-1)[0]
        norm = torch.linalg.vector_norm(per_token)
        scores = per_token / norm if norm > 0 else per_token
    tokens = tokenizer.convert_ids_to_tokens(input_ids[0].tolist())
    return TextAttribution(
        tokens=list(tokens), scores=scores.cpu().tolist(), target=tgt,
        prob=float(probs[tgt]), delta=float(delta.detach().float().sum()),
    )


# --------------------------------------------------------------------------- images


def attribute_image(
    model,
    pixel_values: torch.Tensor,
    target: int | None = None,
    *,
    method: str = "ig",
    n_steps: int = 32,
    internal_batch_size: int = 8,
    device="cpu",
    output: str = "prob",
) -> ImageAttribution:
    """Pixel attribution for one image, ``pixel_values`` (1, C, H, W) already normalised.

    ``method="ig"``: integrated gradients from an all-zeros baseline (in normalised space);
    signed, with a convergence delta. ``method="saliency"``: absolute input gradients
    (non-negative; delta is NaN).
    """
    _check_output(output)
    if method not in _IMAGE_METHODS:
        raise MapeError(f"Unknown attribution method '{method}'; choose one of {', '.join(_IMAGE_METHODS)}.")
    x = torch.as_tensor(pixel_values)
    if x.ndim == 3:
        x = x.unsqueeze(0)
    if x.ndim != 4 or x.shape[0] != 1:
        raise MapeError(f"Expected one image as a (1, C, H, W) tensor; got shape {tuple(x.shape)}.")
    with _attribution_mode(model, device) as dev:
        p = next(model.parameters(), None)
        x = x.to(dev, dtype=p.dtype if p is not None and p.is_floating_point() else torch.float32)

        def forward(pv):
            logits = _logits(model(pixel_values=pv))
            return torch.softmax(logits, dim=-1) if output == "prob" else logits

        with torch.no_grad():
            probs = torch.softmax(_logits(model(pixel_values=x)).float(), dim=-1)[0]
        tgt = int(probs.argmax()) if target is None else int(target)
        if not 0 <= tgt < probs.numel():
            raise MapeError(f"Target class {tgt} is out of range: the model has {probs.numel()} classes.")
        if method == "ig":
            attrs, d = IntegratedGradients(forward).attribute(
                x, baselines=torch.zeros_like(x), target=tgt, n_steps=n_steps,
                internal_batch_size=internal_batch_size, return_convergence_delta=True,
            )
            delta = float(d.detach().float().sum())
        else:
            attrs = Saliency(forward).attribute(x.clone().requires_grad_(True), target=tgt, abs=True)
            delta = float("nan")
        heatmap = attrs.detach().float()[0].sum(dim=0).cpu().numpy()
    return ImageAttribution(heatmap=heatmap, target=tgt, prob=float(probs[tgt]), delta=delta)


def attribute(task, x, target: int | None, tokenizer=None, max_length: int = 128, steps: int = 32, batch: int = 8,
              device=None) -> dict:
    """Integrated gradients of ``task`` (a TaskModel: text with ``tokenizer``, or an image) for one input, as plain
    data: tokens and scores (text) or the heatmap and the encoded pixels (image), the explained class and its
    probability. ``task`` gets Captum's hooks: pass a private copy."""
    if task.modality == "text":
        a = attribute_text(task.model, tokenizer, x, target, max_length=max_length, n_steps=steps,
                           internal_batch_size=batch, device=device)
        return {"tokens": a.tokens, "scores": a.scores, "target": a.target, "prob": a.prob}
    pixel_values = task.image_format.encode(np.asarray(x)[None])
    a = attribute_image(task.model, pixel_values, target, n_steps=steps, internal_batch_size=batch * 2, device=device)
    return {"heatmap": np.asarray(a.heatmap), "target": a.target, "prob": a.prob, "pixels": pixel_values[0].numpy()}
