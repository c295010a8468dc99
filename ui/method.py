"""③ Method: objective, sparsity, update rule, step, retrain reference, advanced settings, the Run and
Stop buttons, and the checks of a request before any heavy work."""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr

from mape.base.errors import MapeError
from mape.data.forget import select_forget
from mape.data.presets import PRESETS
from mape.run.config import MAX_GREEDY_PASSES
from mape.serving import owner as serving

OBJECTIVES = [("auto — mlr; contrast on a backdoor's poisoned examples (default)", "auto"),
              ("mlr — minimise retain loss", "mlr"), ("mlf — maximise forget loss", "mlf"),
              ("norm — gradient norm", "norm"),
              ("contrast — units that respond to the forget set unlike retained examples", "contrast"),
              ("random units (control)", "random")]
UPDATES = [("so — one Fisher-preconditioned second-order step (default)", "so"),
           ("ga — gradient ascent on the forget set", "ga"),
           ("gd — ascent on forget + descent on retain (NegGrad+)", "gd"),
           ("rl — random labels on forget + retain", "rl"), ("npo — negative preference optimisation", "npo")]

#: the advanced settings' defaults (greedy passes, joint budget, retain-accuracy tolerance of the auto step)
PASSES, JOINT, TOLERANCE = 1, False, 0.02


def build(ctx) -> SimpleNamespace:
    gr.Markdown("## ③ Method", elem_classes=["mape-section"])
    with gr.Row():
        objective = gr.Radio(OBJECTIVES, value="auto", label="Objective (how units are scored)", scale=3,
                             elem_id="objective")
        sparsity = gr.Slider(0.5, 0.99, value=0.9, step=0.01, label="Sparsity S (fraction of units frozen)",
                             info="0.9: 10% of heads and 10% of filters are updated.", scale=2, elem_id="sparsity")
    with gr.Row():
        update = gr.Dropdown(UPDATES, value="so", label="Update rule (only selected units change)", scale=3,
                             elem_id="update")
        step = gr.Textbox("auto", label="Step size", scale=1, elem_id="step",
                          info="auto (chosen by forward passes), η for so, or a number of steps.")
        retrain = gr.Checkbox(False, label="Retrain reference (gold standard)", scale=2, elem_id="retrain",
                              info="Also train a model from scratch without the forget set, to compare with. "
                                   "Takes minutes on a CPU (cached per forget set).")
    with gr.Accordion("Advanced settings", open=False):
        with gr.Row():
            retain_sample = gr.Number(ctx.retain_default, label="Retain sample for the scores", precision=0,
                                      minimum=1, elem_id="retain-sample",
                                      info="Retain examples behind the unit scores (more: steadier scores, slower "
                                           "search; the CLI uses 512 on a CPU).")
            passes = gr.Number(PASSES, label="Greedy passes", precision=0, minimum=0, maximum=MAX_GREEDY_PASSES,
                               elem_id="passes")
            joint = gr.Checkbox(JOINT, label="One joint budget counted in parameters", elem_id="joint")
            tolerance = gr.Number(TOLERANCE, label="Retain-accuracy tolerance (auto step)", minimum=0, maximum=1,
                                  elem_id="tolerance")
    with gr.Row():
        run_btn = gr.Button("▶  Run unlearning", variant="primary", size="lg", scale=4, elem_id="run-btn")
        stop_btn = gr.Button("Stop", variant="stop", size="lg", scale=1, elem_id="stop-btn")
    return SimpleNamespace(objective=objective, sparsity=sparsity, update=update, step=step, retrain=retrain,
                           retain_sample=retain_sample, passes=passes, joint=joint, tolerance=tolerance,
                           run_btn=run_btn, stop_btn=stop_btn)


def settings(page) -> list:
    """The components whose values make a run's settings, in :func:`config`'s order."""
    m = page.method
    return [m.objective, m.sparsity, m.update, m.step, page.forget.seed, m.retrain, m.retain_sample, m.passes,
            m.joint, m.tolerance]


def default_values(ctx, objective="auto", sparsity=0.9, update="so", step="auto", seed=0, retrain=False,
                   retain_sample=None) -> tuple:
    """Settings in :func:`settings`' order with the page's defaults for the advanced ones (a lesson's run; its
    retain sample is at least the page's default)."""
    retain = max(retain_sample or 0, ctx.retain_default)
    return (objective, sparsity, update, step, seed, retrain, retain, PASSES, JOINT, TOLERANCE)


def show_values(page, values: tuple) -> dict:
    """Put settings (in :func:`settings`' order) on the page's controls."""
    return dict(zip(settings(page), values))


def config(objective, sparsity, update, step, seed, retrain, retain_sample, passes, joint=False,
           tolerance=0.02) -> dict:
    """UnlearnConfig keyword arguments from the page's values; MapeError with one clear message."""
    try:
        seed = int(seed or 0)
        retain_sample = int(retain_sample) if retain_sample not in (None, "") else None
        passes = int(passes if passes not in (None, "") else 1)
        sparsity = float(sparsity)
        tolerance = float(tolerance if tolerance not in (None, "") else 0.02)
    except (TypeError, ValueError):
        raise MapeError("Seed, retain sample and greedy passes must be whole numbers; sparsity and tolerance "
                        "numbers.") from None
    if seed < 0:
        raise MapeError("The seed must be a non-negative whole number.")
    # ranges (passes, tolerance, ...) are checked by UnlearnConfig.validate in validate_request
    step = str(step).strip() if step not in (None, "") else "auto"
    return dict(objective=str(objective), sparsity=sparsity, update=str(update), step=step, seed=seed,
                retrain=bool(retrain), retain_sample=retain_sample, greedy_passes=passes, joint_budget=bool(joint),
                tolerance=tolerance)


def validate_request(preset_name: str, spec: str, cfg: dict, allowed: list[str] | None = None) -> None:
    """Fast checks before any heavy work: preset, method settings, forget spec (on the dataset)."""
    from mape.run.config import UnlearnConfig

    base, scenario = serving.split_name(preset_name)
    if base not in (allowed or PRESETS):
        raise MapeError(f"Unknown preset '{base}'; choose one of: {', '.join(allowed or PRESETS)}.")
    ok, why = PRESETS[base].availability()
    if not ok:
        raise MapeError(f"Preset '{base}' cannot run here: {why}.")
    UnlearnConfig(**cfg).validate()
    from mape.data.scenarios import check_forget_specs

    if scenario is not None and PRESETS[base].finetuned:
        raise MapeError(f"Preset '{base}' uses a published fine-tuned model, which cannot be trained on altered "
                        f"data; choose clean training data.")
    check_forget_specs([spec], scenario)
    if PRESETS[base].kind != "hub" or serving.is_ready(preset_name):
        select_forget(spec, serving.dataset(preset_name), cfg["seed"])
