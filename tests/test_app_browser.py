"""End-to-end browser tests of the app (Playwright + Debian's chromium).

Each test opens the page, runs a preset end to end with its default (small) forget set and checks that
the live heatmaps, the metrics table, the before/after predictions, the attributions, the own-input
predictions and the downloads render with real content. Screenshots go to ``assets/``.

The app is launched in-process with the tiny presets (see tests/test_app_client.py), so a fresh cache
trains the original models in seconds. Skipped when chromium or playwright is missing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

CHROMIUM = os.environ.get("MAPE_TEST_CHROMIUM", "/usr/bin/chromium")
ASSETS = Path(os.environ.get("MAPE_SCREENSHOT_DIR") or Path(__file__).resolve().parents[1] / "assets")
# a text preset, then an image preset; MAPE_TEST_APP_PRESETS=minilm-bbc,vit-mnist runs the real ones
# (e.g. for the README screenshots; the original models are trained on first use, minutes on a CPU)
PRESETS = [p.strip() for p in os.environ.get("MAPE_TEST_APP_PRESETS", "tiny-bbc,tiny-mnist").split(",")]
SHOT_PREFIX = "test-screenshot" if all(p.startswith("tiny-") for p in PRESETS) else "screenshot"
RUN_TIMEOUT_S = 600

try:
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover - CI installs it
    sync_playwright = None

pytestmark = [
    pytest.mark.skipif(sync_playwright is None, reason="playwright (Python package) is not installed"),
    pytest.mark.skipif(not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)),
                       reason=f"no chromium at {CHROMIUM} (apt-get install chromium)"),
]
PCT = re.compile(r"^\d{1,3}\.\d%$")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_the_engine_is_idle(timeout: float = 300.0) -> None:
    """Let work the app started in its worker threads finish before the server closes: after the last test a
    run's automatic attribution (Captum) may still be running, and an interpreter that exits under a thread
    inside torch aborts ("terminate called without an active exception", seen with the real MiniLM · BBC
    preset after all tests had passed)."""
    import captum

    import mape
    import ui

    dirs = tuple(str(Path(m.__file__).resolve().parent) + os.sep for m in (mape, ui, captum))
    me, end = threading.get_ident(), time.monotonic() + timeout

    def busy() -> bool:
        for tid, frame in sys._current_frames().items():
            while tid != me and frame is not None:
                if str(Path(frame.f_code.co_filename).resolve()).startswith(dirs):
                    return True
                frame = frame.f_back
        return False

    while busy() and time.monotonic() < end:
        time.sleep(0.5)


def serve_app(mp: pytest.MonkeyPatch):
    """Serve the app on a free port with ``mp``'s settings (undone when the server closes); yields its URL. The
    server fixtures of the browser tests (this file's and tests/test_app_lessons.py's) are this generator."""
    import torch

    if all(p.startswith("tiny-") for p in PRESETS):
        mp.setenv("MAPE_APP_RETAIN_SAMPLE", "128")
    mp.setenv("MAPE_APP_PRESETS", ",".join(PRESETS))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the server, the engine and chromium share 2 cores: no OpenMP oversubscription
    import app

    demo = app.build_demo(presets=PRESETS, concurrency=2)
    port = free_port()
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True,
                theme=app.THEME, css=app.CSS)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        wait_until_the_engine_is_idle()
        demo.close()
        mp.undo()
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def server():
    yield from serve_app(pytest.MonkeyPatch())


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                              args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                                    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"])
        yield b
        b.close()


@pytest.fixture()
def page(browser, server):
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.goto(server)
    pg.wait_for_selector("#run-btn", timeout=60_000)
    pg.wait_for_selector("#forget-counts table", timeout=120_000)  # the forget-set preview loads with the page
    yield pg
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


# --------------------------------------------------------------------------- helpers


def wait_until(fn, timeout: float, what: str, interval: float = 0.5):
    end = time.monotonic() + timeout
    last = None
    while time.monotonic() < end:
        try:
            last = fn()
            if last:
                return last
        except Exception as exc:  # noqa: BLE001 - the DOM may be mid-update
            last = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")


def textbox(page, elem_id: str):
    return page.locator(f"#{elem_id}").locator("textarea, input").first


def status_text(page) -> str:
    """The run status line (without Gradio's progress overlay)."""
    return status_text_of(page, "run-status")


def status_text_of(page, elem_id: str) -> str:
    loc = page.locator(f"#{elem_id} .mape-status")
    return loc.first.inner_text() if loc.count() else ""


def run_and_wait(page, button: str = "run-btn") -> float:
    """Click ``button`` (Run, or "Forget more from this model") and wait for the run it starts to finish."""
    t0 = time.monotonic()
    before = status_text(page)
    page.click(f"#{button}")
    wait_until(lambda: status_text(page) != before, 120, "the run to start")
    status = wait_until(lambda: (lambda t: t if ("Done" in t or "error" in t) else None)(status_text(page)),
                        RUN_TIMEOUT_S, "the run to finish")
    assert "Done" in status, f"the run failed: {status}"
    return time.monotonic() - t0


def y_rows(page, elem_id: str) -> int:
    """Rows of a plotly heatmap = its y tick labels (layer 0 .. layer L-1)."""
    return page.locator(f"#{elem_id} .ytick").count()


def check_search_and_results(page, layers: int) -> None:
    for plot in ("heads-plot", "filters-plot", "counts-plot"):
        assert page.locator(f"#{plot} svg.main-svg").count() >= 1, f"{plot} has no plotly svg"
    wait_until(lambda: y_rows(page, "heads-plot") == layers, 30, "head heatmap rows")
    assert y_rows(page, "filters-plot") == layers
    assert page.locator("#heads-plot .ytick").nth(layers - 1).text_content() == f"layer {layers - 1}"
    assert "final" in page.locator("#heads-plot").text_content()
    assert "final" in page.locator("#filters-plot").text_content()
    # metrics table: four numbers for the original and for the unlearned model
    for row in ("original", "unlearned"):
        nums = page.locator(f"#metrics-table .mape-row-{row} .mape-num").all_inner_texts()
        assert len(nums) >= 4 and all(PCT.match(n.strip()) for n in nums), (row, nums)
    assert page.locator("#metrics-plot svg.main-svg").count() >= 1
    assert "Selected for update" in page.inner_text("#run-summary")
    # before/after predictions: one prediction per model and example, in every tab
    n = page.locator("#pred-forget .mape-pred").count()
    assert n >= 2 and n % 2 == 0, n
    for tab, elem in (("Retain examples", "pred-retain"), ("Test examples", "pred-test")):
        page.get_by_role("tab", name=tab).click()
        wait_until(lambda e=elem: page.locator(f"#{e} .mape-pred").count() >= 2, 20, f"{tab} predictions")
    page.get_by_role("tab", name="Forget examples").click()


def screenshot(page, name: str) -> None:
    """Full-page screenshot to assets/ (test-screenshot-*.png for the tiny presets, screenshot-*.png for
    the real ones, which the README shows)."""
    page.evaluate("() => document.querySelectorAll('.toast-close').forEach(b => b.click())")
    page.mouse.move(0, 0)
    time.sleep(0.8)
    ASSETS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ASSETS / f"{SHOT_PREFIX}-{name}.png"), full_page=True)


def check_downloads(page, spec: str, tmp_path: Path) -> None:
    with page.expect_download(timeout=60_000) as dl:
        page.click("#dl-json")
    path = tmp_path / "results.json"
    dl.value.save_as(path)
    res = json.loads(path.read_text())
    assert res["forget"]["spec"] == spec
    assert {"original", "unlearned"} <= set(res["metrics"])
    with page.expect_download(timeout=60_000) as dl:
        page.click("#dl-masks")
    masks = tmp_path / "masks.safetensors"
    dl.value.save_as(masks)
    from safetensors.torch import load_file

    t = load_file(str(masks))
    assert np.asarray(t["heads"]).tolist() == res["selection"]["heads"]
    assert np.asarray(t["filters"]).tolist() == res["selection"]["filters"]


# --------------------------------------------------------------------------- tests


def check_compare(page, tmp_path: Path) -> None:
    """The "Compare methods" view on the run's forget set (its retrain reference is cached by the run)."""
    page.locator("#compare-methods input").click()
    page.keyboard.press("Backspace")  # drop the last default method (salun): mape, mape-norm, mape-random
    page.keyboard.press("Escape")
    textbox(page, "compare-relearn").fill("2")
    page.click("#compare-btn")
    wait_until(lambda: any(w in status_text_of(page, "compare-status") for w in ("Done", "error", "Stopped")),
               RUN_TIMEOUT_S, "the comparison to finish")
    assert "Done" in status_text_of(page, "compare-status"), status_text_of(page, "compare-status")
    table = page.inner_text("#compare-table")
    for row in ("original (no unlearning)", "mape-norm", "mape-random", "retrain (reference)"):
        assert row in table, table
    assert "salun" not in table.split("Relearn")[0]
    assert "Closest to retrain: mape" in status_text_of(page, "compare-status")  # one of the three MAPE variants
    for plot in ("compare-plot", "compare-gap-plot", "compare-relearn-plot"):
        assert page.locator(f"#{plot} svg.main-svg").count() >= 1, plot
    assert "k=2" in table  # the relearn table: before + 2 steps
    with page.expect_download(timeout=60_000) as dl:
        page.click("#dl-compare-json")
    res = json.loads(Path(dl.value.path()).read_text())
    assert res["methods"] == ["mape", "mape-norm", "mape-random"] and res["forget"] == "class:3"
    assert set(res["results"]) == {"original", "mape", "mape-norm", "mape-random", "retrain"}

    # "Open saved comparison(s)": a file that is not a comparison gets a clear message and the table stays;
    # the downloaded JSON, opened again, gives back the same table
    upload = page.locator('input[data-testid="Open saved comparison(s)-upload-button"]')
    bad = tmp_path / "not-a-comparison.json"
    bad.write_text(json.dumps({"preset": "tiny-mnist", "forget": {"spec": "class:3"}}))
    upload.set_input_files([str(bad)])
    wait_until(lambda: "Not a saved comparison" in status_text_of(page, "compare-status"), 60, "the open error")
    assert page.inner_text("#compare-table") == table
    saved = tmp_path / "saved-comparison.json"
    saved.write_text(Path(dl.value.path()).read_text())
    upload.set_input_files([str(saved)])
    wait_until(lambda: "Opened 1 file(s)" in status_text_of(page, "compare-status"), 60, "the opened comparison")
    status = status_text_of(page, "compare-status")
    assert f"{PRESETS[1]} · class:3 · seed 0" in status and "Closest to retrain: mape" in status, status
    assert page.inner_text("#compare-table") == table

    # "Open saved audit" (issue 29): a saved audit's table and its per-example ε histogram; a comparison file
    # opened there gets a clear message
    audit_upload = page.locator('input[data-testid="Open saved audit-upload-button"]')
    audit_upload.set_input_files(str(saved))
    wait_until(lambda: "not a saved audit" in status_text_of(page, "compare-status"), 60, "the audit open error")
    audit_path = _scripted_audit(tmp_path / "audit.json")
    audit_upload.set_input_files(str(audit_path))
    wait_until(lambda: "Opened audit" in status_text_of(page, "compare-status"), 60, "the opened audit")
    assert "N = 8 models per population" in status_text_of(page, "compare-status")
    audit_table = page.inner_text("#compare-table")
    assert "independent retrains (sanity: near the ceiling)" in audit_table
    assert "mape" in audit_table and "Ranking by final score: mape" in audit_table, audit_table
    assert page.locator("#compare-plot svg.main-svg").count() >= 1
    assert "Per-example ε" in page.inner_text("#compare-plot")


def _scripted_audit(path):
    """A saved audit made by mape.evaluation.audit from scripted populations (φ per model and example): the original far
    from the retrains, the independent retrains and `mape` drawn like them."""
    import numpy as np

    from mape.evaluation import audit as A

    rng = np.random.default_rng(0)
    pop = lambda shift: [{"conf": list(rng.normal(shift, 1.0, 40)), "retain_acc": 0.9, "test_acc": 0.8,  # noqa: E731
                          "seconds": 1.0} for _ in range(8)]
    retrained = pop(0.0)
    rows = {name: A.row_scores(pop(shift), retrained, 8) for name, shift in
            ((A.ORIGINAL, 20.0), ("mape", 0.3), (A.INDEPENDENT, 0.0))}
    sanity = A.sanity_check(rows)
    res = A.AuditResult("tiny-mnist", "random:40", 8, ["mape"], rows, sanity, ["mape"] if sanity["separated"] else None,
                        {"planned": 32, "computed": 32, "resumed": 0, "model_seconds": 32.0}, {"name": "local"},
                        n_forget=40, time_s=40.0)
    return res.save(path)[0]


def test_text_preset_end_to_end(page, tmp_path):
    # a bad forget spec: a clear message in the preview and on Run, and the page stays usable
    box = textbox(page, "forget-value")
    box.fill("lots")
    box.press("Enter")
    wait_until(lambda: "whole number" in page.inner_text("#forget-counts"), 60, "the preview's error message")
    page.click("#run-btn")
    wait_until(lambda: "whole number" in status_text(page), 60, "the run's error message")
    box.fill("32")
    box.press("Enter")
    wait_until(lambda: "random:32" in page.inner_text("#forget-counts"), 60, "the preview of random:32")
    assert page.locator("#forget-preview-table div[role=row]").count() >= 5

    # Stop ends a running search; the next run starts afresh
    page.click("#run-btn")
    wait_until(lambda: "running" in status_text(page) or "search" in status_text(page), 300, "the run to start")
    page.click("#stop-btn")
    wait_until(lambda: "Stopped" in status_text(page) or "Done" in status_text(page), 60, "the run to stop")

    seconds = run_and_wait(page)
    print(f"text run ({PRESETS[0]}, incl. first-use training if any): {seconds:.1f} s")
    check_search_and_results(page, layers=6)
    assert page.locator("#heads-plot .xtick").count() == 12  # one column per head

    # attributions: token heatmaps before and after, side by side
    wait_until(lambda: page.locator("#attr-text .mape-tok").count() >= 6, 180, "token attributions")
    text = page.inner_text("#attr-text")
    assert "Before (original)" in text and "After (MAPE)" in text
    scores = [float(s) for s in page.locator("#attr-text .mape-tok").evaluate_all(
        "els => els.map(e => e.dataset.score)")]
    assert any(abs(s) > 0 for s in scores)

    # own text: original vs unlearned distributions
    textbox(page, "custom-text").fill("The striker scored twice as the club won the cup final.")
    page.click("#predict-btn")
    wait_until(lambda: page.locator("#custom-predictions .mape-dist").count() == 2, 120, "own-text predictions")
    assert "MAPE (unlearned)" in page.inner_text("#custom-predictions")

    check_downloads(page, "random:32", tmp_path)
    page.click("#about")  # open "About the method" for the screenshot's last section
    screenshot(page, "text")


def test_image_preset_end_to_end(page, tmp_path):
    from PIL import Image

    page.click("#preset input")
    from mape.data.presets import PRESETS as ALL

    page.get_by_role("option", name=ALL[PRESETS[1]].title).click()
    wait_until(lambda: textbox(page, "forget-value").input_value() == "3", 60, "the image preset's default forget set")
    wait_until(lambda: page.locator("#forget-preview-gallery img").count() >= 8, 120, "the forget-set gallery")
    assert "class:3" in page.inner_text("#forget-counts")
    page.locator("#retrain input[type=checkbox]").check()  # the gold standard, and the gap to it

    seconds = run_and_wait(page)
    print(f"image run ({PRESETS[1]}, incl. first-use training if any): {seconds:.1f} s")
    check_search_and_results(page, layers=4)
    assert page.locator("#pred-forget img").count() >= 2  # the examples are shown as images
    nums = page.locator("#metrics-table .mape-row-retrain .mape-num").all_inner_texts()
    assert len(nums) >= 4 and all(PCT.match(n.strip()) for n in nums), nums
    assert re.match(r"^\d+\.\d pts$", page.locator("#metrics-table .mape-row-unlearned .mape-gap").inner_text())
    assert page.locator("#pred-forget .mape-pred").count() % 3 == 0  # original, MAPE, retrain

    # pixel attributions: input, before, after
    wait_until(lambda: "before: p(" in page.locator("#attr-image").text_content(), 180, "pixel attributions")
    assert "after: p(" in page.locator("#attr-image").text_content()
    assert page.locator("#attr-image svg.main-svg").count() >= 1

    # own image: a dark digit on a light background, any size: converted (and inverted) to MNIST's format
    digit = np.full((90, 70), 250, np.uint8)
    digit[15:75, 30:40] = 10
    path = tmp_path / "my-digit.png"
    Image.fromarray(digit).save(path)
    page.locator("#custom-image input[type=file]").set_input_files(str(path))
    time.sleep(1.0)
    page.click("#predict-btn")
    wait_until(lambda: page.locator("#custom-predictions .mape-dist").count() >= 2, 120, "own-image predictions")
    assert "inverted" in page.inner_text("#custom-predictions")
    # a file that is not an image: a clear message, no traceback
    bad = tmp_path / "not-an-image.png"
    bad.write_text("hello")
    page.locator("#custom-image input[type=file]").set_input_files(str(bad))
    time.sleep(1.0)
    page.click("#predict-btn")
    wait_until(lambda: page.locator("#custom-predictions .mape-error, .toast-body").count() >= 1, 60,
               "an error message for a non-image upload")
    assert "Traceback" not in page.content()
    page.click("#sample-image-btn")
    wait_until(lambda: page.locator("#custom-predictions .mape-dist").count() == 3, 120,
               "test-image predictions (original, MAPE, retrain)")

    check_downloads(page, "class:3", tmp_path)
    check_compare(page, tmp_path)
    screenshot(page, "image")


def predictions_answer(page, text: str, timeout: float = 120) -> str:
    """Type ``text``, press Predict and return the new own-input answer (its HTML)."""
    before = page.inner_html("#custom-predictions")
    textbox(page, "custom-text").fill(text)
    page.click("#predict-btn")
    return wait_until(lambda: (lambda h: h if h != before and ("mape-dist" in h or "mape-error" in h) else None)(
        page.inner_html("#custom-predictions")), timeout, f"the prediction for {text!r}")


def test_predict_while_the_attribution_runs(page):
    """Issue 16, bug 1: right after a run the first forget example is explained (Captum); pressing
    Predict meanwhile, three times, gives probabilities every time, never an error."""
    run_and_wait(page)
    attribution_pending = page.locator("#attr-text .mape-tok").count() == 0
    answers = [predictions_answer(page, text) for text in (
        "The striker scored twice as the club won the cup final.",
        "Shares fell sharply after the bank reported a loss.",
        "The minister announced the date of the general election.")]
    assert attribution_pending, "the attribution had finished before the first Predict"
    for html_ in answers:
        assert "mape-error" not in html_ and html_.count("mape-dist") >= 2, html_
        assert "MAPE (unlearned)" in html_ and re.search(r"\d+\.\d%", html_)
    toasts = " ".join(page.locator(".toast-body").all_inner_texts())
    assert "Error" not in toasts and "error" not in toasts.lower(), toasts
    wait_until(lambda: page.locator("#attr-text .mape-tok").count() >= 6, 180, "the attribution to finish")


def test_switch_preset_and_run_at_once(page):
    """Issue 16, bug 2: Run pressed right after a preset switch runs the new preset's forget set (the
    button waits for the switch), and the summary says which forget set ran."""
    from mape.data.presets import PRESETS as ALL

    page.click("#preset input")
    page.get_by_role("option", name=ALL[PRESETS[1]].title).click()
    page.click("#run-btn", timeout=120_000)  # waits while the switch keeps the button disabled
    status = wait_until(lambda: (lambda t: t if ("Done" in t or "error" in t) else None)(status_text(page)),
                        RUN_TIMEOUT_S, "the run to finish")
    assert "Done" in status and "class:3" in status and ALL[PRESETS[1]].title in status, status
    assert "`class:3`" in page.inner_text("#run-summary") or "class:3" in page.inner_text("#run-summary")
    assert "class:3" in page.inner_text("#forget-counts")
    assert textbox(page, "forget-value").input_value() == "3"


def test_backdoor_scenario_preview_run_and_trigger_tester(page):
    """Issue 15 in the app: choose a backdoor scenario in Model & data; the forget selector becomes
    ``poisoned`` and the preview marks the altered examples; Run forgets them on the poisoned original and
    the metrics show the attack success rate; the trigger tester shows an input without and with the
    trigger under the original and the unlearned model."""
    from mape.serving import offer, owner as serving

    preset = PRESETS[0]
    classes = list(serving.dataset(preset).classes)
    spec = offer.scenario_specs(preset, "text", classes, len(serving.dataset(preset).train))[0]
    assert spec.startswith("backdoor:")
    assert page.locator("#trigger-tester").count() == 0 or not page.locator("#trigger-tester").is_visible()
    page.click("#scenario input")
    page.get_by_role("option", name=offer.scenario_label(spec)).click()
    wait_until(lambda: "poisoned" in page.inner_text("#forget-counts") and "⚠" in page.inner_text("#forget-counts"),
               120, "the preview of the poisoned examples")
    assert "(altered; true class" in page.inner_text("#forget-preview-table")
    assert "backdoor" in page.inner_text("#scenario-description").lower()
    wait_until(lambda: page.locator("#trigger-tester").is_visible(), 30, "the trigger tester")
    run_and_wait(page)
    status = status_text(page)
    assert f"[{spec}]" in status and "poisoned" in status, status
    assert "Attack success" in page.inner_text("#metrics-table")
    nums = page.locator("#metrics-table .mape-row-unlearned .mape-num").all_inner_texts()
    assert len(nums) >= 6 and all(PCT.match(n.strip()) for n in nums), nums  # FA RA TA MIA ASR FA-true (+ KS)
    trigger = spec.split(":")[1]
    for button, prepare, on in (("#trigger-test-btn", None, "On test example #"),
                                ("#trigger-btn",
                                 lambda: textbox(page, "custom-text").fill("Shares fell after the loss."),
                                 "On your input")):
        if prepare:
            prepare()
        page.click(button)
        out = wait_until(lambda o=on: (lambda h: h if o in h and "processing" not in page.inner_text("#trigger-results")
                                       and ("mape-dist" in h or "mape-error" in h) else None)(
            page.inner_html("#trigger-results")), 120, "the trigger tester's answer")
        assert "mape-error" not in out and out.count("mape-dist") >= 4, out  # 2 inputs × original, unlearned
        text = page.inner_text("#trigger-results")
        assert "Without the trigger" in text and f"With the word '{trigger}'" in text, text
    assert "Shares fell after the loss." in page.inner_text("#trigger-results")
    # back to clean data: the tester hides and the selector leaves "poisoned"
    page.click("#scenario input")
    page.get_by_role("option", name="Clean training data").click()
    wait_until(lambda: not page.locator("#trigger-tester").is_visible(), 30, "the tester to hide")
    wait_until(lambda: "poisoned" not in page.inner_text("#forget-counts"), 60, "the clean preview")
