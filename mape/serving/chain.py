"""Successive requests in the app (issue 28, DESIGN.md §11): a visitor's *chain* of unlearning requests, each
starting from the model the previous one left, as ``python -m mape unlearn --forget A --forget B`` does
(:func:`mape.run.unlearn.unlearn_successively`). No gradio, no torch: plain data a session keeps.

A chain is a list of *steps*, one per request (:func:`new_step`): its forget spec and indices, the units its
mask search selected, its metrics, time and results JSON. The model after the last step is the original plus
the session's accumulated delta (:func:`mape.serving.deltas.extract_delta` of the chained model against the
original), which :mod:`mape.serving.owner` rebuilds on a private copy; the next request's
``already_forgotten`` is the union of the steps' forget indices (:func:`forgotten`).
"""

from __future__ import annotations

import html

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from mape.serving import figures as FG, wording

#: the timeline's metrics (those of the model after each request, on that request's forget set)
METRICS = ("forget_acc", "retain_acc", "test_acc", "mia")
#: overlap codes of a unit: not selected, selected by earlier requests only, by this request only, by both
NONE, EARLIER, THIS, BOTH = 0, 1, 2, 3
CATEGORIES = {NONE: "not selected", EARLIER: "earlier requests only", THIS: "this request only",
              BOTH: "earlier requests and this one"}
COLOURS = {NONE: FG.FROZEN_COLOUR, EARLIER: "#4c78a8", THIS: FG.SELECTED_COLOUR, BOTH: "#7b3294"}


def new_step(result: dict, heads, filters, forget_indices) -> dict:
    """One request of a chain, from its results JSON, its selection masks and its forget set's indices."""
    m = result["metrics"]["unlearned"]
    return {"spec": result["forget"]["spec"], "size": int(result["forget"]["size"]),
            "forget_indices": np.asarray(forget_indices, dtype=np.int64),
            "heads": np.asarray(heads, dtype=bool), "filters": np.asarray(filters, dtype=bool),
            "metrics": {k: m.get(k) for k in METRICS}, "time_s": float(result["timing"]["total_s"]),
            "result": result}


def forgotten(steps: list[dict]) -> np.ndarray:
    """The training indices forgotten by all the chain's requests (sorted, unique)."""
    if not steps:
        return np.zeros(0, dtype=np.int64)
    return np.unique(np.concatenate([s["forget_indices"] for s in steps])).astype(np.int64)


def base_of(state: dict | None) -> dict | None:
    """What the next request of a session starts from, given its last run's state (``page.live.state``):
    {"delta": the original→chained model delta, "forgotten": indices, "steps": the chain so far}, or None
    (no run: the next request starts from the original)."""
    if not state or not state.get("chain"):
        return None
    steps = list(state["chain"])
    return {"delta": state["delta"], "forgotten": forgotten(steps), "steps": steps}


def add_step(payload: dict, forget_indices, base: dict | None) -> dict:
    """A finished run's payload (:func:`mape.serving.payload.run_payload`) with its chain: the earlier requests
    (``base["steps"]``; None: a new chain) and this one; its results JSON says which request it was."""
    steps = list(base["steps"]) if base else []
    steps.append(new_step(payload["result"], payload["heads"], payload["filters"], forget_indices))
    place = about(steps, len(payload["forget_indices"]))
    if place:
        payload["result"]["chain"] = place
    payload["chain"] = steps
    return payload


def about(steps: list[dict], forgotten_total: int) -> dict | None:
    """What a request's results JSON says of its place in the chain (None for a first request)."""
    if len(steps) < 2:
        return None
    return {"request": len(steps), "earlier": [s["spec"] for s in steps[:-1]],
            "forgotten_total": int(forgotten_total)}


def results_json(state: dict) -> dict:
    """The results JSON a session downloads: the last request's, plus (after two or more requests)
    ``history`` as the CLI's successive requests write it and ``requests``, every request's own results."""
    steps = state.get("chain") or []
    result = state["result"]
    if len(steps) < 2:
        return result
    history = [{"request": i + 1, "spec": s["spec"], "size": s["size"], "metrics": s["result"]["metrics"]["unlearned"]}
               for i, s in enumerate(steps)]
    return {**result, "history": history, "requests": [s["result"] for s in steps]}


# --------------------------------------------------------------------------- the timeline


def units_cell(step: dict) -> str:
    """'3/8 heads · 20/48 filters' of a request's selection."""
    h, f = step["heads"], step["filters"]
    return f"{int(h.sum())}/{h.size} heads · {int(f.sum()):,}/{f.size:,} filters"


def timeline_rows(steps: list[dict]) -> list[list[str]]:
    """One row per request: number, forget set, examples, units selected, FA, RA, TA, MIA, time (the
    metrics' text is :func:`mape.serving.wording.pct`'s, as in the metrics table)."""
    return [[str(i + 1), s["spec"], f"{s['size']:,}", units_cell(s)] + [wording.pct(s["metrics"][k]) for k in METRICS]
            + [f"{s['time_s']:.1f} s"] for i, s in enumerate(steps)]


TIMELINE_HEAD = ("#", "Forget set", "Examples", "Units selected", "Forget acc.", "Retain acc.", "Test acc.", "MIA",
                 "Time")


def timeline_html(steps: list[dict]) -> str:
    if not steps:
        return ('<div class="mape-empty" style="color:#6b7280;padding:8px 0;">No request yet: run unlearning, then '
                '"Forget more from this model".</div>')
    head = "".join(f"<th>{html.escape(h)}</th>" for h in TIMELINE_HEAD)
    body = "".join(f'<tr class="mape-chain-row">{"".join(f"<td>{html.escape(c)}</td>" for c in row)}</tr>'
                   for row in timeline_rows(steps))
    return (f'<table class="mape-metrics mape-chain"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'
            '<div style="color:#6b7280;font-size:0.88em;">Each row: the model after that request, measured on that '
            "request's forget set (MIA: membership-inference efficacy); time: mask search + update.</div>")


# --------------------------------------------------------------------------- units selected, earlier vs now


def overlap(steps: list[dict]) -> dict:
    """Which units the last request selected against the earlier ones: per kind ("heads", "filters") the
    (layers × units) codes (:data:`NONE`, :data:`EARLIER`, :data:`THIS`, :data:`BOTH`) and the counts of
    each selected category, overall and per layer."""
    out = {}
    for kind in ("heads", "filters"):
        this = steps[-1][kind].astype(bool)
        earlier = np.zeros_like(this)
        for s in steps[:-1]:
            earlier |= s[kind].astype(bool)
        codes = (earlier.astype(np.int8) * EARLIER + this.astype(np.int8) * THIS).astype(np.int8)  # 1 + 2 = BOTH
        per_layer = {name: (codes == code).sum(axis=1).astype(int) for code, name in
                     ((EARLIER, "earlier"), (THIS, "this"), (BOTH, "both"))}
        out[kind] = {"codes": codes, "per_layer": per_layer,
                     "counts": {k: int(v.sum()) for k, v in per_layer.items()}}
    return out


def overlap_text(steps: list[dict]) -> str:
    """'this request: 3 heads, 20 filters; 1 head and 5 filters of them earlier requests had selected too'."""
    ov = overlap(steps)
    h, f = ov["heads"]["counts"], ov["filters"]["counts"]
    mine = f"{h['this'] + h['both']} heads and {f['this'] + f['both']:,} filters"
    if len(steps) < 2:
        return f"Request 1 selected {mine}."
    return (f"Request {len(steps)} selected {mine}; {h['both']} of those heads and {f['both']:,} of those filters "
            f"earlier requests had selected too; {h['earlier']} heads and {f['earlier']:,} filters only earlier "
            "requests selected.")


def overlap_figure(steps: list[dict]) -> go.Figure:
    """Heads (top) and FFN filters (bottom), layers × units (every filter, not binned), coloured by which
    requests selected them: earlier ones only, the last one only, or both."""
    ov = overlap(steps)
    heads, filters = ov["heads"]["codes"], ov["filters"]["codes"]
    n_layers = heads.shape[0]
    fig = make_subplots(rows=2, cols=1, vertical_spacing=0.2,
                        subplot_titles=("Attention heads", f"FFN filters ({filters.shape[1]:,} per layer)"))
    scale = []
    for code in (NONE, EARLIER, THIS, BOTH):
        scale += [[code / 4, COLOURS[code]], [(code + 1) / 4, COLOURS[code]]]
    names = np.array([CATEGORIES[c] for c in (NONE, EARLIER, THIS, BOTH)])
    for row, (codes, unit) in enumerate(((heads, "head"), (filters, "filter")), start=1):
        fig.add_trace(go.Heatmap(z=codes, x=list(range(codes.shape[1])), y=[f"layer {i}" for i in range(n_layers)],
                                 customdata=names[codes], zmin=-0.5, zmax=3.5, colorscale=scale, showscale=False,
                                 xgap=1 if unit == "head" else 0, ygap=1,
                                 hovertemplate=f"%{{y}} · {unit} %{{x}}: %{{customdata}}<extra></extra>"),
                      row=row, col=1)
    for code in (EARLIER, THIS, BOTH):  # the legend: one square marker per category
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=CATEGORIES[code],
                                 marker=dict(symbol="square", size=12, color=COLOURS[code])))
    h, f = ov["heads"]["counts"], ov["filters"]["counts"]
    title = (f"Units selected · request {len(steps)}: this only {h['this'] + f['this']:,}, "
             f"both {h['both'] + f['both']:,}, earlier only {h['earlier'] + f['earlier']:,}")
    fig.update_layout(title=dict(text=title, font=dict(size=14)), height=max(360, 150 + 44 * n_layers),
                      margin=dict(l=70, r=20, t=70, b=60), plot_bgcolor="white",
                      legend=dict(orientation="h", y=-0.12, x=0.5, xanchor="center"))
    fig.update_xaxes(row=1, col=1, dtick=1 if heads.shape[1] <= 32 else None)  # layer 0 at the bottom, as in ④
    return fig
