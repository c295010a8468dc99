"""⑨ Downloads: the results JSON (after successive requests: every request), the masks (safetensors) and, for
small models, the unlearned model (after successive requests: after all of them)."""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr

from mape.base.errors import MapeError
from mape.serving import chain as CH, files, owner as serving
from ui.common import EXPLAIN, tmp_folder


def build(ctx) -> SimpleNamespace:
    gr.Markdown("## ⑨ Downloads", elem_classes=["mape-section"])
    with gr.Row():
        dl_json = gr.DownloadButton("Results JSON", interactive=False, elem_id="dl-json")
        dl_masks = gr.DownloadButton("Masks (.safetensors)", interactive=False, elem_id="dl-masks")
        export_btn = gr.Button("Build unlearned model (.safetensors)", interactive=False, elem_id="export-btn")
    model_file = gr.File(label="Unlearned model", visible=False, elem_id="model-file")
    return SimpleNamespace(dl_json=dl_json, dl_masks=dl_masks, export_btn=export_btn, model_file=model_file)


def wire(page) -> None:
    D = page.downloads
    D.export_btn.click(export_model, page.live.state, D.model_file, api_visibility="private", **EXPLAIN)


def outputs(page) -> list:
    D = page.downloads
    return [D.dl_json, D.dl_masks, D.export_btn, D.model_file]


def show(page, run: dict, meta: dict) -> dict:
    D = page.downloads
    folder = tmp_folder("run-")
    json_path = files.write_results_json(CH.results_json(run), folder)  # a chain: every request
    masks_path = files.write_masks(run["heads"], run["filters"], folder, run["head_scores"], run["filter_scores"], meta)
    small = files.model_size_mb(run["result"]["params"]["total"]) < files.MODEL_FILE_LIMIT_MB
    label = ("Build unlearned model (.safetensors)" if small
             else f"Model too large to download here (> {files.MODEL_FILE_LIMIT_MB} MB)")
    return {D.dl_json: gr.DownloadButton(value=str(json_path), interactive=True),
            D.dl_masks: gr.DownloadButton(value=str(masks_path), interactive=True),
            D.export_btn: gr.Button(interactive=small, value=label), D.model_file: gr.File(value=None, visible=False)}


def reset(page, preset_name: str) -> dict:
    D = page.downloads
    return {D.dl_json: gr.DownloadButton(value=None, interactive=False),
            D.dl_masks: gr.DownloadButton(value=None, interactive=False),
            D.export_btn: gr.Button(interactive=False), D.model_file: gr.File(value=None, visible=False)}


def export_model(state):
    if not state:
        gr.Warning("Run unlearning first.")
        return gr.File(visible=False)
    try:
        path = serving.export(state["preset"], state["delta"], str(tmp_folder("run-")), state.get("model_meta", {}))
    except MapeError as exc:
        gr.Warning(str(exc))
        return gr.File(visible=False)
    return gr.File(value=path, visible=True)
