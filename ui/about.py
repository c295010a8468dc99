"""⑩ About the method: the idea with its formulas, for teaching, and where the API and CLI are."""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr

from mape import app_support as S

FOOTER = ("<div style='color:#6b7280;font-size:0.85em;margin-top:12px;'>API: this run is also the endpoint "
          "<code>/unlearn</code> — see “Use via API” at the bottom of the page. CLI: <code>python -m mape unlearn "
          "--preset minilm-bbc --forget class:sport --out r.json</code>.</div>")


def build(ctx) -> SimpleNamespace:
    gr.Markdown("## ⑩ About the method", elem_classes=["mape-section"])
    with gr.Accordion("How MAPE-Unlearn works (with the formulas)", open=False, elem_id="about"):
        gr.Markdown(S.ABOUT_MD, latex_delimiters=[{"left": "$$", "right": "$$", "display": True},
                                                  {"left": "$", "right": "$", "display": False}])
    gr.Markdown(FOOTER)
    return SimpleNamespace()
