"""② Forget set: selector kind and value, seed, and a preview (counts per class, first examples).

It also owns the preset switch: the forget selector is reset to the new preset's default and a
``gr.State`` (``owner``) records which preset the selector on screen belongs to. While a switch is
under way the Run button is disabled (in the browser at once, then by the server), and a run whose
selector still belongs to the previous preset uses the new preset's default forget set, which is what
the selector shows a moment later (ui.live_search.forget_spec_of): what the page shows is what runs.
The switch follows the visitor's choice (``.input``); a lesson (ui.lessons) sets the selector itself.
"""

from __future__ import annotations

import html
from types import SimpleNamespace

import gradio as gr
import numpy as np

from mape.base.errors import MapeError
from mape.data.forget import select_forget
from mape.serving import offer, owner as serving
from ui import render
from ui.common import classes_of, default_kv, preset_of

KINDS_TEXT = [("random sample", "random"), ("whole class / class sample", "class"),
              ("texts matching a pattern", "match"), ("training indices", "indices")]
KINDS_IMAGE = [k for k in KINDS_TEXT if k[1] != "match"]
KIND_POISONED = ("altered training examples (poisoned / mislabeled)", "poisoned")
KIND_HELP = {
    "random": "How many random training examples: a count like 32, or a share like 2%.",
    "class": "A class name or number ({classes}); add :N for N examples of it, e.g. {c0}:20.",
    "match": "A regular expression (case-insensitive), e.g. football|rugby.",
    "indices": "Training indices and ranges, e.g. 0,5,10-20.",
    "poisoned": "The examples the scenario altered: all, a count like 10, or a share like 50%.",
}
# runs in the browser as soon as the preset changes, before any server round trip
DISABLE_RUN_JS = "() => { const b = document.querySelector('#run-btn'); if (b) { b.disabled = true; } }"


def build(ctx) -> SimpleNamespace:
    gr.Markdown("## ② Forget set — what should the model forget?", elem_classes=["mape-section"])
    kind0, value0 = offer.default_forget(ctx.modality, ctx.classes)
    with gr.Row():
        kind = gr.Dropdown(KINDS_IMAGE if ctx.modality == "image" else KINDS_TEXT, value=kind0, label="Selector",
                           scale=1, elem_id="forget-kind")
        value = gr.Textbox(value0, label="Value", info=kind_info(kind0, ctx.classes), scale=2, elem_id="forget-value")
        seed = gr.Number(0, label="Seed", precision=0, minimum=0, scale=1, elem_id="seed",
                         info="Same seed, same random choices.")
    with gr.Row():
        with gr.Column(scale=2):
            counts = gr.HTML("", elem_id="forget-counts")
        with gr.Column(scale=3):
            table = gr.Dataframe(headers=["#", "class", "text"], datatype=["number", "str", "str"],
                                 column_widths=["70px", "170px", "auto"], label="First examples of the forget set",
                                 wrap=True, max_height=300, visible=ctx.modality == "text", interactive=False,
                                 elem_id="forget-preview-table")
            gallery = gr.Gallery(label="First examples of the forget set", columns=8, height=260,
                                 visible=ctx.modality == "image", allow_preview=False, elem_id="forget-preview-gallery")
    owner = gr.State(ctx.default)  # the preset the selector on screen belongs to
    return SimpleNamespace(kind=kind, value=value, seed=seed, counts=counts, table=table, gallery=gallery, owner=owner)


def wire(page, demo) -> None:
    f, preset, scenario = page.forget, page.model.preset, page.model.scenario
    preview_in, preview_out = [preset, scenario, f.kind, f.value, f.seed], [f.counts, f.table, f.gallery]
    f.kind.input(on_kind, [preset, scenario, f.kind], f.value, api_visibility="private", queue=False
                 ).then(preview, preview_in, preview_out, api_visibility="private")
    for trigger in (f.value.submit, f.value.blur, f.seed.submit):
        trigger(preview, preview_in, preview_out, api_visibility="private")
    load = demo.load(lambda p: preview_named(p, *default_kv(p), 0), preset, preview_out, api_visibility="private")
    # once the page is usable: prepare its preset so that the first Run finds it ready (MAPE_APP_WARM), or at
    # least load torch and transformers in the background, which the page itself does not need
    load.then(lambda p: (serving.warm_in_background(p) if page.ctx.warm else serving.load_engine_in_background())
              and None, preset, None, api_visibility="private", queue=False)
    switch_out = [f.kind, f.value, f.owner, page.method.run_btn]
    # a preset switch starts on clean data (model_data resets the scenario): the scenario on screen may
    # still be the old preset's for a moment, so this chain does not read it
    for event, handler, inputs in ((preset.input, on_preset, [preset]),
                                   (scenario.input, on_scenario, [preset, scenario])):
        event(None, None, None, js=DISABLE_RUN_JS, api_visibility="private", queue=False)
        event(lambda: gr.Button(interactive=False), None, page.method.run_btn, api_visibility="private", queue=False
              ).then(handler, inputs, switch_out, api_visibility="private"
                     ).then(preview_named, [f.owner, f.kind, f.value, f.seed], preview_out, api_visibility="private")


def on_preset(preset_name):
    """The new preset's default forget selector, its owner, and Run enabled again (whatever happens)."""
    return on_scenario(preset_name, "")


def on_scenario(preset_name, scenario):
    """The default forget selector of the preset with this scenario (``poisoned`` on a scenario), its
    owner (the served name), and Run enabled again (whatever happens)."""
    name = serving.served_name(preset_name, scenario)
    try:
        classes, modality = classes_of(name)
        k, v = default_kv(name)
        return (gr.Dropdown(choices=kinds_for(modality, name), value=k),
                gr.Textbox(value=v, info=kind_info(k, classes)), name, gr.Button(interactive=True))
    except Exception:  # noqa: BLE001 - never leave Run disabled
        serving.log.exception("switching to %s failed", name)
        return gr.skip(), gr.skip(), gr.skip(), gr.Button(interactive=True)


def kinds_for(modality: str, name: str) -> list[tuple[str, str]]:
    kinds = KINDS_IMAGE if modality == "image" else KINDS_TEXT
    return kinds + [KIND_POISONED] if serving.split_name(name)[1] else kinds


def on_kind(preset_name, scenario, kind_v):
    classes, modality = classes_of(serving.served_name(preset_name, scenario))
    return gr.Textbox(value=kind_default(kind_v, classes, modality), info=kind_info(kind_v, classes))


def kind_default(kind: str, classes: list[str], modality: str) -> str:
    if kind == "random":
        return "32"
    if kind == "poisoned":
        return "all"
    if kind == "class":
        return offer.default_forget(modality, classes)[1] if modality == "image" else (
            "sport" if "sport" in classes else classes[0])
    return "football|rugby" if kind == "match" else "0-19"


def kind_info(kind: str, classes: list[str]) -> str:
    shown = ", ".join(classes[:12]) + (", …" if len(classes) > 12 else "")
    return KIND_HELP.get(kind, "").format(classes=shown, c0=classes[0] if classes else "0")


def preview(preset_name, scenario, kind_v, value_v, seed_v):
    """Counts per class and the first examples of the forget set (or one clear message); examples a
    scenario altered are marked (with their true class)."""
    return preview_named(serving.served_name(preset_name, scenario), kind_v, value_v, seed_v)


def preview_named(preset_name, kind_v, value_v, seed_v):
    """:func:`preview` of a served name (``preset`` or ``preset@scenario``: the selector's owner)."""
    spec = offer.compose_spec(kind_v, value_v)
    modality = preset_of(preset_name).modality
    empty_table = gr.Dataframe(value=[], visible=modality == "text")
    empty_gallery = gr.Gallery(value=[], visible=modality == "image")
    if preset_of(preset_name).kind == "hub" and not serving.is_ready(preset_name):
        return ("<div style='color:#6b7280;'>The preview appears once the Hub dataset is loaded (Prepare model).</div>",
                empty_table, empty_gallery)
    try:
        ds = serving.dataset(preset_name)
        fs = select_forget(spec, ds, int(seed_v or 0))
    except MapeError as exc:
        return (f"<div class='mape-error' style='color:#b91c1c;font-weight:600;'>⚠️ {html.escape(str(exc))}</div>",
                empty_table, empty_gallery)
    counts = render.class_counts_html(ds.classes, ds.train.y[fs.indices], ds.train.y, spec)
    first = fs.indices[:48]
    label = _labeller(ds)
    counts += _altered_note(ds, fs.indices)
    if ds.modality == "text":
        rows = [[int(i), label(i), render.shorten(ds.train.x[i], 220)] for i in first[:30]]
        return counts, gr.Dataframe(value=rows, visible=True), empty_gallery
    imgs = [(render.upscale(ds.train.x[i], 3), f"#{int(i)} · {label(i)}") for i in first]
    return counts, empty_table, gr.Gallery(value=imgs, visible=True)


def _labeller(ds):
    """The class shown for training example i: its training label, marked ⚠ with the true class when the
    scenario altered it."""
    sc = getattr(ds, "scenario", None)

    def label(i) -> str:
        shown = ds.classes[int(ds.train.y[i])]
        if sc is None or not sc.altered_mask([int(i)])[0]:
            return shown
        true = ds.classes[int(sc.true_labels(ds.train.y, np.array([int(i)]))[0])]
        return f"⚠ {shown} (altered; true class {true})"

    return label


def _altered_note(ds, indices) -> str:
    sc = getattr(ds, "scenario", None)
    if sc is None:
        return ""
    n = int(sc.altered_mask(indices).sum())
    what = "poisoned (trigger added, relabelled)" if sc.is_backdoor else "mislabeled"
    return (f"<div class='mape-altered-note' style='color:#b45309;margin-top:4px;'>⚠ {n} of these {len(indices)} "
            f"examples are {what} by the scenario {html.escape(sc.spec)} (marked ⚠ below).</div>")
