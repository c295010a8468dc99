"""MAPE-Unlearn Studio: the Gradio app (SPEC §5).

    python app.py                      # serves on 127.0.0.1:7860 (0.0.0.0 on Hugging Face Spaces)
    from app import demo, build_demo   # the Blocks, e.g. for tests or `gradio app.py`

One page, top to bottom: model & data, forget set, method, run (live mask search), results, predictions
before/after, attributions, "Compare methods" (against retraining), downloads, and "About the method".
The run is also the API endpoint ``unlearn`` (gradio_client: ``Client(url).predict(preset, forget,
objective, sparsity, update, seed, retrain, api_name="/unlearn")`` returns the results JSON of
``python -m mape unlearn``), the comparison the endpoint ``compare`` (``predict(preset, forget, methods,
seeds, sparsity, relearn_steps, api_name="/compare")`` returns the JSON of ``python -m mape compare``).

Design notes
- Models are held once per process: ``get_workspace`` prepares each preset at most once at a time (a
  lock per preset) and keeps the Workspace in a module-level cache; sessions never copy it.
- A session keeps only what its UI needs (gr.State): the results JSON, the masks, a few sample
  predictions and the *delta* of the unlearned model (the entries MAPE changed), from which the
  unlearned model is rebuilt on demand for attributions, own-input predictions and the model download.
- The engine runs in a worker thread; its progress events go through a queue to a generator handler
  that streams the stage, the progress bar and the heatmaps (warm start, then each refined layer).
- When the ``spaces`` package is importable (Hugging Face ZeroGPU), the functions that touch the model
  are wrapped with ``spaces.GPU`` and return CPU/NumPy data only; without it the wrapper is a no-op.

Environment: ``MAPE_APP_PRESETS`` (comma-separated preset names to offer, in order; ``tiny-bbc`` and
``tiny-mnist`` are fast test presets), ``MAPE_APP_TRAIN_LIMIT`` (train the original model on a subset),
``MAPE_APP_CONCURRENCY`` (simultaneous runs; default 1 on a CPU, 2 on a GPU), ``MAPE_APP_RETAIN_SAMPLE``
(default retain sample of the scores), ``MAPE_APP_TORCH_THREADS`` (torch threads, ``python app.py`` only),
``MAPE_CACHE`` (where trained models are cached), ``PORT`` / ``GRADIO_SERVER_PORT``, and ``SPACE_ID``
(bind 0.0.0.0 on Spaces, else 127.0.0.1; ``GRADIO_SERVER_NAME`` overrides off Spaces).
"""

from __future__ import annotations

import html
import logging
import os
import queue
import tempfile
import threading
import time
from pathlib import Path

import gradio as gr
import numpy as np

from mape import app_support as S
from mape import figures as FG
from mape.errors import MapeError
from mape.forget import select_forget
from mape.pipeline import MAX_GREEDY_PASSES
from mape.presets import DEFAULT_PRESET, PRESETS, get_preset

log = logging.getLogger("mape.app")

try:  # Hugging Face ZeroGPU: CUDA is only available inside functions decorated with spaces.GPU
    import spaces  # type: ignore
except ImportError:  # pragma: no cover - the usual case off Spaces
    spaces = None


def gpu(duration: int = 120):
    """``spaces.GPU(duration=...)`` when the ``spaces`` package is present, else a no-op."""
    def wrap(fn):
        return spaces.GPU(duration=duration)(fn) if spaces is not None else fn
    return wrap


def _on_gpu_machine() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # noqa: BLE001
        return False


ON_GPU = _on_gpu_machine()
ATTRIBUTION_BATCH = 8 if not ON_GPU else 32   # Captum internal_batch_size (bounded)
ATTRIBUTION_STEPS = 32
BINS = 64
TMP_ROOT = Path(tempfile.gettempdir()) / "mape-app"
COMPARE_CHOICES = [
    ("mape — MAPE (mlr scores, so update)", "mape"), ("mape-mlf — MAPE, mlf scores", "mape-mlf"),
    ("mape-norm — MAPE, gradient-norm scores", "mape-norm"), ("mape-random — random units, same budget", "mape-random"),
    ("mape+ga", "mape+ga"), ("mape+gd", "mape+gd"), ("mape+rl", "mape+rl"), ("mape+npo", "mape+npo"),
    ("salun — saliency-masked random labels", "salun"), ("ssd — selective synaptic dampening", "ssd"),
    ("ft — fine-tune on the retain set", "ft"), ("l1-sparse — ft with an l1 penalty", "l1-sparse"),
    ("so — full-parameter second-order step", "so"), ("ga — full-parameter gradient ascent", "ga"),
    ("gd — full-parameter NegGrad+", "gd"), ("rl — full-parameter random labels", "rl"),
    ("npo — full-parameter NPO", "npo"),
]
COMPARE_DEFAULT = ("mape", "mape-norm", "mape-random", "salun")
MAX_COMPARE_METHODS = 12
MAX_COMPARE_SEEDS = 5
MAX_RELEARN = 10


class RunCancelled(Exception):
    """Raised inside the engine's progress callback when the user stops a run or leaves."""


# --------------------------------------------------------------------------- workspaces (once per process)

_WS: dict[tuple, object] = {}
_WS_LOCKS: dict[tuple, threading.Lock] = {}
_WS_GUARD = threading.Lock()
_PREP_STATE: dict[tuple, tuple[str, float]] = {}
_DATASETS: dict[tuple, object] = {}
_ORIGINAL_LOCK = threading.Lock()  # Captum toggles flags on the shared original model: one at a time


def _ws_key(name: str) -> tuple:
    return name, S.train_limit_for(name, ON_GPU)


def get_dataset(name: str):
    """The preset's dataset (train subset as the app trains it), loaded once per process."""
    key = _ws_key(name)
    if key in _WS:
        return _WS[key].dataset
    if key not in _DATASETS:
        from mape.presets import load_dataset_for

        preset = get_preset(name)
        ok, why = preset.availability()
        if not ok:
            raise MapeError(f"Preset '{name}' cannot run here: {why}.")
        _DATASETS[key] = load_dataset_for(preset, None, key[1])
    return _DATASETS[key]


def get_workspace(name: str, progress=None):
    """The prepared Workspace of a preset: trained (first time) or loaded from the disk cache, then
    kept for the life of the process. Concurrent callers wait for one preparation; ``progress(stage,
    fraction)`` sees the preparing session's progress either way."""
    from mape.pipeline import prepare

    key = _ws_key(name)
    ws = _WS.get(key)
    if ws is not None:
        return ws
    with _WS_GUARD:
        lock = _WS_LOCKS.setdefault(key, threading.Lock())
    while not lock.acquire(timeout=0.5):
        if progress:
            stage, frac = _PREP_STATE.get(key, ("waiting for another session preparing this model", 0.0))
            progress(stage, frac)
    try:
        ws = _WS.get(key)
        if ws is None:
            def prog(stage, frac, selection=None):
                _PREP_STATE[key] = (stage, frac)
                if progress:
                    progress(stage, frac)

            prog("loading data and model", 0.0)
            ws = prepare(name, train_limit=key[1], progress=prog)
            # the original model's predictions on the test set and the fixed retain sample are memoised
            # by the Workspace: computing them now makes every run's "original" row instant
            prog("measuring the original model (once)", 0.5)
            ws.original_test_probs()
            ws.original_train_probs(ws.retain_eval_indices(np.array([], dtype=np.int64)))
            _WS[key] = ws
            _DATASETS.pop(key, None)
        return ws
    finally:
        _PREP_STATE.pop(key, None)
        lock.release()


def cached_on_disk(name: str) -> bool | None:
    """Whether the preset's original model is in the disk cache (None: not applicable / unknown)."""
    from mape import cache
    from mape.pipeline import _model_key

    preset = get_preset(name)
    if preset.finetuned:
        return None
    try:
        ds = get_dataset(name)
    except MapeError:
        return None
    key = cache.cache_key(_model_key(preset, ds, _ws_key(name)[1]))
    return cache.has_model("original", key)


def device_badge() -> str:
    if spaces is not None and os.environ.get("SPACE_ID"):
        text, colour = "ZeroGPU (on demand)", "#15803d"
    elif ON_GPU:
        import torch

        text, colour = f"GPU · {torch.cuda.get_device_name(0)}", "#15803d"
    else:
        text, colour = f"CPU · {os.cpu_count()} cores", "#475569"
    return (f'<div class="mape-badge" style="text-align:right;"><span style="display:inline-block;padding:4px 12px;'
            f'border-radius:999px;background:{colour};color:white;font-weight:600;font-size:0.9em;">'
            f'{html.escape(text)}</span></div>')


# --------------------------------------------------------------------------- engine (touches the model)


def _stream(work):
    """Run ``work(emit)`` in a worker thread and yield its events, then ("done", value) or
    ("error", message) / ("cancelled",). Closing the generator asks the worker to stop."""
    q: queue.Queue = queue.Queue()
    cancel = threading.Event()

    def target():
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

    thread = threading.Thread(target=target, daemon=True, name="mape-engine")
    thread.start()
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


def _finish_run(ws, res) -> dict:
    """Everything a session keeps of a run, as CPU/NumPy data."""
    from mape.pipeline import RunResult  # noqa: F401 - documentation of ``res``

    forget = res.forget_set
    sel = res.selection_obj
    retain_idx = ws.retain_eval_indices(forget.indices)
    samples = S.pick_samples(ws.train_y, ws.test_y, forget.indices, retain_idx, forget.forget_class)
    models = {"original": ws.task, "unlearned": res.unlearned}
    if res.retrained is not None:
        models["retrain"] = res.retrained
    probs = {}
    for name, task in models.items():
        probs[name] = {}
        for group in ("forget", "retain", "test"):
            idx = samples[group]
            enc = (ws.test_enc if group == "test" else ws.train_enc).take(idx)
            probs[name][group] = task.predict_proba(enc) if len(idx) else np.zeros((0, len(ws.dataset.classes)))
    return {
        "preset": ws.preset.name,
        "result": S.to_jsonable(res.to_json()),
        "delta": S.extract_delta(ws.task.model, res.unlearned.model),
        "heads": np.asarray(sel.heads, dtype=bool), "filters": np.asarray(sel.filters, dtype=bool),
        "head_scores": np.asarray(sel.head_scores, dtype=np.float32),
        "filter_scores": np.asarray(sel.filter_scores, dtype=np.float32),
        "samples": samples, "probs": probs,
        "forget_indices": np.asarray(forget.indices), "has_retrain": res.retrained is not None,
    }


@gpu(duration=180)
def engine_run(preset: str, spec: str, cfg: dict):
    """Generator of run events: ("prep", stage, frac), ("ready", info), ("progress", stage, frac),
    ("selection", stage, frac, heads, filters, head_scores, label, swaps), finally ("done", payload) or
    ("error", message) / ("cancelled",)."""
    from mape.pipeline import UnlearnConfig, unlearn

    def work(emit, cancel):
        ws = get_workspace(preset, lambda s, f, sel=None: emit(("prep", s, f)))
        emit(("ready", workspace_info(ws)))
        emit(("progress", "measuring the original model", 0.0))
        config = UnlearnConfig(**cfg)

        def progress(stage, frac, selection=None):
            if cancel.is_set():
                raise RunCancelled()
            if selection is None:
                emit(("progress", stage, frac))
            else:
                emit(("selection", stage, frac, selection.heads.copy(), selection.filters.copy(),
                      selection.head_scores, selection.stage, selection.swaps))

        res = unlearn(ws, spec, config, progress)
        emit(("progress", "predictions before/after", 0.5))
        return _finish_run(ws, res)

    yield from _stream(work)


@gpu(duration=600)
def engine_compare(preset: str, spec: str, req: dict):
    """Generator of comparison events: ("prep", stage, frac), ("progress", stage, frac), finally
    ("done", CompareResult) or ("error", message) / ("cancelled",)."""
    from mape.baselines import BaselineConfig
    from mape.compare import compare

    def work(emit, cancel):
        ws = get_workspace(preset, lambda s, f, sel=None: emit(("prep", s, f)))

        def progress(stage, frac):
            if cancel.is_set():
                raise RunCancelled()
            emit(("progress", stage, frac))

        return compare(ws, spec, req["methods"], req["seeds"], progress, config=BaselineConfig(**req["config"]),
                       relearn_steps=req["relearn"])

    yield from _stream(work)


def _unlearned_model(ws, delta):
    task = ws.task.clone()
    S.apply_delta(task.model, delta)
    return task


def _retrained_model(ws, forget_indices):
    """The run's retrain reference from the disk cache (None if it is not there: an own-input
    prediction never retrains)."""
    from mape.pipeline import cached_retrain

    return cached_retrain(ws, np.asarray(forget_indices))


@gpu(duration=60)
def engine_explain(preset: str, delta: dict, x, target: int | None):
    """Integrated gradients before (original) and after (unlearned) for one input."""
    from mape.attribution import attribute_image, attribute_text

    ws = get_workspace(preset)
    after = _unlearned_model(ws, delta)
    out = {}
    for name, task in (("original", ws.task), ("unlearned", after)):
        lock = _ORIGINAL_LOCK if name == "original" else threading.Lock()
        with lock:
            if ws.task.modality == "text":
                a = attribute_text(task.model, task.tokenizer, x, target, max_length=ws.preset.max_length,
                                   n_steps=ATTRIBUTION_STEPS, internal_batch_size=ATTRIBUTION_BATCH, device=ws.device)
                out[name] = {"tokens": a.tokens, "scores": a.scores, "target": a.target, "prob": a.prob}
            else:
                pv = task.image_format.encode(np.asarray(x)[None])
                a = attribute_image(task.model, pv, target, n_steps=ATTRIBUTION_STEPS,
                                    internal_batch_size=ATTRIBUTION_BATCH * 2, device=ws.device)
                out[name] = {"heatmap": np.asarray(a.heatmap), "target": a.target, "prob": a.prob,
                             "pixels": pv[0].numpy()}
        if target is None:
            target = out[name]["target"]  # explain the original's prediction in both models
    return out


@gpu(duration=60)
def engine_predict(preset: str, delta: dict | None, forget_indices, x) -> dict:
    """Class probabilities of one user input under the original, unlearned and (cached) retrain model."""
    from mape.models import Encoded
    import torch

    ws = get_workspace(preset)
    enc = Encoded(ws.task.encode_inputs([x] if ws.task.modality == "text" else np.asarray(x)[None]),
                  torch.zeros(1, dtype=torch.long))
    out = {"original": ws.task.predict_proba(enc)[0]}
    if delta is not None:
        out["unlearned"] = _unlearned_model(ws, delta).predict_proba(enc)[0]
    retrained = _retrained_model(ws, forget_indices) if forget_indices is not None else None
    if retrained is not None:
        out["retrain"] = retrained.predict_proba(enc)[0]
    return out


@gpu(duration=60)
def engine_export(preset: str, delta: dict, folder: str, meta: dict) -> str:
    ws = get_workspace(preset)
    return str(S.write_model(_unlearned_model(ws, delta).model, Path(folder), meta))


def workspace_info(ws) -> dict:
    a = ws.task.adapter
    return {"preset": ws.preset.name, "n_train": len(ws.dataset.train), "n_test": len(ws.dataset.test),
            "params": ws.total_params, "layers": a.num_layers, "heads": a.num_heads, "filters": a.num_filters,
            "classes": list(ws.dataset.classes), "device": str(ws.device), "train_limit": ws.train_limit}


# --------------------------------------------------------------------------- status texts


def preset_choices(names: list[str]) -> list[tuple[str, str]]:
    out = []
    for n in names:
        p = PRESETS[n]
        ok, why = p.availability()
        suffix = "" if ok else "  — unavailable"
        out.append((p.title + suffix, n))
    return out


def preset_description(name: str) -> str:
    p = PRESETS[name]
    ok, why = p.availability()
    limit = S.train_limit_for(name, ON_GPU)
    text = p.description
    if limit:
        text += f" The app trains it on a seeded subset of {limit:,} training examples."
    if not ok:
        text += f"\n\n**Unavailable here:** {why}."
    elif p.kind == "hub":
        text += "\n\nNeeds the Hugging Face Hub (downloads on first use)."
    return text


def _status_line(kind: str, bold: str, rest: str = "") -> str:
    return (f'<div class="mape-model-status" style="padding:6px 2px;">{pill(kind)}<b>{html.escape(bold)}</b>'
            f'{(" — " + html.escape(rest)) if rest else ""}</div>')


# measured on 2 idle CPU cores (README, BENCHMARKS.md); other presets depend on the data size
CPU_TRAINING_TIME = {"minilm-bbc": "about 4 minutes on a CPU", "vit-mnist": "about 2 minutes on a CPU"}


def model_status(name: str) -> str:
    """HTML line: is the preset's original model ready, cached on disk, being prepared or not trained?"""
    key = _ws_key(name)
    ws = _WS.get(key)
    if ws is not None:
        i = workspace_info(ws)
        return _status_line("ready", "Original model ready",
                            f"{i['n_train']:,} training / {i['n_test']:,} test examples, {i['params']:,} parameters, "
                            f"{i['layers']} layers × {i['heads']} heads × {i['filters']:,} filters.")
    if key in _PREP_STATE:
        stage, frac = _PREP_STATE[key]
        return _status_line("busy", "Preparing", f"{stage}, {100 * frac:.0f}% (started by another session).")
    ok, why = PRESETS[name].availability()
    if not ok:
        return _status_line("na", "Unavailable here", why + ".")
    try:
        cached = cached_on_disk(name)
    except Exception:  # noqa: BLE001 - status only
        cached = None
    if cached:
        return _status_line("cached", "Trained model found in the cache",
                            "it loads in a few seconds when you click Prepare model or Run.")
    if PRESETS[name].finetuned:
        return _status_line("hub", "Published fine-tuned model",
                            "downloaded from the Hugging Face Hub when you click Prepare model or Run.")
    eta = "a little while" if ON_GPU else CPU_TRAINING_TIME.get(name, "a little while")
    return _status_line("todo", "Not trained yet",
                        f"the original model is trained once ({eta}) and cached. Click Prepare model now, or just "
                        f"Run (it prepares first).")


def preparing_status(stage: str, frac: float) -> str:
    return _status_line("busy", "Preparing the original model", f"{stage}: {100 * frac:.0f}%")


# --------------------------------------------------------------------------- UI helpers

KINDS_TEXT = [("random sample", "random"), ("whole class / class sample", "class"), ("texts matching a pattern", "match"),
              ("training indices", "indices")]
KINDS_IMAGE = [k for k in KINDS_TEXT if k[1] != "match"]
KIND_HELP = {
    "random": "How many random training examples: a count like 32, or a share like 2%.",
    "class": "A class name or number ({classes}); add :N for N examples of it, e.g. {c0}:20.",
    "match": "A regular expression (case-insensitive), e.g. football|rugby.",
    "indices": "Training indices and ranges, e.g. 0,5,10-20.",
}


def _kind_defaults(kind: str, classes: list[str], modality: str) -> str:
    if kind == "random":
        return "32"
    if kind == "class":
        return S.default_forget(modality, classes)[1] if modality == "image" else (
            "sport" if "sport" in classes else classes[0])
    if kind == "match":
        return "football|rugby"
    return "0-19"


def _kind_info(kind: str, classes: list[str]) -> str:
    shown = ", ".join(classes[:12]) + (", …" if len(classes) > 12 else "")
    return KIND_HELP.get(kind, "").format(classes=shown, c0=classes[0] if classes else "0")


def _placeholder_figures():
    return (FG.empty_figure("Attention heads: fills in as the search runs", 260),
            FG.empty_figure("FFN filters: fills in as the search runs", 260),
            FG.empty_figure("Selected units per layer", 320))


EMPTY_RESULTS = '<div class="mape-empty" style="color:#6b7280;padding:8px 0;">Run unlearning to see results here.</div>'


def _stage_weight(stage: str) -> tuple[float, float]:
    """(start, width) of a stage on the overall progress bar."""
    table = {"measuring the original model": (0.0, 0.02), "forget gradients": (0.02, 0.08),
             "retain gradients": (0.10, 0.40), "warm start": (0.50, 0.02), "greedy refinement": (0.52, 0.10), "step size": (0.62, 0.20), "measuring": (0.82, 0.08),
             "retraining without the forget set": (0.82, 0.12), "predictions before/after": (0.95, 0.05)}
    for key, v in table.items():
        if stage.startswith(key):
            return v
    if stage.endswith(" steps"):  # ga/gd/rl/npo
        return 0.62, 0.20
    return 0.0, 0.02


PILLS = {"idle": ("#94a3b8", "idle"), "busy": ("#f59e0b", "running"), "search": ("#e4572e", "search"),
         "done": ("#16a34a", "done"), "error": ("#dc2626", "error"), "stopped": ("#64748b", "stopped"),
         "ready": ("#16a34a", "ready"), "cached": ("#0ea5e9", "cached"), "todo": ("#f59e0b", "not trained"),
         "hub": ("#6366f1", "Hub"), "na": ("#dc2626", "unavailable")}


def pill(kind: str) -> str:
    colour, label = PILLS[kind]
    return (f'<span class="mape-pill mape-pill-{kind}" style="display:inline-block;padding:1px 9px;border-radius:999px;'
            f'background:{colour};color:white;font-size:0.8em;font-weight:600;margin-right:6px;">{label}</span>')


def _fmt_status(kind: str, text: str, detail: str = "") -> str:
    d = f' <span style="color:#6b7280;">{html.escape(detail)}</span>' if detail else ""
    return f'<div class="mape-status" style="font-size:1.02em;padding:4px 2px;">{pill(kind)}{html.escape(text)}{d}</div>'


def _heat_figures(heads, filters, head_scores, label: str):
    n_filters = filters.shape[1]
    bins = n_filters if n_filters <= 128 else BINS
    ff = FG.filter_heatmap(filters, bins=bins, title=f"FFN filters selected · {label}")
    return (FG.head_heatmap(heads, head_scores, title=f"Attention heads selected · {label}"), ff,
            FG.layer_counts_figure(heads, filters))


def _metrics_chart(metrics: dict):
    rows = {("MAPE (unlearned)" if k == "unlearned" else k): v for k, v in metrics.items()}
    fig = FG.metrics_figure(rows)
    labels = [FG.METRIC_LABELS[m] for m in ("forget_acc", "retain_acc", "test_acc", "mia")]
    fig.update_xaxes(tickangle=0, tickfont=dict(size=11), tickmode="array", tickvals=labels,
                     ticktext=["Forget acc. (FA)", "Retain acc. (RA)", "Test acc. (TA)", "MIA efficacy"])
    fig.update_layout(legend=dict(orientation="h", y=-0.14, x=0.5, xanchor="center"), margin=dict(b=70))
    return fig


def _sample_inputs(ws, group: str, idx: int):
    split = ws.dataset.test if group == "test" else ws.dataset.train
    return split.x[idx], int(split.y[idx])


def _predictions_views(ws, run: dict) -> tuple[str, str, str]:
    classes = ws.dataset.classes
    models = [m for m in ("original", "unlearned", "retrain") if m in run["probs"]]
    captions = {"forget": "Examples from the forget set: after unlearning they should be treated like unseen data.",
                "retain": "Examples the model keeps: predictions should not change.",
                "test": "Held-out test examples: accuracy should stay (except on a forgotten class)."}
    views = []
    for group in ("forget", "retain", "test"):
        items = []
        for k, i in enumerate(run["samples"][group]):
            x, y = _sample_inputs(ws, group, i)
            items.append({"index": f"{group} #{i}", "input_html": S.input_html(x, ws.task.modality), "true": y,
                          "probs": {m: run["probs"][m][group][k] for m in models}})
        views.append(S.predictions_html(items, classes, models, captions[group]))
    return tuple(views)


def _attr_choices(ws, run: dict) -> list[tuple[str, str]]:
    out = []
    classes = ws.dataset.classes
    for group in ("forget", "retain", "test"):
        for i in run["samples"][group]:
            _, y = _sample_inputs(ws, group, i)
            out.append((f"{group} example #{i} · {classes[y]}", f"{group}:{i}"))
    out.append(("my own input (typed text / uploaded image below)", "custom"))
    return out


# --------------------------------------------------------------------------- the page


def build_demo(presets: list[str] | str | None = None, concurrency: int | None = None) -> gr.Blocks:
    """Build the Blocks. ``presets`` (default: env ``MAPE_APP_PRESETS`` or all, embedded first) and
    ``concurrency`` (simultaneous runs; env ``MAPE_APP_CONCURRENCY``; default 1 on a CPU, 2 on a GPU)."""
    names = S.app_preset_names(presets)
    available = [n for n in names if PRESETS[n].availability()[0]]
    default = DEFAULT_PRESET if DEFAULT_PRESET in available else (available or names)[0]
    default_ds_classes, default_modality = _classes_of(default)
    kind0, value0 = S.default_forget(default_modality, default_ds_classes)
    engine_limit = concurrency or int(os.environ.get("MAPE_APP_CONCURRENCY", "0") or 0) or (2 if ON_GPU else 1)
    retain_default = int(os.environ.get("MAPE_APP_RETAIN_SAMPLE", "0") or 0) or (2048 if ON_GPU else 512)

    with gr.Blocks(title="MAPE-Unlearn Studio", delete_cache=(3600, 3600)) as demo:
        run_state = gr.State(None, time_to_live=6 * 3600)
        run_flags = gr.State({"stop": False})  # per session; the Stop button sets "stop"
        run_id = gr.State(0)  # changes when a run completes: triggers the default attribution

        # ---------------------------------------------------------------- header
        with gr.Row(equal_height=True):
            with gr.Column(scale=5):
                gr.Markdown(
                    "# MAPE-Unlearn Studio\n"
                    "Make a trained Transformer **forget** part of its training data by updating only a few "
                    "attention heads and feed-forward filters — *module-aware, parameter-efficient unlearning* "
                    "(Bao et al., 2025). Pick a model, choose what to forget, press **Run**, and watch which units "
                    "the search selects. Everything runs here, offline-capable; the method is explained at the "
                    "bottom of the page.", elem_id="mape-intro")
            with gr.Column(scale=1, min_width=180):
                gr.HTML(device_badge(), elem_id="device-badge")

        # ---------------------------------------------------------------- 1. model & data
        gr.Markdown("## ① Model & data", elem_classes=["mape-section"])
        with gr.Row():
            with gr.Column(scale=2):
                preset = gr.Dropdown(preset_choices(names), value=default, label="Preset (model · dataset)",
                                     elem_id="preset")
                preset_md = gr.Markdown(preset_description(default), elem_id="preset-description")
            with gr.Column(scale=3):
                status_md = gr.HTML(model_status(default), elem_id="model-status")
                prepare_btn = gr.Button("Prepare model", variant="secondary", elem_id="prepare-btn")

        # ---------------------------------------------------------------- 2. forget set
        gr.Markdown("## ② Forget set — what should the model forget?", elem_classes=["mape-section"])
        with gr.Row():
            kind = gr.Dropdown(KINDS_IMAGE if default_modality == "image" else KINDS_TEXT, value=kind0,
                               label="Selector", scale=1, elem_id="forget-kind")
            value = gr.Textbox(value0, label="Value", info=_kind_info(kind0, default_ds_classes), scale=2,
                               elem_id="forget-value")
            seed = gr.Number(0, label="Seed", precision=0, minimum=0, scale=1, elem_id="seed",
                             info="Same seed, same random choices.")
        with gr.Row():
            with gr.Column(scale=2):
                preview_counts = gr.HTML("", elem_id="forget-counts")
            with gr.Column(scale=3):
                preview_table = gr.Dataframe(headers=["#", "class", "text"], datatype=["number", "str", "str"],
                                             column_widths=["70px", "120px", "auto"],
                                             label="First examples of the forget set", wrap=True, max_height=300,
                                             visible=default_modality == "text", interactive=False,
                                             elem_id="forget-preview-table")
                preview_gallery = gr.Gallery(label="First examples of the forget set", columns=8, height=260,
                                             visible=default_modality == "image", allow_preview=False,
                                             elem_id="forget-preview-gallery")

        # ---------------------------------------------------------------- 3. method
        gr.Markdown("## ③ Method", elem_classes=["mape-section"])
        with gr.Row():
            objective = gr.Radio([("mlr — minimise retain loss (default)", "mlr"), ("mlf — maximise forget loss", "mlf"),
                                  ("norm — gradient norm", "norm"), ("random units (control)", "random")],
                                 value="mlr", label="Objective (how units are scored)", scale=3, elem_id="objective")
            sparsity = gr.Slider(0.5, 0.99, value=0.9, step=0.01, label="Sparsity S (fraction of units frozen)",
                                 info="0.9: 10% of heads and 10% of filters are updated.", scale=2, elem_id="sparsity")
        with gr.Row():
            update = gr.Dropdown([("so — one Fisher-preconditioned second-order step (default)", "so"),
                                  ("ga — gradient ascent on the forget set", "ga"),
                                  ("gd — ascent on forget + descent on retain (NegGrad+)", "gd"),
                                  ("rl — random labels on forget + retain", "rl"),
                                  ("npo — negative preference optimisation", "npo")],
                                 value="so", label="Update rule (only selected units change)", scale=3, elem_id="update")
            step = gr.Textbox("auto", label="Step size", scale=1, elem_id="step",
                              info="auto (chosen by forward passes), η for so, or a number of steps.")
            retrain = gr.Checkbox(False, label="Retrain reference (gold standard)", scale=2, elem_id="retrain",
                                  info="Also train a model from scratch without the forget set, to compare with. "
                                       "Takes minutes on a CPU (cached per forget set).")
        with gr.Accordion("Advanced settings", open=False):
            with gr.Row():
                retain_sample = gr.Number(retain_default, label="Retain sample for the scores", precision=0, minimum=1,
                                          elem_id="retain-sample")
                passes = gr.Number(1, label="Greedy passes", precision=0, minimum=0, maximum=MAX_GREEDY_PASSES,
                                   elem_id="passes")
                joint = gr.Checkbox(False, label="One joint budget counted in parameters", elem_id="joint")
                tolerance = gr.Number(0.02, label="Retain-accuracy tolerance (auto step)", minimum=0, maximum=1,
                                      elem_id="tolerance")

        with gr.Row():
            run_btn = gr.Button("▶  Run unlearning", variant="primary", size="lg", scale=4, elem_id="run-btn")
            stop_btn = gr.Button("Stop", variant="stop", size="lg", scale=1, elem_id="stop-btn")

        # ---------------------------------------------------------------- 4. live search
        gr.Markdown("## ④ Mask search (live)", elem_classes=["mape-section"])
        run_status = gr.HTML(_fmt_status("idle", "Not started."), elem_id="run-status")
        h0, f0, c0 = _placeholder_figures()
        with gr.Row():
            heads_plot = gr.Plot(h0, label="Attention heads (layers × heads)", elem_id="heads-plot", scale=2)
            counts_plot = gr.Plot(c0, label="Selected units per layer", elem_id="counts-plot", scale=3)
        filters_plot = gr.Plot(f0, label="FFN filters (layers × filters, binned; hover for exact counts)",
                               elem_id="filters-plot")

        # ---------------------------------------------------------------- 5. results
        gr.Markdown("## ⑤ Results", elem_classes=["mape-section"])
        summary_md = gr.Markdown("", elem_id="run-summary")
        with gr.Row():
            with gr.Column(scale=3):
                metrics_html = gr.HTML(EMPTY_RESULTS, elem_id="metrics-table")
            with gr.Column(scale=2):
                metrics_plot = gr.Plot(FG.empty_figure("Metrics chart: after a run", 380), label="Metrics",
                                       elem_id="metrics-plot")

        # ---------------------------------------------------------------- 6. predictions
        gr.Markdown("## ⑥ Predictions before / after", elem_classes=["mape-section"])
        with gr.Tabs():
            with gr.Tab("Forget examples"):
                pred_forget = gr.HTML(EMPTY_RESULTS, elem_id="pred-forget")
            with gr.Tab("Retain examples"):
                pred_retain = gr.HTML(EMPTY_RESULTS, elem_id="pred-retain")
            with gr.Tab("Test examples"):
                pred_test = gr.HTML(EMPTY_RESULTS, elem_id="pred-test")
        with gr.Column():
            gr.Markdown("#### Try your own input — compare the original and the unlearned model on it",
                        elem_classes=["mape-sub"])
            with gr.Row():
                custom_text = gr.Textbox(label="Your text", lines=2, visible=default_modality == "text", scale=4,
                                         placeholder="e.g. The striker scored twice as the club won the cup final.",
                                         elem_id="custom-text")
                custom_image = gr.Image(label="Your image (any size; converted to the model's format)", type="filepath",
                                        image_mode=None, format="png", height=220, sources=["upload", "clipboard"],
                                        visible=default_modality == "image", scale=2, elem_id="custom-image")
                with gr.Column(scale=1, min_width=160):
                    predict_btn = gr.Button("Predict", variant="secondary", elem_id="predict-btn")
                    sample_img_btn = gr.Button("Use a test image", size="sm", visible=default_modality == "image",
                                               elem_id="sample-image-btn")
            custom_out = gr.HTML("", elem_id="custom-predictions")

        # ---------------------------------------------------------------- 7. attributions
        gr.Markdown("## ⑦ Attributions before / after (Captum integrated gradients)", elem_classes=["mape-section"])
        with gr.Row():
            attr_choice = gr.Dropdown([], label="Example to explain", scale=4, elem_id="attr-choice",
                                      info="Attributions are for the example's true class (your own input: the "
                                           "original model's prediction).")
            explain_btn = gr.Button("Explain", scale=1, elem_id="explain-btn")
        attr_html = gr.HTML(EMPTY_RESULTS, elem_id="attr-text", visible=default_modality == "text")
        attr_plot = gr.Plot(FG.empty_figure("Pixel attributions: after a run", 340), elem_id="attr-image",
                            visible=default_modality == "image", label="Pixel attributions")

        # ---------------------------------------------------------------- 8. compare methods
        gr.Markdown("## ⑧ Compare methods against retraining", elem_classes=["mape-section"])
        gr.Markdown(
            "Applies every chosen method to the forget set of ② (for each seed: the same forget set and the "
            "same samples for all methods) and measures it against a model **retrained without the forget "
            "set** (the gold standard; trained once per forget set, then cached). MAPE variants use the "
            "sparsity, retain sample and tolerance of ③. *Gap* = mean |difference| to retrain over forget, "
            "retain and test accuracy and MIA efficacy; lower is better. The same table is written by "
            "`python -m mape compare`.", elem_classes=["mape-sub"])
        with gr.Row():
            cmp_methods = gr.Dropdown(COMPARE_CHOICES, value=list(COMPARE_DEFAULT), multiselect=True, scale=4,
                                      label="Methods", elem_id="compare-methods",
                                      info="mape = MAPE (mlr scores, so update); full-parameter rules change "
                                           "every Transformer-layer weight.")
            cmp_seeds = gr.Textbox("0", label="Seeds", scale=1, elem_id="compare-seeds",
                                   info=f"e.g. 0,1,2 (at most {MAX_COMPARE_SEEDS}); mean ± std over seeds.")
            cmp_relearn = gr.Number(3, label="Relearn steps", precision=0, minimum=0, maximum=MAX_RELEARN, scale=1,
                                    elem_id="compare-relearn",
                                    info="Fine-tuning steps on the forget set afterwards (0: no relearn test).")
        with gr.Row():
            cmp_btn = gr.Button("Compare methods", variant="primary", scale=4, elem_id="compare-btn")
            cmp_stop = gr.Button("Stop", variant="stop", scale=1, elem_id="compare-stop-btn")
        cmp_status = gr.HTML(_fmt_status("idle", "Not started."), elem_id="compare-status")
        cmp_table = gr.Markdown("", elem_id="compare-table")
        with gr.Row():
            cmp_plot = gr.Plot(FG.empty_figure("Metrics by method: after a comparison", 380), label="Metrics",
                               elem_id="compare-plot", scale=3)
            cmp_gap_plot = gr.Plot(FG.empty_figure("Gap vs. time: after a comparison", 380), label="Gap vs. time",
                                   elem_id="compare-gap-plot", scale=2)
        cmp_relearn_plot = gr.Plot(FG.empty_figure("Relearn test: after a comparison", 360), label="Relearn test",
                                   elem_id="compare-relearn-plot")
        with gr.Row():
            cmp_dl_json = gr.DownloadButton("Comparison JSON", interactive=False, elem_id="dl-compare-json")
            cmp_dl_md = gr.DownloadButton("Comparison table (.md)", interactive=False, elem_id="dl-compare-md")
            cmp_open = gr.UploadButton("Open saved comparison(s)", file_types=[".json"], file_count="multiple",
                                       elem_id="compare-open", variant="secondary")
        gr.Markdown("*Open saved comparison(s)* shows a comparison JSON written earlier (this view's download, "
                    "`python -m mape compare --out`, or `bench/results/`); several runs of the same comparison "
                    "with different seeds are merged into one table (mean ± std over all their seeds).",
                    elem_classes=["mape-sub"])
        compare_flags = gr.State({})

        # ---------------------------------------------------------------- 9. downloads
        gr.Markdown("## ⑨ Downloads", elem_classes=["mape-section"])
        with gr.Row():
            dl_json = gr.DownloadButton("Results JSON", interactive=False, elem_id="dl-json")
            dl_masks = gr.DownloadButton("Masks (.safetensors)", interactive=False, elem_id="dl-masks")
            export_btn = gr.Button("Build unlearned model (.safetensors)", interactive=False, elem_id="export-btn")
        model_file = gr.File(label="Unlearned model", visible=False, elem_id="model-file")

        # ---------------------------------------------------------------- 10. about
        gr.Markdown("## ⑩ About the method", elem_classes=["mape-section"])
        with gr.Accordion("How MAPE-Unlearn works (with the formulas)", open=False, elem_id="about"):
            gr.Markdown(S.ABOUT_MD, latex_delimiters=[{"left": "$$", "right": "$$", "display": True},
                                                      {"left": "$", "right": "$", "display": False}])
        gr.Markdown(
            "<div style='color:#6b7280;font-size:0.85em;margin-top:12px;'>API: this run is also the endpoint "
            "<code>/unlearn</code> — see “Use via API” at the bottom of the page. CLI: <code>python -m mape unlearn "
            "--preset minilm-bbc --forget class:sport --out r.json</code>.</div>")

        # ================================================================ events
        preview_outputs = [preview_counts, preview_table, preview_gallery]

        def on_preview(preset_name, kind_v, value_v, seed_v):
            return _preview(preset_name, kind_v, value_v, seed_v)

        def on_preset(preset_name):
            classes, modality = _classes_of(preset_name)
            k, v = S.default_forget(modality, classes)
            kinds = KINDS_IMAGE if modality == "image" else KINDS_TEXT
            text, image = modality == "text", modality == "image"
            return (preset_description(preset_name), model_status(preset_name),
                    gr.Dropdown(choices=kinds, value=k), gr.Textbox(value=v, info=_kind_info(k, classes)),
                    gr.Textbox(visible=text), gr.Image(visible=image, value=None), gr.Button(visible=image),
                    gr.HTML(EMPTY_RESULTS, visible=text),
                    gr.Plot(FG.empty_figure("Pixel attributions: after a run", 340), visible=image), "")


        def on_kind(preset_name, kind_v):
            classes, modality = _classes_of(preset_name)
            return gr.Textbox(value=_kind_defaults(kind_v, classes, modality), info=_kind_info(kind_v, classes))

        kind.input(on_kind, [preset, kind], value, api_visibility="private", queue=False
                   ).then(on_preview, [preset, kind, value, seed], preview_outputs, api_visibility="private")
        for trigger in (value.submit, value.blur, seed.submit):
            trigger(on_preview, [preset, kind, value, seed], preview_outputs, api_visibility="private")
        demo.load(lambda p: (model_status(p),) + _preview(p, *_default_kv(p), 0), preset,
                  [status_md] + preview_outputs, api_visibility="private")

        # --- prepare ----------------------------------------------------------------------------
        def on_prepare(preset_name, progress=gr.Progress()):
            if _WS.get(_ws_key(preset_name)) is not None:
                yield model_status(preset_name)
                return
            yield preparing_status("starting", 0.0)
            q: queue.Queue = queue.Queue()
            box = {}

            def work():
                try:
                    box["ws"] = get_workspace(preset_name, lambda s, f: q.put((s, f)))
                except MapeError as exc:
                    box["error"] = str(exc)
                except Exception as exc:  # noqa: BLE001
                    log.exception("prepare failed")
                    box["error"] = f"Unexpected {type(exc).__name__}: {str(exc)[:300]}"
                finally:
                    q.put(None)

            threading.Thread(target=work, daemon=True, name="mape-prepare").start()
            last = 0.0
            while True:
                item = q.get()
                if item is None:
                    break
                stage, frac = item
                progress(frac, desc=stage)
                if time.monotonic() - last > 0.5:
                    last = time.monotonic()
                    yield preparing_status(stage, frac)
            if "error" in box:
                gr.Warning(box["error"])
                yield _status_line("error", "Could not prepare the model", box["error"])
            else:
                yield model_status(preset_name)

        prepare_btn.click(on_prepare, preset, status_md, api_visibility="private", concurrency_id="prepare",
                          concurrency_limit=2, show_progress_on=[status_md])

        # --- run ----------------------------------------------------------------------------------
        run_outputs = [run_status, heads_plot, filters_plot, counts_plot, summary_md, metrics_html, metrics_plot,
                       pred_forget, pred_retain, pred_test, dl_json, dl_masks, export_btn, model_file, attr_choice,
                       status_md, run_state, run_id]
        pos = {c: i for i, c in enumerate(run_outputs)}

        def emit(**kw):
            out = [gr.skip()] * len(run_outputs)
            for name, v in kw.items():
                out[pos[locals_map[name]]] = v
            return tuple(out)

        locals_map = {"status": run_status, "heads": heads_plot, "filters": filters_plot, "counts": counts_plot,
                      "summary": summary_md, "metrics": metrics_html, "chart": metrics_plot, "pf": pred_forget,
                      "pr": pred_retain, "pt": pred_test, "dl_json": dl_json, "dl_masks": dl_masks,
                      "export": export_btn, "model_file": model_file, "attr": attr_choice, "model_status": status_md,
                      "state": run_state, "run_id": run_id}

        def on_run(preset_name, kind_v, value_v, objective_v, sparsity_v, update_v, step_v, seed_v, retrain_v,
                   retain_v, passes_v, joint_v, tol_v, state, flags, progress=gr.Progress()):
            spec = S.compose_spec(kind_v, value_v)
            flags["stop"] = False
            try:
                cfg = _config(objective_v, sparsity_v, update_v, step_v, seed_v, retrain_v, retain_v, passes_v,
                              joint_v, tol_v)
                _validate_request(preset_name, spec, cfg)
            except MapeError as exc:
                gr.Warning(str(exc))
                yield emit(status=_fmt_status("error", str(exc)))
                return
            t0 = time.perf_counter()
            progress(0.0, desc="starting")
            yield emit(status=_fmt_status("busy", "Starting…", spec))
            last_yield, last_draw = 0.0, 0.0
            pending_sel, shown_stage = None, None
            events = engine_run(preset_name, spec, cfg)
            for event in events:
                kind_e = event[0]
                now = time.monotonic()
                if flags.get("stop"):
                    events.close()  # the engine stops at its next progress report (a preparation goes on)
                    yield emit(status=_fmt_status("stopped", "Stopped."), model_status=model_status(preset_name))
                    return
                if kind_e == "prep":
                    _, stage, frac = event
                    progress(frac, desc=f"{stage} (first use only; cached afterwards)")
                    if now - last_yield > 0.5:
                        last_yield = now
                        yield emit(status=_fmt_status("busy", f"Preparing the original model: {stage}",
                                                      f"{100 * frac:.0f}%"),
                                   model_status=preparing_status(stage, frac))
                elif kind_e == "ready":
                    yield emit(model_status=model_status(preset_name))
                elif kind_e in ("progress", "selection"):
                    stage, frac = event[1], event[2]
                    start, width = _stage_weight(stage)
                    progress(min(0.999, start + width * frac), desc=stage)
                    if kind_e == "selection":
                        pending_sel = event
                    new_stage = stage != shown_stage
                    shown_stage = stage
                    if pending_sel is not None and (pending_sel[1] == "warm start" or new_stage
                                                    or now - last_draw > 0.6):
                        # redraw the heatmaps from the latest selection (warm start, then refined layers)
                        _, sel_stage, _, heads, filters, hs, label, swaps = pending_sel
                        pending_sel = None
                        last_draw = last_yield = now
                        hf, ff, cf = _heat_figures(heads, filters, hs, label)
                        text = (_fmt_status("search", label, f"{swaps} swap(s) so far") if sel_stage == stage
                                else _fmt_status("busy", stage, f"{100 * frac:.0f}%"))
                        yield emit(status=text, heads=hf, filters=ff, counts=cf)
                    elif new_stage or now - last_yield > 0.5:
                        last_yield = now
                        yield emit(status=_fmt_status("busy", stage, f"{100 * frac:.0f}%"))
                elif kind_e == "error":
                    gr.Warning(event[1])
                    yield emit(status=_fmt_status("error", event[1]), model_status=model_status(preset_name))
                    return
                elif kind_e == "cancelled":
                    yield emit(status=_fmt_status("stopped", "Stopped."))
                    return
                elif kind_e == "done":
                    run = event[1]
                    yield _final_outputs(run, time.perf_counter() - t0, emit)
                    return

        run_btn.click(
            on_run, [preset, kind, value, objective, sparsity, update, step, seed, retrain, retain_sample, passes,
                     joint, tolerance, run_state, run_flags], run_outputs,
            api_visibility="private", concurrency_id="engine", concurrency_limit=engine_limit,
            show_progress_on=[run_status])

        def on_stop(flags):
            # seen by this session's running on_run; not gradio's `cancels`, which left the Run button
            # unresponsive after cancelling this generator event (Gradio 6.31)
            flags["stop"] = True

        stop_btn.click(on_stop, run_flags, None, api_visibility="private", queue=False)

        def on_reset_results():
            """A new preset: clear the previous run (its results belong to the other model)."""
            h, f, c = _placeholder_figures()
            return emit(status=_fmt_status("idle", "Not started."), heads=h, filters=f, counts=c, summary="",
                        metrics=EMPTY_RESULTS, chart=FG.empty_figure("Metrics chart: after a run", 380),
                        pf=EMPTY_RESULTS, pr=EMPTY_RESULTS, pt=EMPTY_RESULTS,
                        dl_json=gr.DownloadButton(value=None, interactive=False),
                        dl_masks=gr.DownloadButton(value=None, interactive=False),
                        export=gr.Button(interactive=False), model_file=gr.File(value=None, visible=False),
                        attr=gr.Dropdown(choices=[], value=None), state=None)

        preset.change(on_preset, preset,
                      [preset_md, status_md, kind, value, custom_text, custom_image, sample_img_btn, attr_html, attr_plot,
                       custom_out], api_visibility="private", queue=False
                      ).then(on_reset_results, None, run_outputs, api_visibility="private", queue=False
                             ).then(on_preview, [preset, kind, value, seed], preview_outputs, api_visibility="private")

        # --- attributions -------------------------------------------------------------------------
        def on_explain(choice, state, text, image):
            return _explain(choice, state, text, image)

        attr_outputs = [attr_html, attr_plot]
        def on_explain_default(state):
            if not state:
                return gr.skip(), gr.skip()
            return _explain(state["default_choice"], state, None, None)

        run_id.change(on_explain_default, run_state, attr_outputs,
                      api_visibility="private", concurrency_id="explain", concurrency_limit=2)
        # preprocess=False: the uploaded image arrives as a file reference and is validated by
        # app_support.load_user_image, which gives a clear message for a file that is not an image
        explain_btn.click(on_explain, [attr_choice, run_state, custom_text, custom_image], attr_outputs,
                          api_visibility="private", concurrency_id="explain", concurrency_limit=2, preprocess=False)

        # --- own input ----------------------------------------------------------------------------
        predict_btn.click(_predict_custom, [preset, run_state, custom_text, custom_image], custom_out,
                          api_visibility="private", concurrency_id="explain", concurrency_limit=2, preprocess=False)
        custom_text.submit(_predict_custom, [preset, run_state, custom_text, custom_image], custom_out,
                           api_visibility="private", concurrency_id="explain", concurrency_limit=2, preprocess=False)
        sample_img_btn.click(_random_test_image, [preset], custom_image, api_visibility="private"
                             ).then(_predict_custom, [preset, run_state, custom_text, custom_image], custom_out,
                                    api_visibility="private", concurrency_id="explain", concurrency_limit=2,
                                    preprocess=False)

        # --- downloads ----------------------------------------------------------------------------
        export_btn.click(_export_model, run_state, model_file, api_visibility="private", concurrency_id="explain",
                         concurrency_limit=2)

        # --- compare methods --------------------------------------------------------------------------
        cmp_outputs = [cmp_status, cmp_table, cmp_plot, cmp_gap_plot, cmp_relearn_plot, cmp_dl_json, cmp_dl_md,
                       status_md]

        def on_compare(preset_name, kind_v, value_v, methods_v, seeds_v, relearn_v, sparsity_v, retain_v, tol_v,
                       flags, progress=gr.Progress()):
            spec = S.compose_spec(kind_v, value_v)
            flags["stop"] = False
            keep = (gr.skip(),) * (len(cmp_outputs) - 1)
            try:
                req = _compare_request(preset_name, spec, methods_v, seeds_v, relearn_v, sparsity_v, retain_v,
                                       tol_v, names)
            except MapeError as exc:
                gr.Warning(str(exc))
                yield (_fmt_status("error", str(exc)),) + keep
                return
            t0 = time.perf_counter()
            progress(0.0, desc="starting")
            yield (_fmt_status("busy", "Starting…", f"{len(req['methods'])} method(s) × {len(req['seeds'])} seed(s) "
                                                   "+ retrain"),) + keep
            last = 0.0
            events = engine_compare(preset_name, spec, req)
            for event in events:
                if flags.get("stop"):
                    events.close()
                    yield (_fmt_status("stopped", "Stopped."),) + keep[:-1] + (model_status(preset_name),)
                    return
                kind_e, now = event[0], time.monotonic()
                if kind_e in ("prep", "progress"):
                    _, stage, frac = event
                    label = (f"Preparing the original model: {stage}" if kind_e == "prep" else stage)
                    progress(min(0.999, frac), desc=label)
                    if now - last > 0.5:
                        last = now
                        yield (_fmt_status("busy", label, f"{100 * frac:.0f}%"),) + keep
                elif kind_e == "error":
                    gr.Warning(event[1])
                    yield (_fmt_status("error", event[1]),) + keep[:-1] + (model_status(preset_name),)
                    return
                elif kind_e == "cancelled":
                    yield (_fmt_status("stopped", "Stopped."),) + keep
                    return
                elif kind_e == "done":
                    yield _compare_outputs(event[1], time.perf_counter() - t0) + (model_status(preset_name),)
                    return

        cmp_btn.click(on_compare, [preset, kind, value, cmp_methods, cmp_seeds, cmp_relearn, sparsity, retain_sample,
                                   tolerance, compare_flags], cmp_outputs, api_visibility="private",
                      concurrency_id="engine", concurrency_limit=engine_limit, show_progress_on=[cmp_status])

        def on_open_compare(files):
            from mape.compare import open_saved

            keep = (gr.skip(),) * (len(cmp_outputs) - 1)
            paths = [f if isinstance(f, str) else getattr(f, "name", str(f)) for f in (files or [])]
            try:
                res = open_saved(paths)
            except MapeError as exc:
                gr.Warning(str(exc))
                return (_fmt_status("error", str(exc)),) + keep
            return _compare_outputs(res, status=_opened_status(res, len(paths))) + (gr.skip(),)

        cmp_open.upload(on_open_compare, cmp_open, cmp_outputs, api_visibility="private")

        def on_compare_stop(flags):
            flags["stop"] = True

        cmp_stop.click(on_compare_stop, compare_flags, None, api_visibility="private", queue=False)

        def on_reset_compare():
            return (_fmt_status("idle", "Not started."), "",
                    FG.empty_figure("Metrics by method: after a comparison", 380),
                    FG.empty_figure("Gap vs. time: after a comparison", 380),
                    FG.empty_figure("Relearn test: after a comparison", 360),
                    gr.DownloadButton(value=None, interactive=False), gr.DownloadButton(value=None, interactive=False),
                    gr.skip())

        preset.change(on_reset_compare, None, cmp_outputs, api_visibility="private", queue=False)

        # --- API ------------------------------------------------------------------------------------
        gr.api(make_api_unlearn(names), api_name="unlearn", concurrency_id="engine", concurrency_limit=engine_limit,
               api_description="Run MAPE unlearning and return the results JSON (the same schema as "
                               "`python -m mape unlearn`).")
        gr.api(make_api_compare(names), api_name="compare", concurrency_id="engine", concurrency_limit=engine_limit,
               api_description="Compare methods against retraining and return the comparison JSON (the same "
                               "schema as `python -m mape compare`).")

    demo.queue(default_concurrency_limit=4, max_size=32)
    _set_look(demo)
    return demo


# --------------------------------------------------------------------------- handlers (module level)


def _classes_of(name: str) -> tuple[list[str], str]:
    """Class names and modality of a preset (from its dataset; hub presets: no download)."""
    p = PRESETS[name]
    if p.kind == "hub" and _ws_key(name) not in _WS:
        return (["0", "1", "2", "3"] if p.modality == "image" else ["0", "1"]), p.modality
    try:
        ds = get_dataset(name)
        return list(ds.classes), ds.modality
    except MapeError:
        return ["0"], p.modality


def _default_kv(name: str) -> tuple[str, str]:
    classes, modality = _classes_of(name)
    return S.default_forget(modality, classes)


def _preview(preset_name, kind_v, value_v, seed_v):
    spec = S.compose_spec(kind_v, value_v)
    modality = PRESETS[preset_name].modality
    empty_table = gr.Dataframe(value=[], visible=modality == "text")
    empty_gallery = gr.Gallery(value=[], visible=modality == "image")
    if PRESETS[preset_name].kind == "hub" and _ws_key(preset_name) not in _WS:
        return ("<div style='color:#6b7280;'>The preview appears once the Hub dataset is loaded (Prepare model).</div>",
                empty_table, empty_gallery)
    try:
        ds = get_dataset(preset_name)
        fs = select_forget(spec, ds, int(seed_v or 0))
    except MapeError as exc:
        return (f"<div class='mape-error' style='color:#b91c1c;font-weight:600;'>⚠️ {html.escape(str(exc))}</div>",
                empty_table, empty_gallery)
    counts = S.class_counts_html(ds.classes, ds.train.y[fs.indices], ds.train.y, spec)
    first = fs.indices[:48]
    if ds.modality == "text":
        rows = [[int(i), ds.classes[int(ds.train.y[i])], S.shorten(ds.train.x[i], 220)] for i in first[:30]]
        return counts, gr.Dataframe(value=rows, visible=True), empty_gallery
    imgs = [(S.upscale(ds.train.x[i], 3), f"#{int(i)} · {ds.classes[int(ds.train.y[i])]}") for i in first]
    return counts, empty_table, gr.Gallery(value=imgs, visible=True)


def _config(objective, sparsity, update, step, seed, retrain, retain_sample, passes, joint=False,
            tolerance=0.02) -> dict:
    try:
        seed = int(seed or 0)
        retain_sample = int(retain_sample) if retain_sample not in (None, "") else None
        passes = int(passes if passes not in (None, "") else 1)
        sparsity = float(sparsity)
        tolerance = float(tolerance if tolerance not in (None, "") else 0.02)
    except (TypeError, ValueError):
        raise MapeError("Seed, retain sample and greedy passes must be whole numbers; sparsity and tolerance numbers.") from None
    if seed < 0:
        raise MapeError("The seed must be a non-negative whole number.")
    # ranges (passes, tolerance, ...) are checked by UnlearnConfig.validate in _validate_request
    step = str(step).strip() if step not in (None, "") else "auto"
    return dict(objective=str(objective), sparsity=sparsity, update=str(update), step=step, seed=seed,
                retrain=bool(retrain), retain_sample=retain_sample, greedy_passes=passes, joint_budget=bool(joint),
                tolerance=tolerance)


def _validate_request(preset_name: str, spec: str, cfg: dict, allowed: list[str] | None = None) -> None:
    """Fast checks before any heavy work: preset, method settings, forget spec (on the dataset)."""
    from mape.pipeline import UnlearnConfig

    if preset_name not in (allowed or PRESETS):
        raise MapeError(f"Unknown preset '{preset_name}'; choose one of: {', '.join(allowed or PRESETS)}.")
    ok, why = PRESETS[preset_name].availability()
    if not ok:
        raise MapeError(f"Preset '{preset_name}' cannot run here: {why}.")
    UnlearnConfig(**cfg).validate()
    if PRESETS[preset_name].kind != "hub" or _ws_key(preset_name) in _WS:
        select_forget(spec, get_dataset(preset_name), cfg["seed"])


def _compare_request(preset_name: str, spec: str, methods, seeds, relearn, sparsity, retain_sample, tolerance,
                     allowed: list[str] | None = None) -> dict:
    """Validated comparison settings ({methods, seeds, relearn, config}); MapeError with a clear message."""
    from mape.baselines import BaselineConfig, parse_methods
    from mape.compare import parse_seeds

    names = [m.strip() for m in (methods.split(",") if isinstance(methods, str) else methods or []) if m and m.strip()]
    specs = [m for m in parse_methods(names) if m.name != "retrain"] if names else []
    if not specs:
        raise MapeError("Choose at least one method to compare (retrain is always run as the reference).")
    if len(specs) > MAX_COMPARE_METHODS:
        raise MapeError(f"At most {MAX_COMPARE_METHODS} methods at a time here; use `python -m mape compare` for more.")
    seed_list = parse_seeds(seeds if seeds not in (None, "") else "0")
    if len(seed_list) > MAX_COMPARE_SEEDS:
        raise MapeError(f"At most {MAX_COMPARE_SEEDS} seeds at a time here; use `python -m mape compare` for more.")
    try:
        relearn = int(relearn if relearn not in (None, "") else 0)
        cfg = _config("mlr", sparsity, "so", "auto", seed_list[0], False, retain_sample, 1, False, tolerance)
    except (TypeError, ValueError):
        raise MapeError("Relearn steps must be a whole number.") from None
    if not 0 <= relearn <= MAX_RELEARN:
        raise MapeError(f"Relearn steps must be between 0 and {MAX_RELEARN}.")
    for s in seed_list:
        _validate_request(preset_name, spec, {**cfg, "seed": s}, allowed)
    config = {"sparsity": cfg["sparsity"], "retain_sample": cfg["retain_sample"], "tolerance": cfg["tolerance"]}
    BaselineConfig(**config).validate()
    return {"methods": [m.name for m in specs], "seeds": seed_list, "relearn": relearn, "config": config}


def _opened_status(res, n_files: int) -> str:
    seeds = ", ".join(map(str, res.seeds))
    best = res.best_method()
    return (f"Opened {n_files} file(s): {res.preset} · {res.forget} · seed{'s' if len(res.seeds) > 1 else ''} "
            f"{seeds} · {res.device} ({res.machine.get('cpu', 'unknown machine')})."
            + (f" Closest to retrain: {best}." if best else ""))


def _compare_outputs(res, wall_s: float = 0.0, status: str | None = None) -> tuple:
    """Status, table, the three charts and the two downloads of a finished (or opened) comparison."""
    folder = Path(tempfile.mkdtemp(prefix="compare-", dir=_tmp_root()))
    json_path, md_path = res.save(folder / "mape-compare.json")
    best = res.best_method()
    ref_t = res.results.get("retrain", {}).get("time_s", {}).get("mean")
    done = status or f"Done in {wall_s:.1f} s." + (f" Closest to retrain: {best}." if best else "")
    if ref_t is not None and status is None:
        done += f" Retrain took {ref_t:.1f} s" + (" (from the cache)." if res.runs and all(
            (r["methods"]["retrain"].get("details") or {}).get("cached") for r in res.runs) else ".")
    relearn = (FG.relearn_figure(res.results, res.names()) if any("relearn" in res.results.get(n, {})
                                                                  for n in res.names())
               else FG.empty_figure("Relearn test: not run (relearn steps = 0)", 360))
    return (_fmt_status("done", done), res.markdown(), _compare_chart(res.rows()),
            FG.gap_time_figure(res.results, res.methods, best), relearn,
            gr.DownloadButton(value=str(json_path), interactive=True),
            gr.DownloadButton(value=str(md_path), interactive=True))


def _compare_chart(rows: dict):
    fig = FG.metrics_figure(rows)
    fig.update_layout(legend=dict(orientation="h", y=-0.14, x=0.5, xanchor="center"), margin=dict(b=90))
    return fig


def _final_outputs(run: dict, wall_s: float, emit):
    ws = get_workspace(run["preset"])
    result = run["result"]
    hf, ff, cf = _heat_figures(run["heads"], run["filters"], run["head_scores"], "final")
    metrics = result["metrics"]
    pf, pr, pt = _predictions_views(ws, run)
    folder = Path(tempfile.mkdtemp(prefix="run-", dir=_tmp_root()))
    meta = {"preset": run["preset"], "forget": result["forget"]["spec"], "objective": result["config"]["objective"],
            "sparsity": result["config"]["sparsity"]}
    json_path = S.write_results_json(result, folder)
    masks_path = S.write_masks(run["heads"], run["filters"], folder, run["head_scores"], run["filter_scores"], meta)
    small = S.model_size_mb(ws.total_params) < S.MODEL_FILE_LIMIT_MB
    choices = _attr_choices(ws, run)
    state = {k: run[k] for k in ("preset", "result", "delta", "heads", "filters", "samples", "forget_indices",
                                 "has_retrain")}
    state["model_meta"] = meta
    state["default_choice"] = choices[0][1]
    timing = result["timing"]
    done = (f"Done in {wall_s:.1f} s (search {timing['search_s']:.1f} s, update {timing['update_s']:.1f} s"
            + (f", retrain {timing['retrain_s']:.1f} s" if "retrain_s" in timing else "") + ").")
    return emit(status=_fmt_status("done", done), heads=hf, filters=ff, counts=cf, summary=S.summary_markdown(result),
                metrics=S.metrics_table_html(metrics, result.get("gap_to_retrain")), chart=_metrics_chart(metrics),
                pf=pf, pr=pr, pt=pt,
                dl_json=gr.DownloadButton(value=str(json_path), interactive=True),
                dl_masks=gr.DownloadButton(value=str(masks_path), interactive=True),
                export=gr.Button(interactive=small, value="Build unlearned model (.safetensors)" if small else
                                 f"Model too large to download here (> {S.MODEL_FILE_LIMIT_MB} MB)"),
                model_file=gr.File(value=None, visible=False),
                attr=gr.Dropdown(choices=choices, value=choices[0][1]), model_status=model_status(run["preset"]),
                state=state, run_id=time.time_ns())


def _tmp_root() -> Path:
    TMP_ROOT.mkdir(parents=True, exist_ok=True)
    S.clean_old_files(TMP_ROOT)
    return TMP_ROOT


def _resolve_input(choice: str, state: dict, text, image, ws):
    """(x, target, label) for an attribution choice."""
    if choice == "custom":
        x, note = _custom_input(ws, text, image)
        return x, None, f"your input ({note})" if note else "your input"
    group, _, idx = (choice or "").partition(":")
    if group not in ("forget", "retain", "test") or not idx.isdigit():
        raise MapeError("Pick an example to explain.")
    x, y = _sample_inputs(ws, group, int(idx))
    return x, y, f"{group} example #{idx} (true class {ws.dataset.classes[y]})"


def _explain(choice, state, text, image):
    modality = None
    try:
        if not state:
            raise MapeError("Run unlearning first: attributions compare the original and the unlearned model.")
        ws = get_workspace(state["preset"])
        modality = ws.task.modality
        x, target, label = _resolve_input(choice, state, text, image, ws)
        out = engine_explain(state["preset"], state["delta"], x, target)
    except MapeError as exc:
        gr.Warning(str(exc))
        msg = f"<div class='mape-error' style='color:#b91c1c;'>⚠️ {html.escape(str(exc))}</div>"
        return msg, gr.skip()
    classes = ws.dataset.classes
    o, u = out["original"], out["unlearned"]
    cls = classes[o["target"]]
    if modality == "text":
        from mape.figures import token_heatmap_html

        parts = [token_heatmap_html(o["tokens"], o["scores"], f"Before (original): p({cls}) = {100 * o['prob']:.1f}%"),
                 token_heatmap_html(u["tokens"], u["scores"], f"After (MAPE): p({cls}) = {100 * u['prob']:.1f}%")]
        head = (f"<div style='margin-bottom:8px;'>Integrated gradients for class <b>{html.escape(cls)}</b> on "
                f"{html.escape(label)}. Scores are normalised per model.</div>")
        return head + S.side_by_side_html(parts), gr.skip()
    fig = FG.image_attribution_figure(
        o["pixels"], o["heatmap"], u["heatmap"],
        titles=(f"input · {label.split(' (')[0]}", f"before: p({cls}) = {100 * o['prob']:.1f}%",
                f"after: p({cls}) = {100 * u['prob']:.1f}%"))
    return gr.skip(), fig


def _custom_input(ws, text, image):
    if ws.task.modality == "text":
        if not isinstance(text, str) or not text.strip():
            raise MapeError("Type some text first.")
        if len(text) > 5000:
            raise MapeError(f"The text is {len(text):,} characters long; at most 5,000 are accepted.")
        return text.strip(), ""
    fmt = ws.task.image_format
    if isinstance(image, dict):  # an unprocessed gr.Image value (FileData)
        image = image.get("path")
    if image is not None and not isinstance(image, (str, os.PathLike)):
        raise MapeError("Upload an image file (PNG, JPEG, WebP, BMP or GIF).")
    arr, note = S.load_user_image(image, fmt.size, fmt.channels, mnist_like=ws.dataset.name == "mnist")
    return arr, note


def _predict_custom(preset_name, state, text, image):
    try:
        ok, why = PRESETS[preset_name].availability()
        if not ok:
            raise MapeError(f"Preset '{preset_name}' cannot run here: {why}.")
        same = bool(state) and state.get("preset") == preset_name
        ws = get_workspace(preset_name)
        x, note = _custom_input(ws, text, image)
        out = engine_predict(preset_name, state["delta"] if same else None,
                             state["forget_indices"] if same and state.get("has_retrain") else None, x)
    except MapeError as exc:
        gr.Warning(str(exc))
        return f"<div class='mape-error' style='color:#b91c1c;'>⚠️ {html.escape(str(exc))}</div>"
    extra = "" if "unlearned" in out else "Run unlearning to compare with the unlearned model."
    pic = ""
    if ws.task.modality == "image":
        pic = (f"<div style='margin-bottom:6px;'>{S.input_html(x, 'image')} <span style='color:#4b5563;'>"
               f"What the model sees: {html.escape(note)}</span></div>")
    return pic + S.prob_bars_html(ws.dataset.classes, out, extra)


def _random_test_image(preset_name):
    try:
        ds = get_dataset(preset_name)
    except MapeError as exc:
        gr.Warning(str(exc))
        return gr.skip()
    if ds.modality != "image":
        return gr.skip()
    i = int(np.random.default_rng().integers(len(ds.test)))
    img = np.asarray(ds.test.x[i])
    return S.upscale(img, 8) if img.shape[0] <= 64 else img


def _export_model(state):
    if not state:
        gr.Warning("Run unlearning first.")
        return gr.File(visible=False)
    folder = Path(tempfile.mkdtemp(prefix="run-", dir=_tmp_root()))
    try:
        path = engine_export(state["preset"], state["delta"], str(folder), state.get("model_meta", {}))
    except MapeError as exc:
        gr.Warning(str(exc))
        return gr.File(visible=False)
    return gr.File(value=path, visible=True)


# --------------------------------------------------------------------------- API


def make_api_unlearn(allowed: list[str]):
    """The ``/unlearn`` endpoint for the presets this app offers."""

    def unlearn(preset: str = DEFAULT_PRESET, forget: str = "random:32", objective: str = "mlr",
                sparsity: float = 0.9, update: str = "so", seed: int = 0, retrain: bool = False) -> dict:
        """Run MAPE unlearning on a preset and return the results JSON.

        Args:
            preset: preset name, e.g. minilm-bbc or vit-mnist.
            forget: forget spec: random:N, random:P%, class:LABEL, class:LABEL:N, match:REGEX, indices:i,j,k.
            objective: mlr | mlf | norm | random.
            sparsity: fraction of units frozen, in (0, 1).
            update: so | ga | gd | rl | npo.
            seed: random seed.
            retrain: also retrain without the forget set (gold standard; slow on a CPU).
        """
        return api_unlearn(preset, forget, objective, sparsity, update, seed, retrain, allowed)

    return unlearn


def make_api_compare(allowed: list[str]):
    """The ``/compare`` endpoint for the presets this app offers."""

    def compare(preset: str = DEFAULT_PRESET, forget: str = "random:32", methods: str = ",".join(COMPARE_DEFAULT),
                seeds: str = "0", sparsity: float = 0.9, relearn_steps: int = 0) -> dict:
        """Compare unlearning methods against a retrained model and return the comparison JSON.

        Args:
            preset: preset name, e.g. minilm-bbc or vit-mnist.
            forget: forget spec, e.g. random:128 or class:sport.
            methods: comma-separated method names (mape, mape-norm, mape-random, salun, so, ft, ...).
            seeds: comma-separated seeds, e.g. 0,1,2.
            sparsity: fraction of units frozen by the MAPE variants, in (0, 1).
            relearn_steps: fine-tuning steps on the forget set for the relearn test (0: none).
        """
        try:
            req = _compare_request(preset, forget, methods, seeds, relearn_steps, sparsity,
                                   int(os.environ.get("MAPE_APP_RETAIN_SAMPLE", "0") or 0) or None, 0.02, allowed)
        except MapeError as exc:
            raise gr.Error(str(exc), print_exception=False) from None
        return _api_outcome(engine_compare(preset, forget, req), "comparison").to_json()

    return compare


def api_unlearn(preset: str, forget: str, objective: str = "mlr", sparsity: float = 0.9, update: str = "so",
                seed: int = 0, retrain: bool = False, allowed: list[str] | None = None) -> dict:
    """One unlearning request without the UI: validate (gr.Error with a clear message), run, return the
    results JSON (``RunResult.to_json()``, strict JSON)."""
    allowed = allowed or S.app_preset_names()
    try:
        cfg = _config(objective, sparsity, update, "auto", seed, retrain,
                      int(os.environ.get("MAPE_APP_RETAIN_SAMPLE", "0") or 0) or None, 1)
        _validate_request(preset, forget, cfg, allowed)
    except MapeError as exc:
        raise gr.Error(str(exc), print_exception=False) from None
    return _api_outcome(engine_run(preset, forget, cfg), "run")["result"]


def _api_outcome(events, what: str):
    """The value of an engine event stream's ("done", value); its error as a gr.Error otherwise."""
    for event in events:
        if event[0] == "error":
            raise gr.Error(event[1], print_exception=False)
        if event[0] == "cancelled":
            raise gr.Error(f"The {what} was cancelled.", print_exception=False)
        if event[0] == "done":
            return event[1]
    raise gr.Error(f"The {what} ended without a result.", print_exception=False)


# --------------------------------------------------------------------------- look & launch

THEME = gr.themes.Soft(primary_hue="orange", secondary_hue="slate", neutral_hue="slate")
CSS = """
.gradio-container {max-width: 1280px !important; margin: 0 auto !important;}
.mape-section h2 {margin-top: 18px !important; padding-bottom: 4px; border-bottom: 2px solid #fed7aa;}
#run-btn {font-size: 1.1em;}
#run-status {min-height: 36px;}
.mape-metrics td, .mape-preds td {font-variant-numeric: tabular-nums;}
table.mape-metrics, table.mape-preds, table.mape-counts,
.mape-metrics tr, .mape-preds tr, .mape-counts tr {border: none !important;}
.mape-metrics td, .mape-metrics th, .mape-preds td, .mape-preds th, .mape-counts td, .mape-counts th {
  border-left: none !important; border-right: none !important; border-top: none !important;}
"""


def _set_look(demo: gr.Blocks) -> None:
    """Theme and CSS that also apply when someone calls ``demo.launch()`` without them (Gradio 6 takes
    them in launch(); these are its fallbacks)."""
    if hasattr(demo, "_deprecated_theme"):
        demo._deprecated_theme = THEME
        demo._deprecated_css = CSS


def server_settings() -> dict:
    port = os.environ.get("PORT") or os.environ.get("GRADIO_SERVER_PORT") or "7860"
    host = "0.0.0.0" if os.environ.get("SPACE_ID") else os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1")
    # uploads are capped by the server too (the image check in app_support refuses more than 10 MB)
    return {"server_name": host, "server_port": int(port), "max_file_size": "10mb"}


demo = build_demo()


def main() -> None:
    logging.basicConfig(level=logging.INFO)
    threads = os.environ.get("MAPE_APP_TORCH_THREADS", "").strip()
    if threads:  # e.g. 1 when several runs share a small CPU (OpenMP threads oversubscribe the cores)
        import torch

        torch.set_num_threads(int(threads))
    demo.launch(theme=THEME, css=CSS, **server_settings())


if __name__ == "__main__":
    main()
