"""Plotly charts of results for the app: the metrics of a run, a comparison's gap and time, relearning curves, the
loss distributions and the audit's epsilons."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go

from mape.serving.figures import METHOD_COLOURS, METRIC_LABELS, RETRAIN_COLOUR, empty_figure, title_style


def metrics_figure(
    rows: Mapping[str, Mapping[str, float]],
    metrics: Sequence[str] = ("forget_acc", "retain_acc", "test_acc", "mia"),
) -> go.Figure:
    """Grouped bars: one group per metric, one bar (colour) per method, values in percent.

    The ``retrain`` row (the gold standard) is drawn last, grey with a hatch and a black outline.
    Missing or non-finite values are left out of the bar (hover says "n/a").
    """
    labels = [METRIC_LABELS.get(m, m) for m in metrics]
    names = [n for n in rows if n != "retrain"] + (["retrain"] if "retrain" in rows else [])
    fig = go.Figure()
    for i, name in enumerate(names):
        vals = []
        for m in metrics:
            v = rows[name].get(m)
            vals.append(100.0 * float(v) if v is not None and np.isfinite(float(v)) else None)
        hover = [f"{name}<br>{lab}: " + (f"{v:.1f}%" if v is not None else "n/a") for lab, v in zip(labels, vals)]
        is_ref = name == "retrain"
        fig.add_trace(
            go.Bar(
                x=labels, y=vals, name=name + (" (reference)" if is_ref else ""),
                marker=dict(
                    color=RETRAIN_COLOUR if is_ref else METHOD_COLOURS[i % len(METHOD_COLOURS)],
                    line=dict(color="black", width=2 if is_ref else 0),
                    pattern=dict(shape="/" if is_ref else "", fgcolor="black", solidity=0.2),
                ),
                text=hover, textposition="none", hovertemplate="%{text}<extra></extra>",
            )
        )
    fig.update_layout(
        title=title_style("Metrics by method (retrain = gold standard)"),
        barmode="group",
        height=380,
        yaxis=dict(title="%", range=[0, 100], ticksuffix="%"),
        legend=dict(orientation="h", y=-0.18),
        margin=dict(l=60, r=20, t=50, b=90),
        plot_bgcolor="white",
    )
    fig.update_yaxes(gridcolor="#eeeeee")
    return fig


def _mean(entry: Mapping, key: str) -> tuple[float | None, float]:
    v = entry.get(key) or {}
    m = v.get("mean") if isinstance(v, Mapping) else v
    sd = v.get("std") if isinstance(v, Mapping) else 0.0
    ok = m is not None and np.isfinite(float(m))
    return (float(m) if ok else None), (float(sd) if ok and sd is not None and np.isfinite(float(sd)) else 0.0)


def gap_time_figure(results: Mapping[str, Mapping], methods: Sequence[str], best: str | None = None) -> go.Figure:
    """Gap to retrain (points, ± std over seeds) against time (s, log axis), one marker per method.

    ``results`` is :attr:`mape.evaluation.compare.CompareResult.results` ({name: {metric: {mean, std}}}); the
    retrain row is drawn as a vertical line at its time (gap 0 by definition). Lower-left is better.
    """
    fig = go.Figure()
    for i, name in enumerate(methods):
        e = results.get(name) or {}
        gap, gap_sd = _mean(e, "gap_to_retrain")
        t, t_sd = _mean(e, "time_s")
        if gap is None or t is None:
            continue
        colour = METHOD_COLOURS[i % len(METHOD_COLOURS)]
        fig.add_trace(go.Scatter(
            x=[max(t, 1e-3)], y=[100 * gap], mode="markers+text", name=name, text=[name],
            textposition="top center", error_y=dict(type="data", array=[100 * gap_sd], visible=gap_sd > 0),
            marker=dict(size=15 if name == best else 11, color=colour,
                        line=dict(color="black", width=2 if name == best else 0)),
            hovertemplate=f"{name}<br>gap to retrain: %{{y:.2f}} pts<br>time: %{{x:.2f}} s<extra></extra>"))
    ref_t, _ = _mean(results.get("retrain") or {}, "time_s")
    if ref_t is not None and ref_t > 0:
        fig.add_vline(x=ref_t, line=dict(color="#6b7280", dash="dash"),
                      annotation_text=f"retrain {ref_t:.1f} s", annotation_position="top left")
    fig.update_layout(
        title=title_style("Gap to retrain vs. time (lower left is better)"),
        height=380, showlegend=False, plot_bgcolor="white",
        xaxis=dict(title="time (s, log scale)", type="log", gridcolor="#eeeeee"),
        yaxis=dict(title="average gap to retrain (points)", rangemode="tozero", gridcolor="#eeeeee"),
        margin=dict(l=70, r=20, t=50, b=50),
    )
    return fig


def relearn_figure(results: Mapping[str, Mapping], names: Sequence[str]) -> go.Figure:
    """Forget accuracy (%) after k fine-tuning steps on the forget set, one line per model (± std).

    Lower and flatter = more robust forgetting; ``retrain`` is the dashed grey reference.
    """
    fig = go.Figure()
    steps = 0
    for i, name in enumerate(names):
        curve = (results.get(name) or {}).get("relearn")
        if not curve:
            continue
        mean = 100 * np.asarray(curve["mean"], dtype=float)
        std = 100 * np.asarray(curve.get("std") or np.zeros_like(mean), dtype=float)
        steps = max(steps, len(mean) - 1)
        is_ref = name == "retrain"
        fig.add_trace(go.Scatter(
            x=list(range(len(mean))), y=mean, mode="lines+markers", name=name + (" (reference)" if is_ref else ""),
            error_y=dict(type="data", array=std, visible=bool(np.any(std > 0))),
            line=dict(color=RETRAIN_COLOUR if is_ref else "#111827" if name == "original"
                      else METHOD_COLOURS[i % len(METHOD_COLOURS)], dash="dash" if is_ref else "dot"
                      if name == "original" else "solid", width=3 if is_ref else 2),
            hovertemplate=f"{name}<br>k=%{{x}}: %{{y:.1f}}%<extra></extra>"))
    fig.update_layout(
        title=title_style("Relearn test: forget accuracy after k fine-tuning steps on the forget set"),
        height=360, plot_bgcolor="white",
        xaxis=dict(title="fine-tuning steps on D_f", dtick=1, range=[-0.2, max(steps, 1) + 0.2]),
        yaxis=dict(title="forget accuracy (%)", range=[0, 101], ticksuffix="%", gridcolor="#eeeeee"),
        legend=dict(orientation="h", y=-0.2), margin=dict(l=70, r=20, t=50, b=80),
    )
    return fig


LOSS_CURVES = (  # name, label, colour, dash
    ("unseen", "unseen examples (what a retrained model shows)", "#9ca3af", None),
    ("original", "forget set · original", "#4c78a8", None),
    ("unlearned", "forget set · unlearned", "#e4572e", None),
    ("retrain", "forget set · retrained", "#111827", "dash"),
)


def loss_distribution_figure(hist: Mapping) -> go.Figure:
    """The forget examples' per-example loss distribution under the original, the unlearned and (when
    there is one) the retrained model, over the distribution on unseen examples (shaded): a forget set
    that now "looks unseen" lies on the grey area. ``hist`` is :func:`mape.run.unlearn.loss_histograms`'s
    output (shares per log10-loss bin)."""
    edges = np.asarray(hist.get("log10_edges") or [], dtype=float)
    if len(edges) < 2 or not any(name in hist for name, *_ in LOSS_CURVES):
        return empty_figure("No loss distribution yet: run unlearning first.")
    centres = (edges[:-1] + edges[1:]) / 2
    ticks = [e for e in range(int(np.ceil(edges[0])), int(np.floor(edges[-1])) + 1)]
    medians = hist.get("median") or {}
    fig = go.Figure()
    for name, label, colour, dash in LOSS_CURVES:
        if name not in hist:
            continue
        share = 100.0 * np.asarray(hist[name], dtype=float)
        med = medians.get(name)
        full = label + (f" (median loss {med:.2g})" if med is not None else "")
        fig.add_trace(go.Scatter(
            x=centres, y=share, name=full, mode="lines", line=dict(color=colour, width=3 if name == "unlearned" else 2,
                                                                    dash=dash, shape="spline"),
            fill="tozeroy" if name == "unseen" else None,
            fillcolor="rgba(156,163,175,0.35)" if name == "unseen" else None,
            hovertemplate=f"{label}<br>loss ≈ 10^%{{x:.2f}}: %{{y:.1f}}% of examples<extra></extra>"))
    fig.update_layout(
        title=title_style("Per-example loss on the forget set: does it look unseen now?"),
        height=360, plot_bgcolor="white", legend=dict(orientation="h", y=-0.25),
        margin=dict(l=60, r=20, t=50, b=100),
        xaxis=dict(title="loss (log scale; left = confident, as on training data)", tickvals=ticks,
                   ticktext=[f"1e{t}" for t in ticks]),
        yaxis=dict(title="% of examples", rangemode="tozero"))
    fig.update_yaxes(gridcolor="#eeeeee")
    return fig


def audit_epsilon_figure(res: Mapping) -> go.Figure:
    """Per-example ε of every row of an audit (:mod:`mape.evaluation.audit`'s JSON): the share of forget examples per
    bucket of 0.5 (the challenge's buckets, the last one holding every ε from the score's ceiling up to the
    cap). Left (small ε) = the example's outputs cannot be told from a retrained model's."""
    rows = res.get("rows") or {}
    if not rows:
        return empty_figure("No audit yet: open a saved audit JSON (python -m mape audit --out FILE.json).")
    top = float(np.ceil(np.log(max(int(res.get("models", 3)), 3) - 1)))
    edges = np.arange(0.0, top + 0.5 + 1e-9, 0.5)
    labels = [f"{a:g}–{b:g}" for a, b in zip(edges[:-1], edges[1:])] + [f"≥ {top:g}"]
    fig = go.Figure()
    for name, row in rows.items():
        eps = np.asarray(row.get("epsilons") or [], dtype=float)
        if not len(eps):
            continue
        idx = np.minimum(np.searchsorted(edges, eps, side="right") - 1, len(labels) - 1)
        share = 100.0 * np.bincount(idx, minlength=len(labels)) / len(eps)
        dash = "dot" if name.startswith("original") or name.startswith("retrain") else None
        fig.add_trace(go.Bar(x=labels, y=share, name=f"{name} (F {row.get('forget_score', float('nan')):.3f})",
                             marker_pattern_shape="/" if dash else None,
                             hovertemplate=f"{name}<br>ε %{{x}}: %{{y:.1f}}% of forget examples<extra></extra>"))
    fig.update_layout(
        title=title_style(f"Per-example ε (N = {res.get('models')} models per population): lower = looks retrained"),
        barmode="group", height=380, plot_bgcolor="white", legend=dict(orientation="h", y=-0.25),
        margin=dict(l=60, r=20, t=50, b=100), xaxis=dict(title="ε of the best threshold attack"),
        yaxis=dict(title="% of forget examples", rangemode="tozero"))
    fig.update_yaxes(gridcolor="#eeeeee")
    return fig
