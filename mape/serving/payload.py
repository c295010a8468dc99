"""What a session keeps of a finished run: plain NumPy/JSON data (results, the delta, masks, scores, the
examples shown before/after and every model's predictions on them), never a model."""

from __future__ import annotations

import uuid

import numpy as np

from mape.base.jsonsafe import json_safe
from mape.serving import deltas, offer

#: the app's live run measures retain and test accuracy on seeded samples of this size (the CLI, the
#: API and "Compare methods" measure the full test split and the 1,000-example retain sample)
LIVE_EVAL_SAMPLE = 256


def sample_probs(view, res, samples: dict) -> dict:
    """Predictions of the original (memoised), unlearned and retrained model on the shown samples."""
    idx = {g: np.asarray(samples[g], dtype=np.int64) for g in ("forget", "retain", "test")}
    probs = {"original": {"forget": view.original_train_probs(idx["forget"]),
                          "retain": view.original_train_probs(idx["retain"]),
                          "test": view.full_test_probs[idx["test"]]}}
    models = {"unlearned": res.unlearned, **({"retrain": res.retrained} if res.retrained is not None else {})}
    for name, task in models.items():
        probs[name] = {g: predict_split(task, view, g, idx[g]) for g in ("forget", "retain", "test")}
    return probs


def predict_split(task, view, group: str, idx: np.ndarray) -> np.ndarray:
    if not len(idx):
        return np.zeros((0, len(view.dataset.classes)))
    return task.predict_proba((view.full_test_enc if group == "test" else view.train_enc).take(idx))


def run_payload(view, res, live: bool, name: str, earlier: np.ndarray | None = None) -> dict:
    """Everything a session keeps of a run, as CPU/NumPy data. ``earlier``: the indices a chain's earlier
    requests forgot (the retain examples exclude them; "forget_indices" holds them too, for the retrain
    reference trained without all of them)."""
    forget, sel = res.forget_set, res.selection_obj
    ds = view.dataset
    forgotten = forget.indices if earlier is None else np.union1d(forget.indices, earlier)
    retain_idx = view.retain_eval_indices(forgotten)
    samples = offer.pick_samples(np.asarray(ds.train.y), np.asarray(ds.test.y), forget.indices, retain_idx,
                             forget.forget_class)
    result = json_safe(res.to_json())
    if live:
        result["evaluation"] = {"retain_examples": int(len(retain_idx)), "test_examples": int(len(view.test_y)),
                                "note": f"seeded samples of {LIVE_EVAL_SAMPLE} retain and test examples (the "
                                        "CLI, the API and Compare methods measure the full splits)"}
    return {
        "preset": name, "result": result, "run_key": uuid.uuid4().hex,
        "delta": deltas.extract_delta(view.task.model, res.unlearned.model),
        "heads": np.asarray(sel.heads, dtype=bool), "filters": np.asarray(sel.filters, dtype=bool),
        "head_scores": np.asarray(sel.head_scores, dtype=np.float32),
        "filter_scores": np.asarray(sel.filter_scores, dtype=np.float32),
        "samples": samples, "probs": sample_probs(view, res, samples),
        "forget_indices": np.asarray(forgotten), "has_retrain": res.retrained is not None,
    }
