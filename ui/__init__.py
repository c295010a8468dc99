"""The app's page, one module per section (DESIGN.md §11): each builds its components (``build``) and
connects its handlers (``wire``). Gradio lives here and in ``app.py``; models live in
:mod:`mape.serving.owner`, which is the only code that touches them (the handlers get NumPy / plain data).

Sections, top to bottom: :mod:`ui.model_data`, :mod:`ui.forget_set`, :mod:`ui.method`,
:mod:`ui.live_search` (the run), :mod:`ui.results`, :mod:`ui.predictions`, :mod:`ui.attributions`,
:mod:`ui.compare`, :mod:`ui.downloads`, :mod:`ui.about`; :mod:`ui.api` adds the ``/unlearn`` and
``/compare`` endpoints, :mod:`ui.common` the shared status snippets and the page context.
"""
