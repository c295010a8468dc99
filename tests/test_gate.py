"""The quality gate (mape.evaluation.gate): bands judged on scripted runs, and one real case end to end on a small
workspace. The full-size cases themselves run in CI after the tests (``python -m mape gate``)."""

import json

import pytest

from mape.cli import main
from mape.evaluation import gate
from mape.evaluation.gate import (
    CASES,
    Case,
    CaseResult,
    at_least_original,
    at_most,
    gap_share,
    gate_passes,
    judge,
    retrain_share,
    select_cases,
    table_lines,
    target_reached,
    within_retrain,
)


def _run(forget=0.0, test=0.97, orig_test=0.975, mia=0.5, retrain_mia=0.55, gap=(0.2, 0.04), reached=True,
         share=0.3, asr=None):
    unlearned = {"forget_acc": forget, "test_acc": test, "mia": mia}
    if asr is not None:
        unlearned["asr"] = asr
    return {"metrics": {"original": {"forget_acc": 1.0, "test_acc": orig_test, "mia": 0.1},
                        "unlearned": unlearned, "retrain": {"forget_acc": 0.0, "test_acc": 0.97, "mia": retrain_mia}},
            "gap_to_retrain": {"original": gap[0], "unlearned": gap[1]},
            "update": {"reached_target": reached, "work": {"retrain_share": share}}}


def _case(*bands):
    return Case("t", "p", "f", tuple(bands))


def test_bands_hold_inside_and_fail_outside():
    ok = judge(_case(at_most("forget_acc", 0.01), at_least_original("test_acc", 0.01), gap_share(0.25),
                     within_retrain("mia", 0.10), target_reached(), retrain_share(0.5)), _run())
    assert [r["ok"] for r in ok] == [True] * 6
    bad = judge(_case(at_most("forget_acc", 0.01), at_least_original("test_acc", 0.01), gap_share(0.25),
                      within_retrain("mia", 0.10), target_reached(), retrain_share(0.5)),
                _run(forget=0.011, test=0.9649, gap=(0.2, 0.051), mia=0.44, reached=False, share=0.51))
    assert [r["ok"] for r in bad] == [False] * 6
    edge = judge(_case(at_least_original("test_acc", 0.01), gap_share(0.25)), _run(test=0.965, gap=(0.2, 0.05)))
    assert all(r["ok"] for r in edge)  # the bounds themselves are inside the band
    assert bad[0]["shown"] == "1.1 %" and bad[0]["band"] == "≤ 1.0 %"
    assert bad[1]["band"] == "≥ original 97.5 − 1.0" and bad[5]["shown"] == "0.510"


def test_a_band_on_something_not_measured_fails():
    rows = judge(_case(at_most("asr", 0.05, "ASR"), within_retrain("mia", 0.1)),
                 {"metrics": {"unlearned": {"forget_acc": 0.0}, "original": {}}, "update": {}})
    assert [r["ok"] for r in rows] == [False, False] and rows[0]["shown"] == "n/a"
    nan = judge(_case(at_most("forget_acc", 0.01)), _run(forget=float("nan")))
    assert not nan[0]["ok"]


def test_every_case_carries_the_budget_band_and_names_are_unique():
    assert len({c.name for c in CASES}) == len(CASES) == 6
    for c in CASES:
        assert any(b.label == "share of a retrain's work" for b in c.bands), c.name
        assert c.train_limit is None  # full size
    # nothing may be excused but the image backdoor while issue 27 item 4 is open
    assert [c.name for c in CASES if c.known_short] in ([], ["mnist-backdoor"])
    assert [c.name for c in select_cases("mnist-3,bbc-sport")] == ["mnist-3", "bbc-sport"]
    with pytest.raises(gate.MapeError, match="nope"):
        select_cases("bbc-sport,nope")


def test_the_gate_fails_on_a_case_out_of_band_unless_marked_known_short():
    inside = CaseResult("a", "A", [{"ok": True}], 1.0)
    outside = CaseResult("b", "B", [{"ok": False}], 1.0)
    excused = CaseResult("c", "C", [{"ok": False}], 1.0, known_short="being worked on")
    broken = CaseResult("d", "D", [], 1.0, error="preset unavailable")
    assert gate_passes([inside, excused]) and not gate_passes([inside, outside]) and not gate_passes([broken])
    lines = table_lines([CaseResult("b", "B", [{"measured": "x", "shown": "2.0 %", "band": "≤ 1.0 %", "ok": False}],
                                    3.0), broken])
    assert "| B | x | 2.0 % | ≤ 1.0 % | ✗ | 3 |" in lines and any("preset unavailable" in line for line in lines)


def test_a_real_case_runs_and_is_judged(bbc_ws, tmp_path):
    """One case end to end on the small BBC workspace (the same code path as the full-size cases)."""
    case = Case("small", "test-minilm-bbc", "class:sport",
                (at_most("forget_acc", 0.01), at_least_original("test_acc", 0.05), retrain_share(0.5)),
                train_limit=400)
    res = gate.run_case(case, workspaces={("test-minilm-bbc", None, 400): bbc_ws})
    assert res.error is None and res.run["forget"]["spec"] == "class:sport"
    values = {r["measured"]: r["value"] for r in res.rows}
    assert values["forget_acc"] == res.run["metrics"]["unlearned"]["forget_acc"]
    share = res.run["update"]["work"]["retrain_share"]  # over 0.5 here: a retrain of 2 epochs on 400 is cheap
    assert values["share of a retrain's work"] == share > 0
    assert [r["ok"] for r in res.rows][-1] == (share <= 0.5) and res.ok == all(r["ok"] for r in res.rows)
    json.dumps(res.to_json())  # plain JSON


def test_cli_gate_rejects_unknown_cases_before_any_work(capsys):
    assert main(["gate", "--cases", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: Unknown gate case") and err.count("\n") == 1
