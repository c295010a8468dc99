"""Plotly figures of "Inside a selected unit" (DESIGN.md §11): a head's attention before / after
unlearning (token × token, or the ViT [CLS] row over the patch grid) and an FFN filter's activations on
forget vs retain examples. Like :mod:`mape.figures`: plain NumPy in, an explicit height and a title."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go

ATTENTION_SCALE = "Blues"
MODEL_COLOURS = {"original": "#4c78a8", "unlearned": "#e4572e"}
MODEL_LABELS = {"original": "before (original)", "unlearned": "after (MAPE)"}
MAX_TICKS = 40


def _title(text: str) -> dict:
    return dict(text=text, x=0.5, xanchor="center")


def _tick_axis(labels: Sequence[str], title: str) -> dict:
    """A numeric axis labelled with tokens (repeated tokens stay apart), at most :data:`MAX_TICKS` ticks."""
    step = max(1, math.ceil(len(labels) / MAX_TICKS))
    vals = list(range(0, len(labels), step))
    return dict(title=title, tickmode="array", tickvals=vals, ticktext=[labels[i] for i in vals],
                tickfont=dict(size=10), range=[-0.5, len(labels) - 0.5])


def attention_heatmap(attention: np.ndarray, tokens: Sequence[str] | None = None, title: str = "Attention",
                      zmax: float | None = None, height: int = 480) -> go.Figure:
    """Token × token heatmap of one head's attention: row = the token that looks (query), column = the
    token looked at (key); white = 0, dark blue = ``zmax`` (pass the same to a before / after pair)."""
    att = np.asarray(attention, dtype=float)
    if att.ndim != 2 or att.shape[0] != att.shape[1]:
        raise ValueError(f"attention must be a square (T, T) array, got shape {att.shape}.")
    n = att.shape[0]
    labels = [str(t) for t in tokens] if tokens is not None else [str(i) for i in range(n)]
    if len(labels) != n:
        raise ValueError(f"{len(labels)} tokens for an attention matrix over {n}.")
    hover = [[f"{i}:{labels[i]} → {j}:{labels[j]}" for j in range(n)] for i in range(n)]
    fig = go.Figure(go.Heatmap(z=att, x=list(range(n)), y=list(range(n)), text=hover, zmin=0,
                               zmax=zmax if zmax is not None else float(att.max(initial=0.0)) or 1.0,
                               colorscale=ATTENTION_SCALE, colorbar=dict(title="attention", thickness=12),
                               hovertemplate="%{text}<br>attention %{z:.3f}<extra></extra>"))
    y = _tick_axis(labels, "query (looks)")
    y["range"] = [n - 0.5, -0.5]  # first token at the top
    fig.update_layout(title=_title(title), height=height, margin=dict(l=90, r=20, t=50, b=90),
                      xaxis=dict(**_tick_axis(labels, "key (looked at)"), tickangle=-60), yaxis=y,
                      plot_bgcolor="white")
    return fig


def patch_heatmap(grid: np.ndarray, title: str = "[CLS] attention over patches", zmax: float | None = None,
                  height: int = 380) -> go.Figure:
    """A ViT head's [CLS] attention over the image's patches, drawn as the patch grid (top row first)."""
    g = np.asarray(grid, dtype=float)
    if g.ndim != 2:
        raise ValueError(f"grid must be (rows, columns), got shape {g.shape}.")
    fig = go.Figure(go.Heatmap(z=g, zmin=0, zmax=zmax if zmax is not None else float(g.max(initial=0.0)) or 1.0,
                               colorscale=ATTENTION_SCALE, colorbar=dict(title="attention", thickness=12),
                               hovertemplate="patch row %{y}, column %{x}<br>attention %{z:.4f}<extra></extra>"))
    fig.update_yaxes(autorange="reversed", scaleanchor="x", title="patch row")
    fig.update_xaxes(constrain="domain", title="patch column")
    fig.update_layout(title=_title(title), height=height, margin=dict(l=60, r=20, t=50, b=50), plot_bgcolor="white")
    return fig


def filter_activation_figure(values: Mapping[str, Mapping[str, np.ndarray]], title: str = "Filter activation",
                             height: int = 360) -> go.Figure:
    """Grouped box plot: per group of examples (forget, retain) one box per model (before / after) of the
    per-example mean activation; the box's dashed line is the mean. ``values``: {model: {group: (N,)}}."""
    fig = go.Figure()
    for model, groups in values.items():
        xs, ys = [], []
        for group, v in groups.items():
            v = np.asarray(v, dtype=float)
            xs += [f"{group} ({len(v)})"] * len(v)
            ys += v.tolist()
        fig.add_trace(go.Box(x=xs, y=ys, name=MODEL_LABELS.get(model, model), boxmean=True, boxpoints="outliers",
                             marker_color=MODEL_COLOURS.get(model), offsetgroup=model))
    fig.update_layout(title=_title(title), height=height, boxmode="group", plot_bgcolor="white",
                      margin=dict(l=60, r=20, t=50, b=50), yaxis=dict(title="mean activation per example",
                                                                       zeroline=True, gridcolor="#eeeeee"),
                      legend=dict(orientation="h", y=-0.15, x=0.5, xanchor="center"))
    return fig
