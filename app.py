"""MAPE-Unlearn Studio: the Gradio app (DESIGN.md §11). This file assembles the page and launches it.

    python app.py                      # serves on 127.0.0.1:7860 (0.0.0.0 on Hugging Face Spaces)
    from app import demo, build_demo   # the Blocks, e.g. for tests or `gradio app.py`

One page, top to bottom: lessons (one-click experiments that fill in the controls below and run), model &
data, forget set, method, run (live mask search), results (with successive requests: "Forget more from this
model", a timeline and the units each request selected), inside a selected unit (a head's attention and a
filter's activation before/after), predictions before/after, attributions, "Compare
methods" (against retraining), downloads, and "About the method" — one module per section in ``ui/``. The
models the page uses live in :mod:`mape.serving.owner`, the only code that touches them. The run is also the API
endpoint ``unlearn`` (gradio_client: ``Client(url).predict(preset, forget, objective, sparsity, update, seed,
retrain, scenario, api_name="/unlearn")`` returns the results JSON of ``python -m mape unlearn``), the
comparison the endpoint ``compare`` (``predict(preset, forget, methods, seeds, sparsity, relearn_steps,
scenario, api_name="/compare")`` returns the JSON of ``python -m mape compare``).

Environment: ``MAPE_APP_PRESETS`` (comma-separated preset names to offer, in order; ``tiny-bbc`` and
``tiny-mnist`` are fast test presets), ``MAPE_APP_TRAIN_LIMIT`` (train the original model on a subset),
``MAPE_APP_CONCURRENCY`` (simultaneous runs; default 1 on a CPU, 2 on a GPU), ``MAPE_APP_RETAIN_SAMPLE``
(default retain sample of the scores), ``MAPE_APP_TORCH_THREADS`` (torch threads, ``python app.py`` only),
``MAPE_APP_WARM`` (0: do not prepare the page's preset in the background once the first page has loaded), ``MAPE_CACHE``
(where trained models are cached), ``PORT`` / ``GRADIO_SERVER_PORT``, and ``SPACE_ID`` (bind 0.0.0.0 on
Spaces, else 127.0.0.1; ``GRADIO_SERVER_NAME`` overrides off Spaces).
"""

from __future__ import annotations

import logging
import os
import threading

import gradio as gr

from mape.serving import owner as serving
from mape.serving.owner import ON_GPU  # noqa: F401 - part of the app's surface (tests, scripts)
from ui import (
    about,
    api,
    attributions,
    chain,
    compare,
    downloads,
    forget_set,
    lessons,
    live_search,
    method,
    model_data,
    predictions,
    results,
    unit,
)
from ui.common import context, new_page
from ui.model_data import model_status  # noqa: F401 - part of the app's surface (tests, scripts)

# the page's sections, top to bottom
SECTIONS = (("lessons", lessons), ("model", model_data), ("forget", forget_set), ("method", method),
            ("live", live_search), ("results", results), ("chain", chain), ("unit", unit),
            ("predictions", predictions),
            ("attributions", attributions), ("compare", compare), ("downloads", downloads), ("about", about))

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
""" + lessons.CSS


def build_demo(presets: list[str] | str | None = None, concurrency: int | None = None) -> gr.Blocks:
    """Build the Blocks. ``presets`` (default: env ``MAPE_APP_PRESETS`` or all, embedded first) and
    ``concurrency`` (simultaneous runs; env ``MAPE_APP_CONCURRENCY``; default 1 on a CPU, 2 on a GPU)."""
    ctx = context(presets, concurrency)
    with gr.Blocks(title="MAPE-Unlearn Studio", delete_cache=(3600, 3600)) as demo:
        page = new_page(ctx)
        for name, section in SECTIONS:
            setattr(page, name, section.build(ctx))
        model_data.wire(page, demo)
        forget_set.wire(page, demo)
        for section in (live_search, chain, predictions, attributions, unit, compare, downloads, lessons):
            section.wire(page)
        api.register(ctx)
    demo.queue(default_concurrency_limit=4, max_size=32)
    _set_look(demo)
    demo.mape_context = ctx
    return demo


def _set_look(demo: gr.Blocks) -> None:
    """Theme and CSS that also apply when someone calls ``demo.launch()`` without them (Gradio 6 takes
    them in launch(); these are its fallbacks)."""
    if hasattr(demo, "_deprecated_theme"):
        demo._deprecated_theme = THEME
        demo._deprecated_css = CSS


def server_settings() -> dict:
    port = os.environ.get("PORT") or os.environ.get("GRADIO_SERVER_PORT") or "7860"
    host = "0.0.0.0" if os.environ.get("SPACE_ID") else os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1")
    # uploads are capped by the server too (the image check in mape.serving.uploads refuses more than 10 MB)
    return {"server_name": host, "server_port": int(port), "max_file_size": "10mb"}


demo = build_demo()


def main() -> None:
    logging.basicConfig(level=logging.INFO)
    threads = os.environ.get("MAPE_APP_TORCH_THREADS", "").strip()
    if threads:  # e.g. 1 when several runs share a small CPU (OpenMP threads oversubscribe the cores)
        serving.set_threads(int(threads))
    if demo.mape_context.warm:  # the first page load starts it; no visitor within a few seconds: start anyway
        timer = threading.Timer(serving.WARM_FALLBACK_S, serving.warm_in_background, (demo.mape_context.default,))
        timer.daemon = True
        timer.start()
    demo.launch(theme=THEME, css=CSS, **server_settings())


if __name__ == "__main__":
    main()
