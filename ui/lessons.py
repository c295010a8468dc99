"""⓪ Start here: the page's header and the lessons — one-click experiments (mape.serving.lessons) for a first visit.

A lesson fills in the controls below it (preset, training data, forget set, method, with the retrained
model on), so the visitor sees which settings it used and can change them for an experiment of their own,
then runs through the Run handler (:func:`ui.live_search.run`). The lesson's values go straight into the
run, not through the controls, so what runs is the lesson even before the browser has the new controls;
the page's sections react to the visitor's preset switches (``.input``), not to the lesson's (see
ui.model_data.wire). After the run, the top of ⑤ Results shows the lesson's reading of its own numbers
(:func:`mape.serving.lessons.reading`); a run the visitor starts hides it (ui.results.hide_reading).
"""

from __future__ import annotations

import html
from types import SimpleNamespace

import gradio as gr

from mape.data.presets import PRESETS
from mape.serving import lessons as LS, offer, owner as serving
from ui import compare, forget_set, live_search, method, model_data, predictions, results
from ui.common import classes_of, fmt_status, title_of

INTRO = ("# MAPE-Unlearn Studio\n"
         "Make a trained Transformer **forget** part of its training data by updating only a few attention heads "
         "and feed-forward filters — *module-aware, parameter-efficient unlearning* (Bao et al., 2025). New here? "
         "**Start with a lesson**: one click sets up an experiment, runs it and says what to look at. Or pick a "
         "model, choose what to forget and press **Run**. Everything runs here, offline-capable; the method is "
         "explained at the bottom of the page.")
CSS = """
.mape-lesson {border: 1px solid #fed7aa; border-radius: 10px; padding: 8px 10px !important; background: #fffaf5;}
.mape-lesson-text, .mape-lesson-text p {font-size: 0.88em !important; line-height: 1.35 !important;}
.mape-reading {border-left: 4px solid #f97316; padding: 4px 12px !important; background: #fff7ed;}
"""


def build(ctx) -> SimpleNamespace:
    with gr.Row(equal_height=True):
        with gr.Column(scale=5):
            gr.Markdown(INTRO, elem_id="mape-intro")
        with gr.Column(scale=1, min_width=180):
            gr.HTML(model_data.device_badge(), elem_id="device-badge")
    shown = LS.lessons_for(ctx.names)
    buttons = []
    note = None
    if shown:
        gr.Markdown("## Start here: lessons", elem_classes=["mape-section"])
        gr.Markdown("Each lesson sets the controls below (model, training data, forget set, method, retrained model "
                    "on) and runs; the reading of its results appears at the top of ⑤ Results. With its models cached "
                    "a lesson takes from half a minute to a few minutes on a CPU. Change any control afterwards to "
                    "build your own experiment.", elem_classes=["mape-sub"])
        with gr.Row(equal_height=False):
            for lesson in shown:
                with gr.Column(min_width=230, elem_classes=["mape-lesson"], elem_id=f"lesson-{lesson.key}"):
                    buttons.append(gr.Button(f"▶ {lesson.title}", variant="primary", size="sm",
                                             elem_id=f"lesson-btn-{lesson.key}"))
                    gr.Markdown(f"*{html.escape(setting_line(lesson))}*\n\n{lesson.text}",
                                elem_classes=["mape-lesson-text"])
        note = gr.HTML("", elem_id="lesson-status")
    return SimpleNamespace(shown=shown, buttons=buttons, note=note)


def setting_line(lesson: LS.Lesson) -> str:
    """'MiniLM · BBC News … · clean data · forget class:sport'."""
    base = PRESETS[lesson.preset].title
    data = offer.scenario_label(lesson.scenario) if lesson.scenario else "clean data"
    return f"{base} · {data} · forget {lesson.forget}"


def wire(page) -> None:
    lp = page.lessons
    if not lp.shown:
        return
    fill_out = fill_outputs(page)
    run_out = live_search.run_outputs(page) + [lp.note]
    for lesson, btn in zip(lp.shown, lp.buttons):
        btn.click(_filler(page, lesson), None, fill_out, api_visibility="private", queue=False, show_progress="hidden"
                  ).success(_runner(page, lesson), page.live.flags, run_out, api_visibility="private",
                            concurrency_id="engine", concurrency_limit=page.ctx.engine_limit,
                            show_progress_on=[page.live.status])


def fill_outputs(page) -> list:
    m, f, P = page.model, page.forget, page.predictions
    return list(dict.fromkeys(  # without repeats (the run's outputs hold the model status too)
        [m.preset, m.description, m.scenario, m.scenario_note, m.status, f.kind, f.value, f.owner, f.counts, f.table,
         f.gallery, page.method.run_btn, P.trigger_box, P.trigger_out, page.lessons.note]
        + method.settings(page) + live_search.run_outputs(page) + compare.views(page)))


def _filler(page, lesson: LS.Lesson):
    def on_click():
        return fill(page, lesson)

    return on_click


def _runner(page, lesson: LS.Lesson):
    def run(flags, progress=gr.Progress()):
        yield from run_lesson(page, lesson, flags, progress)

    return run


def fill(page, lesson: LS.Lesson) -> dict:
    """The page as if the visitor had chosen the lesson's preset, training data, forget set and method: every
    control shows the lesson's settings, and the previous run's results are cleared (they belong to another
    model)."""
    m, f, P = page.model, page.forget, page.predictions
    name = serving.served_name(lesson.preset, lesson.scenario)
    classes, modality = classes_of(name)
    kind, _, value = lesson.forget.partition(":")
    value = value or ("all" if kind == "poisoned" else value)
    counts, table, gallery = forget_set.preview_named(name, kind, value, lesson.seed)
    out = {m.preset: gr.Dropdown(value=lesson.preset), m.description: model_data.preset_description(lesson.preset),
           m.scenario: gr.Dropdown(choices=model_data.scenario_choices(lesson.preset), value=lesson.scenario),
           m.scenario_note: offer.scenario_explanation(lesson.scenario), m.status: model_data.model_status(name),
           f.kind: gr.Dropdown(choices=forget_set.kinds_for(modality, name), value=kind),
           f.value: gr.Textbox(value=value, info=forget_set.kind_info(kind, classes)), f.owner: name,
           f.counts: counts, f.table: table, f.gallery: gallery, page.method.run_btn: gr.Button(interactive=True),
           P.trigger_box: gr.Column(visible=predictions.has_trigger(lesson.preset, lesson.scenario)), P.trigger_out: "",
           page.lessons.note: fmt_status("busy", f"Lesson “{lesson.title}”: {setting_line(lesson)}, retrained model "
                                                 "on.")}
    out.update(method.show_values(page, values_of(page, lesson)))
    out.update(live_search.reset(page, name))
    out.update(compare.reset(page))
    return out


def values_of(page, lesson: LS.Lesson) -> tuple:
    """The lesson's method settings in ui.method.settings' order (advanced ones at the page's defaults)."""
    return method.default_values(page.ctx, **lesson.config())


def run_lesson(page, lesson: LS.Lesson, flags, progress):
    """The lesson's run through the Run handler, with the lesson's own values (not the controls', which the
    browser may not have yet); when it is done, the reading of its results."""
    name = serving.served_name(lesson.preset, lesson.scenario)
    note, done = page.lessons.note, False
    for update in live_search.run(page, name, lesson.forget, name, values_of(page, lesson), flags, progress):
        state = update.get(page.live.state)
        if state:
            done = True
            update.update(results.show_reading(page, LS.reading(lesson, state["result"])))
            update[note] = fmt_status("done", f"Lesson “{lesson.title}” done on {title_of(name)}: its reading is at "
                                              "the top of ⑤ Results.")
        yield update
    if not done:  # stopped, or an error (the run status says which)
        yield {note: fmt_status("stopped", f"Lesson “{lesson.title}” did not finish; see the run status under ④.")}
