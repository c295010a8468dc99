"""Successive requests in the browser (issue 28 item 2; Playwright + Debian's chromium, as tests/test_app_browser.py):
a run, then "Forget more from this model" on another forget set, show a timeline of two requests whose last row
states the metrics table's numbers, the heatmap of the units earlier requests / this one / both selected, and a
results JSON with both requests; "Back to the original" empties the timeline and the results. After the first
request, the same page drills into a selected unit (issue 28 item 3: a head's attention and a filter's
activations before and after), so that both sections share one run.

Presets: ``tiny-bbc`` by default; ``MAPE_TEST_APP_PRESETS=minilm-bbc,vit-mnist`` runs the real text preset.
"""

from __future__ import annotations

import json
import time

from tests.test_app_browser import (  # noqa: F401 - fixtures (browser, page, server) and the skip marks
    PRESETS,
    RUN_TIMEOUT_S,
    browser,
    page,
    predictions_answer,
    pytestmark,
    run_and_wait,
    screenshot,
    server,
    status_text,
    textbox,
    wait_until,
)

METRIC_CELLS = slice(4, 8)  # the timeline's FA, RA, TA and MIA cells
SENTENCE = "Shares fell sharply after the bank reported a loss, and the minister called the election."


def timeline_rows(pg) -> list[list[str]]:
    rows = pg.locator("#chain-timeline tr.mape-chain-row")
    return [[c.strip() for c in rows.nth(i).locator("td").all_inner_texts()] for i in range(rows.count())]


def plot_title(pg, elem_id: str) -> str:
    loc = pg.locator(f"#{elem_id} .gtitle")
    return loc.first.text_content() if loc.count() else ""


def check_unit_drill_down(page) -> None:  # noqa: F811 - the page, not the fixture
    """Inside a selected unit (issue 28 item 3), after a run: the section proposes the run's top selected head and
    filter; "Show attention" draws the head's pattern before and after side by side, "Show activations" the
    filter's activations on forget and retain examples before and after; a click on a cell of the head heatmap
    picks that head; a head that does not exist gets a clear message."""
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

    def click_the_cell() -> bool:  # the plots redraw after the full-page screenshot: click once they have settled
        page.locator("#heads-plot").scroll_into_view_if_needed()
        box = page.locator("#heads-plot .nsewdrag").first.bounding_box()
        page.mouse.click(box["x"] + (want_head + 0.5) / n_heads * box["width"],
                         box["y"] + box["height"] - (want_layer + 0.5) / n_layers * box["height"])
        time.sleep(1.5)
        return f"Head {want_head} of layer {want_layer}:" in page.inner_text("#unit-head-info")

    wait_until(click_the_cell, 60, "the clicked head", interval=1.0)
    assert textbox(page, "unit-head-layer").input_value() == str(want_layer)
    assert textbox(page, "unit-head").input_value() == str(want_head)

    # a head that does not exist: a clear message, and the plots stay
    box = textbox(page, "unit-head")
    box.fill("999")
    box.press("Enter")
    page.click("#unit-head-btn")
    wait_until(lambda: "Head must be a whole number" in page.inner_text("#unit-head-info"), 60, "the error message")
    assert plot_title(page, "unit-attn-before").startswith("Before · layer")


def open_visitor(browser, server):  # noqa: F811 - the fixtures' values
    """A second visitor: another browser context (its own Gradio session) on the same server, page ready."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = context.new_page()
    pg.goto(server)
    pg.wait_for_selector("#forget-counts table", timeout=120_000)
    return context, pg


def model_blocks(pg) -> list[str]:
    """The own-input answer's blocks, one per model ("Original (before): label" and one line per class)."""
    return [" ".join(b.split()) for b in pg.locator("#custom-predictions .mape-dist").all_inner_texts()]


def original_block(text: str) -> str:
    """What the page shows for the shared original model on ``text``, computed in-process (the server runs in
    this process) by the same call the page makes, with no run: the reference the visitors' answers must equal."""
    from mape.serving import owner as serving
    from ui import render

    probs = serving.predict(PRESETS[0], None, text)
    return render.prob_bars_html(serving.dataset(PRESETS[0]).classes, {"original": probs["original"]})


def model_blocks_of_html(pg, html_: str) -> list[str]:
    """:func:`model_blocks` of an answer's HTML, rendered by the browser (the same text the page shows)."""
    return [" ".join(t.split()) for t in pg.evaluate(
        "h => { const d = document.createElement('div'); d.innerHTML = h; document.body.appendChild(d);"
        " const t = [...d.querySelectorAll('.mape-dist')].map(b => b.innerText); d.remove(); return t; }", html_)]


def test_two_successive_requests_then_back_to_the_original(page, browser, server, tmp_path):  # noqa: F811
    assert not page.locator("#chain-more-btn").is_enabled()  # nothing to continue yet
    reference = original_block(SENTENCE)  # before any request: what the original says, for every visitor
    if all(p.startswith("tiny-") for p in PRESETS):  # quick runs: fewer retain examples, the warm start only
        page.get_by_text("Advanced settings").click()
        textbox(page, "retain-sample").fill("64")
        textbox(page, "passes").fill("0")
    box = textbox(page, "forget-value")
    box.fill("16")
    box.press("Enter")
    seconds = run_and_wait(page)
    print(f"first request ({PRESETS[0]}, random:16): {seconds:.1f} s")
    wait_until(lambda: len(timeline_rows(page)) == 1, 60, "a timeline of one")
    assert timeline_rows(page)[0][:2] == ["1", "random:16"]
    check_unit_drill_down(page)  # the same run: one run for both sections
    wait_until(lambda: page.locator("#chain-more-btn").is_enabled(), 30, "the Forget more button")

    box.fill("8")
    textbox(page, "seed").fill("3")
    box.press("Enter")
    wait_until(lambda: "random:8" in page.inner_text("#forget-counts"), 60, "the preview of random:8")
    other_context, other = open_visitor(browser, server)
    try:
        # the second request runs while another visitor predicts: their answer is the shared original's
        t0, before = time.monotonic(), status_text(page)
        page.click("#chain-more-btn")
        wait_until(lambda: status_text(page) != before, 120, "the second request to start")
        predictions_answer(other, SENTENCE)
        during = status_text(page)
        other_blocks = model_blocks(other)
        status = wait_until(lambda: (lambda t: t if ("Done" in t or "error" in t) else None)(status_text(page)),
                            RUN_TIMEOUT_S, "the second request to finish")
        assert "Done" in status, status
        print(f"second request (random:8 from the unlearned model): {time.monotonic() - t0:.1f} s; "
              f"the other visitor's prediction came while it ran: {'Done' not in during}")
        assert "Done" not in during, f"the second request had finished before the other visitor's answer: {during}"
        expected = model_blocks_of_html(other, reference)
        assert other_blocks == expected, (other_blocks, expected)  # one block: the original, unchanged
        assert "Run unlearning to compare" in other.inner_text("#custom-predictions")
    finally:
        other_context.close()
    # the chaining visitor's own answer: the same original, next to the model after both requests
    predictions_answer(page, SENTENCE)
    mine = model_blocks(page)
    assert len(mine) == 2 and mine[0] == other_blocks[0] and mine[1].startswith("MAPE (unlearned)"), mine
    assert "request 2: forgot random:8" in status_text(page), status_text(page)
    wait_until(lambda: len(timeline_rows(page)) == 2, 60, "a timeline of two")
    rows = timeline_rows(page)
    assert [r[:2] for r in rows] == [["1", "random:16"], ["2", "random:8"]], rows
    # the last row states the metrics table's numbers for the model after both requests
    table = page.locator("#metrics-table .mape-row-unlearned .mape-num").all_inner_texts()
    assert rows[1][METRIC_CELLS] == [t.strip() for t in table[:4]], (rows[1], table)
    assert "Request 2 of a chain" in page.inner_text("#run-summary")
    chain_status = page.inner_text("#chain-status")
    assert "after 2 requests (random:16 → random:8)" in chain_status, chain_status
    # the overlap heatmap: heads and filters, coloured by earlier / this / both
    wait_until(lambda: "request 2" in page.inner_text("#chain-overlap"), 30, "the overlap heatmap")
    assert page.locator("#chain-overlap svg.main-svg").count() >= 1
    legend = page.inner_text("#chain-overlap")
    for words in ("earlier requests only", "this request only", "earlier requests and this one"):
        assert words in legend, legend

    page.locator("#chain-overlap").scroll_into_view_if_needed()
    screenshot(page, "chain")
    with page.expect_download(timeout=60_000) as dl:
        page.click("#dl-json")
    res = json.loads(dl.value.path().read_text())
    assert [r["forget"]["spec"] for r in res["requests"]] == ["random:16", "random:8"]
    assert res["forget"]["spec"] == "random:8" and res["chain"]["request"] == 2

    page.click("#chain-reset-btn")
    wait_until(lambda: not timeline_rows(page), 30, "the emptied timeline")
    assert "No request yet" in page.inner_text("#chain-timeline")
    assert "Back to the original" in page.inner_text("#chain-status")
    assert "Not started" in status_text(page)
    assert page.locator("#metrics-table .mape-row-unlearned").count() == 0
    wait_until(lambda: not page.locator("#chain-more-btn").is_enabled(), 30, "the disabled Forget more button")
