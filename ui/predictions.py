"""⑥ Predictions before / after: forget, retain and test examples of the last run, and the user's own
input (typed text or an uploaded image) under the original, the unlearned and the retrained model."""

from __future__ import annotations

import html
import os
from types import SimpleNamespace

import gradio as gr
import numpy as np

from mape.base.errors import MapeError
from mape.serving import owner as serving, uploads
from ui import render
from ui.common import EMPTY_RESULTS, INTERACTIVE, error_html, preset_of

CAPTIONS = {"forget": "Examples from the forget set: after unlearning they should be treated like unseen data.",
            "retain": "Examples the model keeps: predictions should not change.",
            "test": "Held-out test examples: accuracy should stay (except on a forgotten class)."}
MAX_TEXT = 5000
TRIGGER_NOTE = ("#### Trigger tester — does the backdoor still fire?\n"
                "The same input without and with the scenario's trigger, under the original, the unlearned and (when "
                "cached) the retrained model. A removed backdoor ignores the trigger, as the retrained model does.")


def build(ctx) -> SimpleNamespace:
    gr.Markdown("## ⑥ Predictions before / after", elem_classes=["mape-section"])
    with gr.Tabs():
        with gr.Tab("Forget examples"):
            pf = gr.HTML(EMPTY_RESULTS, elem_id="pred-forget")
        with gr.Tab("Retain examples"):
            pr = gr.HTML(EMPTY_RESULTS, elem_id="pred-retain")
        with gr.Tab("Test examples"):
            pt = gr.HTML(EMPTY_RESULTS, elem_id="pred-test")
    text, image = ctx.modality == "text", ctx.modality == "image"
    with gr.Column():
        gr.Markdown("#### Try your own input — compare the original and the unlearned model on it",
                    elem_classes=["mape-sub"])
        with gr.Row():
            custom_text = gr.Textbox(label="Your text", lines=2, visible=text, scale=4, elem_id="custom-text",
                                     placeholder="e.g. The striker scored twice as the club won the cup final.")
            custom_image = gr.Image(label="Your image (any size; converted to the model's format)", type="filepath",
                                    image_mode=None, format="png", height=220, sources=["upload", "clipboard"],
                                    visible=image, scale=2, elem_id="custom-image")
            with gr.Column(scale=1, min_width=160):
                predict_btn = gr.Button("Predict", variant="secondary", elem_id="predict-btn")
                sample_btn = gr.Button("Use a test image", size="sm", visible=image, elem_id="sample-image-btn")
        custom_out = gr.HTML("", elem_id="custom-predictions")
    with gr.Column(visible=False, elem_id="trigger-tester") as trigger_box:
        gr.Markdown(TRIGGER_NOTE, elem_classes=["mape-sub"])
        with gr.Row():
            trigger_own = gr.Button("Test the trigger on my input above", variant="secondary", elem_id="trigger-btn")
            trigger_test = gr.Button("… on a random test example", variant="secondary", elem_id="trigger-test-btn")
        trigger_out = gr.HTML("", elem_id="trigger-results")
    return SimpleNamespace(forget=pf, retain=pr, test=pt, custom_text=custom_text, custom_image=custom_image,
                           predict_btn=predict_btn, sample_btn=sample_btn, custom_out=custom_out,
                           trigger_box=trigger_box, trigger_own=trigger_own, trigger_test=trigger_test,
                           trigger_out=trigger_out)


def wire(page) -> None:
    P, preset, scenario, state = page.predictions, page.model.preset, page.model.scenario, page.live.state
    inputs = [preset, scenario, state, P.custom_text, P.custom_image]
    # preprocess=False: the uploaded image arrives as a file reference and is validated by
    # mape.serving.uploads.load_user_image, which gives a clear message for a file that is not an image
    opts = dict(api_visibility="private", preprocess=False, **INTERACTIVE)
    P.predict_btn.click(predict_custom, inputs, P.custom_out, **opts)
    P.custom_text.submit(predict_custom, inputs, P.custom_out, **opts)
    P.sample_btn.click(random_test_image, [preset, scenario], P.custom_image, api_visibility="private"
                       ).then(predict_custom, inputs, P.custom_out, **opts)
    P.trigger_own.click(test_trigger_own, inputs, P.trigger_out, **opts)
    P.trigger_test.click(test_trigger_example, [preset, scenario, state], P.trigger_out,
                         **{**opts, "preprocess": True})
    # the tester shows with a backdoor scenario only
    preset.input(lambda: (gr.Column(visible=False), ""), None, [P.trigger_box, P.trigger_out],
                  api_visibility="private", queue=False)
    scenario.input(lambda p, sc: (gr.Column(visible=has_trigger(p, sc)), ""), [preset, scenario],
                   [P.trigger_box, P.trigger_out], api_visibility="private", queue=False)


def run_outputs(page) -> list:
    P = page.predictions
    return [P.forget, P.retain, P.test, P.custom_text, P.custom_image, P.sample_btn, P.custom_out, P.trigger_out]


def show(page, run: dict) -> dict:
    P = page.predictions
    classes = serving.dataset(run["preset"]).classes
    modality = preset_of(run["preset"]).modality
    models = [m for m in ("original", "unlearned", "retrain") if m in run["probs"]]
    views = {P.trigger_out: ""}
    for group, comp in (("forget", P.forget), ("retain", P.retain), ("test", P.test)):
        items = []
        for k, i in enumerate(run["samples"][group]):
            x, y = serving.split_example(run["preset"], group, i)
            items.append({"index": f"{group} #{i}", "input_html": render.input_html(x, modality), "true": y,
                          "probs": {m: run["probs"][m][group][k] for m in models}})
        views[comp] = render.predictions_html(items, classes, models, CAPTIONS[group])
    return views


def reset(page, preset_name: str) -> dict:
    P = page.predictions
    modality = preset_of(preset_name).modality
    text, image = modality == "text", modality == "image"
    return {P.forget: EMPTY_RESULTS, P.retain: EMPTY_RESULTS, P.test: EMPTY_RESULTS,
            P.custom_text: gr.Textbox(visible=text), P.custom_image: gr.Image(visible=image, value=None),
            P.sample_btn: gr.Button(visible=image), P.custom_out: "", P.trigger_out: ""}


def custom_input(preset_name: str, text, image):
    """(input, note) of the user's own text or image, checked; MapeError with a clear message."""
    if preset_of(preset_name).modality == "text":
        if not isinstance(text, str) or not text.strip():
            raise MapeError("Type some text first.")
        if len(text) > MAX_TEXT:
            raise MapeError(f"The text is {len(text):,} characters long; at most {MAX_TEXT:,} are accepted.")
        return text.strip(), ""
    if isinstance(image, dict):  # an unprocessed gr.Image value (FileData)
        image = image.get("path")
    if image is not None and not isinstance(image, (str, os.PathLike)):
        raise MapeError("Upload an image file (PNG, JPEG, WebP, BMP or GIF).")
    fmt = serving.image_format(preset_name)
    mnist_like = serving.dataset(preset_name).name == "mnist"
    return uploads.load_user_image(image, fmt.size, fmt.channels, mnist_like=mnist_like)


def run_models(preset_name: str, state) -> dict | None:
    """What :func:`mape.serving.owner.predict` needs of the session's run (None: no run on this preset)."""
    if not state or state.get("preset") != preset_name:
        return None
    return {"run_key": state.get("run_key"), "delta": state["delta"],
            "forget_indices": state["forget_indices"] if state.get("has_retrain") else None}


def predict_custom(preset_name, scenario, state, text, image):
    preset_name = serving.served_name(preset_name, scenario)
    try:
        ok, why = preset_of(preset_name).availability()
        if not ok:
            raise MapeError(f"Preset '{preset_name}' cannot run here: {why}.")
        x, note = custom_input(preset_name, text, image)
        out = serving.predict(preset_name, run_models(preset_name, state), x)
    except MapeError as exc:
        gr.Warning(str(exc))
        return error_html(str(exc))
    extra = "" if "unlearned" in out else "Run unlearning to compare with the unlearned model."
    pic = ""
    if preset_of(preset_name).modality == "image":
        pic = (f"<div style='margin-bottom:6px;'>{render.input_html(x, 'image')} <span style='color:#4b5563;'>"
               f"What the model sees: {html.escape(note)}</span></div>")
    return pic + render.prob_bars_html(serving.dataset(preset_name).classes, out, extra)


def has_trigger(preset_name, scenario) -> bool:
    """Whether the preset with this scenario has a backdoor trigger to test (False for a bad spec)."""
    try:
        sc = serving.scenario_of(serving.served_name(preset_name, scenario)) if scenario else None
    except MapeError:
        return False
    return sc is not None and sc.is_backdoor


def test_trigger_own(preset_name, scenario, state, text, image):
    """The trigger tester on the visitor's own text or image."""
    name = serving.served_name(preset_name, scenario)
    try:
        x, _ = custom_input(name, text, image)
    except MapeError as exc:
        gr.Warning(str(exc))
        return error_html(str(exc))
    return trigger_html(name, state, x, "your input")


def test_trigger_example(preset_name, scenario, state):
    """The trigger tester on a random test example of a class other than the backdoor's target."""
    name = serving.served_name(preset_name, scenario)
    try:
        sc, ds = serving.scenario_of(name), serving.dataset(name)
        if sc is None or not sc.is_backdoor:
            raise MapeError("The trigger tester needs a backdoor scenario (Model & data → Training data).")
    except MapeError as exc:
        gr.Warning(str(exc))
        return error_html(str(exc))
    pool = np.flatnonzero(np.asarray(ds.test.y) != sc.target)
    i = int(np.random.default_rng().choice(pool))
    return trigger_html(name, state, ds.test.x[i], f"test example #{i} (true class {ds.classes[int(ds.test.y[i])]})")


def trigger_html(name: str, state, x, label: str) -> str:
    """Without / with the trigger, side by side; each with the models' class probabilities."""
    try:
        out = serving.trigger_test(name, run_models(name, state), x)
    except MapeError as exc:
        gr.Warning(str(exc))
        return error_html(str(exc))
    classes = serving.dataset(name).classes
    modality = preset_of(name).modality
    extra = "" if "unlearned" in out["probs"]["clean"] else "Run unlearning to see the unlearned model."
    trig = "the corner patch" if out["trigger"] == "patch" else f"the word '{out['trigger']}'"
    parts = []
    for key, title in (("clean", "Without the trigger"), ("triggered", f"With {trig} (target: {out['target']})")):
        fired = {m: classes[int(np.argmax(p))] == out["target"] for m, p in out["probs"][key].items()}
        verdict = ", ".join(f"{m}: {'→ ' + out['target'] if f else 'not ' + out['target']}" for m, f in fired.items())
        parts.append(f"<div style='font-weight:600;margin-bottom:4px;'>{html.escape(title)}</div>"
                     f"<div style='margin-bottom:6px;'>{render.input_html(out[key], modality)}</div>"
                     f"<div class='mape-trigger-verdict' style='color:#4b5563;font-size:0.9em;margin-bottom:6px;'>"
                     f"{html.escape(verdict)}</div>"
                     + render.prob_bars_html(classes, out["probs"][key], extra if key == "clean" else ""))
    return (f"<div style='margin-bottom:6px;color:#4b5563;'>On {html.escape(label)}.</div>"
            + render.side_by_side_html(parts))


def random_test_image(preset_name, scenario=""):
    try:
        ds = serving.dataset(serving.served_name(preset_name, scenario))
    except MapeError as exc:
        gr.Warning(str(exc))
        return gr.skip()
    if ds.modality != "image":
        return gr.skip()
    img = np.asarray(ds.test.x[int(np.random.default_rng().integers(len(ds.test)))])
    return render.upscale(img, 8) if img.shape[0] <= 64 else img
