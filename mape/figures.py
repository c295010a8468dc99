"""Plotly figures and small HTML views for the app (DESIGN.md §11, items 4, 5 and 7).

Every figure sets an explicit ``height`` and a title, so it renders the same in Gradio, in a
notebook and in exported HTML. Functions take plain NumPy arrays / dicts and never touch torch.

Colour conventions used throughout:

* selected units (updated by unlearning) are orange-red, frozen units light grey;
* attributions are diverging: red = evidence *for* the target class, blue = *against* it,
  white = 0, with a scale symmetric around 0.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

SELECTED_COLOUR = "#e4572e"
FROZEN_COLOUR = "#e5e7eb"
POSITIVE_RGB = (214, 39, 40)  # red
NEGATIVE_RGB = (31, 119, 180)  # blue
# Plotly's "RdBu" runs red -> blue; reversed, negative is blue and positive is red.
DIVERGING_SCALE = "RdBu_r"
METHOD_COLOURS = (
    "#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2",
    "#b279a2", "#ff9da6", "#9d755d", "#eeca3b", "#bab0ac",
)
RETRAIN_COLOUR = "#bdbdbd"
METRIC_LABELS = {
    "forget_acc": "Forget accuracy (FA)",
    "retain_acc": "Retain accuracy (RA)",
    "test_acc": "Test accuracy (TA)",
    "mia": "MIA efficacy",
    "loss_distance": "Loss distance to retrain (KS)",
    "asr": "Attack success rate (ASR)",
    "forget_acc_true": "Forget accuracy, true labels",
}
_PAD_TOKENS = frozenset({"[PAD]", "<pad>", "<PAD>"})
_MAX_LISTED = 12


# --------------------------------------------------------------------------- helpers


def _as_2d(a: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(a)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (layers x units), got shape {arr.shape}.")
    return arr


def _grid_height(n_layers: int) -> int:
    return max(260, 60 + 28 * int(n_layers))


def _layer_axis(n_layers: int) -> dict:
    """Y axis with layer 0 at the bottom (the input side), labelled "layer i"."""
    return dict(
        title="layer",
        tickmode="array",
        tickvals=list(range(n_layers)),
        ticktext=[f"layer {i}" for i in range(n_layers)],
        range=[-0.5, n_layers - 0.5],
    )


def _title(text: str) -> dict:
    return dict(text=text, x=0.5, xanchor="center")


# --------------------------------------------------------------------------- unit heatmaps


_BINARY_SCALE = [[0.0, FROZEN_COLOUR], [0.5, FROZEN_COLOUR], [0.5, SELECTED_COLOUR], [1.0, SELECTED_COLOUR]]
_BINARY_COLOURBAR = dict(title=dict(text="unit", side="top"), tickvals=[0.25, 0.75], ticktext=["frozen", "selected"],
                         len=1.0, thickness=14)


def _unit_hover(sel: np.ndarray, unit: str, scores: np.ndarray | None = None) -> list[list[str]]:
    """Hover text per cell of a layers x units 0/1 grid: "layer l, <unit> j", selected, score."""
    return [
        [
            f"layer {l}, {unit} {j}<br>selected: {'yes' if sel[l, j] else 'no'}"
            + (f"<br>score: {scores[l, j]:.4g}" if scores is not None else "")
            for j in range(sel.shape[1])
        ]
        for l in range(sel.shape[0])
    ]


def _unit_grid(sel: np.ndarray, z, x, hover, zmax: int, scale, colorbar: dict, xgap: float, title: str,
               height: int, xaxis: dict, margin_b: int = 50) -> go.Figure:
    """A layers x units heatmap (layer 0 at the bottom) titled with "(selected of total)"."""
    fig = go.Figure(go.Heatmap(z=z, x=x, y=list(range(sel.shape[0])), text=hover,
                               hovertemplate="%{text}<extra></extra>", zmin=0, zmax=zmax, colorscale=scale,
                               colorbar=colorbar, xgap=xgap, ygap=1))
    fig.update_layout(title=_title(f"{title} ({int(sel.sum())} of {sel.size})"), height=height,
                      margin=dict(l=70, r=20, t=50, b=margin_b), xaxis=xaxis, yaxis=_layer_axis(sel.shape[0]),
                      plot_bgcolor="white")
    return fig


def head_heatmap(
    selected: np.ndarray,
    scores: np.ndarray | None = None,
    title: str = "Attention heads selected for update",
) -> go.Figure:
    """Layers x heads grid: orange = head selected for update, grey = frozen.

    ``selected`` is an (L, H) 0/1 array; ``scores`` (same shape, optional) is shown on hover.
    """
    sel = _as_2d(selected, "selected").astype(bool)
    n_layers, n_heads = sel.shape
    sc = None
    if scores is not None:
        sc = _as_2d(scores, "scores").astype(float)
        if sc.shape != sel.shape:
            raise ValueError(f"scores shape {sc.shape} does not match selected shape {sel.shape}.")
    xaxis = dict(title="head", tickmode="linear", dtick=1 if n_heads <= 32 else None, range=[-0.5, n_heads - 0.5])
    return _unit_grid(sel, sel.astype(int), list(range(n_heads)), _unit_hover(sel, "head", sc), 1, _BINARY_SCALE,
                      _BINARY_COLOURBAR, 1, title, _grid_height(n_layers), xaxis, margin_b=45)


def _bin_edges(n_filters: int, bins: int) -> np.ndarray:
    """Contiguous, nearly equal bins: edges[b] <= j < edges[b+1]."""
    return np.linspace(0, n_filters, bins + 1).round().astype(int)


def _indices_text(idx: np.ndarray) -> str:
    shown = ", ".join(str(int(i)) for i in idx[:_MAX_LISTED])
    return shown + (", …" if idx.size > _MAX_LISTED else "") if idx.size else "none"


def bin_filters(selected: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Counts of selected filters per contiguous bin: returns (counts (L, bins), edges (bins+1,))."""
    sel = _as_2d(selected, "selected").astype(bool)
    edges = _bin_edges(sel.shape[1], bins)
    counts = np.add.reduceat(sel.astype(int), edges[:-1], axis=1)
    return counts, edges


def filter_heatmap(
    selected: np.ndarray,
    bins: int = 64,
    title: str = "FFN filters selected for update",
) -> go.Figure:
    """Layers x filters grid; wide layers (F > ``bins``) are binned into contiguous groups.

    A binned cell's colour is the number of selected filters in the bin; hover gives the exact
    "k of n", the filter index range and the selected indices (first 12).
    """
    sel = _as_2d(selected, "selected").astype(bool)
    if bins < 1:
        raise ValueError("bins must be at least 1.")
    n_layers, n_filters = sel.shape
    if n_filters > bins:
        z, edges = bin_filters(sel, bins)
        sizes = np.diff(edges)
        hover = []
        for l in range(n_layers):
            row = []
            for b in range(bins):
                lo, hi = int(edges[b]), int(edges[b + 1])
                idx = lo + np.flatnonzero(sel[l, lo:hi])
                row.append(
                    f"layer {l}, filters {lo}–{hi - 1}<br>selected: {int(z[l, b])} of {hi - lo}"
                    f"<br>indices: {_indices_text(idx)}"
                )
            hover.append(row)
        x = [int(e) for e in edges[:-1]]
        zmax = max(1, int(sizes.max()))
        scale = [[0.0, FROZEN_COLOUR], [0.0001, "#fde0c5"], [1.0, "#b3200e"]]
        colorbar = dict(title=dict(text="selected<br>per bin", side="top"), len=1.0, thickness=14)
        x_title = f"filter (first index of each bin; {bins} bins of ~{n_filters / bins:.0f})"
        # at most ~16 horizontal labels: 64 rotated labels crowd a short plot
        xaxis = dict(title=x_title, type="category", dtick=max(1, bins // 16), tickangle=0)
    else:  # not binned: a cell is one filter, selected or not (the same two colours as the heads)
        z, hover, x, zmax = sel.astype(int), _unit_hover(sel, "filter"), list(range(n_filters)), 1
        scale, colorbar = _BINARY_SCALE, _BINARY_COLOURBAR
        xaxis = dict(title="filter", type="linear", dtick=max(1, n_filters // 16), tickangle=0)
    return _unit_grid(sel, z, x, hover, zmax, scale, colorbar, 0.5, title, max(300, 70 + 34 * n_layers), xaxis)


def layer_counts_figure(heads: np.ndarray, filters: np.ndarray) -> go.Figure:
    """Per-layer number of selected heads (left) and filters (right), with share on hover."""
    h = _as_2d(heads, "heads").astype(bool)
    f = _as_2d(filters, "filters").astype(bool)
    if h.shape[0] != f.shape[0]:
        raise ValueError(f"heads has {h.shape[0]} layers but filters has {f.shape[0]}.")
    layers = [f"layer {i}" for i in range(h.shape[0])]
    fig = make_subplots(rows=1, cols=2, subplot_titles=("attention heads", "FFN filters"), horizontal_spacing=0.12)
    for col, (arr, name, colour) in enumerate(((h, "heads", "#4c78a8"), (f, "filters", SELECTED_COLOUR)), start=1):
        counts = arr.sum(axis=1)
        total = arr.shape[1]
        hover = [f"{lay}: {int(c)} of {total} {name} ({100 * c / max(total, 1):.1f}%)"
                 for lay, c in zip(layers, counts)]
        fig.add_trace(
            go.Bar(
                x=layers, y=counts.astype(int), name=f"selected {name}", marker_color=colour,
                text=hover, textposition="none", hovertemplate="%{text}<extra></extra>",
            ),
            row=1, col=col,
        )
        fig.update_yaxes(title_text=f"selected {name}", rangemode="tozero", row=1, col=col)
    fig.update_layout(
        title=_title("Selected units per layer"),
        height=320,
        showlegend=False,
        margin=dict(l=60, r=20, t=70, b=50),
        bargap=0.25,
    )
    return fig


# --------------------------------------------------------------------------- metrics


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
        title=_title("Metrics by method (retrain = gold standard)"),
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

    ``results`` is :attr:`mape.compare.CompareResult.results` ({name: {metric: {mean, std}}}); the
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
        title=_title("Gap to retrain vs. time (lower left is better)"),
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
        title=_title("Relearn test: forget accuracy after k fine-tuning steps on the forget set"),
        height=360, plot_bgcolor="white",
        xaxis=dict(title="fine-tuning steps on D_f", dtick=1, range=[-0.2, max(steps, 1) + 0.2]),
        yaxis=dict(title="forget accuracy (%)", range=[0, 101], ticksuffix="%", gridcolor="#eeeeee"),
        legend=dict(orientation="h", y=-0.2), margin=dict(l=70, r=20, t=50, b=80),
    )
    return fig


# --------------------------------------------------------------------------- attributions


def _token_display(tokens: Sequence[str]) -> list[tuple[str, bool]]:
    """(text to show, space before it) per token; merges WordPiece ``##`` and BPE ``Ġ``/``▁``."""
    bpe = any(t.startswith(("Ġ", "▁")) for t in tokens)
    out = []
    for i, t in enumerate(tokens):
        if t.startswith("##") and len(t) > 2:
            out.append((t[2:], False))
        elif t.startswith(("Ġ", "▁")):
            out.append((t[1:], i > 0))
        else:
            special = t.startswith(("[", "<")) and t.endswith(("]", ">"))
            out.append((t, i > 0 and (special or not bpe or out[-1][0].endswith(">"))))
    return out


def token_heatmap_html(tokens: list[str], scores: list[float], title: str = "") -> str:
    """Inline token spans shaded red (positive) / blue (negative), opacity ∝ |score| / max |score|.

    Padding tokens are skipped, WordPiece continuations (``##``) are joined to the previous piece,
    and everything is HTML-escaped; each span's tooltip gives the token and its score.
    """
    if len(tokens) != len(scores):
        raise ValueError(f"{len(tokens)} tokens but {len(scores)} scores.")
    keep = [i for i, t in enumerate(tokens) if t not in _PAD_TOKENS]
    toks = [tokens[i] for i in keep]
    vals = np.array([float(scores[i]) for i in keep], dtype=float)
    vals = np.nan_to_num(vals)
    peak = float(np.abs(vals).max()) if vals.size else 0.0
    parts = []
    for (text, space), tok, s in zip(_token_display(toks), toks, vals):
        alpha = abs(s) / peak if peak > 0 else 0.0
        r, g, b = POSITIVE_RGB if s >= 0 else NEGATIVE_RGB
        fg = "#ffffff" if alpha > 0.6 else "#111111"
        tip = html.escape(f"{tok}: {s:+.4f}", quote=True)
        parts.append(
            (" " if space else "")
            + f'<span class="mape-tok" title="{tip}" data-score="{s:.6g}" '
            f'style="background-color: rgba({r},{g},{b},{alpha:.3f}); color: {fg}; '
            f'padding: 1px 1px; border-radius: 3px;">{html.escape(text)}</span>'
        )
    head = (f'<div class="mape-tok-title" style="font-weight:600;margin-bottom:4px;">{html.escape(title)}</div>'
            if title else "")
    legend = (
        '<div style="font-size:0.8em;color:#555;margin-top:6px;">'
        f'<span style="background-color: rgba({",".join(map(str, POSITIVE_RGB))},0.6);padding:0 4px;">red</span> '
        "supports the class, "
        f'<span style="background-color: rgba({",".join(map(str, NEGATIVE_RGB))},0.6);padding:0 4px;">blue</span> '
        "speaks against it; stronger colour = larger |attribution|. Hover a token for its score.</div>"
    )
    body = f'<div class="mape-tok-text" style="line-height:1.9;font-family:sans-serif;">{"".join(parts)}</div>'
    return f'<div class="mape-token-heatmap">{head}{body}{legend}</div>'


def _image_trace(image: np.ndarray) -> go.BaseTraceType:
    img = np.asarray(image, dtype=float)
    if img.ndim == 3 and img.shape[0] in (1, 3) and img.shape[-1] not in (1, 3):
        img = np.moveaxis(img, 0, -1)  # CHW -> HWC
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    if img.ndim == 2:
        return go.Heatmap(z=img, colorscale="gray", showscale=False,
                          hovertemplate="x %{x}, y %{y}: %{z:.3f}<extra></extra>")
    if img.ndim == 3 and img.shape[-1] == 3:
        lo, hi = float(img.min()), float(img.max())
        if lo < 0 or hi > 255 or hi <= 1.0:  # scale floats (or normalised values) to 0..255
            img = (img - lo) / (hi - lo) * 255 if hi > lo else np.zeros_like(img)
        return go.Image(z=img.round().astype(np.uint8))
    raise ValueError(f"image must be (H, W), (H, W, 1|3) or (1|3, H, W); got shape {img.shape}.")


def image_attribution_figure(
    image: np.ndarray,
    before: np.ndarray,
    after: np.ndarray,
    titles: Sequence[str] = ("input", "before unlearning", "after unlearning"),
) -> go.Figure:
    """1 x 3: the input and the two pixel-attribution maps on one shared, 0-centred colour scale."""
    b = np.asarray(before, dtype=float)
    a = np.asarray(after, dtype=float)
    if b.ndim != 2 or a.ndim != 2:
        raise ValueError(f"attribution maps must be (H, W); got {b.shape} and {a.shape}.")
    peak = float(max(np.nanmax(np.abs(b)), np.nanmax(np.abs(a)), 1e-12))
    fig = make_subplots(rows=1, cols=3, subplot_titles=tuple(titles), horizontal_spacing=0.05)
    fig.add_trace(_image_trace(image), row=1, col=1)
    for col, z in ((2, b), (3, a)):
        fig.add_trace(
            go.Heatmap(z=z, coloraxis="coloraxis", hovertemplate="x %{x}, y %{y}: %{z:.4g}<extra></extra>"),
            row=1, col=col,
        )
    for col in (1, 2, 3):
        fig.update_yaxes(autorange="reversed", scaleanchor=f"x{'' if col == 1 else col}", showticklabels=False,
                         row=1, col=col)
        fig.update_xaxes(showticklabels=False, constrain="domain", row=1, col=col)
    fig.update_layout(
        title=_title("Pixel attributions (red = for the class, blue = against)"),
        height=340,
        margin=dict(l=20, r=20, t=70, b=20),
        coloraxis=dict(colorscale=DIVERGING_SCALE, cmin=-peak, cmax=peak, cmid=0.0, colorbar=dict(title="attribution")),
    )
    return fig


def empty_figure(message: str, height: int = 260) -> go.Figure:
    """Placeholder figure with a centred message and no axes."""
    fig = go.Figure()
    fig.add_annotation(text=html.escape(message), x=0.5, y=0.5, xref="paper", yref="paper",
                       showarrow=False, font=dict(size=15, color="#666666"))
    fig.update_layout(
        height=height,
        xaxis=dict(visible=False),
        yaxis=dict(visible=False),
        plot_bgcolor="white",
        margin=dict(l=20, r=20, t=30, b=20),
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
    that now "looks unseen" lies on the grey area. ``hist`` is :func:`mape.pipeline.loss_histograms`'s
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
        title=_title("Per-example loss on the forget set: does it look unseen now?"),
        height=360, plot_bgcolor="white", legend=dict(orientation="h", y=-0.25),
        margin=dict(l=60, r=20, t=50, b=100),
        xaxis=dict(title="loss (log scale; left = confident, as on training data)", tickvals=ticks,
                   ticktext=[f"1e{t}" for t in ticks]),
        yaxis=dict(title="% of examples", rangemode="tozero"))
    fig.update_yaxes(gridcolor="#eeeeee")
    return fig


def audit_epsilon_figure(res: Mapping) -> go.Figure:
    """Per-example ε of every row of an audit (:mod:`mape.audit`'s JSON): the share of forget examples per
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
        title=_title(f"Per-example ε (N = {res.get('models')} models per population): lower = looks retrained"),
        barmode="group", height=380, plot_bgcolor="white", legend=dict(orientation="h", y=-0.25),
        margin=dict(l=60, r=20, t=50, b=100), xaxis=dict(title="ε of the best threshold attack"),
        yaxis=dict(title="% of forget examples", rangemode="tozero"))
    fig.update_yaxes(gridcolor="#eeeeee")
    return fig
