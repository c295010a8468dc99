import html
import re

import numpy as np
import plotly.graph_objects as go
import pytest

from mape.serving import charts, figures


def _heat(fig: go.Figure) -> go.Heatmap:
    traces = [t for t in fig.data if isinstance(t, go.Heatmap)]
    assert len(traces) == 1
    return traces[0]


def _title(fig: go.Figure) -> str:
    return fig.layout.title.text or ""


# --------------------------------------------------------------------------- heads


def test_head_heatmap_shape_labels_height_and_hover():
    rng = np.random.default_rng(0)
    sel = (rng.random((6, 12)) < 0.2).astype(int)
    sel[2, 5] = 1
    sel[0, 0] = 0
    scores = rng.normal(size=(6, 12))
    fig = figures.head_heatmap(sel, scores)
    h = _heat(fig)
    z = np.asarray(h.z)
    assert z.shape == (6, 12)
    np.testing.assert_array_equal(z, sel)
    assert fig.layout.height == max(260, 60 + 28 * 6)
    assert "heads" in _title(fig).lower()
    assert f"{sel.sum()} of 72" in _title(fig)
    assert list(fig.layout.yaxis.ticktext) == [f"layer {i}" for i in range(6)]
    text = np.asarray(h.text)
    assert "layer 2, head 5" in text[2][5] and "selected: yes" in text[2][5]
    assert f"score: {scores[2, 5]:.4g}" in text[2][5]
    assert "selected: no" in text[0][0]


def test_head_heatmap_tall_model_height_and_no_scores():
    fig = figures.head_heatmap(np.zeros((24, 16)))
    assert fig.layout.height == 60 + 28 * 24
    assert "score" not in _heat(fig).text[0][0]


def test_head_heatmap_rejects_mismatched_scores():
    with pytest.raises(ValueError):
        figures.head_heatmap(np.zeros((2, 4)), np.zeros((2, 3)))


# --------------------------------------------------------------------------- filters


def test_filter_heatmap_binned_counts_are_exact():
    rng = np.random.default_rng(1)
    L, F, bins = 6, 1536, 64
    sel = (rng.random((L, F)) < 0.1).astype(int)
    fig = figures.filter_heatmap(sel, bins=bins)
    h = _heat(fig)
    z = np.asarray(h.z)
    assert z.shape == (L, bins)
    np.testing.assert_array_equal(z.sum(axis=1), sel.sum(axis=1))
    assert fig.layout.height >= 260
    assert h.colorbar.title.text  # labelled colour bar
    # bin 3 covers filters 72..95 (1536 / 64 = 24 per bin)
    idx = np.flatnonzero(sel[4, 72:96]) + 72
    cell = h.text[4][3]
    assert f"selected: {idx.size} of 24" in cell
    assert "filters 72–95" in cell
    for i in idx[:12]:
        assert re.search(rf"\b{i}\b", cell.split("indices:")[1])
    assert ("…" in cell) == (idx.size > 12)


def test_filter_heatmap_uneven_bins_cover_every_filter():
    rng = np.random.default_rng(2)
    sel = (rng.random((3, 100)) < 0.5).astype(int)
    counts, edges = figures.bin_filters(sel, 7)
    assert edges[0] == 0 and edges[-1] == 100 and np.all(np.diff(edges) > 0)
    np.testing.assert_array_equal(counts.sum(axis=1), sel.sum(axis=1))
    fig = figures.filter_heatmap(sel, bins=7)
    total = sum(int(re.search(r"of (\d+)", c).group(1)) for c in fig.data[0].text[0])
    assert total == 100


def test_filter_heatmap_truncates_long_index_lists():
    sel = np.ones((1, 640), dtype=int)
    cell = figures.filter_heatmap(sel, bins=64).data[0].text[0][0]
    assert "selected: 10 of 10" in cell and "…" not in cell
    cell = figures.filter_heatmap(sel, bins=16).data[0].text[0][0]
    assert "selected: 40 of 40" in cell and "…" in cell
    assert "13" not in cell.split("indices:")[1].replace("…", "")


def test_filter_heatmap_unbinned_when_narrow():
    sel = np.zeros((2, 37), dtype=int)
    sel[1, 36] = 1
    fig = figures.filter_heatmap(sel, bins=64)
    h = _heat(fig)
    assert np.asarray(h.z).shape == (2, 37)
    assert "filter 36" in h.text[1][36] and "selected: yes" in h.text[1][36]
    assert "1 of 74" in _title(fig)
    assert list(h.colorbar.ticktext) == ["frozen", "selected"]  # the heads' two colours, not a count scale


def test_filter_heatmap_wide_layers_keep_labels_readable():
    sel = np.zeros((6, 1536), dtype=int)
    fig = figures.filter_heatmap(sel, bins=64)
    assert 64 / fig.layout.xaxis.dtick <= 16 and fig.layout.xaxis.tickangle == 0
    assert fig.layout.height == max(300, 70 + 34 * 6)


# --------------------------------------------------------------------------- layer counts


def test_layer_counts_figure_counts_and_shares():
    heads = np.zeros((3, 4), dtype=int)
    heads[0, :2] = 1
    filters = np.zeros((3, 10), dtype=int)
    filters[2, :5] = 1
    fig = figures.layer_counts_figure(heads, filters)
    assert fig.layout.height and _title(fig)
    bars = [t for t in fig.data if isinstance(t, go.Bar)]
    assert len(bars) == 2
    assert list(bars[0].y) == [2, 0, 0]
    assert list(bars[1].y) == [0, 0, 5]
    assert "2 of 4 heads (50.0%)" in bars[0].text[0]
    assert "5 of 10 filters (50.0%)" in bars[1].text[2]
    with pytest.raises(ValueError):
        figures.layer_counts_figure(np.zeros((2, 4)), np.zeros((3, 4)))


# --------------------------------------------------------------------------- metrics


def test_metrics_figure_one_trace_per_method_in_percent():
    rows = {
        "retrain": {"forget_acc": 0.5, "retain_acc": 0.95, "test_acc": 0.9, "mia": 0.4},
        "original": {"forget_acc": 1.0, "retain_acc": 0.99, "test_acc": 0.91, "mia": 0.05},
        "mape": {"forget_acc": 0.52, "retain_acc": 0.94, "test_acc": 0.89, "mia": float("nan")},
    }
    fig = charts.metrics_figure(rows)
    assert fig.layout.height and _title(fig)
    assert fig.layout.barmode == "group"
    assert tuple(fig.layout.yaxis.range) == (0, 100)
    assert len(fig.data) == 3
    by_name = {t.name.split(" ")[0]: t for t in fig.data}
    assert set(by_name) == {"retrain", "original", "mape"}
    assert list(by_name["original"].y) == pytest.approx([100.0, 99.0, 91.0, 5.0])
    assert by_name["mape"].y[3] is None  # NaN is not drawn
    assert len(by_name["mape"].x) == 4
    ref = by_name["retrain"]
    assert ref.marker.line.width > 0 and ref.marker.pattern.shape == "/"
    assert by_name["mape"].marker.pattern.shape in ("", None)
    assert fig.data[-1] is ref  # reference drawn last
    colours = {t.marker.color for t in fig.data}
    assert len(colours) == 3


# --------------------------------------------------------------------------- token HTML


def test_token_heatmap_escapes_markup_and_skips_pad():
    tokens = ["[CLS]", "<b>", "bold", "</b>", "<script>", "[SEP]", "[PAD]", "[PAD]"]
    scores = [0.0, 0.5, -1.0, 0.2, 0.1, 0.0, 9.0, 9.0]
    out = figures.token_heatmap_html(tokens, scores, title="Why <i>class</i>?")
    assert "<b>" not in out and "<script>" not in out and "<i>" not in out
    assert html.escape("<b>") in out and html.escape("<script>") in out
    assert "[PAD]" not in out
    assert out.count('class="mape-tok"') == 6


def test_token_heatmap_sign_and_magnitude():
    out = figures.token_heatmap_html(["good", "bad", "meh"], [2.0, -1.0, 0.0])
    spans = re.findall(r'<span class="mape-tok" title="([^"]*)"[^>]*'
                       r'background-color: rgba\((\d+),(\d+),(\d+),([\d.]+)\)', out)
    assert len(spans) == 3
    (t_good, *rgb_good, a_good), (t_bad, *rgb_bad, a_bad), (_, _, _, _, a_meh) = spans
    assert int(rgb_good[0]) > int(rgb_good[2])  # red for positive
    assert int(rgb_bad[2]) > int(rgb_bad[0])  # blue for negative
    assert float(a_good) == pytest.approx(1.0)
    assert float(a_bad) == pytest.approx(0.5)
    assert float(a_meh) == 0.0
    assert "+2.0000" in t_good and "-1.0000" in t_bad


def test_token_heatmap_merges_wordpieces():
    out = figures.token_heatmap_html(["[CLS]", "un", "##bel", "##ievable", "film", "[SEP]"], [0, 1, 1, 1, 1, 0])
    text = re.sub(r"<[^>]+>", "", out.split('class="mape-tok-text"')[1].split("</div>")[0].split(">", 1)[1])
    assert "unbelievable film" in text
    assert "##" not in text
    with pytest.raises(ValueError):
        figures.token_heatmap_html(["a"], [1.0, 2.0])


def test_token_heatmap_all_zero_scores():
    out = figures.token_heatmap_html(["a", "b"], [0.0, 0.0])
    assert "rgba(214,39,40,0.000)" in out


# --------------------------------------------------------------------------- images and placeholders


@pytest.mark.parametrize("image", [np.random.rand(28, 28), np.random.rand(1, 28, 28), np.random.rand(28, 28, 3)])
def test_image_attribution_figure(image):
    before = np.random.randn(28, 28)
    after = 3 * np.random.randn(28, 28)
    fig = figures.image_attribution_figure(image, before, after)
    assert fig.layout.height
    assert len(fig.data) == 3
    assert [a.text for a in fig.layout.annotations] == ["input", "before unlearning", "after unlearning"]
    peak = max(np.abs(before).max(), np.abs(after).max())
    assert fig.layout.coloraxis.cmin == pytest.approx(-peak)
    assert fig.layout.coloraxis.cmax == pytest.approx(peak)
    assert fig.data[1].coloraxis == fig.data[2].coloraxis == "coloraxis"
    if image.ndim == 3 and image.shape[-1] == 3:
        assert isinstance(fig.data[0], go.Image)
    else:
        assert np.asarray(fig.data[0].z).shape == (28, 28)


def test_empty_figure():
    fig = figures.empty_figure("Run the search to see heads", height=300)
    assert fig.layout.height == 300
    assert fig.layout.annotations[0].text == "Run the search to see heads"
    assert len(fig.data) == 0


# --------------------------------------------------------------------------- comparison


def _results():
    def e(**kw):
        return {k: {"mean": v[0], "std": v[1]} for k, v in kw.items()}

    res = {"original": e(gap_to_retrain=(0.30, 0.0)),
           "mape": e(gap_to_retrain=(0.012, 0.004), time_s=(4.0, 0.5)),
           "salun": e(gap_to_retrain=(0.07, 0.0), time_s=(1.5, 0.1)),
           "ft": e(gap_to_retrain=(None, None), time_s=(9.0, 0.0)),
           "retrain": e(gap_to_retrain=(0.0, 0.0), time_s=(120.0, 0.0))}
    res["mape"]["relearn"] = {"mean": [0.0, 0.2, 0.6], "std": [0.0, 0.05, 0.1]}
    res["retrain"]["relearn"] = {"mean": [0.0, 0.1, 0.3], "std": [0.0, 0.0, 0.0]}
    return res


def test_gap_time_figure_places_methods_and_the_retrain_line():
    fig = charts.gap_time_figure(_results(), ["mape", "salun", "ft"], best="mape")
    by_name = {t.name: t for t in fig.data}
    assert set(by_name) == {"mape", "salun"}  # ft has no gap: left out, not drawn at 0
    assert by_name["mape"].x[0] == 4.0 and by_name["mape"].y[0] == pytest.approx(1.2)
    assert list(by_name["mape"].error_y.array) == [pytest.approx(0.4)]
    assert by_name["mape"].marker.size > by_name["salun"].marker.size  # the best is emphasised
    assert fig.layout.xaxis.type == "log"
    assert [s.x0 for s in fig.layout.shapes] == [120.0]  # retrain's time
    assert fig.layout.height and _title(fig)


def test_relearn_figure_one_line_per_model_with_curves():
    fig = charts.relearn_figure(_results(), ["original", "mape", "salun", "retrain"])
    assert [t.name for t in fig.data] == ["mape", "retrain (reference)"]
    assert list(fig.data[0].y) == pytest.approx([0.0, 20.0, 60.0])
    assert fig.data[1].line.dash == "dash"
    assert fig.layout.xaxis.range[1] == pytest.approx(2.2)
