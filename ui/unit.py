"""⑤b Inside a selected unit: after a run, one attention head's pattern on an example before and after
unlearning (token × token for text, the [CLS] row over the patch grid for images), and how strongly one
FFN filter fires on forget vs retain examples before and after, each with the unit's score from the search
and whether it was selected. Computed on private copies (:func:`mape.serving.inside.head_attention`,
:func:`mape.serving.inside.filter_activation`)."""

from __future__ import annotations

import html
from types import SimpleNamespace

import gradio as gr
import numpy as np

from mape.base.errors import MapeError
from mape.serving import figures as FG, inside, unit_figures as UF
from ui import attributions, render
from ui.common import EXPLAIN, deferred_plot, error_html, preset_of

INTRO = ("Pick a unit of the last run. **Attention head**: where each token (for images: the [CLS] token, over "
         "the image's patches) looks, before and after unlearning. A head's attention changes only if its own "
         "query/key rows or a layer below changed. **FFN filter**: its activation after the nonlinearity (the "
         "input of the FFN down projection, where the filter gate sits), averaged over each example's tokens, on "
         "forget and retain examples.")
HEAD_EMPTY, FILTER_EMPTY = "Head attention: after a run", "Filter activation: after a run"
#: a click on a cell of the run's head heatmap (④) fills in the layer and head here. Gradio's plot component has
#: no click event, so this listens to plotly's own ``plotly_click`` on the heatmap's element (re-attached when
#: the figure is redrawn) and types the values in (an "input" event, as if typed: the unit line updates)
HEAD_CLICK_JS = """
() => {
  if (window.mapeUnitClick) return [];
  const set = (id, value) => {
    const el = document.querySelector(`#${id} input`);
    if (!el) return;
    el.value = value;
    el.dispatchEvent(new Event("input", {bubbles: true}));
  };
  window.mapeUnitClick = setInterval(() => {
    const gd = document.querySelector("#heads-plot .js-plotly-plot");
    if (!gd || gd.mapeUnitClick || typeof gd.on !== "function") return;
    gd.mapeUnitClick = true;
    gd.on("plotly_click", (ev) => {
      const p = ev && ev.points && ev.points[0];
      if (!p || typeof p.x !== "number" || typeof p.y !== "number") return;
      set("unit-head-layer", p.y);
      set("unit-head", p.x);
    });
  }, 1000);
  return [];
}
"""


def build(ctx) -> SimpleNamespace:
    gr.Markdown("## ⑤b Inside a selected unit", elem_classes=["mape-section"])
    gr.Markdown(INTRO + " Click a cell of the run's head heatmap (④) to pick that head.", elem_classes=["mape-sub"])
    gr.Markdown("#### Attention head", elem_classes=["mape-sub"])
    with gr.Row():
        head_layer = gr.Number(0, label="Layer", precision=0, minimum=0, scale=1, elem_id="unit-head-layer")
        head = gr.Number(0, label="Head", precision=0, minimum=0, scale=1, elem_id="unit-head")
        example = gr.Dropdown([], label="Example", scale=3, elem_id="unit-example",
                              info="Your own input: the text or image under Predictions.")
        head_btn = gr.Button("Show attention", scale=1, elem_id="unit-head-btn")
    head_info = gr.HTML("", elem_id="unit-head-info")
    with gr.Row():
        before = deferred_plot(label="Before (original)", elem_id="unit-attn-before")
        after = deferred_plot(label="After (MAPE)", elem_id="unit-attn-after")
    gr.Markdown("#### FFN filter", elem_classes=["mape-sub"])
    with gr.Row():
        filter_layer = gr.Number(0, label="Layer", precision=0, minimum=0, scale=1, elem_id="unit-filter-layer")
        filt = gr.Number(0, label="Filter", precision=0, minimum=0, scale=1, elem_id="unit-filter")
        filter_btn = gr.Button("Show activations", scale=1, elem_id="unit-filter-btn")
    filter_info = gr.HTML("", elem_id="unit-filter-info")
    filter_plot = deferred_plot(label="Filter activation", elem_id="unit-filter-plot")
    return SimpleNamespace(head_layer=head_layer, head=head, example=example, head_btn=head_btn,
                           head_info=head_info, before=before, after=after, filter_layer=filter_layer, filt=filt,
                           filter_btn=filter_btn, filter_info=filter_info, filter_plot=filter_plot)


def outputs(page) -> list:
    u = page.unit
    return [u.head_layer, u.head, u.example, u.head_info, u.before, u.after, u.filter_layer, u.filt, u.filter_info,
            u.filter_plot]


def wire(page) -> None:
    u, P, state = page.unit, page.predictions, page.live.state
    private = dict(api_visibility="private")
    page.live.run_id.change(lambda s: on_run(page, s), state, outputs(page), queue=False, **private)
    page.live.run_id.change(None, None, None, js=HEAD_CLICK_JS, queue=False, **private)
    for comp in (u.head_layer, u.head):
        comp.input(head_info, [u.head_layer, u.head, state], u.head_info, queue=False, **private)
    for comp in (u.filter_layer, u.filt):
        comp.input(filter_info, [u.filter_layer, u.filt, state], u.filter_info, queue=False, **private)
    u.head_btn.click(on_head, [u.head_layer, u.head, u.example, state, P.custom_text, P.custom_image],
                     [u.head_info, u.before, u.after], preprocess=False, **private, **EXPLAIN)
    u.filter_btn.click(on_filter, [u.filter_layer, u.filt, state], [u.filter_info, u.filter_plot],
                       **private, **EXPLAIN)
    page.model.preset.input(lambda: reset(page), None, outputs(page), queue=False, **private)
    page.model.scenario.input(lambda: reset(page), None, outputs(page), queue=False, **private)


def reset(page) -> dict:
    u = page.unit
    return {u.head_layer: 0, u.head: 0, u.example: gr.Dropdown(choices=[], value=None), u.head_info: "",
            u.before: FG.empty_figure(HEAD_EMPTY, 380), u.after: FG.empty_figure(HEAD_EMPTY, 380),
            u.filter_layer: 0, u.filt: 0, u.filter_info: "", u.filter_plot: FG.empty_figure(FILTER_EMPTY, 340)}


def top_unit(selected, scores) -> tuple[int, int]:
    """(layer, index) of the highest-scoring selected unit (of the highest-scoring unit if none is)."""
    sel = np.asarray(selected).astype(bool)
    sc = np.asarray(scores, dtype=float) if scores is not None else sel.astype(float)
    masked = np.where(sel, sc, -np.inf) if sel.any() else sc
    layer, index = np.unravel_index(int(np.argmax(masked)), masked.shape)
    return int(layer), int(index)


def on_run(page, state) -> dict:
    """After a run: the top selected head and filter, and the run's examples to pick from."""
    if not state:
        return {}
    u = page.unit
    hl, h = top_unit(state["heads"], state.get("head_scores"))
    fl, f = top_unit(state["filters"], state.get("filter_scores"))
    options = attributions.choices(state)
    return {**reset(page), u.head_layer: hl, u.head: h, u.example: gr.Dropdown(choices=options, value=options[0][1]),
            u.head_info: head_info(hl, h, state), u.filter_layer: fl, u.filt: f,
            u.filter_info: filter_info(fl, f, state)}


def unit_html(kind: str, selected, scores, layer, index) -> str:
    """"Head 5 of layer 2: selected for update · score 0.0123 (rank 3 of 72 heads; 7 selected)"."""
    unit = "head" if kind == "head" else "filter"
    sel = np.asarray(selected)
    n_layers, n_units = sel.shape
    from mape.evaluation import units as U  # torch: loaded after the page is up

    layer = U.check_index(_num(layer, "Layer"), n_layers, "Layer")
    index = U.check_index(_num(index, unit.capitalize()), n_units, unit.capitalize())
    info = U.unit_summary(sel, scores, layer, index)
    verdict = ("<b style='color:#e4572e;'>selected</b> for update" if info["selected"]
               else "<b style='color:#6b7280;'>frozen</b> (its parameters did not change)")
    score = (f" · score from the search {info['score']:.4g} (rank {info['rank']} of {info['n_units']} {unit}s; "
             f"{info['n_selected']} selected)") if "score" in info else ""
    return (f"<div class='mape-unit-info' style='padding:4px 0;'>{unit.capitalize()} {index} of layer {layer}: "
            f"{verdict}{score}.</div>")


def head_info(layer, head, state) -> str:
    if not state:
        return ""
    try:
        return unit_html("head", state["heads"], state.get("head_scores"), layer, head)
    except MapeError as exc:
        return error_html(str(exc))


def filter_info(layer, filt, state) -> str:
    if not state:
        return ""
    try:
        return unit_html("filter", state["filters"], state.get("filter_scores"), layer, filt)
    except MapeError as exc:
        return error_html(str(exc))


def _num(value, what: str):
    if value is None or value == "":
        raise MapeError(f"Enter a {what.lower()} number.")
    return value


def on_head(layer, head, choice, state, text, image):
    try:
        if not state:
            raise MapeError("Run unlearning first: the head's attention is compared before and after.")
        name = state["preset"]
        info = unit_html("head", state["heads"], state.get("head_scores"), layer, head)
        x, _, label = attributions.resolve_input(choice, name, text, image)
        out = inside.head_attention(name, state["delta"], x, int(layer), int(head))
    except MapeError as exc:
        gr.Warning(str(exc))
        return error_html(str(exc)), gr.skip(), gr.skip()
    tag = f"layer {int(layer)}, head {int(head)}"
    change = float(np.abs(out["unlearned"] - out["original"]).max(initial=0.0))
    note = (f"<div style='color:#4b5563;'>On {html.escape(label)}. Largest change of an attention weight: "
            f"{change:.3g}{' (identical)' if change == 0 else ''}.</div>")
    if "grid" in out:
        g = out["grid"]
        zmax = float(max(g["original"].max(), g["unlearned"].max())) or 1.0
        figs = [UF.patch_heatmap(g[m], f"{t} · {tag} · [CLS] over patches", zmax)
                for m, t in (("original", "Before"), ("unlearned", "After"))]
        pic = f"<div style='margin:4px 0;'>{render.input_html(x, preset_of(name).modality)}</div>"
        return info + pic + note, figs[0], figs[1]
    zmax = float(max(out["original"].max(), out["unlearned"].max())) or 1.0
    figs = [UF.attention_heatmap(out[m], out["tokens"], f"{t} · {tag}", zmax)
            for m, t in (("original", "Before"), ("unlearned", "After"))]
    return info + note, figs[0], figs[1]


def on_filter(layer, filt, state):
    try:
        if not state:
            raise MapeError("Run unlearning first: the filter's activations are compared before and after.")
        info = unit_html("filter", state["filters"], state.get("filter_scores"), layer, filt)
        out = inside.filter_activation(state["preset"], state["delta"], state["forget_indices"], int(layer),
                                        int(filt))
    except MapeError as exc:
        gr.Warning(str(exc))
        return error_html(str(exc)), gr.skip()
    v = out["values"]
    means = "; ".join(f"{UF.MODEL_LABELS[m]}: forget {np.mean(v[m]['forget']):.3g}, retain "
                      f"{np.mean(v[m]['retain']):.3g}" for m in ("original", "unlearned") if "forget" in v[m]
                      and "retain" in v[m])
    note = f"<div style='color:#4b5563;'>Mean activation — {html.escape(means)}.</div>" if means else ""
    fig = UF.filter_activation_figure(v, f"Layer {int(layer)}, filter {int(filt)}: activation per example")
    return info + note, fig
