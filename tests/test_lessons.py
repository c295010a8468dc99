"""mape.serving.lessons: every lesson is a request its preset accepts, and the reading of a real run states exactly
the numbers of the metrics table and the run summary (the words never disagree with the numbers)."""

from __future__ import annotations

import copy
import re
from dataclasses import replace

import pytest

from mape.data.forget import select_forget
from mape.data.presets import PRESETS, load_dataset_for, training_data
from mape.data.scenarios import check_forget_specs, parse_scenario
from mape.run.config import UnlearnConfig
from mape.run.unlearn import unlearn
from mape.run.workspace import prepare
from mape.serving import lessons as LS, wording
from ui import render

PCT = re.compile(r"\d+\.\d%")
PTS = re.compile(r"\d+\.\d pts")


@pytest.mark.parametrize("lesson", LS.LESSONS, ids=lambda lesson: lesson.key)
def test_every_lesson_is_a_request_its_preset_accepts(lesson):
    """The lesson's preset runs here, its scenario parses and applies to the preset's data, and its forget spec
    selects what the lesson's kind says (a whole class, part of one, the altered examples)."""
    preset = PRESETS[lesson.preset]
    assert preset.availability()[0], lesson.preset  # embedded presets: offline
    scenario = lesson.scenario or None
    check_forget_specs([lesson.forget], scenario)
    ds = training_data(preset, load_dataset_for(preset, None, None), scenario)
    fs = select_forget(lesson.forget, ds, lesson.seed)
    assert len(fs.indices) > 0
    UnlearnConfig(**lesson.config()).validate()
    assert lesson.retrain and lesson.config()["retrain"]  # the comparison is the lesson
    if lesson.kind == LS.CLASS:
        assert fs.forget_class is not None
    elif lesson.kind == LS.SUBSET:
        assert fs.forget_class is None and len(set(ds.train.y[fs.indices].tolist())) == 1  # part of one class
    else:
        sc = parse_scenario(lesson.scenario)
        assert sc.kind == "backdoor" and sorted(fs.indices.tolist()) == sorted(ds.scenario.indices.tolist())
    sentences = [s for s in re.split(r"(?<=[.!?])\s+(?=[A-Z0-9*])", lesson.text.strip()) if s]
    assert 3 <= len(sentences) <= 6, sentences  # three to five sentences, plus the first-time note
    assert "first time" in lesson.text.lower() and "minutes" in lesson.text


def test_each_backdoor_lesson_runs_on_the_page_what_the_quality_gate_checks():
    """The backdoor lessons promise the backdoor removed with clean accuracy kept: that is what the quality gate
    checks on every CI run, so the page runs the gate's case with the gate's method settings. On a CPU page
    (default retain sample 256) the patch lesson raises the retain sample to the command line's 512 — with 256
    its push is refused and the backdoor stays (BENCHMARKS "The patch-backdoor lesson on the page"); on a GPU
    page (2048) it keeps the page's larger default."""
    from types import SimpleNamespace

    from mape.evaluation.gate import CASES
    from ui import method

    for lesson in (lesson for lesson in LS.LESSONS if lesson.kind == LS.BACKDOOR):
        case = next(c for c in CASES if (c.preset, c.scenario, c.forget) == (lesson.preset, lesson.scenario,
                                                                             lesson.forget))
        assert "ASR" in [band.label for band in case.bands]
        for page_default, want in ((256, 512), (2048, 2048)):
            cfg = method.config(*method.default_values(SimpleNamespace(retain_default=page_default),
                                                       **lesson.config()))
            gate_cfg = UnlearnConfig(seed=0, retrain=case.retrain)  # the gate's settings (retain sample: 512 on a CPU)
            assert (cfg["objective"], cfg["sparsity"], cfg["update"], cfg["step"], cfg["seed"]) == (
                gate_cfg.objective, gate_cfg.sparsity, gate_cfg.update, gate_cfg.step, gate_cfg.seed)
            if lesson.min_retain_sample:
                assert cfg["retain_sample"] == want
    patch = next(lesson for lesson in LS.LESSONS if lesson.scenario.startswith("backdoor:patch"))
    assert patch.min_retain_sample == 512 and "512" in patch.text and "mape-random" in patch.text


def test_only_lessons_of_offered_presets_are_shown():
    assert [lesson.key for lesson in LS.lessons_for(["vit-mnist"])] == ["digit", "patch-backdoor"]
    assert [lesson.preset for lesson in LS.lessons_for(["minilm-bbc", "vit-mnist"])] == [
        "minilm-bbc", "minilm-bbc", "minilm-bbc", "vit-mnist", "vit-mnist"]
    assert LS.lessons_for(["tiny-bbc", "minilm-sst2"]) == []


# --------------------------------------------------------------------------- readings of real runs


def table_numbers(result: dict) -> tuple[set[str], set[str]]:
    """The rates and the gaps the page's metrics table prints for this result."""
    html = render.metrics_table_html(result["metrics"], result.get("gap_to_retrain"))
    return set(re.findall(r'class="mape-num">([^<]+)<', html)), set(PTS.findall(html))


def check_reading_states_the_table(lesson: LS.Lesson, result: dict) -> str:
    text = LS.reading(lesson, result)
    rates, gaps = table_numbers(result)
    assert PCT.findall(text), text
    assert set(PCT.findall(text)) <= rates, (set(PCT.findall(text)) - rates, text)
    assert set(PTS.findall(text)) <= gaps and len(PTS.findall(text)) == 2, text  # original's and unlearned's gap
    m = result["metrics"]
    for key in LS.CITED[lesson.kind]:  # every cited metric, for each model, as the table prints it
        if key in m["unlearned"]:
            for model in ("original", "unlearned") + (("retrain",) if key != "loss_distance" else ()):
                assert wording.pct(m[model][key]) in text, (key, model, text)
    summary = wording.summary_markdown(result)
    for words in (wording.params_changed_text(result["params"]), wording.units_text(result["selection"]),
                  wording.retrain_share_pct(result["update"])):
        assert words in text and words in summary, (words, text)
    return text


@pytest.fixture(scope="module")
def sport_result(bbc_ws):
    return unlearn(bbc_ws, "class:sport", UnlearnConfig(retrain=True, retain_sample=128)).to_json()


def test_reading_of_a_class_run_states_the_table(sport_result):
    lesson = replace(LS.LESSONS[0], preset="test-minilm-bbc")
    text = check_reading_states_the_table(lesson, sport_result)
    m = sport_result["metrics"]
    assert text.startswith("### What this run shows — Forget a whole topic")
    assert f"Test accuracy on the other classes {LS._moved(m['original']['test_acc'], m['unlearned']['test_acc'])}" \
        in text
    forgotten = m["unlearned"]["forget_acc"] <= m["retrain"]["forget_acc"] + LS.STEADY
    assert ("**Forgotten as by retraining:**" in text) == forgotten, text
    print(text)


def test_reading_of_the_same_run_as_a_subset_lesson(sport_result):
    """A lesson about looking unseen reads MIA and the loss distance first (the same run, another lesson)."""
    lesson = replace(LS.LESSONS[1], preset="test-minilm-bbc")
    text = check_reading_states_the_table(lesson, sport_result)
    assert text.index("MIA efficacy") < text.index("Forget accuracy")
    assert "Loss distance to the retrained model (KS)" in text


@pytest.fixture(scope="module")
def backdoor_result():
    """The app's first text scenario on ``tiny-bbc`` (the app's training limit, 400): the browser, client and
    serving tests train the same backdoored original and the same retrained model, so with the suite's shared
    cache they are trained once."""
    from mape.serving import offer

    offer.register_tiny_presets()
    ws = prepare("tiny-bbc", train_limit=offer.train_limit_for("tiny-bbc"), device="cpu",
                 scenario="backdoor:cf:sport:8")
    return unlearn(ws, "poisoned", UnlearnConfig(retrain=True, retain_sample=128)).to_json()


def test_reading_of_a_backdoor_run_states_the_table(backdoor_result):
    lesson = replace(LS.LESSONS[2], preset="tiny-bbc", scenario="backdoor:cf:sport:8")
    text = check_reading_states_the_table(lesson, backdoor_result)
    m = backdoor_result["metrics"]
    assert "Attack success rate (ASR)" in text and "Clean test accuracy" in text
    gone = m["unlearned"]["asr"] <= m["retrain"]["asr"] + LS.CLOSE
    assert ("**The backdoor is gone:**" in text) == gone, text
    print(text)


def test_the_verdict_follows_the_numbers(backdoor_result, sport_result):
    """The same result with other numbers gets other words: a backdoor that stays is never called gone, a
    class still recognised is never called forgotten, a set the attack still reads is not called unseen."""
    res = copy.deepcopy(backdoor_result)
    res["metrics"]["original"]["asr"], res["metrics"]["unlearned"]["asr"], res["metrics"]["retrain"]["asr"] = \
        1.0, 0.62, 0.007
    text = LS.reading(LS.LESSONS[4], res)
    assert "**The backdoor is weakened, not removed:** the trigger still works on 62.0%" in text
    assert "retrained model: 0.7%" in text and "gone" not in text
    res["metrics"]["unlearned"]["asr"] = 0.99
    assert "**The backdoor survives:**" in LS.reading(LS.LESSONS[4], res)
    res["metrics"]["unlearned"]["asr"] = 0.01
    assert "**The backdoor is gone:**" in LS.reading(LS.LESSONS[4], res)

    res = copy.deepcopy(sport_result)
    res["metrics"]["unlearned"]["forget_acc"], res["metrics"]["retrain"]["forget_acc"] = 0.40, 0.0
    assert "**Not yet forgotten like retraining:** the model still recognises 40.0%" in LS.reading(LS.LESSONS[0], res)
    m = res["metrics"]
    m["original"]["mia"], m["unlearned"]["mia"], m["retrain"]["mia"] = 0.10, 0.12, 0.80
    assert "**The forget set still looks like training data:**" in LS.reading(LS.LESSONS[1], res)
    m["unlearned"]["mia"] = 0.5
    assert "**The forget set looks less like training data, not yet unseen:**" in LS.reading(LS.LESSONS[1], res)
    m["unlearned"]["mia"] = 0.75
    assert "**The forget set looks unseen now:**" in LS.reading(LS.LESSONS[1], res)


def test_reading_without_a_retrained_model_or_an_update(sport_result):
    res = copy.deepcopy(sport_result)
    del res["metrics"]["retrain"], res["gap_to_retrain"]
    res["update"].update(auto=True, step=0, params_changed=0)
    text = LS.reading(LS.LESSONS[0], res)
    assert "retrained model:" not in text and "Average gap" not in text
    assert "**Nothing was changed:**" in text and "Retrain reference" in text


def test_the_gap_is_compared_as_printed(sport_result):
    res = copy.deepcopy(sport_result)
    res["gap_to_retrain"] = {"original": 0.0051, "unlearned": 0.0049}
    assert "0.5 pts before, 0.5 pts after — as close to the retrained model as" in LS.gap_line(res)
    res["gap_to_retrain"] = {"original": 0.20, "unlearned": 0.05}
    assert "20.0 pts before, 5.0 pts after — closer to the retrained model" in LS.gap_line(res)
    res["gap_to_retrain"] = {"original": 0.05, "unlearned": 0.20}
    assert "— further from the retrained model" in LS.gap_line(res)
