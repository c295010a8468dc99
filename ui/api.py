"""The API endpoints ``/unlearn`` and ``/compare`` (gradio_client), with the JSON of the CLI.

Their arguments keep this order; new arguments are only ever appended."""

from __future__ import annotations

import os

import gradio as gr

from mape.base.errors import MapeError
from mape.base.jsonsafe import json_safe
from mape.data.presets import DEFAULT_PRESET
from mape.serving import offer, owner as serving
from ui import compare as cmp, method
from ui.common import EXPLAIN, INTERACTIVE


def register(ctx) -> None:
    gr.api(make_api_unlearn(ctx.names), api_name="unlearn", concurrency_id="engine", concurrency_limit=ctx.engine_limit,
           api_description="Run MAPE unlearning and return the results JSON (the same schema as "
                           "`python -m mape unlearn`).")
    gr.api(make_api_compare(ctx.names), api_name="compare", concurrency_id="engine",
           concurrency_limit=ctx.engine_limit,
           api_description="Compare methods against retraining and return the comparison JSON (the same schema as "
                           "`python -m mape compare`).")
    # own input (text presets): not in the documented API, reachable by name for scripts and tests
    gr.api(make_api_predict(ctx.names), api_name="predict", api_visibility="undocumented", **INTERACTIVE)
    gr.api(make_api_explain(ctx.names), api_name="explain", api_visibility="undocumented", **EXPLAIN)


def _retain_sample() -> int | None:
    return int(os.environ.get("MAPE_APP_RETAIN_SAMPLE", "0") or 0) or None


def make_api_unlearn(allowed: list[str]):
    """The ``/unlearn`` endpoint for the presets this app offers."""

    def unlearn(preset: str = DEFAULT_PRESET, forget: str = "random:32", objective: str = "auto",
                sparsity: float = 0.9, update: str = "so", seed: int = 0, retrain: bool = False,
                scenario: str = "") -> dict:
        """Run MAPE unlearning on a preset and return the results JSON.

        Args:
            preset: preset name, e.g. minilm-bbc or vit-mnist.
            forget: forget spec: random:N, random:P%, class:LABEL, class:LABEL:N, match:REGEX, indices:i,j,k.
            objective: auto (mlr; contrast on a backdoor's poisoned examples) | mlr | mlf | norm | contrast | random.
            sparsity: fraction of units frozen, in (0, 1).
            update: so | ga | gd | rl | npo.
            seed: random seed.
            retrain: also retrain without the forget set (gold standard; slow on a CPU).
            scenario: training-data scenario ("" = clean): backdoor:WORD:CLASS:N, backdoor:patch:CLASS:N or
                mislabel:N; its original is trained on first use; forget "poisoned" removes the altered examples.
        """
        return api_unlearn(preset, forget, objective, sparsity, update, seed, retrain, allowed, scenario)

    return unlearn


def make_api_compare(allowed: list[str]):
    """The ``/compare`` endpoint for the presets this app offers."""

    def compare(preset: str = DEFAULT_PRESET, forget: str = "random:32", methods: str = ",".join(cmp.DEFAULT),
                seeds: str = "0", sparsity: float = 0.9, relearn_steps: int = 0, scenario: str = "") -> dict:
        """Compare unlearning methods against a retrained model and return the comparison JSON.

        Args:
            preset: preset name, e.g. minilm-bbc or vit-mnist.
            forget: forget spec, e.g. random:128 or class:sport.
            methods: comma-separated method names (mape, mape-norm, mape-random, salun, so, ft, ...).
            seeds: comma-separated seeds, e.g. 0,1,2.
            sparsity: fraction of units frozen by the MAPE variants, in (0, 1).
            relearn_steps: fine-tuning steps on the forget set for the relearn test (0: none).
            scenario: training-data scenario ("" = clean), as for /unlearn.
        """
        name = serving.served_name(preset, scenario)
        try:
            req = cmp.request(name, forget, methods, seeds, relearn_steps, sparsity, _retain_sample(), 0.02, allowed)
        except MapeError as exc:
            raise gr.Error(str(exc), print_exception=False) from None
        return outcome(serving.compare(name, forget, req), "comparison").to_json()

    return compare


def _own_text(preset: str, text: str, allowed: list[str]) -> str:
    from mape.data.presets import PRESETS

    if preset not in allowed:
        raise gr.Error(f"Unknown preset '{preset}'; choose one of: {', '.join(allowed)}.", print_exception=False)
    if PRESETS[preset].modality != "text":
        raise gr.Error("Own-input predictions through the API take text; use a text preset.", print_exception=False)
    if not isinstance(text, str) or not text.strip() or len(text) > 5000:
        raise gr.Error("Send some text (at most 5,000 characters).", print_exception=False)
    return text.strip()


def make_api_predict(allowed: list[str]):
    def predict(preset: str = DEFAULT_PRESET, text: str = "") -> dict:
        """Class probabilities of the original model for a text: {"classes": [...], "original": [...]}."""
        x = _own_text(preset, text, allowed)
        try:
            out = serving.predict(preset, None, x)
        except MapeError as exc:
            raise gr.Error(str(exc), print_exception=False) from None
        return {"classes": list(serving.dataset(preset).classes), "original": out["original"].tolist()}

    return predict


def make_api_explain(allowed: list[str]):
    def explain(preset: str = DEFAULT_PRESET, text: str = "") -> dict:
        """Integrated-gradient token attributions of the original model for its prediction on a text."""
        x = _own_text(preset, text, allowed)
        try:
            out = serving.explain(preset, None, x, None)["original"]
        except MapeError as exc:
            raise gr.Error(str(exc), print_exception=False) from None
        return json_safe({"tokens": list(out["tokens"]), "scores": out["scores"], "target": out["target"],
                              "prob": out["prob"]})

    return explain


def api_unlearn(preset: str, forget: str, objective: str = "auto", sparsity: float = 0.9, update: str = "so",
                seed: int = 0, retrain: bool = False, allowed: list[str] | None = None, scenario: str = "") -> dict:
    """One unlearning request without the UI: validate (gr.Error with a clear message), run, return the
    results JSON (``RunResult.to_json()``, strict JSON; full test split and 1,000 retain examples).
    ``scenario``: the training-data scenario ("" = clean data)."""
    allowed = allowed or offer.app_preset_names()
    name = serving.served_name(preset, scenario)
    try:
        cfg = method.config(objective, sparsity, update, "auto", seed, retrain, _retain_sample(), 1)
        method.validate_request(name, forget, cfg, allowed)
    except MapeError as exc:
        raise gr.Error(str(exc), print_exception=False) from None
    return outcome(serving.run(name, forget, cfg), "run")["result"]


def outcome(events, what: str):
    """The value of an engine event stream's ("done", value); its error as a gr.Error otherwise."""
    for event in events:
        if event[0] == "error":
            raise gr.Error(event[1], print_exception=False)
        if event[0] == "cancelled":
            raise gr.Error(f"The {what} was cancelled.", print_exception=False)
        if event[0] == "done":
            return event[1]
    raise gr.Error(f"The {what} ended without a result.", print_exception=False)
