"""⑥ Predictions before / after: forget, retain and test examples of the last run, and the user's own
input (typed text or an uploaded image) under the original, the unlearned and the retrained model."""

from __future__ import annotations

import html
import os
from types import SimpleNamespace

import gradio as gr
import numpy as np

from mape import app_support as S
from mape import serving
from mape.errors import MapeError
from mape.presets import PRESETS
from ui.common import EMPTY_RESULTS, error_html

CAPTIONS = {"forget": "Examples from the forget set: after unlearning they should be treated like unseen data.",
            "retain": "Examples the model keeps: predictions should not change.",
            "test": "Held-out test examples: accuracy should stay (except on a forgotten class)."}
MAX_TEXT = 5000


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
    return SimpleNamespace(forget=pf, retain=pr, test=pt, custom_text=custom_text, custom_image=custom_image,
                           predict_btn=predict_btn, sample_btn=sample_btn, custom_out=custom_out)


def wire(page) -> None:
    P, preset, state = page.predictions, page.model.preset, page.live.state
    inputs = [preset, state, P.custom_text, P.custom_image]
    # preprocess=False: the uploaded image arrives as a file reference and is validated by
    # app_support.load_user_image, which gives a clear message for a file that is not an image
    opts = dict(api_visibility="private", concurrency_id="explain", concurrency_limit=2, preprocess=False)
    P.predict_btn.click(predict_custom, inputs, P.custom_out, **opts)
    P.custom_text.submit(predict_custom, inputs, P.custom_out, **opts)
    P.sample_btn.click(random_test_image, [preset], P.custom_image, api_visibility="private"
                       ).then(predict_custom, inputs, P.custom_out, **opts)


def run_outputs(page) -> list:
    P = page.predictions
    return [P.forget, P.retain, P.test, P.custom_text, P.custom_image, P.sample_btn, P.custom_out]


def show(page, run: dict) -> dict:
    P = page.predictions
    classes = serving.dataset(run["preset"]).classes
    modality = PRESETS[run["preset"]].modality
    models = [m for m in ("original", "unlearned", "retrain") if m in run["probs"]]
    views = {}
    for group, comp in (("forget", P.forget), ("retain", P.retain), ("test", P.test)):
        items = []
        for k, i in enumerate(run["samples"][group]):
            x, y = serving.split_example(run["preset"], group, i)
            items.append({"index": f"{group} #{i}", "input_html": S.input_html(x, modality), "true": y,
                          "probs": {m: run["probs"][m][group][k] for m in models}})
        views[comp] = S.predictions_html(items, classes, models, CAPTIONS[group])
    return views


def reset(page, preset_name: str) -> dict:
    P = page.predictions
    text, image = PRESETS[preset_name].modality == "text", PRESETS[preset_name].modality == "image"
    return {P.forget: EMPTY_RESULTS, P.retain: EMPTY_RESULTS, P.test: EMPTY_RESULTS,
            P.custom_text: gr.Textbox(visible=text), P.custom_image: gr.Image(visible=image, value=None),
            P.sample_btn: gr.Button(visible=image), P.custom_out: ""}


def custom_input(preset_name: str, text, image):
    """(input, note) of the user's own text or image, checked; MapeError with a clear message."""
    if PRESETS[preset_name].modality == "text":
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
    return S.load_user_image(image, fmt.size, fmt.channels, mnist_like=serving.dataset(preset_name).name == "mnist")


def run_models(preset_name: str, state) -> dict | None:
    """What :func:`mape.serving.predict` needs of the session's run (None: no run on this preset)."""
    if not state or state.get("preset") != preset_name:
        return None
    return {"run_key": state.get("run_key"), "delta": state["delta"],
            "forget_indices": state["forget_indices"] if state.get("has_retrain") else None}


def predict_custom(preset_name, state, text, image):
    try:
        ok, why = PRESETS[preset_name].availability()
        if not ok:
            raise MapeError(f"Preset '{preset_name}' cannot run here: {why}.")
        x, note = custom_input(preset_name, text, image)
        out = serving.predict(preset_name, run_models(preset_name, state), x)
    except MapeError as exc:
        gr.Warning(str(exc))
        return error_html(str(exc))
    extra = "" if "unlearned" in out else "Run unlearning to compare with the unlearned model."
    pic = ""
    if PRESETS[preset_name].modality == "image":
        pic = (f"<div style='margin-bottom:6px;'>{S.input_html(x, 'image')} <span style='color:#4b5563;'>"
               f"What the model sees: {html.escape(note)}</span></div>")
    return pic + S.prob_bars_html(serving.dataset(preset_name).classes, out, extra)


def random_test_image(preset_name):
    try:
        ds = serving.dataset(preset_name)
    except MapeError as exc:
        gr.Warning(str(exc))
        return gr.skip()
    if ds.modality != "image":
        return gr.skip()
    img = np.asarray(ds.test.x[int(np.random.default_rng().integers(len(ds.test)))])
    return S.upscale(img, 8) if img.shape[0] <= 64 else img
