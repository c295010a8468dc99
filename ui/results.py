"""⑤ Results: the run summary (it echoes the forget spec that ran), the metrics table and chart, and the
forget set's loss distribution under each model over that of unseen examples (does it look unseen now?)."""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr

from mape.serving import charts, figures as FG, wording
from ui import render
from ui.common import EMPTY_RESULTS, deferred_plot


def build(ctx) -> SimpleNamespace:
    gr.Markdown("## ⑤ Results", elem_classes=["mape-section"])
    # a lesson's reading of its run (ui.lessons, mape.serving.lessons): shown after a lesson's run only
    reading = gr.Markdown("", visible=False, elem_id="lesson-reading", elem_classes=["mape-reading"])
    summary = gr.Markdown("", elem_id="run-summary")
    with gr.Row():
        with gr.Column(scale=3):
            table = gr.HTML(EMPTY_RESULTS, elem_id="metrics-table")
        with gr.Column(scale=2):
            chart = deferred_plot(label="Metrics", elem_id="metrics-plot")
    losses = deferred_plot(label="Loss distribution", elem_id="loss-plot")
    return SimpleNamespace(reading=reading, summary=summary, table=table, chart=chart, losses=losses)


LOSS_EMPTY = "Loss distribution of the forget set: after a run"


def outputs(page) -> list:
    r = page.results
    return [r.reading, r.summary, r.table, r.chart, r.losses]


def show(page, result: dict) -> dict:
    """A finished run's results (without a lesson's reading: a lesson adds it, :func:`show_reading`)."""
    r, metrics = page.results, result["metrics"]
    table = render.metrics_table_html(metrics, result.get("gap_to_retrain"))
    return {r.summary: summary_markdown(result), r.table: table,
            r.chart: metrics_chart(metrics), **hide_reading(page),
            r.losses: charts.loss_distribution_figure(result.get("loss_distribution") or {})}


def show_reading(page, text: str) -> dict:
    return {page.results.reading: gr.Markdown(text, visible=True)}


def hide_reading(page) -> dict:
    return {page.results.reading: gr.Markdown("", visible=False)}


def reset(page, preset_name: str) -> dict:
    r = page.results
    return {r.summary: "", r.table: EMPTY_RESULTS, r.chart: FG.empty_figure("Metrics chart: after a run", 380),
            r.losses: FG.empty_figure(LOSS_EMPTY, 300), **hide_reading(page)}


def summary_markdown(result: dict) -> str:
    """The engine's summary, plus which examples the live run's metrics were measured on."""
    text = wording.summary_markdown(result)
    sc = result.get("scenario")
    if sc:
        what = (f"trigger '{sc['trigger']}' → {sc['target']}" if sc.get("trigger") not in (None, "patch")
                else f"corner patch → {sc['target']}" if sc.get("trigger") == "patch" else "wrong labels")
        text += (f"\n\n**Training data:** scenario `{sc['spec']}` ({sc['size']} altered examples, {what}); the "
                 "original was trained on it, a retrained reference without the forget set.")
    ch = result.get("chain")
    if ch:  # successive requests (ui.chain)
        retrain = (f" *Retrain* a model retrained without all {ch['forgotten_total']:,} examples the "
                   f"{ch['request']} requests forgot;" if "retrain" in result["metrics"] else "")
        earlier = ", then ".join(f"`{s}`" for s in ch["earlier"])
        text += (f"\n\n**Request {ch['request']} of a chain:** it started from the model after {earlier}, not from "
                 "the original. In the table, *Original (before)* is the original model, before every request; "
                 f"*MAPE (unlearned)* the model after all {ch['request']} requests;{retrain} all measured on this "
                 "request's forget set.")
    ev = result.get("evaluation")
    if ev:
        text += (f"\n\n**Measured on:** the forget set, {ev['retain_examples']:,} retain and {ev['test_examples']:,} "
                 "test examples (fixed seeded samples, so a run answers quickly; `python -m mape unlearn`, the "
                 "`/unlearn` API and *Compare methods* measure the full test split and 1,000 retain examples).")
    return text


# the scenarios' metrics (issue 15), drawn when the run has them
SCENARIO_METRICS = ("asr", "forget_acc_true")
SHORT_LABELS = {"forget_acc": "Forget acc. (FA)", "retain_acc": "Retain acc. (RA)", "test_acc": "Test acc. (TA)",
                "mia": "MIA efficacy", "asr": "Attack success (ASR)", "forget_acc_true": "FA, true labels"}


def metrics_chart(metrics: dict):
    rows = {("MAPE (unlearned)" if k == "unlearned" else k): v for k, v in metrics.items()}
    shown = ("forget_acc", "retain_acc", "test_acc", "mia") + tuple(
        m for m in SCENARIO_METRICS if any(m in v for v in metrics.values()))
    fig = charts.metrics_figure(rows, shown)
    fig.update_xaxes(tickangle=0, tickfont=dict(size=11), tickmode="array",
                     tickvals=[FG.METRIC_LABELS[m] for m in shown], ticktext=[SHORT_LABELS[m] for m in shown])
    fig.update_layout(legend=dict(orientation="h", y=-0.14, x=0.5, xanchor="center"), margin=dict(b=70))
    return fig
