"""The one owner of every model the app shares (DESIGN.md §11, "How it is built"). No gradio here.

The app keeps models once per process and serves many visitors at a time. This module holds them all
and is the only code that touches them:

- the prepared :class:`~mape.run.workspace.Workspace` of each preset (data set, encoded splits, the *original*
  model), prepared at most once at a time and kept; the *retrained* references from the disk cache (a few, least
  recently used out); the *unlearned* models, rebuilt from a session's delta on a copy.

Rules, so that one visitor's request can never disturb another's:

1. every shared model has its own re-entrant lock (:class:`SharedModel`), held for every read:
   predictions, the memoised original predictions behind the metrics, tokenisation, cloning;
2. whatever changes a model, even for a moment (Captum's hooks and ``requires_grad`` flags, a move to
   the GPU, an unlearning run or a comparison), works on a private copy cloned under that lock;
3. callers get plain data back (NumPy arrays, dicts, strings), never a model.

On ZeroGPU (:mod:`mape.serving.device`) the shared models stay on the CPU; CUDA only inside ``@gpu`` functions.
"""

from __future__ import annotations

import copy
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from mape.base.errors import MapeError
from mape.serving import chain, deltas, files, offer
from mape.serving.device import (  # noqa: F401 - ON_GPU, device_label, set_threads, ...: the app's surface
    ATTRIBUTION_BATCH,
    ATTRIBUTION_STEPS,
    ON_GPU,
    ZERO_GPU,
    device_label,
    gpu,
    load_engine_in_background,
    set_threads,
    spaces,
    work_device,
)
from mape.serving.payload import LIVE_EVAL_SAMPLE, run_payload
from mape.serving.threads import LockedTokenizer, RunCancelled, SharedModel, prep_emitter, stream

log = logging.getLogger("mape.serving.owner")


# --------------------------------------------------------------------------- workspaces (once per process)


@dataclass
class _Served:
    ws: object                    # mape.run.unlearn.Workspace
    original: SharedModel         # ws.task under its lock


_SERVED: dict[tuple, _Served] = {}
_PREP_LOCKS: dict[tuple, threading.Lock] = {}
_PREP_STATE: dict[tuple, tuple[str, float]] = {}
_DATASETS: dict[tuple, object] = {}
_GUARD = threading.Lock()
_WARMING: set[tuple] = set()
WARM_FALLBACK_S = 10.0
_RETRAINED: "OrderedDict[tuple, SharedModel]" = OrderedDict()
_UNLEARNED: "OrderedDict[str, SharedModel]" = OrderedDict()
MAX_RETRAINED, MAX_UNLEARNED = 2, 4


SCENARIO_SEP = "@"


def served_name(preset: str, scenario: str | None = None) -> str:
    """The name the app serves a preset under: ``preset`` with clean data, ``preset@SCENARIO`` with a
    scenario (mape.data.scenarios) applied to its training data: its own dataset, original and references."""
    scenario = (scenario or "").strip()
    return f"{preset}{SCENARIO_SEP}{scenario}" if scenario else preset


def split_name(name: str) -> tuple[str, str | None]:
    """(preset, scenario or None) of a served name."""
    preset, _, scenario = name.partition(SCENARIO_SEP)
    return preset, (scenario or None)


def _key(name: str) -> tuple:
    preset, scenario = split_name(name)
    return preset, offer.train_limit_for(preset, ON_GPU), scenario


def is_ready(name: str) -> bool:
    return _key(name) in _SERVED


def preparing(name: str) -> tuple[str, float] | None:
    """(stage, fraction) while another request prepares the preset, else None."""
    return _PREP_STATE.get(_key(name))


def dataset(name: str):
    """The preset's dataset (train subset as the app trains it, altered by the served name's scenario;
    plain data, no model), loaded once."""
    from mape.data.presets import get_preset, load_dataset_for, training_data

    key = _key(name)
    served = _SERVED.get(key)
    if served is not None:
        return served.ws.dataset
    with _GUARD:
        lock = _PREP_LOCKS.setdefault(("data",) + key, threading.Lock())
    with lock:
        if key not in _DATASETS:
            preset = get_preset(key[0])
            ok, why = preset.availability()
            if not ok:
                raise MapeError(f"Preset '{key[0]}' cannot run here: {why}.")
            _DATASETS[key] = training_data(preset, load_dataset_for(preset, None, key[1]), key[2])
        return _DATASETS[key]


def served_preset(name: str, progress: Callable | None = None) -> _Served:
    """The prepared preset: trained (first time) or loaded from the disk cache, then kept. Concurrent
    callers wait for one preparation; ``progress(stage, fraction)`` sees it either way."""
    key = _key(name)
    served = _SERVED.get(key)
    if served is not None:
        return served
    with _GUARD:
        lock = _PREP_LOCKS.setdefault(key, threading.Lock())
    while not lock.acquire(timeout=0.5):
        if progress:
            progress(*_PREP_STATE.get(key, ("waiting for another session preparing this model", 0.0)))
    try:
        if key not in _SERVED:
            _SERVED[key] = _prepare(name, key, progress)
            _DATASETS.pop(key, None)
        return _SERVED[key]
    finally:
        _PREP_STATE.pop(key, None)
        lock.release()


def _prepare(name: str, key: tuple, progress: Callable | None) -> _Served:
    from mape.run.workspace import prepare

    def prog(stage, frac, selection=None):
        _PREP_STATE[key] = (stage, frac)
        if progress:
            progress(stage, frac)

    prog("loading data and model", 0.0)
    ws = prepare(key[0], train_limit=key[1], device="cpu" if ZERO_GPU else "auto", progress=prog, scenario=key[2])
    # the original's predictions on the test set, the fixed retain sample and the unused training
    # examples are memoised by the Workspace: having them now makes every run's "original" row instant;
    # they are stored next to the original in the disk cache, so a restarted app reads them back
    prog("measuring the original model (once)", 0.5)
    ws.measure_original(use_cache=True)
    return _Served(ws, SharedModel(ws.task))


def prepare_preset(name: str, progress: Callable | None = None) -> dict:
    """Prepare a preset (see :func:`served_preset`) and return :func:`info`."""
    return info(name, served_preset(name, progress))


def warm_in_background(name: str) -> threading.Thread | None:
    """Prepare a preset in a daemon thread, once per process (later calls return None). The app starts
    it when its first page has loaded (the page's own first requests then have the cores to themselves),
    and ``python app.py`` after :data:`WARM_FALLBACK_S` seconds when no page has been opened by then."""
    with _GUARD:
        if _key(name) in _WARMING or _key(name) in _SERVED:
            return None
        _WARMING.add(_key(name))

    def work():
        try:
            prepare_preset(name)
        except Exception:  # noqa: BLE001 - a visitor's request reports it with a clear message
            log.exception("warming %s failed", name)

    thread = threading.Thread(target=work, daemon=True, name=f"mape-warm-{name}")
    thread.start()
    return thread


def info(name: str, served: _Served | None = None) -> dict:
    ws = (served or served_preset(name)).ws
    a = ws.task.adapter
    return {"preset": ws.preset.name, "name": name, "scenario": split_name(name)[1],
            "n_train": len(ws.dataset.train), "n_test": len(ws.dataset.test),
            "params": ws.total_params, "layers": a.num_layers, "heads": a.num_heads, "filters": a.num_filters,
            "classes": list(ws.dataset.classes), "device": str(ws.device), "train_limit": ws.train_limit,
            "modality": ws.task.modality}


def cached_on_disk(name: str) -> bool | None:
    """Whether the preset's original model is in the disk cache (None: not applicable / unknown)."""
    from mape.base import cache
    from mape.data.presets import get_preset
    from mape.run.workspace import original_cache_spec

    preset = get_preset(split_name(name)[0])
    if preset.finetuned:
        return None
    try:
        ds = dataset(name)
    except MapeError:
        return None
    return cache.has_model("original", cache.cache_key(original_cache_spec(preset, ds, _key(name)[1])))


def image_format(name: str):
    """The preset's image format (size, channels, normalisation): plain data."""
    return served_preset(name).ws.task.image_format


# --------------------------------------------------------------------------- private copies


def _working_copy(served: _Served, sample: int | None = None):
    """A shallow copy of the Workspace whose model is a private clone (on the GPU inside a ZeroGPU
    call). The memoised original predictions are shared (same weights, same values). ``sample``: the
    copy measures retain and test accuracy on seeded samples of that many examples each."""
    ws = served.ws
    with served.original.lock:
        view = copy.copy(ws)
        view.task = ws.task.clone()
        view.full_test_enc, view.full_test_probs = ws.test_enc, ws.original_test_probs()
    if ZERO_GPU:
        view.device = work_device()
        view.task.to(view.device)
    if sample is not None and getattr(ws, "scenario", None) is None:
        _sampled_evaluation(view, sample)
    return view


def _sampled_evaluation(view, n: int) -> None:
    """Retain / test measurements of ``view`` on fixed seeded samples (the live run's quick numbers):
    the view's test split becomes a seeded sample of ``n`` examples and its retain measurement sample
    (``retain_eval_indices``) a seeded sample of ``n`` of the usual 1,000."""
    full_retain = view.retain_eval_indices
    test_idx = np.sort(np.random.default_rng(4321).permutation(len(view.test_y))[:n])
    view.test_enc, view.test_y = view.full_test_enc.take(test_idx), view.test_y[test_idx]
    view._test_probs = view.full_test_probs[test_idx]

    def retain_sample(forgotten):
        idx = full_retain(forgotten)
        return np.sort(idx[np.random.default_rng(1234).permutation(len(idx))[:n]])

    view.retain_eval_indices = retain_sample


def unlearned_copy(name: str, delta: dict):
    task = served_preset(name).original.copy()
    deltas.apply_delta(task.model, delta)
    return task


def _unlearned(name: str, run_key: str | None, delta: dict) -> SharedModel:
    """The unlearned model of a run, rebuilt from its delta once and kept for a few runs."""
    with _GUARD:
        shared = _UNLEARNED.get(run_key) if run_key else None
        if shared is not None:
            _UNLEARNED.move_to_end(run_key)
            return shared
    shared = SharedModel(unlearned_copy(name, delta))
    if run_key:
        with _GUARD:
            _UNLEARNED[run_key] = shared
            while len(_UNLEARNED) > MAX_UNLEARNED:
                _UNLEARNED.popitem(last=False)
    return shared


def _retrained(name: str, forget_indices) -> SharedModel | None:
    """The run's retrain reference from the disk cache (None if it is not there: never trains)."""
    from mape.run.workspace import cached_retrain, retrain_cache_key

    served = served_preset(name)
    forgotten = np.asarray(forget_indices)
    key = (name, retrain_cache_key(served.ws, forgotten)[1])
    with _GUARD:
        shared = _RETRAINED.get(key)
        if shared is not None:
            _RETRAINED.move_to_end(key)
            return shared
    task = cached_retrain(served.ws, forgotten)
    if task is None:
        return None
    with _GUARD:
        shared = _RETRAINED.setdefault(key, SharedModel(task))
        while len(_RETRAINED) > MAX_RETRAINED:
            _RETRAINED.popitem(last=False)
    return shared


# --------------------------------------------------------------------------- engine event streams


@gpu(duration=180)
def run(preset: str, spec: str, cfg: dict, live: bool = False, base: dict | None = None) -> Iterator[tuple]:
    """Generator of run events: ("prep", stage, frac), ("ready", info), ("progress", stage, frac),
    ("selection", stage, frac, heads, filters, head_scores, label, swaps), finally ("done", payload) or
    ("error", message) / ("cancelled",). ``live``: the page's run, measured on seeded samples of
    :data:`LIVE_EVAL_SAMPLE` retain and test examples (the API and the CLI measure the full splits).
    ``base``: the next request of a session's chain (:func:`mape.serving.chain.base_of`): the run starts from
    a private copy of the original plus ``base["delta"]``, with ``base["forgotten"]`` already forgotten; the
    payload's delta is then the accumulated one and its "chain" lists every request (None: a new chain)."""
    from mape.run.config import UnlearnConfig
    from mape.run.unlearn import unlearn

    def work(emit, cancel):
        served = served_preset(preset, prep_emitter(emit))
        emit(("ready", info(preset, served)))
        emit(("progress", "measuring the original model", 0.0))
        view = _working_copy(served, LIVE_EVAL_SAMPLE if live else None)
        start, earlier = _chain_start(preset, base, view.device)

        def progress(stage, frac, selection=None):
            if cancel.is_set():
                raise RunCancelled()
            if selection is None:
                emit(("progress", stage, frac))
            else:
                emit(("selection", stage, frac, selection.heads.copy(), selection.filters.copy(),
                      selection.head_scores, selection.stage, selection.swaps))

        res = unlearn(view, spec, UnlearnConfig(**cfg), progress, base=start, already_forgotten=earlier)
        emit(("progress", "predictions before/after", 0.5))
        return chain.add_step(run_payload(view, res, live, preset, earlier), res.forget_set.indices, base)

    yield from stream(work)


@gpu(duration=600)
def compare(preset: str, spec: str, req: dict) -> Iterator[tuple]:
    """Generator of comparison events: ("prep", stage, frac), ("progress", stage, frac), finally
    ("done", CompareResult) or ("error", message) / ("cancelled",)."""
    from mape.evaluation.baselines import BaselineConfig
    from mape.evaluation.compare import compare as compare_methods

    def work(emit, cancel):
        view = _working_copy(served_preset(preset, prep_emitter(emit)))

        def progress(stage, frac):
            if cancel.is_set():
                raise RunCancelled()
            emit(("progress", stage, frac))

        return compare_methods(view, spec, req["methods"], req["seeds"], progress,
                               config=BaselineConfig(**req["config"]), relearn_steps=req["relearn"])

    yield from stream(work)


# --------------------------------------------------------------------------- one input at a time


def encode_input(served: _Served, x):
    """One user input as model inputs (the tokenizer is shared too: encoded under the original's lock)."""
    import torch

    from mape.method.models import Encoded

    task = served.ws.task
    with served.original.lock:
        inputs = task.encode_inputs([x] if task.modality == "text" else np.asarray(x)[None])
    return Encoded(inputs, torch.zeros(1, dtype=torch.long))


@gpu(duration=60)
def predict(preset: str, run: dict | None, x) -> dict[str, np.ndarray]:
    """Class probabilities of one input under the original, the run's unlearned and (cached) retrained
    model. ``run``: {"run_key", "delta", "forget_indices" (None: no retrain reference)} or None."""
    return _predict_models(preset, run, x)


@gpu(duration=60)
def trigger_test(name: str, run: dict | None, x) -> dict:
    """The backdoor trigger tester: one input without and with the served scenario's trigger (the word
    at a seeded position inside the text window the model reads, or the white corner patch), each
    under the original, the run's unlearned and the cached retrained model (see :func:`predict`).
    Returns {"clean": input, "triggered": input with the trigger, "probs": {"clean"|"triggered":
    {model: probabilities}}, "trigger", "target"}."""
    from mape.data.scenarios import add_trigger

    scenario = served_preset(name).ws.scenario
    if scenario is None or not scenario.is_backdoor:
        raise MapeError("The trigger tester needs a backdoor scenario (Model & data → Training data).")
    if scenario.is_patch:
        image = np.asarray(x)
        triggered = add_trigger(image[None], scenario)[0]
    else:
        triggered = add_trigger([str(x)], scenario)[0]
    return {"clean": x, "triggered": triggered, "trigger": scenario.trigger, "target": scenario.target_name,
            "probs": {"clean": _predict_models(name, run, x), "triggered": _predict_models(name, run, triggered)}}


def _predict_models(preset: str, run: dict | None, x) -> dict[str, np.ndarray]:
    served = served_preset(preset)
    enc = encode_input(served, x)
    out = {"original": served.original.predict(enc)[0]}
    if run is not None:
        out["unlearned"] = _unlearned(preset, run.get("run_key"), run["delta"]).predict(enc)[0]
        retrained = _retrained(preset, run["forget_indices"]) if run.get("forget_indices") is not None else None
        if retrained is not None:
            out["retrain"] = retrained.predict(enc)[0]
    return out


@gpu(duration=60)
def explain(preset: str, delta: dict | None, x, target: int | None) -> dict:
    """Integrated gradients before (original) and after (unlearned; not with ``delta=None``) for one
    input, each on a private copy of its model (Captum's hooks never sit on a shared model)."""
    served = served_preset(preset)
    out = {}
    for name in ("original",) + (("unlearned",) if delta is not None else ()):
        task = served.original.copy() if name == "original" else unlearned_copy(preset, delta)
        out[name] = _attribute(served, task, x, target)
        if target is None:
            target = out[name]["target"]  # explain the original's prediction in both models
    return out


def _attribute(served: _Served, task, x, target) -> dict:
    """Integrated gradients on ``task``, a private copy (its hooks and flags disturb nobody)."""
    from mape.evaluation.attribution import attribute

    tok = _private_tokenizer(served) if task.modality == "text" else None
    return attribute(task, x, target, tokenizer=tok, max_length=served.ws.preset.max_length, steps=ATTRIBUTION_STEPS,
                     batch=ATTRIBUTION_BATCH, device=work_device() if ZERO_GPU else served.ws.device)


_TOKENIZERS: dict[tuple, object] = {}


def _private_tokenizer(served: _Served):
    """A tokenizer of the attribution's own (a fast tokenizer is not safe to call from two threads)."""
    key = _key(served.ws.preset.name)
    with _GUARD:
        tok = _TOKENIZERS.get(key)
        if tok is None:
            with served.original.lock:
                tok = _TOKENIZERS[key] = copy.deepcopy(served.ws.task.tokenizer)
    return LockedTokenizer(tok)


@gpu(duration=60)
def export(preset: str, delta: dict, folder: str, meta: dict) -> str:
    """Write the unlearned model (rebuilt on a copy) as safetensors; returns the file's path."""
    return str(files.write_model(unlearned_copy(preset, delta).model, Path(folder), meta))


# --------------------------------------------------------------------------- read-only data for the page


def scenario_of(name: str):
    """The served name's resolved scenario (mape.data.scenarios.Scenario: plain data) or None (clean data)."""
    return getattr(dataset(name), "scenario", None)


def split_example(name: str, group: str, idx: int):
    """(raw input, label) of a training ("forget"/"retain") or test example."""
    ds = dataset(name)
    split = ds.test if group == "test" else ds.train
    return split.x[idx], int(split.y[idx])


def original_weights(name: str) -> dict[str, np.ndarray]:
    """A NumPy copy of the original model's weights (for checks that nothing changed them)."""
    served = served_preset(name)
    with served.original.lock:
        return {k: v.detach().cpu().numpy().copy() for k, v in served.ws.task.model.state_dict().items()}


# --------------------------------------------------------------------------- successive requests (mape.serving.chain)


def _chain_start(name: str, base: dict | None, device) -> tuple:
    """(model to start from, indices already forgotten) of a chain's next request: a private copy of the
    original with the chain's accumulated delta applied, or (None, None) for a first request."""
    if base is None:
        return None, None
    task = unlearned_copy(name, base["delta"])
    if ZERO_GPU:
        task.to(device)
    return task, np.asarray(base["forgotten"], dtype=np.int64)
