"""The "Inside a selected unit" section in the browser (Playwright + Debian's chromium; the fixtures and
helpers of tests/test_app_browser.py, so MAPE_TEST_APP_PRESETS=minilm-bbc,vit-mnist runs the real presets).

After a run the section proposes the run's top selected head and filter; "Show attention" draws the head's
pattern before and after unlearning side by side, "Show activations" the filter's activations on forget and
retain examples before and after; a head that does not exist gets a clear message."""

from __future__ import annotations

from tests.test_app_browser import (  # noqa: F401 - pytest fixtures and the module's skip marks
    PRESETS,
    browser,
    page,
    pytestmark,
    run_and_wait,
    screenshot,
    server,
    textbox,
    wait_until,
)


def plot_title(pg, elem_id: str) -> str:
    loc = pg.locator(f"#{elem_id} .gtitle")
    return loc.first.text_content() if loc.count() else ""


def test_head_and_filter_drill_down_after_a_run(page):  # noqa: F811 - the imported fixture
    seconds = run_and_wait(page)
    print(f"run ({PRESETS[0]}): {seconds:.1f} s")
    info = wait_until(lambda: (lambda t: t if "selected" in t else None)(page.inner_text("#unit-head-info")), 30,
                      "the proposed head")
    assert "selected for update" in info and "score from the search" in info, info  # the run's top selected head
    layer = int(textbox(page, "unit-head-layer").input_value())
    head = int(textbox(page, "unit-head").input_value())
    assert f"Head {head} of layer {layer}" in info

    page.click("#unit-head-btn")
    for elem, when in (("unit-attn-before", "Before"), ("unit-attn-after", "After")):
        title = wait_until(lambda e=elem: (lambda t: t if t.startswith(f"{when} · layer") else None)(
            plot_title(page, e)), 120, f"the {when.lower()} attention")
        assert f"layer {layer}, head {head}" in title, title
        assert page.locator(f"#{elem} .hm, #{elem} .heatmaplayer image, #{elem} g.heatmaplayer").count() >= 1
    assert "Largest change of an attention weight" in page.inner_text("#unit-head-info")

    filt_info = page.inner_text("#unit-filter-info")
    assert "Filter" in filt_info and "selected for update" in filt_info, filt_info
    page.click("#unit-filter-btn")
    wait_until(lambda: "activation per example" in plot_title(page, "unit-filter-plot"), 120, "the filter plot")
    legend = page.inner_text("#unit-filter-plot")
    assert "before (original)" in legend and "after (MAPE)" in legend and "forget (" in legend, legend
    assert page.locator("#unit-filter-plot g.trace.boxes").count() == 2
    assert "Mean activation" in page.inner_text("#unit-filter-info")
    screenshot(page, "unit")

    # a click on a cell of the run's head heatmap (layer 0 at the bottom) picks that head
    n_layers, n_heads = page.locator("#heads-plot .ytick").count(), page.locator("#heads-plot .xtick").count()
    want_layer, want_head = n_layers - 2, n_heads - 3
    page.locator("#heads-plot").scroll_into_view_if_needed()
    box = page.locator("#heads-plot .nsewdrag").first.bounding_box()
    page.mouse.click(box["x"] + (want_head + 0.5) / n_heads * box["width"],
                     box["y"] + box["height"] - (want_layer + 0.5) / n_layers * box["height"])
    wait_until(lambda: f"Head {want_head} of layer {want_layer}:" in page.inner_text("#unit-head-info"), 30,
               "the clicked head")
    assert textbox(page, "unit-head-layer").input_value() == str(want_layer)
    assert textbox(page, "unit-head").input_value() == str(want_head)

    # a head that does not exist: a clear message, and the plots stay
    box = textbox(page, "unit-head")
    box.fill("999")
    box.press("Enter")
    page.click("#unit-head-btn")
    wait_until(lambda: "Head must be a whole number" in page.inner_text("#unit-head-info"), 60, "the error message")
    assert plot_title(page, "unit-attn-before").startswith("Before · layer")
