"""compare() on a local Ray instance (2 CPUs) against the local executor, on a tiny ViT over real MNIST
digits: the same numbers, a worker killed once is retried, a row that always fails is kept as failed."""

import dataclasses
import json
import os
import sys

import pytest
import torch

from mape.base.errors import MapeError
from mape.cli import main
from mape.data.presets import PRESETS, get_preset
from mape.evaluation.compare import compare
from mape.evaluation.executors import FAULTS_ENV, INSTALL_RAY, RayExecutor
from tests.test_baselines import TINY_RECIPE, TINY_VIT

PRESET = "test-ray-mnist"
METHODS = ["mape", "ssd"]


@pytest.fixture(scope="module")
def ws():
    from mape.run.workspace import prepare

    PRESETS.setdefault(PRESET, dataclasses.replace(get_preset("vit-mnist"), name=PRESET, vit_config=TINY_VIT,
                                                   recipe=TINY_RECIPE))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as many threads as a Ray task with one CPU: the same floating-point sums
    try:
        yield prepare(PRESET, train_limit=400, device="cpu")
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def faults(tmp_path_factory):
    """The fault-injection file the workers read (set before Ray starts, so the workers see it)."""
    path = tmp_path_factory.mktemp("faults") / "faults.json"
    path.write_text("{}")
    os.environ[FAULTS_ENV] = str(path)
    yield path
    os.environ.pop(FAULTS_ENV, None)


@pytest.fixture(scope="module")
def ray_instance(faults):
    pytest.importorskip("ray")
    from mape.evaluation.executors import start_ray

    ray = start_ray(num_cpus=2)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def local_result(ws):
    return compare(ws, "random:24", METHODS, seeds=[1], relearn_steps=1)


def _numbers(row: dict) -> dict:
    """Everything of a row but times and the node."""
    return {k: row.get(k) for k in ("metrics", "gap_to_retrain", "params_changed", "relearn", "failed")}


def _without_times(results: dict) -> dict:
    return {name: {k: v for k, v in entry.items() if k != "time_s"} for name, entry in results.items()}


def test_ray_gives_the_local_numbers_and_retries_a_killed_worker(ws, faults, ray_instance, local_result):
    faults.write_text(json.dumps({"1:mape": "crash-once"}))
    lines = []
    res = compare(ws, "random:24", METHODS, seeds=[1], relearn_steps=1,
                  executor=RayExecutor(max_retries=1, on_row=lines.append))
    assert (faults.parent / "faults.json.1-mape.crashed").exists()  # the first attempt's worker did exit
    local = json.loads(json.dumps(local_result.to_json()))
    got = json.loads(json.dumps(res.to_json()))
    assert [r["seed"] for r in got["runs"]] == [1]  # rows of several requests: the CLI test below
    for run_l, run_r in zip(local["runs"], got["runs"]):
        assert run_r["forget"] == run_l["forget"]
        assert list(run_r["methods"]) == ["original", "retrain", *METHODS]  # the local order
        for name, row in run_l["methods"].items():
            assert _numbers(run_r["methods"][name]) == _numbers(row), (run_l["seed"], name)
            assert run_r["methods"][name]["node"]
            assert run_r["methods"][name]["metrics"]["forget_acc"] is not None
    assert _without_times(got["results"]) == _without_times(local["results"])
    assert got["results"]["mape"]["n"] == 1  # the table is whole
    assert got["executor"]["name"] == "ray" and got["executor"]["tasks"] == 1 + len(METHODS)
    assert set(got["executor"]["nodes"]) == {run_r["methods"]["mape"]["node"] for run_r in got["runs"]}
    assert local["executor"] == {"name": "local"}
    assert len(lines) == len(METHODS) + 1 and any("seed 1 · mape: gap" in line for line in lines)


def test_audit_on_ray_gives_the_local_numbers_with_tasks_in_parallel(ws, ray_instance):
    """issue 29: the audit's models as Ray tasks (one CPU each on a 2-CPU instance) give the local executor's
    rows exactly, and two tasks ran at once (their wall-clock intervals overlap)."""
    import shutil

    from mape.data.forget import select_forget
    from mape.evaluation import audit as A
    from mape.evaluation.baselines import BaselineConfig

    local = A.audit(ws, "random:20", ["mape"], models=3, threads=1)
    store = A.TaskStore(ws, select_forget("random:20", ws.dataset, seed=0), BaselineConfig())
    shutil.rmtree(store.folder)  # computed again, on Ray
    got = A.audit(ws, "random:20", ["mape"], models=3, executor=RayExecutor())
    assert got.tasks["computed"] == 12 and got.executor["name"] == "ray" and got.executor["tasks"] == 12
    numbers = lambda rows: {n: {k: v for k, v in r.items() if k != "seconds_per_model"}  # noqa: E731
                            for n, r in rows.items()}
    assert numbers(got.rows) == numbers(local.rows) and got.sanity == local.sanity
    assert got.executor["most_at_once"] == 2 and local.executor["most_at_once"] == 1


def test_a_row_that_keeps_failing_is_reported_and_the_others_kept(ws, faults, ray_instance, monkeypatch, capsys,
                                                                  tmp_path):
    """Successive requests through the CLI: ssd raises on every attempt; the other rows are the local ones."""
    faults.write_text(json.dumps({"0:ssd": "raise"}))
    requests = ["class:3:12", "random:12"]
    local = json.loads(json.dumps(compare(ws, None, METHODS, seeds=[0], requests=requests, relearn_steps=1).to_json()))
    # the driver's workspace (workers prepare their own)
    monkeypatch.setattr("mape.run.workspace.prepare", lambda *a, **k: ws)
    out = tmp_path / "c.json"
    code = main(["compare", "--preset", PRESET, "--requests", ";".join(requests), "--methods", ",".join(METHODS),
                 "--seeds", "0", "--relearn", "1", "--executor", "ray", "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert code == 1
    assert err.strip().splitlines() == ["failed: seed 0 · ssd: RuntimeError: injected failure of seed 0 · ssd"]
    js = json.loads(out.read_text())
    row = js["runs"][0]["methods"]
    assert row["ssd"]["failed"].startswith("RuntimeError") and row["ssd"]["metrics"] == {}
    assert js["results"]["ssd"]["n"] == 0 and "gap_to_retrain" not in js["results"]["ssd"]
    for name in ("original", "retrain", "mape"):  # kept, with the local numbers
        assert _numbers(row[name]) == _numbers(local["runs"][0]["methods"][name])
    assert js["results"]["mape"]["n"] == 1
    for step, step_local in zip(js["successive"], local["successive"]):  # after each request
        assert _without_times(step["results"])["mape"] == _without_times(step_local["results"])["mape"]
    assert "Failed rows (left out of the means): seed 0 · ssd: RuntimeError" in (tmp_path / "c.md").read_text()


def _no_prepare(*a, **k):
    raise AssertionError("prepare must not run without Ray")


@pytest.mark.parametrize("argv, needle", [
    (["--executor", "ray"], INSTALL_RAY),
    (["--address", "10.0.0.1:6379"], "--address needs --executor ray"),
])
def test_cli_without_ray_exits_2_with_one_line(monkeypatch, capsys, tmp_path, argv, needle):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError, as when it is not installed
    monkeypatch.setattr("mape.run.workspace.prepare", _no_prepare)
    code = main(["compare", "--forget", "random:5", *argv, "--out", str(tmp_path / "x.json"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: ") and needle in err
    assert not (tmp_path / "x.json").exists()


def test_library_without_ray_is_a_clear_error(ws, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(MapeError, match="pip install -r requirements-ray.txt"):
        compare(ws, "random:8", ["mape"], seeds=[0], executor="ray")
    with pytest.raises(MapeError, match="Unknown executor 'dask'"):
        compare(ws, "random:8", ["mape"], seeds=[0], executor="dask")
