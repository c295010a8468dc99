"""The per-example audit (mape.evaluation.audit): the challenge's ε on scripted outputs against a brute-force grid and
hand-computed values, its bucketed points, and a real audit with N = 4 on a tiny ViT over real MNIST digits
that resumes after a killed task."""

import itertools
import json
import math

import numpy as np
import pytest

from mape.base.errors import MapeError
from mape.evaluation import audit as A, epsilons as E

# --------------------------------------------------------------------------- ε of one example


def _brute_force_epsilon(pos, neg, delta=E.DELTA, step=0.05):
    """The reference's two rule families on a grid fine enough to realise every decision of samples on a 0.1
    lattice (thresholds halfway between lattice points), written out rule by rule."""
    pos, neg = np.asarray(pos, float), np.asarray(neg, float)
    lo, hi = min(pos.min(), neg.min()) - 1, max(pos.max(), neg.max()) + 1
    grid = np.round(np.arange(lo, hi + step / 2, step), 6)
    rates = [((neg >= t).mean(), (pos < t).mean()) for t in grid]            # φ ≥ t: positive
    peaky, wide = (pos, neg) if np.ptp(pos) < np.ptp(neg) else (neg, pos)
    width = np.ptp(peaky)
    for left, right in itertools.combinations_with_replacement(grid, 2):   # l ≤ φ ≤ r: the peakier one
        if abs((right - left) - width) <= E.INTERVAL_BUFFER:
            rates.append((((wide >= left) & (wide <= right)).mean(), 1 - ((peaky >= left) & (peaky <= right)).mean()))
    best = 0.0
    for fpr, fnr in rates:
        if fpr == 0 and fnr == 0:
            return E.EPSILON_CAP
        if fpr == 0 or fnr == 0:
            continue
        for a, b in ((fpr, fnr), (fnr, fpr)):   # log(1 − δ − a) − log b where defined
            if 1 - delta - a > 0:
                best = max(best, math.log(1 - delta - a) - math.log(b))
    return min(best, E.EPSILON_CAP)


@pytest.mark.parametrize("seed", range(6))
def test_epsilon_is_the_best_rule_of_both_families(seed):
    rng = np.random.default_rng(seed)
    n = 4 + seed % 3
    pos = np.round(rng.normal(0.6, 1.0, n), 1)     # a 0.1 lattice: the grid realises every decision
    neg = np.round(rng.normal(0.0, 1.0 + 0.5 * (seed % 2), n), 1)
    if np.median(pos) < np.median(neg):
        pos, neg = neg, pos
    if min(np.ptp(pos), np.ptp(neg)) < E.PEAKY_RATIO * max(np.ptp(pos), np.ptp(neg)):
        pytest.skip("degenerate draw")
    assert E.example_epsilon(pos, neg) == pytest.approx(_brute_force_epsilon(pos, neg), abs=1e-12)


def test_epsilon_by_hand():
    """pos = {1, 2, 3, 4} (the larger median), neg = {0, 1.5, 2.5, 3.5}. Single thresholds: t in (1.5, 2] gives
    FPR 1/2, FNR 1/4 and t in (2.5, 3] FPR 1/4, FNR 1/2, both ε = log((1/2 − δ)/(1/4)); below 1 or above 3.5 one
    rate is 0 (skipped); the rest give less. Intervals around the peakier pos (range 3, widths 1 to 5) alternate
    pos and neg, so the best, e.g. [2, 3] (two pos, one neg), gives the same ε. Hence ε = log(2 − 4δ)."""
    pos, neg = [1.0, 2.0, 3.0, 4.0], [0.0, 1.5, 2.5, 3.5]
    assert E.example_epsilon(pos, neg) == pytest.approx(math.log(2 - 4 * E.DELTA), abs=1e-12)
    assert _brute_force_epsilon(pos, neg) == pytest.approx(math.log(2 - 4 * E.DELTA), abs=1e-12)


def test_identical_populations_give_zero_and_separated_ones_the_cap():
    rng = np.random.default_rng(0)
    a = rng.normal(size=8)
    assert E.example_epsilon(a, a.copy()) == 0.0
    assert E.example_epsilon(a + 100, a) == E.EPSILON_CAP
    # a population that never varies (a deterministic method) is itself a tell: the cap (reference rule)
    assert E.example_epsilon(np.full(8, a.mean()), a) == E.EPSILON_CAP
    assert E.example_epsilon(np.ones(4), np.ones(4)) == 0.0 and E.example_epsilon(np.ones(4), np.zeros(4)) == 50.0
    with pytest.raises(MapeError, match="two models"):
        E.example_epsilon([1.0], [2.0])


def test_points_buckets_by_hand():
    # N = 16: ⌈log 15⌉ = 3 → six buckets of 0.5 with 1, 1/2, …, 1/32 points, then 0
    assert E.max_epsilon(16) == 3.0 and E.max_epsilon(4) == 2.0
    eps = np.array([0.0, 0.49, 0.5, 0.99, 1.0, 2.75, 3.0, 50.0])
    assert E.example_points(eps, 16).tolist() == [1, 1, 0.5, 0.5, 0.25, 1 / 32, 0, 0]
    assert E.example_points(np.array([1.99, 2.0]), 4).tolist() == [0.125, 0.0]


def test_forget_score_of_scripted_populations():
    rng = np.random.default_rng(1)
    retrained = rng.normal(size=(8, 30))
    rows = [{"conf": list(c), "retain_acc": 0.9, "test_acc": 0.8, "seconds": 1.0} for c in retrained]
    same = E.row_scores(rows, rows, 8)
    assert same["forget_score"] == 1.0 and same["final_score"] == 1.0 and same["forget_score_ci"] == [1.0, 1.0]
    apart = [{**r, "conf": list(np.asarray(r["conf"]) + 100), "retain_acc": 0.45} for r in rows]
    far = E.row_scores(apart, rows, 8)
    assert far["forget_score"] == 0.0 and far["final_score"] == 0.0 and set(far["epsilons"]) == {50.0}
    half = [{**r, "retain_acc": 0.45} for r in rows]
    assert E.row_scores(half, rows, 8)["final_score"] == pytest.approx(0.5)  # × retain acc / retrain's


def test_most_at_once():
    walls = [[0, 2], [1, 3], [2.5, 4], [5, 6]]
    assert A.most_at_once([{"wall": w} for w in walls]) == 2
    assert A.most_at_once([{"wall": [0, 1]}, {"wall": [1, 2]}]) == 1


# --------------------------------------------------------------------------- a real audit


@pytest.fixture(scope="module")
def ws():
    import dataclasses

    import torch

    from mape.data.presets import PRESETS, get_preset
    from mape.run.workspace import prepare
    from tests.test_baselines import TINY_RECIPE, TINY_VIT
    from tests.test_executors import PRESET  # the tiny ViT preset the Ray tests use

    PRESETS.setdefault(PRESET, dataclasses.replace(get_preset("vit-mnist"), name=PRESET, vit_config=TINY_VIT,
                                                   recipe=TINY_RECIPE))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield prepare(PRESET, train_limit=400, device="cpu")
    finally:
        torch.set_num_threads(threads)


def test_an_audit_resumes_after_a_killed_task(ws, monkeypatch, tmp_path):
    """The sixth model's task dies; the five before it are kept, and the next call computes only the rest and
    gives exactly the numbers of an audit run in one go (which the third call reads back from the store)."""
    real = A.run_task
    calls = []

    def dies_on_the_sixth(*args, **kwargs):
        calls.append(args[2])
        if len(calls) == 6:
            raise KeyboardInterrupt("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(A, "run_task", dies_on_the_sixth)
    with pytest.raises(KeyboardInterrupt):
        A.audit(ws, "random:24", ["mape"], models=4, threads=1)
    monkeypatch.setattr(A, "run_task", real)
    resumed = A.audit(ws, "random:24", ["mape"], models=4, threads=1)
    assert resumed.tasks == {**resumed.tasks, "planned": 16, "computed": 11, "resumed": 5}
    again = A.audit(ws, "random:24", ["mape"], models=4, threads=1)
    assert again.tasks["computed"] == 0 and again.rows == resumed.rows
    # the rows: both sanity populations, the method; per-example ε for the 24 forget examples
    assert list(resumed.rows) == [A.ORIGINAL, "mape", A.INDEPENDENT]
    assert all(len(r["epsilons"]) == 24 for r in resumed.rows.values())
    for row in resumed.rows.values():
        lo, hi = row["forget_score_ci"]
        assert 0 <= lo <= row["forget_score"] <= hi <= 1
    # a tiny model cannot separate the sanity rows at N = 4: the audit says so and ranks nothing
    assert resumed.sanity["separated"] == (resumed.ranking is not None)
    json_path, md_path = again.save(tmp_path / "audit.json")
    assert json.loads(json_path.read_text())["rows"]["mape"]["epsilons"] == resumed.rows["mape"]["epsilons"]
    assert "| mape |" in md_path.read_text() and "N = 4" in md_path.read_text()


def test_a_larger_audit_reuses_every_model_of_a_smaller_one(ws):
    """Models are stored by kind and seed: N = 4 needs the retrains of seeds 0–7, of which N = 3 trained 0–5
    (its independent retrains are 3–5), so only original@3, retrain@6, retrain@7 and mape@3 are new."""
    small = A.audit(ws, "random:16", ["mape"], models=3, threads=1)
    assert small.tasks["computed"] == 12
    larger = A.audit(ws, "random:16", ["mape"], models=4, threads=1)
    assert (larger.tasks["computed"], larger.tasks["resumed"]) == (4, 12)


def test_run_s_starts_from_original_s_so_a_method_that_changes_nothing_is_the_original(ws, monkeypatch):
    """Run s of a method starts from the original of training seed s (kept in the model cache by seed): a
    method that returns its start model unchanged gets the originals' row exactly, ε for ε. (From one shared
    original, such a method's runs would all be the same model, and the deterministic-method rule would give
    it F = 0, below the originals' row.)"""
    from types import SimpleNamespace

    from mape.evaluation import baselines
    from mape.evaluation.baselines import BaselineConfig
    from mape.evaluation.executors import weights_digest

    starts = {}

    def changes_nothing(start, name, forget, seed, config):
        starts[seed] = weights_digest(start.task.model)
        assert start.original_test_probs() is not ws.original_test_probs() or seed == 0  # its own predictions
        return SimpleNamespace(task=start.task)

    monkeypatch.setattr(baselines, "run_method", changes_nothing)
    res = A.audit(ws, "random:16", ["mape"], models=3, threads=1, config=BaselineConfig(sparsity=0.8))
    assert res.rows["mape"]["epsilons"] == res.rows[A.ORIGINAL]["epsilons"]
    assert res.rows["mape"]["forget_score"] == res.rows[A.ORIGINAL]["forget_score"]
    assert starts[0] == weights_digest(ws.task.model)
    assert starts == {s: weights_digest(A.seeded_original(ws, s).model) for s in range(3)}
    assert len(set(starts.values())) == 3  # three different originals, each trained once and read back


def test_seed_zero_populations_are_the_cached_original_and_retrain(ws):
    """The seeded training the audit uses for seeds ≥ 1 gives, at seed 0, the cached original and retrain
    bit for bit: every model of a population comes from the same recipe."""
    import torch

    from mape.data.forget import select_forget
    from mape.run.workspace import retrain_model

    forget = select_forget("random:24", ws.dataset, seed=0)
    same = lambda a, b: all(torch.equal(x, y) for x, y in zip(a.model.state_dict().values(),  # noqa: E731
                                                                b.model.state_dict().values()))
    assert same(A._seeded_training(ws, np.array([], dtype=np.int64), 0), ws.task)
    assert same(A._seeded_training(ws, forget.indices, 0), retrain_model(ws, forget.indices)[0])


@pytest.mark.parametrize("argv, needle", [
    (["--methods", "mape,retrain"], "reference"),
    (["--models", "2"], "at least 3"),
    (["--methods", "nope"], "nope"),
])
def test_cli_bad_input_exits_2_with_one_line(argv, needle, capsys, tmp_path):
    from mape.cli import main

    code = main(["audit", "--preset", "test-ray-mnist", "--train-limit", "400", "--forget", "random:24",
                 "--out", str(tmp_path / "a.json"), "--quiet", *argv])
    err = capsys.readouterr().err
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1


def test_cli_audit_writes_json_and_markdown(ws, tmp_path, capsys):
    from mape.cli import main

    out = tmp_path / "a.json"
    code = main(["audit", "--preset", "test-ray-mnist", "--train-limit", "400", "--forget", "random:24",
                 "--methods", "mape", "--models", "4", "--threads", "1", "--device", "cpu", "--out", str(out),
                 "--quiet"])
    assert code == 0
    res = json.loads(out.read_text())
    assert res["models"] == 4 and res["methods"] == ["mape"] and res["n_forget"] == 24
    assert "F (95 % CI)" in capsys.readouterr().out
