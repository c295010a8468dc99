"""Inside a selected unit (DESIGN.md §11, 5b): a head's attention on one input and a filter's activation on samples
of the forget and retain examples, before (the original) and after (the run's unlearned model, rebuilt from its
delta), each on a private copy (:mod:`mape.serving.owner`'s rules); plain NumPy back."""

from __future__ import annotations

import numpy as np

from mape.serving import owner
from mape.serving.device import ON_GPU, ZERO_GPU, gpu, work_device

#: examples per group (forget, retain) of a filter's activation plot
UNIT_SAMPLE = 256 if ON_GPU else 64


@gpu(duration=60)
def head_attention(name: str, delta: dict, x, layer: int, head: int) -> dict:
    """Head (``layer``, ``head``)'s attention on one input before (original) and after (the run's unlearned
    model, rebuilt from ``delta``), each on a private copy (mape.units: eager attention). Returns
    {"tokens": [...] (text) or None, "original": (T, T), "unlearned": (T, T), and for images
    "grid": {"original": (rows, columns), "unlearned": ...}, the [CLS] row over the patches}."""
    from mape.evaluation import units as U

    served = owner.served_preset(name)
    U.check_head(served.ws.task.adapter, layer, head)
    enc = owner.encode_input(served, x)
    tokens = None
    if served.ws.task.modality == "text":
        ids = enc.inputs["input_ids"][0][enc.inputs["attention_mask"][0].bool()].tolist()
        with served.original.lock:
            tokens = served.ws.task.tokenizer.convert_ids_to_tokens(ids)
    out: dict = {"tokens": tokens}
    for which in ("original", "unlearned"):
        task = served.original.copy() if which == "original" else owner.unlearned_copy(name, delta)
        if ZERO_GPU:
            task.to(work_device())
        out[which] = U.head_attention(task, enc.inputs, layer, head)
        if task.modality == "image":
            out.setdefault("grid", {})[which] = U.patch_grid(task.model, out[which])
    return out


def unit_examples(name: str, forget_indices, n: int | None = None) -> dict[str, np.ndarray]:
    """Seeded samples of at most ``n`` (default :data:`UNIT_SAMPLE`) forget and retain training examples
    (indices; the retain ones from the fixed retain sample of the measurements)."""
    served, n = owner.served_preset(name), n or UNIT_SAMPLE
    forgotten = np.asarray(forget_indices, dtype=np.int64)
    rng = np.random.default_rng(0)
    retain = served.ws.retain_eval_indices(forgotten)
    return {"forget": np.sort(forgotten[rng.permutation(len(forgotten))[:n]]),
            "retain": np.sort(retain[rng.permutation(len(retain))[:n]])}


@gpu(duration=60)
def filter_activation(name: str, delta: dict, forget_indices, layer: int, filt: int) -> dict:
    """Filter (``layer``, ``filt``)'s mean activation per example (mape.units) on samples of the forget and
    retain examples (:func:`unit_examples`), before (original) and after (the run's unlearned model), each
    on a private copy. Returns {"values": {"original"|"unlearned": {"forget"|"retain": (N,)}}, "indices"}."""
    from mape.evaluation import units as U

    served = owner.served_preset(name)
    U.check_filter(served.ws.task.adapter, layer, filt)
    idx = unit_examples(name, forget_indices)
    with served.original.lock:
        encs = {g: served.ws.train_enc.take(i) for g, i in idx.items() if len(i)}
    values = {}
    for which in ("original", "unlearned"):
        task = served.original.copy() if which == "original" else owner.unlearned_copy(name, delta)
        if ZERO_GPU:
            task.to(work_device())
        values[which] = {g: U.filter_activation(task, enc, layer, filt) for g, enc in encs.items()}
    return {"values": values, "indices": idx}
