"""④ Mask search (live): the run status, the head / filter heatmaps and the per-layer counts, which fill
in as the search proceeds (warm start, then each refined layer). It also holds the Run handler: it
streams the engine's events (:func:`mape.serving.owner.run`) and, when the run is done, lets every result
section show its part (results, predictions, attributions, downloads)."""

from __future__ import annotations

import time
from types import SimpleNamespace

import gradio as gr

from mape.base.errors import MapeError
from mape.serving import figures as FG, offer, owner as serving
from ui import attributions, downloads, method, predictions, results
from ui.common import default_kv, deferred_plot, fmt_status, title_of
from ui.model_data import model_status, preparing_status

BINS = 64
STAGES = {"measuring the original model": (0.0, 0.02), "forget gradients": (0.02, 0.08),
          "retain gradients": (0.10, 0.40), "warm start": (0.50, 0.02), "greedy refinement": (0.52, 0.10),
          "step size": (0.62, 0.20), "measuring": (0.82, 0.08), "retraining without the forget set": (0.82, 0.12),
          "predictions before/after": (0.95, 0.05)}


def build(ctx) -> SimpleNamespace:
    gr.Markdown("## ④ Mask search (live)", elem_classes=["mape-section"])
    status = gr.HTML(fmt_status("idle", "Not started."), elem_id="run-status")
    with gr.Row():
        heads = deferred_plot(label="Attention heads (layers × heads)", elem_id="heads-plot", scale=2)
        counts = deferred_plot(label="Selected units per layer", elem_id="counts-plot", scale=3)
    filters = deferred_plot(label="FFN filters (layers × filters, binned; hover for exact counts)",
                            elem_id="filters-plot")
    return SimpleNamespace(status=status, heads=heads, counts=counts, filters=filters,
                           state=gr.State(None, time_to_live=6 * 3600),  # the session's last run
                           flags=gr.State({"stop": False}),  # the Stop button sets "stop"
                           run_id=gr.State(0))  # changes when a run completes: starts the default attribution


def run_outputs(page) -> list:
    """Everything a run updates (the live view, the model status and every result section)."""
    L = page.live
    return ([L.status, L.heads, L.filters, L.counts, L.state, L.run_id, page.model.status]
            + results.outputs(page) + predictions.run_outputs(page) + downloads.outputs(page)
            + attributions.run_outputs(page))


def wire(page) -> None:
    L, f = page.live, page.forget
    outputs = run_outputs(page)

    def on_run(preset_name, scenario, kind_v, value_v, owner, objective, sparsity, update, step, seed, retrain,
               retain, passes, joint, tolerance, flags, progress=gr.Progress()):
        values = (objective, sparsity, update, step, seed, retrain, retain, passes, joint, tolerance)
        name = serving.served_name(preset_name, scenario)
        yield from run(page, name, offer.compose_spec(kind_v, value_v), owner, values, flags, progress)

    page.method.run_btn.click(on_run, [page.model.preset, page.model.scenario, f.kind, f.value, f.owner]
                              + method.settings(page) + [L.flags],
                              outputs, api_visibility="private", concurrency_id="engine",
                              concurrency_limit=page.ctx.engine_limit, show_progress_on=[L.status])
    page.method.stop_btn.click(_on_stop, L.flags, None, api_visibility="private", queue=False)
    page.model.preset.input(lambda name: reset(page, name), page.model.preset, outputs, api_visibility="private",
                             queue=False)
    page.model.scenario.input(lambda name, sc: reset(page, serving.served_name(name, sc)),
                              [page.model.preset, page.model.scenario], outputs, api_visibility="private", queue=False)


def _on_stop(flags):
    # seen by this session's running handler; not gradio's `cancels`, which left the Run button
    # unresponsive after cancelling a generator event (Gradio 6.31)
    flags["stop"] = True


def forget_spec_of(preset_name: str, spec: str, owner) -> str:
    """The forget spec a run uses: the selector's, when it belongs to the preset (and scenario: a served
    name) on screen; right after a switch whose new selector has not reached the browser yet, the new
    preset's own default (what the selector is about to show)."""
    return spec if owner == preset_name else offer.compose_spec(*default_kv(preset_name))


def run(page, preset_name, spec, owner, values, flags, progress, base: dict | None = None):
    """The Run handler's work (also a lesson's, ui.lessons, and "Forget more from this model", ui.chain):
    page updates from the checks of the request to every section's view of the finished run (the last
    update holds ``page.live.state``). ``values``: the method settings in :func:`ui.method.config`'s order.
    ``base``: the chain to continue (:func:`mape.serving.chain.base_of`; None: start from the original)."""
    L = page.live
    flags["stop"] = False
    spec = forget_spec_of(preset_name, spec, owner)
    try:
        cfg = method.config(*values)
        method.validate_request(preset_name, spec, cfg)
    except MapeError as exc:
        gr.Warning(str(exc))
        yield {L.status: fmt_status("error", str(exc))}
        return
    t0 = time.perf_counter()
    progress(0.0, desc="starting")
    start = f" (request {len(base['steps']) + 1}, from the model after the earlier ones)" if base else ""
    yield {L.status: fmt_status("busy", f"Starting: forgetting {spec} on {title_of(preset_name)}{start}…"),
           **results.hide_reading(page)}  # a lesson's reading belongs to the lesson's run
    view = _LiveView(page, preset_name, progress)
    events = serving.run(preset_name, spec, cfg, live=True, base=base)
    for event in events:
        if flags.get("stop"):
            events.close()  # the engine stops at its next progress report (a preparation goes on)
            yield {L.status: fmt_status("stopped", "Stopped."), page.model.status: model_status(preset_name)}
            return
        if event[0] == "done":
            yield show_run(page, event[1], time.perf_counter() - t0)
            return
        update = view.render(event)
        if update:
            yield update
        if event[0] in ("error", "cancelled"):
            return


class _LiveView:
    """Turns engine events into page updates, at most about two a second (heatmaps: every new stage)."""

    def __init__(self, page, preset_name: str, progress):
        self.page, self.preset, self.progress = page, preset_name, progress
        self.last_yield = self.last_draw = 0.0
        self.pending, self.shown_stage = None, None

    def render(self, event) -> dict | None:
        L, kind, now = self.page.live, event[0], time.monotonic()
        if kind == "prep":
            _, stage, frac = event
            self.progress(frac, desc=f"{stage} (first use only; cached afterwards)")
            if now - self.last_yield > 0.5:
                self.last_yield = now
                return {L.status: fmt_status("busy", f"Preparing the original model: {stage}", f"{100 * frac:.0f}%"),
                        self.page.model.status: preparing_status(stage, frac)}
        elif kind == "ready":
            return {self.page.model.status: model_status(self.preset)}
        elif kind in ("progress", "selection"):
            return self._progress(event, now)
        elif kind == "error":
            gr.Warning(event[1])
            return {L.status: fmt_status("error", event[1]), self.page.model.status: model_status(self.preset)}
        elif kind == "cancelled":
            return {L.status: fmt_status("stopped", "Stopped.")}
        return None

    def _progress(self, event, now: float) -> dict | None:
        L, stage, frac = self.page.live, event[1], event[2]
        start, width = stage_weight(stage)
        self.progress(min(0.999, start + width * frac), desc=stage)
        if event[0] == "selection":
            self.pending = event
        new_stage, self.shown_stage = stage != self.shown_stage, stage
        if self.pending is not None and (self.pending[1] == "warm start" or new_stage or now - self.last_draw > 0.6):
            # redraw the heatmaps from the latest selection (warm start, then refined layers)
            _, sel_stage, _, heads, filters, hs, label, swaps = self.pending
            self.pending, self.last_draw, self.last_yield = None, now, now
            hf, ff, cf = heat_figures(heads, filters, hs, label)
            text = (fmt_status("search", label, f"{swaps} swap(s) so far") if sel_stage == stage
                    else fmt_status("busy", stage, f"{100 * frac:.0f}%"))
            return {L.status: text, L.heads: hf, L.filters: ff, L.counts: cf}
        if new_stage or now - self.last_yield > 0.5:
            self.last_yield = now
            return {L.status: fmt_status("busy", stage, f"{100 * frac:.0f}%")}
        return None


def show_run(page, run: dict, wall_s: float) -> dict:
    """Every section's view of a finished run, and the session state that keeps it."""
    L, result = page.live, run["result"]
    timing = result["timing"]
    request = f"request {len(run['chain'])}: " if len(run.get("chain") or ()) > 1 else ""
    done = (f"Done in {wall_s:.1f} s: {request}forgot {result['forget']['spec']} ({result['forget']['size']} "
            f"examples) on {title_of(run['preset'])} (search {timing['search_s']:.1f} s, "
            f"update {timing['update_s']:.1f} s"
            + (f", retrain {timing['retrain_s']:.1f} s" if "retrain_s" in timing else "") + ").")
    hf, ff, cf = heat_figures(run["heads"], run["filters"], run["head_scores"], "final")
    state = {k: run[k] for k in ("preset", "result", "delta", "run_key", "heads", "filters", "samples",
                                 "forget_indices", "has_retrain", "head_scores", "filter_scores")}
    state["chain"] = run.get("chain") or []  # successive requests (ui.chain, mape.serving.chain)
    state["model_meta"] = {"preset": result["preset"], "scenario": serving.split_name(run["preset"])[1],
                           "forget": " then ".join(s["spec"] for s in state["chain"]) or result["forget"]["spec"],
                           "objective": (result.get("selection") or {}).get("objective", result["config"]["objective"]),
                           "sparsity": result["config"]["sparsity"]}
    out = {L.status: fmt_status("done", done), L.heads: hf, L.filters: ff, L.counts: cf,
           page.model.status: model_status(run["preset"]), L.run_id: time.time_ns()}
    out.update(results.show(page, result))
    out.update(predictions.show(page, run))
    out.update(downloads.show(page, run, state["model_meta"]))
    choices = attributions.choices(run)
    state["default_choice"] = choices[0][1]
    out.update(attributions.show(page, choices))
    out[L.state] = state
    return out


def reset(page, preset_name: str) -> dict:
    """A new preset: clear the previous run (its results belong to the other model)."""
    L = page.live
    h, f, c = placeholder_figures()
    out = {L.status: fmt_status("idle", "Not started."), L.heads: h, L.filters: f, L.counts: c, L.state: None}
    for section in (results, predictions, downloads, attributions):
        out.update(section.reset(page, preset_name))
    return out


def stage_weight(stage: str) -> tuple[float, float]:
    """(start, width) of a stage on the overall progress bar."""
    for key, v in STAGES.items():
        if stage.startswith(key):
            return v
    return (0.62, 0.20) if stage.endswith(" steps") else (0.0, 0.02)  # ga/gd/rl/npo steps


def placeholder_figures():
    return (FG.empty_figure("Attention heads: fills in as the search runs", 260),
            FG.empty_figure("FFN filters: fills in as the search runs", 260),
            FG.empty_figure("Selected units per layer", 320))


def heat_figures(heads, filters, head_scores, label: str):
    n_filters = filters.shape[1]
    ff = FG.filter_heatmap(filters, bins=n_filters if n_filters <= 128 else BINS,
                           title=f"FFN filters selected · {label}")
    return (FG.head_heatmap(heads, head_scores, title=f"Attention heads selected · {label}"), ff,
            FG.layer_counts_figure(heads, filters))
