"""⑤ (continued) Successive requests: "Forget more from this model" runs the forget set and method settings on
screen starting from the session's unlearned model (as ``python -m mape unlearn`` with a repeated ``--forget``),
a timeline of the session's requests and a heatmap of the units earlier requests, this one or both selected;
"Back to the original" starts over. The chain is the session's own: it lives in ``page.live.state`` (the
last run, with the accumulated delta and every request, :mod:`mape.serving.chain`); the shared original
never changes (:mod:`mape.serving.owner` starts each request from a private copy)."""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr

from mape.base.errors import MapeError
from mape.serving import chain as CH, figures as FG, offer, owner as serving
from ui import live_search, method
from ui.common import deferred_plot, fmt_status, title_of

NOTE = ("**Run unlearning** always starts from the original model. **Forget more from this model** runs the forget "
        "set and method settings above on the model the last run left: the earlier forget sets stay forgotten (they "
        "are left out of the retain examples and of the retrained reference), and predictions, attributions and "
        "downloads then use the model after every request. **Back to the original** starts over.")
EMPTY_STATUS = "No chain yet: run unlearning first."
OVERLAP_EMPTY = "Units selected by earlier requests, this one, or both: after a run"


def build(ctx) -> SimpleNamespace:
    gr.Markdown("### Successive requests: forget more from this model", elem_classes=["mape-sub"])
    gr.Markdown(NOTE)
    status = gr.HTML(fmt_status("idle", EMPTY_STATUS), elem_id="chain-status")
    with gr.Row():
        more_btn = gr.Button("Forget more from this model", variant="primary", interactive=False,
                             elem_id="chain-more-btn")
        reset_btn = gr.Button("Back to the original", variant="secondary", interactive=False,
                              elem_id="chain-reset-btn")
    timeline = gr.HTML(CH.timeline_html([]), elem_id="chain-timeline")
    overlap = deferred_plot(label="Units selected, earlier vs this request", elem_id="chain-overlap")
    return SimpleNamespace(status=status, more_btn=more_btn, reset_btn=reset_btn, timeline=timeline, overlap=overlap)


def outputs(page) -> list:
    C = page.chain
    return [C.status, C.more_btn, C.reset_btn, C.timeline, C.overlap]


def wire(page) -> None:
    C, L, f = page.chain, page.live, page.forget
    # every finished run (Run, a lesson, Forget more) changes run_id: show the chain its state holds
    L.run_id.change(lambda state: show(page, state), L.state, outputs(page), api_visibility="private", queue=False)

    def on_more(preset_name, scenario, kind_v, value_v, owner, objective, sparsity, update, step, seed, retrain,
                retain, passes, joint, tolerance, flags, state, progress=gr.Progress()):
        values = (objective, sparsity, update, step, seed, retrain, retain, passes, joint, tolerance)
        name = serving.served_name(preset_name, scenario)
        try:
            base = base_for(state, name)
        except MapeError as exc:
            gr.Warning(str(exc))
            yield {L.status: fmt_status("error", str(exc))}
            return
        yield from live_search.run(page, name, offer.compose_spec(kind_v, value_v), owner, values, flags, progress,
                                   base=base)

    C.more_btn.click(on_more, [page.model.preset, page.model.scenario, f.kind, f.value, f.owner]
                     + method.settings(page) + [L.flags, L.state],
                     live_search.run_outputs(page), api_visibility="private", concurrency_id="engine",
                     concurrency_limit=page.ctx.engine_limit, show_progress_on=[L.status])

    def on_reset(preset_name, scenario):
        name = serving.served_name(preset_name, scenario)
        out = live_search.reset(page, name)
        out.update(show(page, None))
        out[C.status] = fmt_status("idle", f"Back to the original model of {title_of(name)}: the next run starts "
                                           "from it.")
        return out

    C.reset_btn.click(on_reset, [page.model.preset, page.model.scenario],
                      live_search.run_outputs(page) + outputs(page), api_visibility="private", queue=False)
    # a new preset or scenario clears the run (ui.live_search.reset) and so the chain
    page.model.preset.input(lambda: show(page, None), None, outputs(page), api_visibility="private", queue=False)
    page.model.scenario.input(lambda: show(page, None), None, outputs(page), api_visibility="private", queue=False)


def base_for(state, name: str) -> dict:
    """The chain to continue on ``name`` (MapeError with a clear message when there is none)."""
    base = CH.base_of(state)
    if base is None:
        raise MapeError("Run unlearning first: “Forget more from this model” continues from the last run's model.")
    if state.get("preset") != name:
        raise MapeError(f"The last run was on {title_of(state['preset'])}, not on {title_of(name)}: run unlearning "
                        "on this model first.")
    return base


def show(page, state) -> dict:
    """The chain of the session's last run (``state``: ``page.live.state``; None: no chain)."""
    C = page.chain
    steps = (state or {}).get("chain") or []
    if not steps:
        return {C.status: fmt_status("idle", EMPTY_STATUS), C.more_btn: gr.Button(interactive=False),
                C.reset_btn: gr.Button(interactive=False), C.timeline: CH.timeline_html([]),
                C.overlap: FG.empty_figure(OVERLAP_EMPTY, 300)}
    n, total = len(steps), len(CH.forgotten(steps))
    text = (f"The model after {n} request{'s' if n > 1 else ''} ({' → '.join(s['spec'] for s in steps)}): "
            f"{total:,} training examples forgotten. {CH.overlap_text(steps)}")
    return {C.status: fmt_status("done", text), C.more_btn: gr.Button(interactive=True),
            C.reset_btn: gr.Button(interactive=True), C.timeline: CH.timeline_html(steps),
            C.overlap: CH.overlap_figure(steps)}
