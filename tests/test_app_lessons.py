"""The lessons in the browser (Playwright + Debian's chromium, as tests/test_app_browser.py): a click on a lesson
fills in the controls, runs through the Run handler with the retrained model on, and the reading at the top of
the results states the numbers of the metrics table on the page; the visitor's own run then hides it.

On the tiny presets the lessons are mapped onto ``tiny-bbc`` / ``tiny-mnist`` (smaller forget sets and
scenarios, which the tiny training sets hold); ``MAPE_TEST_APP_PRESETS=minilm-bbc,vit-mnist`` runs the real
lessons on the real presets (minutes on a CPU; the retrained models are cached after the first time).
"""

from __future__ import annotations

import re
import time
from dataclasses import replace

import pytest

from mape.serving import lessons as LS, offer
from tests.test_app_browser import (  # noqa: F401 - fixtures (browser, page) and the skip marks
    PRESETS,
    browser,
    page,
    pytestmark,
    run_and_wait,
    screenshot,
    serve_app,
    status_text,
    textbox,
    wait_until,
)

TINY = all(p.startswith("tiny-") for p in PRESETS)
#: the lessons on the tiny presets: the same lessons, on forget sets and scenarios the tiny training sets hold
TINY_LESSONS = {"topic": dict(preset="tiny-bbc"), "articles": dict(preset="tiny-bbc", forget="class:tech:20"),
                "text-backdoor": dict(preset="tiny-bbc", scenario="backdoor:cf:sport:8"),
                "digit": dict(preset="tiny-mnist"), "patch-backdoor": dict(preset="tiny-mnist",
                                                                          scenario="backdoor:patch:0:30")}
#: two lessons, each switching the preset (the second also to a scenario)
CLICKED = ("digit", "text-backdoor") if TINY else ("topic", "patch-backdoor")
RUN_TIMEOUT_S = 900
PCT = re.compile(r"\d+\.\d%")
PTS = re.compile(r"\d+\.\d pts")


def lessons() -> tuple[LS.Lesson, ...]:
    return tuple(replace(lesson, **TINY_LESSONS[lesson.key]) for lesson in LS.LESSONS) if TINY else LS.LESSONS


@pytest.fixture(scope="module")
def server():
    mp = pytest.MonkeyPatch()
    if TINY:
        mp.setattr(LS, "LESSONS", lessons())
    yield from serve_app(mp)


def click_lesson(pg, lesson: LS.Lesson) -> float:
    """Click the lesson and wait until its run is done; the seconds from the click to the results."""
    t0 = time.monotonic()
    pg.click(f"#lesson-btn-{lesson.key}")
    done = f"“{lesson.title}” done"
    wait_until(lambda: done in pg.inner_text("#lesson-status") or "did not finish" in pg.inner_text(
        "#lesson-status"), RUN_TIMEOUT_S, f"the lesson {lesson.key} to finish")
    seconds = time.monotonic() - t0
    assert done in pg.inner_text("#lesson-status"), (pg.inner_text("#lesson-status"), status_text(pg))
    return seconds


def check_reading_agrees_with_the_table(pg, lesson: LS.Lesson) -> str:
    wait_until(lambda: pg.locator("#lesson-reading").is_visible(), 30, "the lesson's reading")
    text = pg.inner_text("#lesson-reading")
    assert f"What this run shows — {lesson.title}" in text, text
    table = pg.locator("#metrics-table .mape-num").all_inner_texts()
    gaps = pg.locator("#metrics-table .mape-gap").all_inner_texts()
    assert pg.locator("#metrics-table .mape-row-retrain").count() == 1  # the retrained model was on
    cited = PCT.findall(text)
    assert len(cited) >= 9 and set(cited) <= {t.strip() for t in table}, (cited, table)
    assert set(PTS.findall(text)) <= {g.strip() for g in gaps} and len(PTS.findall(text)) == 2, (text, gaps)
    # the units, parameters and work share: the words of the run summary
    summary = pg.inner_text("#run-summary")
    changed = re.search(r"[\d,]+ of [\d,]+ parameters changed \(\d+\.\d\d%\)", text).group(0)
    assert changed in summary, (changed, summary)
    share = re.search(r"used (\d+%) of a retrain's counted work", text).group(1)
    assert f"**Work:** {share}".replace("**", "") in summary, (share, summary)
    return text


def check_controls_show(pg, lesson: LS.Lesson) -> None:
    """The controls show the settings the lesson ran with."""
    from mape.data.presets import PRESETS as ALL

    assert textbox(pg, "preset").input_value() == ALL[lesson.preset].title
    assert textbox(pg, "scenario").input_value() == offer.scenario_label(lesson.scenario)
    kind, _, value = lesson.forget.partition(":")
    assert textbox(pg, "forget-value").input_value() == (value or "all")
    assert pg.locator("#retrain input[type=checkbox]").is_checked()
    assert f"{lesson.forget}" in pg.inner_text("#forget-counts")


def test_lessons_fill_in_the_controls_run_and_read_their_results(page):  # noqa: F811 - the fixture
    shown = {lesson.key: lesson for lesson in LS.lessons_for(PRESETS, lessons())}
    assert page.locator(".mape-lesson").count() == len(shown) == 5
    first, second = (shown[key] for key in CLICKED)

    seconds = click_lesson(page, first)
    print(f"lesson {first.key} ({first.preset}), click to results: {seconds:.1f} s")
    check_controls_show(page, first)
    status = status_text(page)
    assert first.forget in status and "Done" in status, status
    text = check_reading_agrees_with_the_table(page, first)
    print(text)
    screenshot(page, "lesson")

    seconds = click_lesson(page, second)
    print(f"lesson {second.key} ({second.preset}, {second.scenario}), click to results: {seconds:.1f} s")
    check_controls_show(page, second)
    status = status_text(page)
    assert f"[{second.scenario}]" in status and "poisoned" in status, status
    text = check_reading_agrees_with_the_table(page, second)
    assert "Attack success rate (ASR)" in text and "Attack success" in page.inner_text("#metrics-table")
    assert page.locator("#trigger-tester").is_visible()  # the lesson's backdoor has a trigger to test
    print(text)

    # the visitor's own run (the same controls, retrain off): no lesson reading
    page.locator("#retrain input[type=checkbox]").uncheck()
    run_and_wait(page)
    assert not page.locator("#lesson-reading").is_visible()
    assert page.locator("#metrics-table .mape-row-retrain").count() == 0
    assert f"[{second.scenario}]" in status_text(page)
