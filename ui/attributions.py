"""⑦ Attributions before / after (Captum integrated gradients): token heatmaps for text, pixel heatmaps
for images, for an example of the last run or the user's own input. The first forget example is
explained by itself after each run. The attributions run on private copies of the models
(:func:`mape.serving.owner.explain`), so predictions asked for meanwhile are not disturbed."""

from __future__ import annotations

import html
from types import SimpleNamespace

import gradio as gr

from mape.base.errors import MapeError
from mape.serving import figures as FG, owner as serving
from ui import render
from ui.common import EMPTY_RESULTS, EXPLAIN, deferred_plot, error_html
from ui.predictions import custom_input


def build(ctx) -> SimpleNamespace:
    gr.Markdown("## ⑦ Attributions before / after (Captum integrated gradients)", elem_classes=["mape-section"])
    with gr.Row():
        choice = gr.Dropdown([], label="Example to explain", scale=4, elem_id="attr-choice",
                             info="Attributions are for the example's true class (your own input: the original "
                                  "model's prediction).")
        explain_btn = gr.Button("Explain", scale=1, elem_id="explain-btn")
    text = gr.HTML(EMPTY_RESULTS, elem_id="attr-text", visible=ctx.modality == "text")
    plot = deferred_plot(elem_id="attr-image", visible=ctx.modality == "image", label="Pixel attributions")
    return SimpleNamespace(choice=choice, explain_btn=explain_btn, text=text, plot=plot)


def wire(page) -> None:
    A, P, state = page.attributions, page.predictions, page.live.state
    opts = dict(api_visibility="private", **EXPLAIN)
    page.live.run_id.change(on_explain_default, state, [A.text, A.plot], **opts)
    explain_btn_inputs = [A.choice, state, P.custom_text, P.custom_image]
    A.explain_btn.click(on_explain, explain_btn_inputs, [A.text, A.plot], preprocess=False, **opts)


def run_outputs(page) -> list:
    A = page.attributions
    return [A.choice, A.text, A.plot]


def choices(run: dict) -> list[tuple[str, str]]:
    classes = serving.dataset(run["preset"]).classes
    out = []
    for group in ("forget", "retain", "test"):
        for i in run["samples"][group]:
            _, y = serving.split_example(run["preset"], group, i)
            out.append((f"{group} example #{i} · {classes[y]}", f"{group}:{i}"))
    out.append(("my own input (typed text / uploaded image below)", "custom"))
    return out


def show(page, options: list) -> dict:
    return {page.attributions.choice: gr.Dropdown(choices=options, value=options[0][1])}


def reset(page, preset_name: str) -> dict:
    from ui.common import preset_of

    A, modality = page.attributions, preset_of(preset_name).modality
    return {A.choice: gr.Dropdown(choices=[], value=None), A.text: gr.HTML(EMPTY_RESULTS, visible=modality == "text"),
            A.plot: gr.Plot(FG.empty_figure("Pixel attributions: after a run", 340), visible=modality == "image")}


def on_explain_default(state):
    if not state:
        return gr.skip(), gr.skip()
    return on_explain(state["default_choice"], state, None, None)


def resolve_input(choice: str, preset_name: str, text, image):
    """(x, target, label) for an attribution choice."""
    if choice == "custom":
        x, note = custom_input(preset_name, text, image)
        return x, None, f"your input ({note})" if note else "your input"
    group, _, idx = (choice or "").partition(":")
    if group not in ("forget", "retain", "test") or not idx.isdigit():
        raise MapeError("Pick an example to explain.")
    x, y = serving.split_example(preset_name, group, int(idx))
    return x, y, f"{group} example #{idx} (true class {serving.dataset(preset_name).classes[y]})"


def on_explain(choice, state, text, image):
    try:
        if not state:
            raise MapeError("Run unlearning first: attributions compare the original and the unlearned model.")
        x, target, label = resolve_input(choice, state["preset"], text, image)
        out = serving.explain(state["preset"], state["delta"], x, target)
    except MapeError as exc:
        gr.Warning(str(exc))
        return error_html(str(exc)), gr.skip()
    o, u = out["original"], out["unlearned"]
    cls = serving.dataset(state["preset"]).classes[o["target"]]
    if "tokens" in o:
        parts = [FG.token_heatmap_html(o["tokens"], o["scores"],
                                       f"Before (original): p({cls}) = {100 * o['prob']:.1f}%"),
                 FG.token_heatmap_html(u["tokens"], u["scores"], f"After (MAPE): p({cls}) = {100 * u['prob']:.1f}%")]
        head = (f"<div style='margin-bottom:8px;'>Integrated gradients for class <b>{html.escape(cls)}</b> on "
                f"{html.escape(label)}. Scores are normalised per model.</div>")
        return head + render.side_by_side_html(parts), gr.skip()
    fig = FG.image_attribution_figure(
        o["pixels"], o["heatmap"], u["heatmap"],
        titles=(f"input · {label.split(' (')[0]}", f"before: p({cls}) = {100 * o['prob']:.1f}%",
                f"after: p({cls}) = {100 * u['prob']:.1f}%"))
    return gr.skip(), fig
