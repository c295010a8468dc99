"""compare(): seeds, summary JSON, markdown, CLI — on the tiny MNIST ViT workspace."""

import json

import numpy as np
import pytest

from mape.base.errors import MapeError
from mape.cli import main
from mape.data.forget import select_forget
from mape.evaluation.compare import MAX_OPEN_FILES, CompareResult, compare, merge_seeds, open_saved, parse_seeds
from tests.test_baselines import ws  # noqa: F401  (module-scoped fixture)

KEYS = ("forget_acc", "retain_acc", "test_acc", "mia", "gap_to_retrain", "time_s", "params_changed")


@pytest.fixture(scope="module")
def result(ws):  # noqa: F811
    return compare(ws, "random:24", ["mape", "so", "ft"], seeds=[0, 1], relearn_steps=2)


def test_json_has_mean_and_std_per_metric_per_method(result):
    js = json.loads(json.dumps(result.to_json(), allow_nan=False))  # strict JSON: NaN becomes null
    assert js["methods"] == ["mape", "so", "ft"] and js["seeds"] == [0, 1] and js["reference"] == "retrain"
    assert set(js["results"]) == {"original", "mape", "so", "ft", "retrain"}
    for name in ("mape", "so", "ft", "retrain"):
        entry = js["results"][name]
        for key in KEYS:
            assert set(entry[key]) == {"mean", "std", "values"}, (name, key)
            assert len(entry[key]["values"]) == 2 and entry[key]["std"] >= 0
            assert entry[key]["mean"] == pytest.approx(np.mean(entry[key]["values"]))
        assert entry["n"] == 2
        assert len(entry["relearn"]["mean"]) == 3
    assert js["results"]["retrain"]["gap_to_retrain"]["mean"] == 0.0
    assert js["results"]["retrain"]["time_s"]["mean"] > 0
    assert js["results"]["original"]["params_changed"]["mean"] == 0
    assert js["machine"]["torch"] and js["machine"]["cores"] >= 1
    assert js["config"]["salun_fraction"] == 0.5 and js["config"]["relearn_steps"] == 2


def test_seed_selects_the_forget_set_for_every_method(ws, result):  # noqa: F811
    digests = [run["forget"]["indices_sha256"] for run in result.runs]
    assert len(set(digests)) == 2  # seeds 0 and 1 draw different forget sets
    for run in result.runs:
        f = select_forget("random:24", ws.dataset, run["seed"])
        assert run["forget"]["size"] == f.size
        assert set(run["methods"]) == {"original", "mape", "so", "ft", "retrain"}
        ref = run["methods"]["retrain"]["metrics"]
        for name, row in run["methods"].items():
            gap = np.mean([abs(row["metrics"][k] - ref[k]) for k in ("forget_acc", "retain_acc", "test_acc", "mia")])
            assert row["gap_to_retrain"] == pytest.approx(gap)


def test_same_seed_same_numbers(ws, result):  # noqa: F811
    again = compare(ws, "random:24", ["mape"], seeds=[0], relearn_steps=0)
    a = again.runs[0]["methods"]["mape"]["metrics"]
    b = result.runs[0]["methods"]["mape"]["metrics"]
    assert a == b


def test_markdown_and_files(result, tmp_path):
    json_path, md_path = result.save(tmp_path / "sub" / "cmp.json")
    assert json_path.exists() and md_path == tmp_path / "sub" / "cmp.md" and md_path.exists()
    md = md_path.read_text()
    assert "| Method |" in md and "Gap to retrain (pts)" in md and "retrain (reference)" in md
    best = result.best_method()
    assert best in ("mape", "so", "ft")
    assert f"**{best}**" in md and "**retrain" not in md
    gap_pts = 100 * result.results[best]["gap_to_retrain"]["mean"]
    assert f"**{gap_pts:.1f} ±" in md
    assert "Relearn test" in md
    assert json.loads(json_path.read_text())["results"]["mape"]["forget_acc"]["mean"] is not None


def test_rows_feed_the_metrics_figure(result):
    from mape.serving.charts import metrics_figure

    rows = result.rows()
    assert list(rows) == ["original", "mape", "so", "ft", "retrain"]
    assert all(0 <= rows[n]["forget_acc"] <= 1 for n in rows)
    fig = metrics_figure(rows)
    assert len(fig.data) == 5


def test_class_forget_and_successive_requests(ws):  # noqa: F811
    res = compare(ws, None, ["mape-random"], seeds=[0], requests=["class:7:12", "random:12"], relearn_steps=0)
    assert [s["request"] for s in res.successive] == [1, 2]
    assert res.successive[0]["forgotten"] == 12 and 12 < res.successive[1]["forgotten"] <= 24
    assert set(res.successive[1]["results"]) == {"original", "mape-random", "retrain"}
    assert res.results["mape-random"]["gap_to_retrain"] == res.successive[1]["results"]["mape-random"]["gap_to_retrain"]
    assert "After request 2" in res.markdown()


def test_bad_input_is_a_clear_error(ws):  # noqa: F811
    with pytest.raises(MapeError, match="Unknown method"):
        compare(ws, "random:8", ["mape", "nope"], seeds=[0])
    with pytest.raises(MapeError, match="No forget set"):
        compare(ws, None, ["mape"], seeds=[0])
    with pytest.raises(MapeError):
        compare(ws, "random:99999", ["mape"], seeds=[0])
    assert parse_seeds("0, 1,1,2") == [0, 1, 2]
    with pytest.raises(MapeError):
        parse_seeds("0,x")


def _no_prepare(*a, **k):
    raise AssertionError("prepare must not run for bad input")


@pytest.mark.parametrize("argv, needle", [
    (["--forget", "random:5", "--methods", "mape,bogus"], "Unknown method 'bogus'"),
    (["--forget", "random:5", "--seeds", "a"], "Seed 'a'"),
    (["--methods", "mape"], "needs --forget"),
])
def test_cli_bad_input_exits_2_with_one_line(monkeypatch, capsys, tmp_path, argv, needle):
    monkeypatch.setattr("mape.run.workspace.prepare", _no_prepare)
    code = main(["compare", *argv, "--out", str(tmp_path / "x.json"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: ") and needle in err
    assert not (tmp_path / "x.json").exists()


def test_cli_compare_writes_json_and_markdown(ws, monkeypatch, capsys, tmp_path):  # noqa: F811
    monkeypatch.setattr("mape.run.workspace.prepare", lambda *a, **k: ws)
    out = tmp_path / "c.json"
    code = main(["compare", "--forget", "random:16", "--methods", "mape,ssd", "--seeds", "0",
                 "--relearn", "0", "--out", str(out), "--quiet"])
    assert code == 0, capsys.readouterr().err
    js = json.loads(out.read_text())
    assert set(js["results"]) == {"original", "mape", "ssd", "retrain"}
    assert (tmp_path / "c.md").read_text().startswith("**")
    assert "wrote" in capsys.readouterr().out


def test_result_type(result):
    assert isinstance(result, CompareResult)


def _without_times(results: dict) -> dict:
    return {name: {k: v for k, v in entry.items() if k != "time_s"} for name, entry in results.items()}


def test_merging_runs_of_single_seeds_equals_one_run_over_both(ws, tmp_path):  # noqa: F811
    joint = compare(ws, "random:12", ["mape", "ssd"], seeds=[0, 1], relearn_steps=1)
    paths = []
    for seed in (1, 0):  # merged out of order on purpose
        path, _ = compare(ws, "random:12", ["mape", "ssd"], seeds=[seed],
                          relearn_steps=1).save(tmp_path / f"s{seed}.json")
        paths.append(path)
    merged = merge_seeds([CompareResult.load(p) for p in paths])
    opened = open_saved(paths)  # what the app's "Open saved comparison(s)" shows
    assert opened.to_json() == merged.to_json()
    assert open_saved(paths[:1]).to_json() == CompareResult.load(paths[0]).to_json()
    assert merged.seeds == [0, 1] and [r["seed"] for r in merged.runs] == [0, 1]
    assert merged.methods == ["mape", "ssd"] and merged.results["mape"]["n"] == 2
    want = json.loads(json.dumps(joint.to_json()))["results"]
    got = json.loads(json.dumps(merged.to_json()))["results"]
    assert _without_times(got) == _without_times(want)
    assert got["mape"]["time_s"]["mean"] == pytest.approx(np.mean(got["mape"]["time_s"]["values"]))
    assert "mean ± std over 2 seed(s)" in merged.markdown()


def test_merge_refuses_what_cannot_be_averaged(ws, tmp_path):  # noqa: F811
    a = compare(ws, "random:12", ["mape"], seeds=[0], relearn_steps=0)
    with pytest.raises(MapeError, match="seed\\(s\\) 0 appear in more than one run"):
        merge_seeds([a, a])
    other = CompareResult.from_json({**a.to_json(), "seeds": [1], "methods": []})
    with pytest.raises(MapeError, match="methods differs"):
        merge_seeds([a, other])
    elsewhere = CompareResult.from_json({**a.to_json(), "machine": {**a.machine, "cpu": "another CPU"}})
    with pytest.raises(MapeError, match="different machines"):
        merge_seeds([a, elsewhere])
    stricter = CompareResult.from_json({**a.to_json(), "seeds": [1], "config": {**a.config, "tolerance": 0.01}})
    with pytest.raises(MapeError, match=r"config differs \({'tolerance': 0.02} vs {'tolerance': 0.01}\)"):
        merge_seeds([a, stricter])
    succ = CompareResult.from_json({**a.to_json(), "requests": ["random:4", "random:4"]})
    with pytest.raises(MapeError, match="successive requests"):
        merge_seeds([succ])
    with pytest.raises(MapeError, match="Nothing to merge"):
        merge_seeds([])
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(MapeError, match="not valid JSON"):
        CompareResult.load(bad)
    bad.write_text(json.dumps({"preset": "x"}))
    with pytest.raises(MapeError, match="Not a saved comparison"):
        CompareResult.load(bad)
    with pytest.raises(MapeError, match="Cannot read"):
        CompareResult.load(tmp_path / "missing.json")
    # a file with the right keys but rows of the wrong shape is refused before any view indexes into it
    broken = a.to_json()
    broken["results"]["mape"]["forget_acc"] = 0.5
    bad.write_text(json.dumps(broken))
    with pytest.raises(MapeError, match="Not a saved comparison"):
        open_saved([bad])
    with pytest.raises(MapeError, match="Choose one or more"):
        open_saved([])
    with pytest.raises(MapeError, match=f"At most {MAX_OPEN_FILES}"):
        open_saved([bad] * (MAX_OPEN_FILES + 1))
    bad.write_bytes(b"\xff\xfe not text")
    with pytest.raises(MapeError, match="not valid JSON"):
        open_saved([bad])


def test_cli_merge_writes_one_table_and_refuses_a_repeated_seed(ws, monkeypatch, capsys, tmp_path):  # noqa: F811
    monkeypatch.setattr("mape.run.workspace.prepare", lambda *a, **k: ws)
    for seed in ("0", "1"):
        assert main(["compare", "--forget", "random:12", "--methods", "mape", "--seeds", seed, "--relearn", "0",
                     "--out", str(tmp_path / f"s{seed}.json"), "--quiet"]) == 0
    parts = [json.loads((tmp_path / f"s{s}.json").read_text()) for s in "01"]
    assert main(["merge", str(tmp_path / "s1.json"), str(tmp_path / "s0.json"), "--out", str(tmp_path / "m.json")]) == 0
    merged = json.loads((tmp_path / "m.json").read_text())
    assert merged["seeds"] == [0, 1]
    assert merged["results"]["mape"]["gap_to_retrain"]["values"] == [
        p["results"]["mape"]["gap_to_retrain"]["mean"] for p in parts]
    assert "over 2 seed(s)" in (tmp_path / "m.md").read_text()
    capsys.readouterr()
    assert main(["merge", str(tmp_path / "s0.json"), str(tmp_path / "s0.json"), "--out", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "seed(s) 0 appear in more than one run" in err
    assert not (tmp_path / "x.json").exists()
