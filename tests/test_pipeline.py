"""End-to-end runs on a real pretrained MiniLM and real BBC News (small and fast)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mape.base import cache
from mape.cli import main
from mape.run import unlearn as pipeline
from mape.run.config import UnlearnConfig
from mape.run.unlearn import unlearn, unlearn_successively
from mape.run.workspace import prepare


def _state(task):
    return {k: v.detach().clone() for k, v in task.model.state_dict().items()}


@pytest.fixture(scope="module")
def sport_run(bbc_ws):
    """One real run forgetting the whole class sport, with its retrained reference (two tests read it), and
    the shared original's weights before it. The small workspace trains 2 epochs on 400 articles, where a
    retrain costs less than any search (the search alone is over half of it), so the run's work budget is
    lifted here: these tests are about what the update does (the budget has tests of its own)."""
    before = _state(bbc_ws.task)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("mape.run.follow_up.RUN_WORK_SHARE", float("inf"))
        return before, unlearn(bbc_ws, "class:sport", UnlearnConfig(seed=0, retrain=True))


def test_class_forgetting_real_run(bbc_ws, sport_run):
    before, res = sport_run
    m = res.metrics
    assert m["original"]["forget_acc"] > 0.8
    assert m["unlearned"]["forget_acc"] <= 0.10
    assert m["unlearned"]["test_acc"] >= m["original"]["test_acc"] - 0.06
    assert "test_forget_class_acc" in m["unlearned"] and m["unlearned"]["test_forget_class_acc"] <= 0.2
    assert 0 < res.params["changed"] <= 0.2 * res.params["total"]
    assert np.asarray(res.selection["heads"]).shape == (6, 12)
    assert np.asarray(res.selection["filters"]).shape == (6, 1536)
    assert np.asarray(res.selection["heads"]).sum() == round(0.1 * 72)
    assert np.asarray(res.selection["filters"]).sum() == round(0.1 * 6 * 1536)
    # the shared original model is untouched
    after = _state(bbc_ws.task)
    assert all(torch.equal(before[k], after[k]) for k in before)
    # unlearned: only parameters of selected units differ
    changed = {k for k, v in _state(res.unlearned).items() if not torch.equal(v, before[k])}
    assert changed and all(".encoder.layer." in k for k in changed)
    assert not any("embeddings" in k or "LayerNorm" in k or "classifier" in k or "pooler" in k for k in changed)


def test_same_seed_same_result(bbc_ws):
    cfg = dict(seed=3, step=0.05, retain_sample=64)
    a = unlearn(bbc_ws, "random:24", UnlearnConfig(**cfg)).to_json()
    b = unlearn(bbc_ws, "random:24", UnlearnConfig(**cfg)).to_json()
    for key in ("forget", "selection", "metrics", "params"):
        assert a[key] == b[key]


def test_successive_requests_accumulate(bbc_ws):
    results = unlearn_successively(bbc_ws, ["class:tech:20", "class:business:20"],
                                   UnlearnConfig(step=0.05, retain_sample=64))
    assert len(results) == 2 and len(results[-1].history) == 2
    assert results[1].history[0]["spec"] == "class:tech:20"
    assert set(results[1].history[1]["metrics"]) >= {"forget_acc", "retain_acc", "test_acc", "mia"}
    assert results[1].unlearned is not results[0].unlearned


def test_retrain_is_cached_and_closer(bbc_ws, sport_run):
    from mape.run.workspace import retrain_model

    _, res = sport_run
    assert res.metrics["retrain"]["forget_acc"] <= 0.05
    assert res.gap_to_retrain["unlearned"] < res.gap_to_retrain["original"]
    again, seconds, cached = retrain_model(bbc_ws, res.forget_set.indices)  # what a second run loads
    assert cached  # loaded from the cache (the run trained it, or found it trained by another test file)
    assert round(seconds, 3) == res.timing["retrain_s"]  # its recorded training time
    for (name, a), (_, b) in zip(again.model.state_dict().items(), res.retrained.model.state_dict().items()):
        assert torch.equal(a, b), name


def test_forget_target_comes_from_unused_training_examples(bbc_ws, monkeypatch):
    import dataclasses

    from mape.data.forget import select_forget
    from mape.run import targets as P

    forget = select_forget("random:40", bbc_ws.dataset, 0)
    monkeypatch.setattr("mape.run.workspace.UNSEEN_EVAL_SIZE", 10**6)
    monkeypatch.setattr(bbc_ws, "_unseen", None)
    unseen = bbc_ws.dataset.unseen
    assert len(unseen) == 1781 - 400
    # brute force: per forget example, the original's accuracy on the unused examples of its class, with
    # log π'_c − log π_c added to class c's log-probability (the class prior without the forget set)
    y = bbc_ws.train_y
    left = np.delete(y, forget.indices)
    delta = np.log(np.bincount(left, minlength=5) / len(left)) - np.log(np.bincount(y, minlength=5) / len(y))

    def shifted(p):
        return np.log(np.clip(p.astype(np.float64), 1e-300, 1)) + delta

    pred = shifted(bbc_ws.task.predict_proba(bbc_ws.task.encode(unseen))).argmax(1)
    by_class = {c: (pred[unseen.y == c] == c).mean() for c in np.unique(unseen.y)}
    expected = np.mean([by_class[c] for c in bbc_ws.train_y[forget.indices]])
    value, source = P.forget_target_estimate(bbc_ws, forget)
    assert value == pytest.approx(expected, abs=1e-12) and "1381 unused training examples" in source
    # without a training limit there are no unused examples: the test set is the estimate
    monkeypatch.setattr(bbc_ws, "dataset", dataclasses.replace(bbc_ws.dataset, unseen=None))
    test_pred = shifted(bbc_ws.original_test_probs()).argmax(1)
    expected = np.mean([(test_pred[bbc_ws.test_y == c] == c).mean() for c in bbc_ws.train_y[forget.indices]])
    value, source = P.forget_target_estimate(bbc_ws, forget)
    assert value == pytest.approx(expected, abs=1e-12) and "test examples" in source
    assert P.forget_target_estimate(bbc_ws, select_forget("class:sport", bbc_ws.dataset, 0)) == (0.0, "whole class")


def test_report_states_the_forget_target(bbc_ws):
    res = unlearn(bbc_ws, "random:24", UnlearnConfig(seed=1, retain_sample=64)).to_json()
    target = res["update"]["target"]
    assert 0.5 < target["forget_acc"] <= 1 and "unused training examples" in target["source"]
    assert target["tolerance"] == UnlearnConfig().tolerance and 0 < target["retain_acc"] <= 1
    json.dumps(res)
    from mape.serving.wording import summary_markdown

    shown = summary_markdown(res)
    assert f"**Forget target:** {100 * target['forget_acc']:.1f}% forget accuracy ({target['source']})" in shown
    assert "may turn wrong" not in shown  # a random set spans every class: no class focus
    res["update"]["target"]["class_retain"] = {"examples": 40, "may_turn_wrong": 1}  # as for part of a class
    assert "at most 1 of its 40 examples of the forget set's class(es)" in summary_markdown(res)
    res["update"]["auto"] = False  # a fixed step aims at nothing: no target line
    assert "Forget target" not in summary_markdown(res)


def test_cli_unlearn_writes_the_schema(tmp_path, capsys):
    out = tmp_path / "r.json"
    code = main(["unlearn", "--preset", "test-minilm-bbc", "--train-limit", "400", "--forget", "class:sport",
                 "--device", "cpu", "--step", "0.05", "--retain-sample", "64", "--quiet", "--out", str(out)])
    assert code == 0
    r = json.loads(out.read_text(), parse_constant=lambda c: pytest.fail(f"non-strict JSON value {c}"))
    assert r["preset"] == "test-minilm-bbc"
    assert set(r["forget"]) >= {"spec", "size", "indices"} and r["forget"]["size"] == len(r["forget"]["indices"])
    for name in ("original", "unlearned"):
        assert set(r["metrics"][name]) >= {"forget_acc", "retain_acc", "test_acc", "mia", "test_forget_class_acc"}
        assert all(0 <= v <= 1 for v in r["metrics"][name].values())
    assert set(r["selection"]) >= {"heads", "filters", "swaps"}
    assert set(r["timing"]) >= {"search_s", "update_s", "total_s"}
    assert set(r["params"]) >= {"changed", "total"} and r["device"] == "CPU"
    assert "gap_to_retrain" not in r


@pytest.mark.parametrize("argv, message", [
    (["unlearn", "--preset", "nope", "--forget", "random:3", "--out", "x.json"], "Unknown preset"),
    (["unlearn", "--preset", "test-minilm-bbc", "--train-limit", "400", "--forget", "class:weather", "--out", "x.json"],
     "class"),
    (["unlearn", "--preset", "test-minilm-bbc", "--forget", "random:3", "--sparsity", "1.5", "--out", "x.json"],
     "Sparsity"),
    (["unlearn", "--preset", "test-minilm-bbc", "--forget", "random:3", "--step", "fast", "--out", "x.json"], "Step"),
    (["unlearn", "--preset", "test-minilm-bbc", "--forget", "random:3", "--objective", "best", "--out", "x.json"],
     "objective"),
    (["unlearn", "--preset", "test-minilm-bbc", "--forget", "random:3", "--greedy-passes", "-1", "--out", "x.json"],
     "Greedy passes must be a whole number from 0 to 5, got -1"),
    (["unlearn", "--preset", "test-minilm-bbc", "--forget", "random:3"], "--out"),
    (["unlearn", "--model", "not a model id!", "--data", "x", "--forget", "random:3", "--out", "x.json"], "neither"),
    # a named data folder is the only place looked at: no silent fallback to shared/data
    (["unlearn", "--preset", "minilm-sst2", "--data", "no/such/folder", "--forget", "random:3", "--out", "x.json"],
     "'no/such/folder' (--data) does not exist"),
    (["unlearn", "--preset", "minilm-agnews", "--data", str(Path(__file__).parent), "--forget", "random:3",
      "--out", "x.json"], "has neither train/test files nor a 'ag_news' subfolder"),
])
def test_cli_bad_input_exits_2_with_one_line(argv, message, capsys):
    assert main(argv + ["--quiet"] if "--out" in argv else argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err and message in err and "Traceback" not in err


def test_corrupt_cache_is_rebuilt(tmp_path, monkeypatch):
    """A flipped byte in a cached original's weights: prepare() trains it again, stores a valid entry and gets
    the same weights (the seeded recipe). On a private cache with the tiny ViT preset of tests/test_audit.py
    (real MNIST digits), so that the shared original other test workers read is never corrupted."""
    import dataclasses

    from mape.data.presets import PRESETS, get_preset
    from tests.test_baselines import TINY_RECIPE, TINY_VIT

    monkeypatch.setenv("MAPE_CACHE", str(tmp_path))
    preset = dataclasses.replace(get_preset("vit-mnist"), name="test-corrupt-mnist", vit_config=TINY_VIT,
                                 recipe=dataclasses.replace(TINY_RECIPE, epochs=2))
    monkeypatch.setitem(PRESETS, preset.name, preset)
    first = prepare(preset.name, train_limit=200, device="cpu")
    weights = cache.entry_dir("original", first.key) / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    ws = prepare(preset.name, train_limit=200, device="cpu")
    assert cache.load_model("original", ws.key, ws.task.clone().model) is not None  # rebuilt and valid
    a, b = _state(ws.task), _state(first.task)
    assert all(torch.equal(a[k], b[k]) for k in a)  # same seeded recipe → same weights


def test_two_workers_needing_one_model_at_once_train_it_once(tmp_path, monkeypatch):
    """The cache's training lock: the second of two concurrent requests for the same untrained model waits
    for the first and loads what it saved (test workers, or the app and a command line, on one cache)."""
    import threading
    import time

    from mape.run import workspace as RW
    from tests.tiny import tiny_bert, tiny_data

    monkeypatch.setenv("MAPE_CACHE", str(tmp_path))
    calls = []

    def slow_train(task, data, recipe, progress=None, stage=None):
        calls.append(threading.get_ident())
        time.sleep(1.0)  # long enough for the other request to arrive while this one trains
        with torch.no_grad():
            for p in task.model.parameters():
                p.add_(0.25)

    monkeypatch.setattr(RW, "train", slow_train)
    preset = type("Preset", (), {"recipe": None})()
    results = []

    def request():
        results.append(RW.train_or_load("original", "lock-test", lambda: tiny_bert(seed=0), tiny_data(), preset,
                                        "cpu", None, "training", {}))

    threads = [threading.Thread(target=request) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and sorted(r[2] for r in results) == [False, True]  # trained once, loaded once
    a, b = (_state(r[0]) for r in results)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["classifier.weight"], _state(tiny_bert(seed=0))["classifier.weight"])


def test_so_follow_up_steps_use_the_examples_not_yet_forgotten(bbc_ws, monkeypatch):
    """When one so step cannot reach the target, each further step takes its forget gradient on the
    forget examples the model still classifies correctly, and its retain gradient on the retain sample."""
    from mape.method import scoring
    from mape.method.update import Target

    # an unreachable accuracy-only target (as for a whole class), no stall or time stop: every step runs
    monkeypatch.setattr("mape.run.targets.forget_target",
                        lambda ws, forget, ra, tol, *rest: Target(-1.0, ra, tol))
    monkeypatch.setattr("mape.run.follow_up._no_follow_up", lambda *args: None)
    monkeypatch.setattr("mape.run.follow_up.RUN_WORK_SHARE", float("inf"))
    monkeypatch.setattr(pipeline, "distil_follow_up", lambda *args: False)  # the so follow-ups, not mape.method.distil
    passes, real = [], scoring._gate_pass

    def recording(task, enc, *args, **kw):
        if len(args) > 3 and args[3] == "grad" and args[1] is False:  # the follow-up steps' parameter-gradient passes
            correct = int((task.predict_proba(enc).argmax(1) == enc.labels.numpy()).sum())
            passes.append((len(enc), correct))
        return real(task, enc, *args, **kw)

    monkeypatch.setattr(scoring, "_gate_pass", recording)
    res = unlearn(bbc_ws, "class:sport:24", UnlearnConfig(so_steps=3, retain_sample=48, seed=1))
    rounds = [t["round"] for t in res.update["trials"]]
    assert isinstance(res.update["step"], list) and len(res.update["step"]) == 3
    assert sorted(set(rounds)) == [1, 2, 3] and rounds == sorted(rounds)
    assert not res.update["reached_target"]
    forget_passes, retain_passes = passes[0::2], passes[1::2]
    assert len(forget_passes) == len(retain_passes) == 2
    for n, correct in forget_passes:  # only examples still classified correctly, all of them
        assert 0 < n <= 24 and correct == n
    assert all(n == 48 for n, _ in retain_passes)


@pytest.mark.parametrize("kept", [0, 25])
def test_a_distilled_push_that_kept_nothing_hands_over_to_so_follow_ups(bbc_ws, monkeypatch, kept):
    """A distilled push whose every check was farther from the target than the first step (``steps`` 0: e.g. the
    whole class off its label but the retain check broken, vit-mnist class:3 seed 0 on an Intel CPU) is not the
    run's last word: the so follow-ups run from the first step's point. A push that kept a checkpoint ends the
    run as before."""
    from mape.method.update import Target

    monkeypatch.setattr("mape.run.targets.forget_target",
                        lambda ws, forget, ra, tol, *rest: Target(-1.0, ra, tol))
    monkeypatch.setattr("mape.run.follow_up._no_follow_up", lambda *args: None)
    monkeypatch.setattr("mape.run.follow_up.RUN_WORK_SHARE", float("inf"))

    def distil(ws, task, start, mp, smp, config, evaluate, target, report, work):
        report.trials = report.trials + [{"step": 25, "forget_acc": 0.0, "retain_acc": 0.5, "round": "distil"}]
        report.distil = {"steps": kept, "taken": 25, "stopped": "nothing left to push"}
        return True

    monkeypatch.setattr(pipeline, "distil_follow_up", distil)
    res = unlearn(bbc_ws, "class:sport:24", UnlearnConfig(so_steps=3, retain_sample=48, seed=1))
    rounds = [t["round"] for t in res.update["trials"]]
    assert res.update["distil"]["steps"] == kept and rounds.count("distil") == 1
    if kept:  # the push's checkpoint is the run's result
        assert set(rounds) == {1, "distil"} and not isinstance(res.update["step"], list)
    else:  # round 1, the push's check, then so follow-up steps 2 and 3
        assert rounds.index("distil") == max(i for i, r in enumerate(rounds) if r == 1) + 1
        assert [r for r in rounds if r != "distil"] == sorted(r for r in rounds if r != "distil")
        assert sorted(set(rounds) - {"distil"}) == [1, 2, 3] and len(res.update["step"]) == 3
