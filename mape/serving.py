"""The one owner of every model the app shares (DESIGN.md §11, "How it is built"). No gradio here.

The app keeps models once per process and serves many visitors at a time. This module holds them all
and is the only code that touches them:

- the prepared :class:`~mape.pipeline.Workspace` of each preset (dataset, encoded splits and the
  *original* model), prepared at most once at a time and kept for the life of the process;
- the *retrained* reference models loaded from the disk cache (a few, least recently used first out);
- the *unlearned* models, rebuilt from a session's delta (the entries MAPE changed) on a copy;
- the ZeroGPU wrapper :func:`gpu` (``spaces.GPU`` when the ``spaces`` package is present).

Rules, so that one visitor's request can never disturb another's:

1. every shared model has its own re-entrant lock (:class:`SharedModel`), held for every read:
   predictions, the memoised original predictions behind the metrics, tokenisation, cloning;
2. whatever changes a model, even for a moment (Captum's hooks and ``requires_grad`` flags, a move to
   the GPU, an unlearning run or a comparison), works on a private copy cloned under that lock;
3. callers get plain data back (NumPy arrays, dicts, strings), never a model.

On ZeroGPU (``spaces`` importable and ``SPACES_ZERO_GPU`` / ``SPACE_ID`` set) the shared models stay on
the CPU and CUDA is touched only inside the ``@gpu`` functions, on the private copies.
"""

from __future__ import annotations

import copy
import logging
import os
import queue
import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from mape import app_support as S
from mape.errors import MapeError

log = logging.getLogger("mape.serving")

try:  # Hugging Face ZeroGPU: CUDA is only available inside functions decorated with spaces.GPU
    import spaces  # type: ignore
except ImportError:  # pragma: no cover - the usual case off Spaces
    spaces = None


def gpu(duration: int = 120):
    """``spaces.GPU(duration=...)`` when the ``spaces`` package is present, else a no-op."""
    def wrap(fn):
        return spaces.GPU(duration=duration)(fn) if spaces is not None else fn
    return wrap


def _zero_gpu() -> bool:
    return spaces is not None and bool(os.environ.get("SPACES_ZERO_GPU") or os.environ.get("SPACE_ID"))


def _cuda_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # noqa: BLE001
        return False


ZERO_GPU = _zero_gpu()
ON_GPU = ZERO_GPU or _cuda_available()   # ZeroGPU: a GPU per call; CUDA is not touched at import
ATTRIBUTION_BATCH = 8 if not ON_GPU else 32   # Captum internal_batch_size (bounded)
ATTRIBUTION_STEPS = 32
#: the app's live run measures retain and test accuracy on seeded samples of this size (the CLI, the
#: API and "Compare methods" measure the full test split and the 1,000-example retain sample)
LIVE_EVAL_SAMPLE = 256


def device_label() -> str:
    """What the page's device badge says: ZeroGPU, the GPU's name, or the CPU's core count."""
    if ZERO_GPU:
        return "ZeroGPU (on demand)"
    if ON_GPU:
        import torch

        return f"GPU · {torch.cuda.get_device_name(0)}"
    return f"CPU · {os.cpu_count()} cores"


def set_threads(n: int) -> None:
    """torch's intra-op threads (``MAPE_APP_TORCH_THREADS``)."""
    import torch

    torch.set_num_threads(n)


class RunCancelled(Exception):
    """Raised inside the engine's progress callback when the user stops a run or leaves."""


@dataclass
class SharedModel:
    """A model several requests read: every use holds ``lock``; changes happen on :meth:`copy`."""
    task: object
    lock: threading.RLock = field(default_factory=threading.RLock)

    def copy(self):
        with self.lock:
            return self.task.clone()

    def predict(self, enc) -> np.ndarray:
        with self.lock:
            return self.task.predict_proba(enc)


# --------------------------------------------------------------------------- workspaces (once per process)


@dataclass
class _Served:
    ws: object                    # mape.pipeline.Workspace
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
    scenario (mape.scenarios) applied to its training data: its own dataset, original and references."""
    scenario = (scenario or "").strip()
    return f"{preset}{SCENARIO_SEP}{scenario}" if scenario else preset


def split_name(name: str) -> tuple[str, str | None]:
    """(preset, scenario or None) of a served name."""
    preset, _, scenario = name.partition(SCENARIO_SEP)
    return preset, (scenario or None)


def _key(name: str) -> tuple:
    preset, scenario = split_name(name)
    return preset, S.train_limit_for(preset, ON_GPU), scenario


def is_ready(name: str) -> bool:
    return _key(name) in _SERVED


def preparing(name: str) -> tuple[str, float] | None:
    """(stage, fraction) while another request prepares the preset, else None."""
    return _PREP_STATE.get(_key(name))


def dataset(name: str):
    """The preset's dataset (train subset as the app trains it, altered by the served name's scenario;
    plain data, no model), loaded once."""
    from mape.pipeline import training_data
    from mape.presets import get_preset, load_dataset_for

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


def _served(name: str, progress: Callable | None = None) -> _Served:
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
    from mape.pipeline import prepare

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
    """Prepare a preset (see :func:`_served`) and return :func:`info`."""
    return info(name, _served(name, progress))


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
    ws = (served or _served(name)).ws
    a = ws.task.adapter
    return {"preset": ws.preset.name, "name": name, "scenario": split_name(name)[1],
            "n_train": len(ws.dataset.train), "n_test": len(ws.dataset.test),
            "params": ws.total_params, "layers": a.num_layers, "heads": a.num_heads, "filters": a.num_filters,
            "classes": list(ws.dataset.classes), "device": str(ws.device), "train_limit": ws.train_limit,
            "modality": ws.task.modality}


def cached_on_disk(name: str) -> bool | None:
    """Whether the preset's original model is in the disk cache (None: not applicable / unknown)."""
    from mape import cache
    from mape.pipeline import original_cache_spec
    from mape.presets import get_preset

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
    return _served(name).ws.task.image_format


# --------------------------------------------------------------------------- private copies


def _work_device():
    import torch

    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


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
        view.device = _work_device()
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


def _unlearned_copy(name: str, delta: dict):
    task = _served(name).original.copy()
    S.apply_delta(task.model, delta)
    return task


def _unlearned(name: str, run_key: str | None, delta: dict) -> SharedModel:
    """The unlearned model of a run, rebuilt from its delta once and kept for a few runs."""
    with _GUARD:
        shared = _UNLEARNED.get(run_key) if run_key else None
        if shared is not None:
            _UNLEARNED.move_to_end(run_key)
            return shared
    shared = SharedModel(_unlearned_copy(name, delta))
    if run_key:
        with _GUARD:
            _UNLEARNED[run_key] = shared
            while len(_UNLEARNED) > MAX_UNLEARNED:
                _UNLEARNED.popitem(last=False)
    return shared


def _retrained(name: str, forget_indices) -> SharedModel | None:
    """The run's retrain reference from the disk cache (None if it is not there: never trains)."""
    from mape.pipeline import cached_retrain, retrain_cache_key

    served = _served(name)
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


def _stream(work) -> Iterator[tuple]:
    """Run ``work(emit, cancel)`` in a worker thread and yield its events, then ("done", value) or
    ("error", message) / ("cancelled",). Closing the generator asks the worker to stop."""
    q: queue.Queue = queue.Queue()
    cancel = threading.Event()
    threading.Thread(target=_work_thread, args=(work, q, cancel), daemon=True, name="mape-engine").start()
    try:
        while True:
            try:
                event = q.get(timeout=0.3)
            except queue.Empty:
                event = ("tick",)  # lets the consumer check for a stop request between engine events
            yield event
            if event[0] in ("done", "error", "cancelled"):
                return
    finally:
        cancel.set()


def _work_thread(work, q: queue.Queue, cancel: threading.Event) -> None:
    try:
        q.put(("done", work(q.put, cancel)))
    except RunCancelled:
        q.put(("cancelled",))
    except MapeError as exc:
        q.put(("error", str(exc)))
    except MemoryError:
        q.put(("error", "Out of memory; try a smaller retain sample or forget set."))
    except Exception as exc:  # noqa: BLE001 - shown as one line, logged with its traceback
        log.exception("run failed")
        msg = str(exc).splitlines()[0] if str(exc) else ""
        if "out of memory" in msg.lower():
            q.put(("error", "The GPU ran out of memory; try a smaller retain sample or forget set."))
        else:
            q.put(("error", f"Unexpected {type(exc).__name__}: {msg[:300]}"))


def _prep_emitter(emit):
    return lambda stage, frac, selection=None: emit(("prep", stage, frac))


@gpu(duration=180)
def run(preset: str, spec: str, cfg: dict, live: bool = False) -> Iterator[tuple]:
    """Generator of run events: ("prep", stage, frac), ("ready", info), ("progress", stage, frac),
    ("selection", stage, frac, heads, filters, head_scores, label, swaps), finally ("done", payload) or
    ("error", message) / ("cancelled",). ``live``: the page's run, measured on seeded samples of
    :data:`LIVE_EVAL_SAMPLE` retain and test examples (the API and the CLI measure the full splits)."""
    from mape.pipeline import UnlearnConfig, unlearn

    def work(emit, cancel):
        served = _served(preset, _prep_emitter(emit))
        emit(("ready", info(preset, served)))
        emit(("progress", "measuring the original model", 0.0))
        view = _working_copy(served, LIVE_EVAL_SAMPLE if live else None)

        def progress(stage, frac, selection=None):
            if cancel.is_set():
                raise RunCancelled()
            if selection is None:
                emit(("progress", stage, frac))
            else:
                emit(("selection", stage, frac, selection.heads.copy(), selection.filters.copy(),
                      selection.head_scores, selection.stage, selection.swaps))

        res = unlearn(view, spec, UnlearnConfig(**cfg), progress)
        emit(("progress", "predictions before/after", 0.5))
        return _finish_run(view, res, live, preset)

    yield from _stream(work)


def _sample_probs(view, res, samples: dict) -> dict:
    """Predictions of the original (memoised), unlearned and retrained model on the shown samples."""
    idx = {g: np.asarray(samples[g], dtype=np.int64) for g in ("forget", "retain", "test")}
    probs = {"original": {"forget": view.original_train_probs(idx["forget"]),
                          "retain": view.original_train_probs(idx["retain"]),
                          "test": view.full_test_probs[idx["test"]]}}
    models = {"unlearned": res.unlearned, **({"retrain": res.retrained} if res.retrained is not None else {})}
    for name, task in models.items():
        probs[name] = {g: _predict_split(task, view, g, idx[g]) for g in ("forget", "retain", "test")}
    return probs


def _predict_split(task, view, group: str, idx: np.ndarray) -> np.ndarray:
    if not len(idx):
        return np.zeros((0, len(view.dataset.classes)))
    return task.predict_proba((view.full_test_enc if group == "test" else view.train_enc).take(idx))


def _finish_run(view, res, live: bool, name: str) -> dict:
    """Everything a session keeps of a run, as CPU/NumPy data."""
    forget, sel = res.forget_set, res.selection_obj
    ds = view.dataset
    retain_idx = view.retain_eval_indices(forget.indices)
    samples = S.pick_samples(np.asarray(ds.train.y), np.asarray(ds.test.y), forget.indices, retain_idx,
                             forget.forget_class)
    result = S.to_jsonable(res.to_json())
    if live:
        result["evaluation"] = {"retain_examples": int(len(retain_idx)), "test_examples": int(len(view.test_y)),
                                "note": f"seeded samples of {LIVE_EVAL_SAMPLE} retain and test examples (the "
                                        "CLI, the API and Compare methods measure the full splits)"}
    return {
        "preset": name, "result": result, "run_key": uuid.uuid4().hex,
        "delta": S.extract_delta(view.task.model, res.unlearned.model),
        "heads": np.asarray(sel.heads, dtype=bool), "filters": np.asarray(sel.filters, dtype=bool),
        "head_scores": np.asarray(sel.head_scores, dtype=np.float32),
        "filter_scores": np.asarray(sel.filter_scores, dtype=np.float32),
        "samples": samples, "probs": _sample_probs(view, res, samples),
        "forget_indices": np.asarray(forget.indices), "has_retrain": res.retrained is not None,
    }


@gpu(duration=600)
def compare(preset: str, spec: str, req: dict) -> Iterator[tuple]:
    """Generator of comparison events: ("prep", stage, frac), ("progress", stage, frac), finally
    ("done", CompareResult) or ("error", message) / ("cancelled",)."""
    from mape.baselines import BaselineConfig
    from mape.compare import compare as compare_methods

    def work(emit, cancel):
        view = _working_copy(_served(preset, _prep_emitter(emit)))

        def progress(stage, frac):
            if cancel.is_set():
                raise RunCancelled()
            emit(("progress", stage, frac))

        return compare_methods(view, spec, req["methods"], req["seeds"], progress,
                               config=BaselineConfig(**req["config"]), relearn_steps=req["relearn"])

    yield from _stream(work)


# --------------------------------------------------------------------------- one input at a time


def _encode_one(served: _Served, x):
    """One user input as model inputs (the tokenizer is shared too: encoded under the original's lock)."""
    import torch

    from mape.models import Encoded

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
    from mape.scenarios import add_trigger

    scenario = _served(name).ws.scenario
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
    served = _served(preset)
    enc = _encode_one(served, x)
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
    served = _served(preset)
    out = {}
    for name in ("original",) + (("unlearned",) if delta is not None else ()):
        task = served.original.copy() if name == "original" else _unlearned_copy(preset, delta)
        out[name] = _attribute(served, task, x, target)
        if target is None:
            target = out[name]["target"]  # explain the original's prediction in both models
    return out


def _attribute(served: _Served, task, x, target) -> dict:
    """Integrated gradients on ``task``, a private copy (its hooks and flags disturb nobody)."""
    from mape.attribution import attribute_image, attribute_text

    ws = served.ws
    device = _work_device() if ZERO_GPU else ws.device
    if task.modality == "text":
        a = attribute_text(task.model, _private_tokenizer(served), x, target, max_length=ws.preset.max_length,
                           n_steps=ATTRIBUTION_STEPS, internal_batch_size=ATTRIBUTION_BATCH, device=device)
        return {"tokens": a.tokens, "scores": a.scores, "target": a.target, "prob": a.prob}
    pixel_values = task.image_format.encode(np.asarray(x)[None])
    a = attribute_image(task.model, pixel_values, target, n_steps=ATTRIBUTION_STEPS,
                        internal_batch_size=ATTRIBUTION_BATCH * 2, device=device)
    return {"heatmap": np.asarray(a.heatmap), "target": a.target, "prob": a.prob, "pixels": pixel_values[0].numpy()}


_TOKENIZERS: dict[tuple, object] = {}


def _private_tokenizer(served: _Served):
    """A tokenizer of the attribution's own (a fast tokenizer is not safe to call from two threads)."""
    key = _key(served.ws.preset.name)
    with _GUARD:
        tok = _TOKENIZERS.get(key)
        if tok is None:
            with served.original.lock:
                tok = _TOKENIZERS[key] = copy.deepcopy(served.ws.task.tokenizer)
    return _LockedTokenizer(tok)


class _LockedTokenizer:
    """Serialises calls to the attribution tokenizer (shared by attributions, not by predictions)."""
    _lock = threading.Lock()

    def __init__(self, tok):
        self._tok = tok

    def __call__(self, *args, **kw):
        with self._lock:
            return self._tok(*args, **kw)

    def __getattr__(self, name):
        return getattr(self._tok, name)


@gpu(duration=60)
def export(preset: str, delta: dict, folder: str, meta: dict) -> str:
    """Write the unlearned model (rebuilt on a copy) as safetensors; returns the file's path."""
    return str(S.write_model(_unlearned_copy(preset, delta).model, Path(folder), meta))


# --------------------------------------------------------------------------- read-only data for the page


def scenario_of(name: str):
    """The served name's resolved scenario (mape.scenarios.Scenario: plain data) or None (clean data)."""
    return getattr(dataset(name), "scenario", None)


def split_example(name: str, group: str, idx: int):
    """(raw input, label) of a training ("forget"/"retain") or test example."""
    ds = dataset(name)
    split = ds.test if group == "test" else ds.train
    return split.x[idx], int(split.y[idx])


def original_weights(name: str) -> dict[str, np.ndarray]:
    """A NumPy copy of the original model's weights (for checks that nothing changed them)."""
    served = _served(name)
    with served.original.lock:
        return {k: v.detach().cpu().numpy().copy() for k, v in served.ws.task.model.state_dict().items()}


# --------------------------------------------------------------------------- inside a selected unit

#: examples per group (forget, retain) of a filter's activation plot
UNIT_SAMPLE = 256 if ON_GPU else 64


@gpu(duration=60)
def head_attention(name: str, delta: dict, x, layer: int, head: int) -> dict:
    """Head (``layer``, ``head``)'s attention on one input before (original) and after (the run's unlearned
    model, rebuilt from ``delta``), each on a private copy (mape.units: eager attention). Returns
    {"tokens": [...] (text) or None, "original": (T, T), "unlearned": (T, T), and for images
    "grid": {"original": (rows, columns), "unlearned": ...}, the [CLS] row over the patches}."""
    from mape import units as U

    served = _served(name)
    U.check_head(served.ws.task.adapter, layer, head)
    enc = _encode_one(served, x)
    tokens = None
    if served.ws.task.modality == "text":
        ids = enc.inputs["input_ids"][0][enc.inputs["attention_mask"][0].bool()].tolist()
        with served.original.lock:
            tokens = served.ws.task.tokenizer.convert_ids_to_tokens(ids)
    out: dict = {"tokens": tokens}
    for which in ("original", "unlearned"):
        task = served.original.copy() if which == "original" else _unlearned_copy(name, delta)
        if ZERO_GPU:
            task.to(_work_device())
        out[which] = U.head_attention(task, enc.inputs, layer, head)
        if task.modality == "image":
            out.setdefault("grid", {})[which] = U.patch_grid(task.model, out[which])
    return out


def unit_examples(name: str, forget_indices, n: int | None = None) -> dict[str, np.ndarray]:
    """Seeded samples of at most ``n`` (default :data:`UNIT_SAMPLE`) forget and retain training examples
    (indices; the retain ones from the fixed retain sample of the measurements)."""
    served, n = _served(name), n or UNIT_SAMPLE
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
    from mape import units as U

    served = _served(name)
    U.check_filter(served.ws.task.adapter, layer, filt)
    idx = unit_examples(name, forget_indices)
    with served.original.lock:
        encs = {g: served.ws.train_enc.take(i) for g, i in idx.items() if len(i)}
    values = {}
    for which in ("original", "unlearned"):
        task = served.original.copy() if which == "original" else _unlearned_copy(name, delta)
        if ZERO_GPU:
            task.to(_work_device())
        values[which] = {g: U.filter_activation(task, enc, layer, filt) for g, enc in encs.items()}
    return {"values": values, "indices": idx}
