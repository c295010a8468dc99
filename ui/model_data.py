"""① Model & data: the preset picker, the training data (clean or a scenario: poisoned or
mislabeled examples, mape.data.scenarios), the original model's status and "Prepare model".

The page serves a preset with a scenario under the name ``preset@scenario`` (mape.serving.owner.served_name):
its own altered dataset, original model and retrain references. Handlers get the preset and the
scenario on screen and combine them, so what runs is what the page shows."""

from __future__ import annotations

import html
import queue
import threading
import time
from types import SimpleNamespace

import gradio as gr

from mape.data.presets import PRESETS
from mape.serving import offer, owner as serving
from ui.common import classes_of, preset_of, status_line

# measured on 2 idle CPU cores (README, BENCHMARKS.md); other presets depend on the data size
CPU_TRAINING_TIME = {"minilm-bbc": "about 3 minutes on a CPU", "vit-mnist": "about 2 minutes on a CPU"}


def build(ctx) -> SimpleNamespace:
    gr.Markdown("## ① Model & data", elem_classes=["mape-section"])
    with gr.Row():
        with gr.Column(scale=2):
            preset = gr.Dropdown(preset_choices(ctx.names), value=ctx.default, label="Preset (model · dataset)",
                                 elem_id="preset")
            description = gr.Markdown(preset_description(ctx.default), elem_id="preset-description")
            scenario = gr.Dropdown(scenario_choices(ctx.default), value="", label="Training data (scenario)",
                                   allow_custom_value=True, elem_id="scenario",
                                   info="Clean, or with poisoned / mislabeled examples to remove; or type a spec: "
                                        "backdoor:WORD:CLASS:N, backdoor:patch:CLASS:N, mislabel:N.")
            scenario_note = gr.Markdown(offer.scenario_explanation(""), elem_id="scenario-description")
        with gr.Column(scale=3):
            status = gr.HTML(status_line("busy", "Checking the model…"), elem_id="model-status")
            prepare_btn = gr.Button("Prepare model", variant="secondary", elem_id="prepare-btn")
    return SimpleNamespace(preset=preset, description=description, scenario=scenario, scenario_note=scenario_note,
                           status=status, prepare_btn=prepare_btn)


def wire(page, demo) -> None:
    m = page.model
    demo.load(model_status, m.preset, m.status, api_visibility="private")
    # a new preset starts on clean data (its scenario list is its own); a scenario the visitor picks or types
    # (.input: not the reset above) is checked and described at once. Every section listens to the visitor's
    # switches (.input), not to .change: a lesson (ui.lessons) sets preset, scenario and forget set together
    # and must not have them reset behind it to the new preset's defaults
    m.preset.input(on_preset, m.preset, [m.description, m.status, m.scenario, m.scenario_note],
                   api_visibility="private", queue=False)
    m.scenario.input(on_scenario, [m.preset, m.scenario], [m.status, m.scenario_note], api_visibility="private",
                     queue=False)
    m.prepare_btn.click(on_prepare, [m.preset, m.scenario], m.status, api_visibility="private",
                        concurrency_id="prepare", concurrency_limit=2, show_progress_on=[m.status])


def device_badge() -> str:
    text = serving.device_label()
    colour = "#15803d" if serving.ON_GPU else "#475569"
    return (f'<div class="mape-badge" style="text-align:right;"><span style="display:inline-block;padding:4px 12px;'
            f'border-radius:999px;background:{colour};color:white;font-weight:600;font-size:0.9em;">'
            f'{html.escape(text)}</span></div>')


def on_preset(name: str):
    return (preset_description(name), model_status(name), gr.Dropdown(choices=scenario_choices(name), value=""),
            offer.scenario_explanation(""))


def on_scenario(preset_name: str, scenario: str):
    """The model status of the preset with this scenario, and what the scenario does (or why it is wrong)."""
    from mape.base.errors import MapeError

    try:
        note = offer.scenario_explanation((scenario or "").strip())
        serving.dataset(serving.served_name(preset_name, scenario))  # resolves it against the data: N, target
    except MapeError as exc:
        return status_line("error", "Scenario not usable", str(exc)), f"⚠️ {exc}"
    return model_status(serving.served_name(preset_name, scenario)), note


def scenario_choices(name: str) -> list[tuple[str, str]]:
    """(label, spec) of the training-data choices for a preset: clean first, then its ready-made scenarios
    (none for a Hub preset, whose published fine-tuned model cannot be retrained on altered data)."""
    p = preset_of(name)
    clean = [(offer.scenario_label(""), "")]
    if p.kind == "hub" or p.finetuned or not p.availability()[0]:
        return clean
    try:
        classes, modality = classes_of(name)
        n_train = len(serving.dataset(name).train)
    except Exception:  # noqa: BLE001 - the clean choice is always there
        return clean
    return clean + [(offer.scenario_label(s), s) for s in offer.scenario_specs(name, modality, classes, n_train)]


def preset_choices(names: list[str]) -> list[tuple[str, str]]:
    return [(PRESETS[n].title + ("" if PRESETS[n].availability()[0] else "  — unavailable"), n) for n in names]


def preset_description(name: str) -> str:
    p = PRESETS[name]
    ok, why = p.availability()
    limit = offer.train_limit_for(name, serving.ON_GPU)
    text = p.description
    if limit:
        text += f" The app trains it on a seeded subset of {limit:,} training examples."
    if not ok:
        text += f"\n\n**Unavailable here:** {why}."
    elif p.kind == "hub":
        text += "\n\nNeeds the Hugging Face Hub (downloads on first use)."
    return text


def model_status(name: str) -> str:
    """HTML line: is the preset's original model ready, cached on disk, being prepared or not trained?"""
    if serving.is_ready(name):
        i = serving.info(name)
        return status_line("ready",
                           "Original model ready" + (f" (trained on {i['scenario']})" if i["scenario"] else ""),
                           f"{i['n_train']:,} training / {i['n_test']:,} test examples, {i['params']:,} parameters, "
                           f"{i['layers']} layers × {i['heads']} heads × {i['filters']:,} filters.")
    state = serving.preparing(name)
    if state is not None:
        return status_line("busy", "Preparing",
                           f"{state[0]}, {100 * state[1]:.0f}% (already under way; Run waits for it).")
    ok, why = preset_of(name).availability()
    if not ok:
        return status_line("na", "Unavailable here", why + ".")
    try:
        cached = serving.cached_on_disk(name)
    except Exception:  # noqa: BLE001 - status only
        cached = None
    if cached:
        return status_line("cached", "Trained model found in the cache",
                           "it loads in a few seconds when you click Prepare model or Run.")
    if preset_of(name).finetuned:
        return status_line("hub", "Published fine-tuned model",
                           "downloaded from the Hugging Face Hub when you click Prepare model or Run.")
    eta = "a little while" if serving.ON_GPU else CPU_TRAINING_TIME.get(serving.split_name(name)[0], "a little while")
    scenario = serving.split_name(name)[1]
    return status_line("todo", "Not trained yet" + (f" on {scenario}" if scenario else ""),
                       f"the original model is trained once ({eta}) and cached. Click Prepare model now, or just "
                       f"Run (it prepares first).")


def preparing_status(stage: str, frac: float) -> str:
    return status_line("busy", "Preparing the original model", f"{stage}: {100 * frac:.0f}%")


def on_prepare(preset_name, scenario, progress=gr.Progress()):
    preset_name = serving.served_name(preset_name, scenario)
    if serving.is_ready(preset_name):
        yield model_status(preset_name)
        return
    yield preparing_status("starting", 0.0)
    q: queue.Queue = queue.Queue()
    box: dict = {}
    threading.Thread(target=_prepare_into, args=(preset_name, q, box), daemon=True, name="mape-prepare").start()
    last = 0.0
    for stage, frac in iter(q.get, None):
        progress(frac, desc=stage)
        if time.monotonic() - last > 0.5:
            last = time.monotonic()
            yield preparing_status(stage, frac)
    if "error" in box:
        gr.Warning(box["error"])
        yield status_line("error", "Could not prepare the model", box["error"])
    else:
        yield model_status(preset_name)


def _prepare_into(name: str, q: queue.Queue, box: dict) -> None:
    from mape.base.errors import MapeError

    try:
        serving.prepare_preset(name, lambda s, f: q.put((s, f)))
    except MapeError as exc:
        box["error"] = str(exc)
    except Exception as exc:  # noqa: BLE001
        serving.log.exception("prepare failed")
        box["error"] = f"Unexpected {type(exc).__name__}: {str(exc)[:300]}"
    finally:
        q.put(None)
