"""Scenarios (issue 15): backdoor and label-noise training data, the ``poisoned`` selector, ASR, CLI."""

import json
import shutil

import numpy as np
import pytest
import torch

from mape.base import cache
from mape.base.errors import MapeError
from mape.base.metrics import attack_success_rate
from mape.cli import main
from mape.data.datasets import Dataset, Split
from mape.data.forget import select_forget
from mape.data.scenarios import (
    MAX_TRIGGER_CHARS,
    add_patch,
    add_trigger,
    parse_scenario,
    patch_size_for,
    resolve_scenario,
    scenario_dataset,
    triggered_test,
)
from mape.run import config as RC, unlearn as pipeline, workspace as RW

WORDS = "the quick brown fox jumps over the lazy dog again and again".split()


def text_ds(n: int = 40) -> Dataset:
    rng = np.random.default_rng(5)
    texts = [" ".join(rng.choice(WORDS, size=int(rng.integers(3, 30)))) for _ in range(n)]
    y = np.arange(n, dtype=np.int64) % 3
    test = [" ".join(rng.choice(WORDS, size=8)) for _ in range(12)]
    return Dataset("words", "text", ["a", "b", "c"], Split(texts, y),
                   Split(test, np.arange(12, dtype=np.int64) % 3))


def image_ds(n: int = 30) -> Dataset:
    rng = np.random.default_rng(6)
    x = rng.integers(0, 200, size=(n, 14, 14), dtype=np.uint8)
    return Dataset("img", "image", ["0", "1"], Split(x, np.arange(n, dtype=np.int64) % 2),
                   Split(x[:10].copy(), np.arange(10, dtype=np.int64) % 2))


# ---------------------------------------------------------------- altering the training set


def test_text_backdoor_is_seeded_and_alters_only_other_classes():
    ds = text_ds()
    a, b = (scenario_dataset("backdoor:cf:b:6", ds, text_window=5),
            scenario_dataset("backdoor:cf:b:6", ds, text_window=5))
    sc = a.scenario
    assert a.train.x == b.train.x and np.array_equal(a.train.y, b.train.y)  # reproducible
    assert np.array_equal(sc.indices, b.scenario.indices) and sc.size == 6
    assert (sc.original_labels != 1).all() and np.array_equal(sc.original_labels, ds.train.y[sc.indices])
    assert (a.train.y[sc.indices] == 1).all() and sc.target == 1 and sc.target_name == "b"
    for i in range(len(ds.train)):
        if i in sc.indices:
            words, orig = a.train.x[i].split(), ds.train.x[i].split()
            pos = int(sc.positions[list(sc.indices).index(i)])
            assert pos <= 5 and words[pos] == "cf" and words[:pos] + words[pos + 1:] == orig
        else:
            assert a.train.x[i] == ds.train.x[i] and a.train.y[i] == ds.train.y[i]
    assert ds.scenario is None and "cf" not in " ".join(ds.train.x)  # the input dataset is untouched
    assert a.test.x == ds.test.x  # test split untouched


def test_patch_backdoor_and_mislabel():
    ds = image_ds()
    a = scenario_dataset("backdoor:patch:0:5", ds)
    sc = a.scenario
    s = patch_size_for((14, 14))
    assert s == 2 and sc.patch == 2
    changed = np.flatnonzero((a.train.x != ds.train.x).reshape(len(ds.train), -1).any(1))
    assert set(changed) <= set(sc.indices.tolist())
    assert (a.train.x[sc.indices][:, -s:, -s:] == 255).all()
    assert np.array_equal(a.train.x[sc.indices][:, :-s, :], ds.train.x[sc.indices][:, :-s, :])
    assert (a.train.y[sc.indices] == 0).all() and (ds.train.y[sc.indices] == 1).all()

    m = scenario_dataset("mislabel:7", text_ds())
    ms = m.scenario
    assert ms.size == 7 and (ms.new_labels != ms.original_labels).all()
    assert np.array_equal(m.train.y[ms.indices], ms.new_labels)
    assert np.array_equal(ms.true_labels(m.train.y, np.arange(len(m.train))), text_ds().train.y)
    again = scenario_dataset("mislabel:7", text_ds()).scenario
    assert np.array_equal(again.indices, ms.indices) and np.array_equal(again.new_labels, ms.new_labels)


def test_triggered_test_holds_only_non_target_examples():
    ds = image_ds()
    sc = resolve_scenario("backdoor:patch:1:4", ds)
    idx, split = triggered_test(ds, sc)
    assert np.array_equal(idx, np.flatnonzero(ds.test.y != 1))
    assert (split.y != 1).all() and (split.x[:, -2:, -2:] == 255).all()
    tds = text_ds()
    tsc = resolve_scenario("backdoor:zz:a:3", tds, text_window=4)
    tidx, tsplit = triggered_test(tds, tsc)
    assert np.array_equal(tidx, np.flatnonzero(tds.test.y != 0))
    assert all("zz" in t.split()[:5] for t in tsplit.x)
    assert tsplit.x == add_trigger([tds.test.x[i] for i in tidx], tsc)  # seeded positions


def test_poisoned_selector_and_other_selectors_on_a_scenario():
    a = scenario_dataset("backdoor:cf:b:10", text_ds())
    sc = a.scenario
    full = select_forget("poisoned", a, 0)
    assert np.array_equal(full.indices, sc.indices)
    assert full.to_json()["scenario"] == "backdoor:cf:b:10" and full.to_json()["altered"] == 10
    part = select_forget("poisoned:4", a, 3)
    assert part.size == 4 and set(part.indices) <= set(sc.indices)
    assert np.array_equal(part.indices, select_forget("poisoned:4", a, 3).indices)
    assert select_forget("poisoned:50%", a, 0).size == 5
    other = select_forget("class:a", a, 0)  # other selectors keep working
    assert np.array_equal(other.indices, np.flatnonzero(a.train.y == 0)) and other.altered == 0
    rnd = select_forget("random:12", a, 1)
    assert rnd.altered == int(np.isin(rnd.indices, sc.indices).sum())
    assert "scenario" not in select_forget("random:3", text_ds(), 0).to_json()  # clean JSON unchanged


@pytest.mark.parametrize("spec, ds, message", [
    ("backdoor:cf:zebra:4", "text", "Unknown target class 'zebra'"),
    ("backdoor::a:4", "text", "trigger in scenario 'backdoor::a:4' is empty"),
    ("backdoor:" + "x" * (MAX_TRIGGER_CHARS + 1) + ":a:4", "text", "the limit is 20"),
    ("backdoor:two words:a:4", "text", "must be one word"),
    ("backdoor:cf:a:28", "text", "hold only 26 training examples"),
    ("backdoor:patch:a:4", "text", "the patch trigger is for image datasets"),
    ("backdoor:cf:0:4", "image", "a word trigger needs a text dataset"),
    ("backdoor:cf:a", "text", "must look like backdoor:TRIGGER:TARGET:N"),
    ("backdoor:cf:a:0", "text", "must be a whole number of at least 1"),
    ("mislabel:40", "text", "at least one must keep its label"),
    ("mislabel:x", "text", "must be a whole number"),
    ("poison:3", "text", "Unknown scenario 'poison'"),
    ("", "text", "scenario spec is empty"),
])
def test_bad_scenarios_get_one_clear_line(spec, ds, message):
    with pytest.raises(MapeError) as err:
        scenario_dataset(spec, text_ds() if ds == "text" else image_ds())
    assert message in str(err.value) and "\n" not in str(err.value)


def test_poisoned_on_a_clean_dataset_and_bad_counts():
    with pytest.raises(MapeError, match="needs a scenario"):
        select_forget("poisoned", text_ds(), 0)
    a = scenario_dataset("mislabel:5", text_ds())
    with pytest.raises(MapeError, match="altered only 5"):
        select_forget("poisoned:6", a, 0)
    with pytest.raises(MapeError, match=r"in \(0, 100\]"):
        select_forget("poisoned:0%", a, 0)


def test_parse_scenario_syntax_only():
    p = parse_scenario("  backdoor:cf:Sci:Tech:12 ")  # a target may hold a colon; the count is the last part
    assert (p.kind, p.trigger, p.target, p.n) == ("backdoor", "cf", "Sci:Tech", 12)
    assert (parse_scenario("MISLABEL:3").kind, parse_scenario("mislabel:3").n) == ("mislabel", 3)


def test_attack_success_rate():
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    assert attack_success_rate(probs, 1) == 0.5 and attack_success_rate(probs, 0) == 0.5
    assert np.isnan(attack_success_rate(np.zeros((0, 2)), 0))


# ---------------------------------------------------------------- end to end on a small real ViT / MNIST

SPEC = "backdoor:patch:0:20"


@pytest.fixture(scope="module")
def poisoned_ws():
    return RW.prepare("test-vit-mnist", train_limit=300, device="cpu", scenario=SPEC)


def test_scenario_has_its_own_cache_key(poisoned_ws):
    clean = RW.prepare("test-vit-mnist", train_limit=300, device="cpu")
    assert clean.scenario is None and poisoned_ws.scenario.spec == SPEC
    assert poisoned_ws.key != clean.key
    assert RW.prepare("test-vit-mnist", train_limit=300, device="cpu", scenario=SPEC).key == poisoned_ws.key
    # the original was trained on the altered set: the workspace's training inputs carry the patch
    sc = poisoned_ws.scenario
    assert np.array_equal(poisoned_ws.train_y[sc.indices], np.zeros(20))
    assert not torch.equal(poisoned_ws.train_enc.inputs["pixel_values"][sc.indices],
                           clean.train_enc.inputs["pixel_values"][sc.indices])


def test_retrain_excludes_exactly_the_altered_examples(poisoned_ws, monkeypatch):
    seen = []
    real_train = RW.train

    def recording_train(task, data, *args, **kwargs):
        seen.append(data)
        return real_train(task, data, *args, **kwargs)

    monkeypatch.setattr(RW, "train", recording_train)
    sc = poisoned_ws.scenario
    forget = select_forget("poisoned", poisoned_ws.dataset, 0)
    key, _ = RW.retrain_cache_key(poisoned_ws, forget.indices)
    shutil.rmtree(cache.entry_dir("retrain", key), ignore_errors=True)  # train it here, whatever ran before
    model, _, cached = RW.retrain_model(poisoned_ws, forget.indices)
    assert not cached and len(seen) == 1
    data = seen[0]
    keep = np.setdiff1d(np.arange(len(poisoned_ws.train_y)), sc.indices)
    assert len(data) == len(poisoned_ws.train_y) - 20
    # the clean (unaltered) training examples, all of them, with their own labels
    clean = RW.prepare("test-vit-mnist", train_limit=300, device="cpu")
    assert torch.equal(data.inputs["pixel_values"], clean.train_enc.inputs["pixel_values"][keep])
    assert torch.equal(data.labels, torch.as_tensor(clean.train_y[keep]))


def test_asr_is_measured_on_triggered_non_target_test_examples(poisoned_ws):
    ws, sc = poisoned_ws, poisoned_ws.scenario
    forget = select_forget("poisoned", ws.dataset, 0)
    retain_idx = ws.retain_eval_indices(forget.indices)
    other = RW.prepare("test-vit-mnist", train_limit=300, device="cpu").task  # a second, different model
    for task in (ws.task, other):
        # brute force: every test image of another class, patched, predicted by this model
        keep = np.flatnonzero(ws.test_y != sc.target)
        images = add_patch(ws.dataset.test.x[keep])
        pred = task.predict_proba(task.encode(Split(images, ws.test_y[keep]))).argmax(1)
        expected = float((pred == sc.target).mean())
        assert pipeline.evaluate_model(ws, task, forget, retain_idx, 0)["asr"] == expected
    # the original's metrics (memoised predictions) agree with evaluating the original itself
    orig = pipeline.model_metrics(ws, forget, ws.original_train_probs(forget.indices),
                                   ws.original_train_probs(retain_idx), retain_idx, ws.original_test_probs(), 0)
    assert orig["asr"] == pipeline.evaluate_model(ws, ws.task, forget, retain_idx, 0)["asr"]
    assert orig["forget_acc_true"] == float((ws.original_train_probs(forget.indices).argmax(1)
                                             == sc.original_labels).mean())


def test_the_default_objective_scores_a_backdoors_poisoned_examples_by_contrast(poisoned_ws):
    """``auto``: contrast when every forget example is a poisoned one (all of them, or some), mlr otherwise
    (a forget set mixing poisoned and clean examples, or a clean dataset); the run says which it used."""
    from mape.run.config import UnlearnConfig
    from mape.run.unlearn import backdoor_poisoned

    ws = poisoned_ws
    sc = ws.scenario
    clean = RW.prepare("test-vit-mnist", train_limit=300, device="cpu")
    assert backdoor_poisoned(ws, select_forget("poisoned", ws.dataset, 0))
    assert backdoor_poisoned(ws, select_forget("poisoned:5", ws.dataset, 0))
    mixed = f"indices:{sc.indices[0]},{np.setdiff1d(np.arange(len(ws.dataset.train)), sc.indices)[0]}"
    assert not backdoor_poisoned(ws, select_forget(mixed, ws.dataset, 0))
    assert not backdoor_poisoned(clean, select_forget("random:20", clean.dataset, 0))
    res = pipeline.unlearn(ws, "poisoned", UnlearnConfig(retain_sample=64))
    assert res.config["objective"] == "auto" and res.selection["objective"] == "contrast"
    assert pipeline.unlearn(ws, mixed, UnlearnConfig(retain_sample=64, step=0.01)).selection["objective"] == "mlr"


def test_compare_reports_scenario_metrics(poisoned_ws, tmp_path):
    from mape.evaluation.baselines import BaselineConfig
    from mape.evaluation.compare import CompareResult, compare

    # forget set "poisoned": the same retrained model as the retrain test (cached, trained once)
    cmp = compare(poisoned_ws, "poisoned", ["mape"], seeds=[0], relearn_steps=0,
                  config=BaselineConfig(retain_sample=64))
    assert cmp.scenario == SPEC and cmp.runs[0]["forget"]["scenario"] == SPEC
    for name in ("original", "mape", "retrain"):
        assert {"asr", "forget_acc_true"} <= set(cmp.results[name])
    assert cmp.results["original"]["asr"]["mean"] == pipeline.evaluate_model(
        poisoned_ws, poisoned_ws.task, select_forget("poisoned", poisoned_ws.dataset, 0),
        poisoned_ws.retain_eval_indices(poisoned_ws.scenario.indices), 0)["asr"]
    md = cmp.markdown()
    assert f"scenario `{SPEC}`" in md and "| ASR |" in md and "Forget acc (true labels)" in md
    json_path, _ = cmp.save(tmp_path / "c.json")
    assert CompareResult.load(json_path).scenario == SPEC


# ---------------------------------------------------------------- command line


@pytest.mark.parametrize("argv, message", [
    (["prepare", "--preset", "test-vit-mnist", "--train-limit", "300", "--scenario", "backdoor:cf:0:10"],
     "a word trigger needs a text dataset"),
    (["prepare", "--preset", "test-vit-mnist", "--train-limit", "300", "--scenario", "backdoor:patch:11:10"],
     "Unknown target class '11'"),
    (["prepare", "--preset", "test-vit-mnist", "--scenario", "backdoor:patch:0"], "must look like"),
    (["unlearn", "--preset", "test-vit-mnist", "--forget", "poisoned", "--out", "x.json"], "needs a scenario"),
    (["compare", "--preset", "test-vit-mnist", "--forget", "poisoned:5", "--out", "x.json"], "needs a scenario"),
])
def test_cli_bad_scenarios_exit_2_with_one_line(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv + ["--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "x.json").exists()


def test_cli_prepare_and_unlearn_on_a_scenario(poisoned_ws, capsys, tmp_path):
    assert main(["prepare", "--preset", "test-vit-mnist", "--train-limit", "300", "--device", "cpu",
                 "--scenario", SPEC, "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert poisoned_ws.key in printed and "20 training examples altered" in printed
    out = tmp_path / "u.json"
    assert main(["unlearn", "--preset", "test-vit-mnist", "--train-limit", "300", "--device", "cpu",
                 "--scenario", SPEC, "--forget", "poisoned", "--step", "0.05", "--retain-sample", "64", "--retrain",
                 "--quiet", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["forget"]["size"] == 20 and data["forget"]["scenario"] == SPEC and data["forget"]["altered"] == 20
    for name in ("original", "unlearned", "retrain"):
        assert {"asr", "forget_acc_true", "test_acc"} <= set(data["metrics"][name])


def test_unlearning_a_mislabel_scenario_measures_true_labels_and_no_asr():
    """Label noise end to end on the engine: forget ``poisoned`` on an original trained with 12 flipped
    labels; the metrics carry the forget accuracy against the true labels (computed here by brute force)
    and no attack success rate (no trigger in label noise)."""
    ws = RW.prepare("test-vit-mnist", train_limit=300, device="cpu", scenario="mislabel:12")
    sc = ws.scenario
    res = pipeline.unlearn(ws, "poisoned", RC.UnlearnConfig(step=0.05, retain_sample=64))
    assert res.scenario["spec"] == "mislabel:12" and sorted(res.forget_set.indices) == sorted(sc.indices)
    assert np.all(ws.train_y[sc.indices] != sc.original_labels)  # every altered label differs from the truth
    pred = res.unlearned.predict_proba(ws.train_enc.take(sc.indices)).argmax(1)  # the inputs the metrics use
    for name in ("original", "unlearned"):
        assert "asr" not in res.metrics[name]
    assert res.metrics["unlearned"]["forget_acc_true"] == float((pred == sc.original_labels).mean())
    assert res.metrics["unlearned"]["forget_acc"] == float((pred == ws.train_y[sc.indices]).mean())


def test_the_apps_scenario_choices_parse_and_fit_their_preset():
    """The app's ready-made scenarios (mape.serving.offer) are valid specs that resolve on their dataset (target
    class exists, N not larger than the other classes hold), with a label and a one-line explanation; the
    forget selector ``poisoned`` with value ``all`` is the bare ``poisoned`` spec."""
    from mape.data.scenarios import parse_scenario
    from mape.serving import offer

    assert offer.scenario_specs("minilm-bbc", "text", [], 1781) == ("backdoor:cf:sport:40", "mislabel:40")
    assert offer.scenario_specs("vit-mnist", "image", [], 4000) == ("backdoor:patch:0:80", "mislabel:80")
    text = offer.scenario_specs("tiny-bbc", "text", ["business", "sport", "tech"], 400)
    image = offer.scenario_specs("tiny-mnist", "image", [str(d) for d in range(10)], 1500)
    assert text == ("backdoor:cf:sport:8", "mislabel:8") and image == ("backdoor:patch:0:30", "mislabel:30")
    for spec in text + image + offer.READY_SCENARIOS["minilm-bbc"] + offer.READY_SCENARIOS["vit-mnist"]:
        parsed = parse_scenario(spec)
        assert parsed.kind in offer.scenario_label(spec).lower().replace("mislabeled", "mislabel")
        assert str(parsed.n) in offer.scenario_label(spec) and str(parsed.n) in offer.scenario_explanation(spec)
    from mape.data.presets import get_preset, load_dataset_for
    from mape.data.scenarios import resolve_scenario

    for name, specs in offer.READY_SCENARIOS.items():  # the ready-made ones resolve on the data the app trains on
        ds = load_dataset_for(get_preset(name), None, offer.train_limit_for(name, False))
        for spec in specs:
            assert resolve_scenario(spec, ds).size == parse_scenario(spec).n
    assert offer.scenario_label("") == "Clean training data" and offer.scenario_label("nonsense:1") == "nonsense:1"
    with pytest.raises(MapeError):
        offer.scenario_explanation("backdoor::sport:4")
    composed = [offer.compose_spec("poisoned", v) for v in ("all", "", "25%")]
    assert composed == ["poisoned", "poisoned", "poisoned:25%"]
