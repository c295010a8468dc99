"""What several sections share: the page context, status snippets, placeholders and a temp folder."""

from __future__ import annotations

import html
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import gradio as gr

from mape.base.errors import MapeError
from mape.data.presets import DEFAULT_PRESET, PRESETS
from mape.serving import files, offer, owner as serving

TMP_ROOT = Path(tempfile.gettempdir()) / "mape-app"
#: the page's default retain sample for the scores on a CPU: the default run answers within about half a
#: minute on 2 cores (the CLI and the API use 512; Advanced settings on the page change it)
CPU_RETAIN_SAMPLE = 256
#: the queues of the page. A prediction (Predict, the trigger tester) is one forward pass and has a queue of
#: its own, so it never waits behind explanations (integrated gradients: seconds each) or runs (minutes);
#: both work on private copies of the models (mape.serving.owner), so they can run side by side.
INTERACTIVE = dict(concurrency_id="interactive", concurrency_limit=4)
EXPLAIN = dict(concurrency_id="explain", concurrency_limit=2)
EMPTY_RESULTS = '<div class="mape-empty" style="color:#6b7280;padding:8px 0;">Run unlearning to see results here.</div>'
PILLS = {"idle": ("#94a3b8", "idle"), "busy": ("#f59e0b", "running"), "search": ("#e4572e", "search"),
         "done": ("#16a34a", "done"), "error": ("#dc2626", "error"), "stopped": ("#64748b", "stopped"),
         "ready": ("#16a34a", "ready"), "cached": ("#0ea5e9", "cached"), "todo": ("#f59e0b", "not trained"),
         "hub": ("#6366f1", "Hub"), "na": ("#dc2626", "unavailable")}


@dataclass
class Context:
    """What the page is built for: the presets offered, the default one and the engine's limits."""
    names: list[str]
    default: str
    classes: list[str]          # the default preset's classes
    modality: str               # and its modality
    engine_limit: int           # simultaneous runs / comparisons
    retain_default: int         # default retain sample of the scores
    warm: bool = True           # prepare the page's preset in the background once the page has loaded


def context(presets=None, concurrency: int | None = None) -> Context:
    names = offer.app_preset_names(presets)
    available = [n for n in names if PRESETS[n].availability()[0]]
    default = DEFAULT_PRESET if DEFAULT_PRESET in available else (available or names)[0]
    classes, modality = classes_of(default)
    limit = concurrency or int(os.environ.get("MAPE_APP_CONCURRENCY", "0") or 0) or (2 if serving.ON_GPU else 1)
    retain = int(os.environ.get("MAPE_APP_RETAIN_SAMPLE", "0") or 0) or (2048 if serving.ON_GPU else CPU_RETAIN_SAMPLE)
    return Context(names, default, classes, modality, limit, retain, os.environ.get("MAPE_APP_WARM", "1") != "0")


def new_page(ctx: Context) -> SimpleNamespace:
    """The namespace the sections put their components in (``page.model.preset``, ``page.live.status``…)."""
    return SimpleNamespace(ctx=ctx)


def preset_of(name: str):
    """The Preset of a served name (``preset`` or ``preset@scenario``, see mape.serving.owner.served_name)."""
    return PRESETS[serving.split_name(name)[0]]


def title_of(name: str) -> str:
    """The preset's title, with the scenario of a served name: 'MiniLM · BBC News … [backdoor:cf:sport:40]'."""
    scenario = serving.split_name(name)[1]
    return preset_of(name).title + (f" [{scenario}]" if scenario else "")


def classes_of(name: str) -> tuple[list[str], str]:
    """Class names and modality of a preset (from its dataset; hub presets: no download)."""
    p = preset_of(name)
    if p.kind == "hub" and not serving.is_ready(name):
        return (["0", "1", "2", "3"] if p.modality == "image" else ["0", "1"]), p.modality
    try:
        ds = serving.dataset(name)
        return list(ds.classes), ds.modality
    except MapeError:
        return ["0"], p.modality


def default_kv(name: str) -> tuple[str, str]:
    """(kind, value) of the default forget selector: all altered examples on a scenario."""
    if serving.split_name(name)[1]:
        return "poisoned", "all"
    classes, modality = classes_of(name)
    return offer.default_forget(modality, classes)


def pill(kind: str) -> str:
    colour, label = PILLS[kind]
    return (f'<span class="mape-pill mape-pill-{kind}" style="display:inline-block;padding:1px 9px;border-radius:999px;'
            f'background:{colour};color:white;font-size:0.8em;font-weight:600;margin-right:6px;">{label}</span>')


def fmt_status(kind: str, text: str, detail: str = "") -> str:
    d = f' <span style="color:#6b7280;">{html.escape(detail)}</span>' if detail else ""
    return ('<div class="mape-status" style="font-size:1.02em;padding:4px 2px;">'
            f'{pill(kind)}{html.escape(text)}{d}</div>')


def status_line(kind: str, bold: str, rest: str = "") -> str:
    return (f'<div class="mape-model-status" style="padding:6px 2px;">{pill(kind)}<b>{html.escape(bold)}</b>'
            f'{(" — " + html.escape(rest)) if rest else ""}</div>')


def error_html(message: str) -> str:
    return f"<div class='mape-error' style='color:#b91c1c;'>⚠️ {html.escape(message)}</div>"


def tmp_folder(prefix: str) -> Path:
    """A fresh folder for download files (old ones are cleaned up)."""
    TMP_ROOT.mkdir(parents=True, exist_ok=True)
    files.clean_old_files(TMP_ROOT)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=TMP_ROOT))


def deferred_plot(**kw) -> gr.Plot:
    """A plot that the page serves empty: the browser loads plotly's script (1.3 MB, about a second of parsing on a
    2-core machine) with the first figure a visitor asks for, not with the page (BENCHMARKS.md "App
    responsiveness": page interactive 5.5 → 4.6 s, medians on an Intel VM). The placeholder messages the plots
    had are shown again only by the sections' resets (a preset switch, "Back to the original")."""
    return gr.Plot(None, **kw)
