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
from collections.abc import Sequence

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


def title_style(text: str) -> dict:
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
    fig.update_layout(title=title_style(f"{title} ({int(sel.sum())} of {sel.size})"), height=height,
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
        title=title_style("Selected units per layer"),
        height=320,
        showlegend=False,
        margin=dict(l=60, r=20, t=70, b=50),
        bargap=0.25,
    )
    return fig


# --------------------------------------------------------------------------- metrics










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
        title=title_style("Pixel attributions (red = for the class, blue = against)"),
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
