"""The app's API endpoints ``unlearn`` and ``compare`` through gradio_client, plus its UI-independent helpers.

The app is launched in-process on a free port with the tiny presets (``tiny-bbc``: MiniLM, one epoch on
400 BBC articles; ``tiny-mnist``: the small ViT, three epochs on 1,200 digits), so a fresh cache trains
the original models in seconds. Set ``MAPE_CACHE`` to keep them between runs.
"""

from __future__ import annotations

import json
import re
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

TINY = ["tiny-bbc", "tiny-mnist"]
FAST = dict(objective="mlr", sparsity=0.9, update="so", seed=0, retrain=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(monkeypatch_module):
    import torch

    monkeypatch_module.setenv("MAPE_APP_RETAIN_SAMPLE", "128")
    monkeypatch_module.setenv("MAPE_APP_PRESETS", ",".join(TINY))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # concurrent runs on 2 cores: no OpenMP oversubscription
    import app

    demo = app.build_demo(presets=TINY, concurrency=2)
    port = free_port()
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def call(url: str, preset: str, forget: str, **kw) -> dict:
    from gradio_client import Client

    args = {**FAST, **kw}
    client = Client(url, verbose=False, download_files=False)
    return client.predict(preset, forget, args["objective"], args["sparsity"], args["update"], args["seed"],
                          args["retrain"], api_name="/unlearn")


def check_result(res: dict, preset: str, spec: str, size: int, layers: int, heads: int) -> None:
    assert res["preset"] == preset
    assert res["forget"]["spec"] == spec and res["forget"]["size"] == size
    assert len(res["forget"]["indices"]) == size
    for name in ("original", "unlearned"):
        for key in ("forget_acc", "retain_acc", "test_acc", "mia"):
            assert isinstance(res["metrics"][name][key], float) and 0.0 <= res["metrics"][name][key] <= 1.0
    sel = np.asarray(res["selection"]["heads"])
    assert sel.shape == (layers, heads)
    assert res["selection"]["selected_heads"] == int(sel.sum()) > 0
    assert res["params"]["changed"] > 0 and res["params"]["changed"] < res["params"]["total"]
    assert res["config"]["objective"] == "mlr" and res["config"]["sparsity"] == 0.9
    json.dumps(res, allow_nan=False)  # strict JSON


def test_api_lists_only_unlearn_and_compare(server):
    from gradio_client import Client

    info = Client(server, verbose=False).view_api(print_info=False, return_format="dict")
    assert sorted(info["named_endpoints"]) == ["/compare", "/unlearn"]
    params = [p["parameter_name"] for p in info["named_endpoints"]["/unlearn"]["parameters"]]
    # issue 15 appended "scenario": calls that pass the older arguments by position keep working
    assert params == ["preset", "forget", "objective", "sparsity", "update", "seed", "retrain", "scenario"]
    params = [p["parameter_name"] for p in info["named_endpoints"]["/compare"]["parameters"]]
    assert params == ["preset", "forget", "methods", "seeds", "sparsity", "relearn_steps", "scenario"]


def test_unlearn_endpoint_image_with_retrain(server):
    res = call(server, "tiny-mnist", "class:3", retrain=True)
    size = res["forget"]["size"]
    check_result(res, "tiny-mnist", "class:3", size, layers=4, heads=4)
    assert res["forget"]["forget_class"] == "3"
    assert set(res["metrics"]) == {"original", "unlearned", "retrain"}
    assert set(res["gap_to_retrain"]) == {"original", "unlearned"}
    assert "test_forget_class_acc" in res["metrics"]["unlearned"]


def test_unlearn_endpoint_poisoned_needs_a_scenario(server):
    from gradio_client import Client

    with pytest.raises(Exception, match="needs a scenario"):
        Client(server, verbose=False).predict("tiny-bbc", "poisoned", api_name="/unlearn")


def test_compare_endpoint_against_retrain(server):
    from gradio_client import Client

    client = Client(server, verbose=False, download_files=False)
    res = client.predict("tiny-mnist", "class:3", "mape, mape-random", "0", 0.9, 2, api_name="/compare")
    assert res["preset"] == "tiny-mnist" and res["forget"] == "class:3" and res["seeds"] == [0]
    assert res["methods"] == ["mape", "mape-random"] and res["reference"] == "retrain"
    assert set(res["results"]) == {"original", "mape", "mape-random", "retrain"}
    ref = res["results"]["retrain"]
    assert ref["gap_to_retrain"]["mean"] == 0.0 and ref["forget_acc"]["mean"] < 0.05  # class 3 never seen
    for name in ("original", "mape", "mape-random"):
        e = res["results"][name]
        fa, ra, ta, mia = (e[k]["mean"] for k in ("forget_acc", "retain_acc", "test_acc", "mia"))
        expect = np.mean([abs(fa - ref["forget_acc"]["mean"]), abs(ra - ref["retain_acc"]["mean"]),
                          abs(ta - ref["test_acc"]["mean"]), abs(mia - ref["mia"]["mean"])])
        assert e["gap_to_retrain"]["mean"] == pytest.approx(expect, abs=1e-9)
        assert len(e["relearn"]["mean"]) == 3  # before + 2 relearn steps
    # MAPE forgets more of class 3 than the untouched original
    assert res["results"]["mape"]["forget_acc"]["mean"] < res["results"]["original"]["forget_acc"]["mean"]
    assert 0 < res["results"]["mape"]["params_changed"]["mean"] < res["total_params"]
    json.dumps(res, allow_nan=False)


def test_compare_endpoint_bad_input(server):
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    client = Client(server, verbose=False, download_files=False)
    for methods, seeds, relearn, needle in [("mape,magic", "0", 0, "Unknown method 'magic'"),
                                            ("", "0", 0, "at least one method"),
                                            ("mape", "0,a", 0, "not a whole number"),
                                            ("mape", "0,1,2,3,4,5", 0, "At most 5 seeds"),
                                            ("mape", "0", 99, "between 0 and 10")]:
        with pytest.raises(AppError, match=re.escape(needle)):
            client.predict("tiny-mnist", "class:3", methods, seeds, 0.9, relearn, api_name="/compare")
    with pytest.raises(AppError, match="Unknown class"):
        client.predict("tiny-mnist", "class:eleven", "mape", "0", 0.9, 0, api_name="/compare")


@pytest.mark.parametrize("forget, needle", [
    ("random:abc", "whole number"),
    ("class:nope", "Unknown class"),
    ("teleport:3", "Unknown forget selector"),
    ("random:99999", "only"),
])
def test_unlearn_endpoint_bad_forget_spec(server, forget, needle):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError) as err:
        call(server, "tiny-bbc", forget)
    assert needle in str(err.value)


def test_unlearn_endpoint_bad_settings(server):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="Unknown objective"):
        call(server, "tiny-bbc", "random:5", objective="magic")
    with pytest.raises(AppError, match="strictly between 0 and 1"):
        call(server, "tiny-bbc", "random:5", sparsity=1.5)
    with pytest.raises(AppError, match="Unknown preset"):
        call(server, "no-such-preset", "random:5")


def test_two_sessions_at_once_get_their_own_results(server):
    """Three sessions at once: a text run (the CLI's results schema), a run on the appended ``scenario``
    argument (the original trained with 8 backdoored texts, forget ``poisoned``; the app's first text
    scenario, whose original the browser and serving tests use too) and an image run. Label noise is run end
    to end in tests/test_scenarios.py."""
    from gradio_client import Client

    requests = [("tiny-bbc", "random:12", 0, None), ("tiny-bbc", "poisoned", 1, "backdoor:cf:sport:8"),
                ("tiny-mnist", "class:7:9", 1, None)]
    clients = [Client(server, verbose=False, download_files=False) for _ in requests]
    jobs = [c.submit(p, spec, "mlr", 0.9, "so", seed, False, *([scenario] if scenario else []), api_name="/unlearn")
            for c, (p, spec, seed, scenario) in zip(clients, requests)]
    with ThreadPoolExecutor(len(jobs)) as pool:
        results = list(pool.map(lambda j: j.result(timeout=600), jobs))
    text, backdoor, image = results
    check_result(text, "tiny-bbc", "random:12", 12, layers=6, heads=12)
    assert "gap_to_retrain" not in text and "scenario" not in text  # no retrain asked for, clean data
    # the same schema as the CLI's results JSON
    assert {"preset", "forget", "config", "metrics", "selection", "timing", "params", "device", "update", "memory",
            "history"} <= set(text)
    assert "evaluation" not in text  # the API measures the full splits, like the CLI
    assert backdoor["scenario"]["spec"] == "backdoor:cf:sport:8" and backdoor["forget"]["size"] == 8
    assert sorted(backdoor["forget"]["indices"]) == sorted(backdoor["scenario"]["indices"])
    for name in ("original", "unlearned"):
        assert {"forget_acc", "forget_acc_true", "asr"} <= set(backdoor["metrics"][name])
    check_result(image, "tiny-mnist", "class:7:9", 9, layers=4, heads=4)
    for res, request in zip(results, requests):
        assert res["config"]["seed"] == request[2]
    assert text["forget"]["indices"] != image["forget"]["indices"]


def test_eight_clients_at_once_share_the_original_safely(server):
    """Issue 16: eight gradio_client sessions at once on one preset, mixing /unlearn, /compare, own-input
    predictions and explanations: each gets its own answer, none errors, and the shared original model's
    weights are bit-identical afterwards."""
    from gradio_client import Client

    from mape.serving import owner as serving

    texts = ["The striker scored twice as the club won the cup final.",
             "Shares fell sharply after the bank reported a loss."]
    solo = Client(server, verbose=False, download_files=False)
    expected_probs = [solo.predict("tiny-bbc", t, api_name="/predict") for t in texts]
    expected_attr = [solo.predict("tiny-bbc", t, api_name="/explain") for t in texts]
    before = serving.original_weights("tiny-bbc")
    runs = (("random:10", 2, 10), ("class:sport:7", 3, 7))
    requests = ([("/unlearn", ("tiny-bbc", spec, "mlr", 0.9, "so", seed, False)) for spec, seed, _ in runs]
                + [("/compare", ("tiny-bbc", "random:6", "mape", "4", 0.9, 0))]
                + [("/predict", ("tiny-bbc", t)) for t in (*texts, texts[0])]
                + [("/explain", ("tiny-bbc", t)) for t in texts])
    assert len(requests) == 8
    clients = [Client(server, verbose=False, download_files=False) for _ in requests]
    jobs = [c.submit(*args, api_name=name) for c, (name, args) in zip(clients, requests)]
    with ThreadPoolExecutor(len(jobs)) as pool:
        answers = list(pool.map(lambda j: j.result(timeout=900), jobs))
    for res, (spec, seed, size) in zip(answers[:2], runs):
        assert res["forget"]["spec"] == spec and res["config"]["seed"] == seed
        assert res["forget"]["size"] == size == len(res["forget"]["indices"])
    cmp = answers[2]
    assert (cmp["forget"] == "random:6" and cmp["seeds"] == [4]
            and set(cmp["results"]) == {"original", "mape", "retrain"})
    for got, want in zip(answers[3:6], (*expected_probs, expected_probs[0])):
        assert got["classes"] == want["classes"]
        np.testing.assert_allclose(got["original"], want["original"], rtol=0, atol=1e-6)
    for got, want in zip(answers[6:8], expected_attr):
        assert got["tokens"] == want["tokens"] and got["target"] == want["target"]
        np.testing.assert_allclose(got["scores"], want["scores"], rtol=1e-4, atol=1e-5)
    after = serving.original_weights("tiny-bbc")
    assert before.keys() == after.keys() and all(np.array_equal(before[k], after[k]) for k in before)


def test_a_prediction_never_waits_behind_explanations(server, monkeypatch):
    """Issue 28 item 4: two explanations that hold every explanation slot do not hold a prediction (one
    forward pass): it answers while they are still running."""
    import threading

    from gradio_client import Client

    from mape.serving import owner as serving

    text = "Shares fell sharply after the bank reported a loss."
    warm = Client(server, verbose=False, download_files=False).predict("tiny-bbc", text, api_name="/predict")
    started, release = threading.Semaphore(0), threading.Event()
    slow = serving.explain

    def held_explain(*args, **kw):
        started.release()
        release.wait(120)
        return slow(*args, **kw)

    monkeypatch.setattr(serving, "explain", held_explain)  # the model is prepared (warm): only the queue counts
    try:
        explains = [Client(server, verbose=False, download_files=False).submit("tiny-bbc", text, api_name="/explain")
                    for _ in range(2)]
        for _ in explains:
            assert started.acquire(timeout=60), "the explanations did not start"
        t0 = time.perf_counter()
        got = Client(server, verbose=False, download_files=False).predict("tiny-bbc", text, api_name="/predict")
        waited = time.perf_counter() - t0
        assert not any(job.done() for job in explains)  # both explanations were still running
        assert waited < 30 and got == warm
    finally:
        release.set()
    for job in explains:
        assert job.result(timeout=120)["tokens"]


# --------------------------------------------------------------------------- helpers (no server)


def test_delta_round_trip_rebuilds_the_unlearned_model():
    import torch

    from mape.serving import deltas
    from tests.tiny import tiny_bert, tiny_data

    original = tiny_bert()
    updated = original.clone()
    with torch.no_grad():
        w = updated.model.bert.encoder.layer[0].attention.self.query.weight
        w[:4] += 0.5
    delta = deltas.extract_delta(original.model, updated.model)
    assert list(delta) == ["bert.encoder.layer.0.attention.self.query.weight"]
    assert deltas.delta_entries(delta) == 4 * w.shape[1]
    rebuilt = original.clone()
    deltas.apply_delta(rebuilt.model, delta)
    data = tiny_data()
    np.testing.assert_array_equal(rebuilt.predict_proba(data), updated.predict_proba(data))
    for (n, a), (_, b) in zip(rebuilt.model.state_dict().items(), updated.model.state_dict().items()):
        assert torch.equal(a, b), n


def test_masks_and_results_files(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file

    from mape.serving import files
    heads = np.zeros((2, 4), bool)
    heads[1, 2] = True
    filters = np.ones((2, 24), bool)
    path = files.write_masks(heads, filters, tmp_path, np.ones((2, 4)), np.ones((2, 24)), {"preset": "x"})
    t = load_file(str(path))
    assert t["heads"].shape == (2, 4) and float(t["heads"].sum()) == 1.0 and float(t["heads"][1, 2]) == 1.0
    assert t["filters"].shape == (2, 24)
    with safe_open(str(path), "pt") as f:
        assert f.metadata()["preset"] == "x"
    out = files.write_results_json({"a": np.float32(0.5), "b": float("nan"), "c": np.arange(3)}, tmp_path)
    assert json.loads(out.read_text()) == {"a": 0.5, "b": None, "c": [0, 1, 2]}


def test_user_image_validation(tmp_path):
    from PIL import Image

    from mape.base.errors import MapeError
    from mape.serving import uploads

    # a black digit on white, 100x60: inverted, centred, 28x28
    img = np.full((60, 100), 255, np.uint8)
    img[20:40, 45:55] = 0
    p = tmp_path / "digit.png"
    Image.fromarray(img).save(p)
    arr, note = uploads.load_user_image(str(p), 28, 1, mnist_like=True)
    assert arr.shape == (28, 28) and arr.dtype == np.uint8
    assert "inverted" in note and arr[14, 14] > 200 and arr[0, 0] < 30
    rgb, _ = uploads.load_user_image(str(p), 32, 3, mnist_like=False)
    assert rgb.shape == (32, 32, 3)
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    with pytest.raises(MapeError, match="not an image"):
        uploads.load_user_image(str(bad), 28, 1, True)
    tiny = tmp_path / "tiny.png"
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tiny)
    with pytest.raises(MapeError, match="at least 8"):
        uploads.load_user_image(str(tiny), 28, 1, True)
    with pytest.raises(MapeError, match="Upload an image"):
        uploads.load_user_image(None, 28, 1, True)


def test_tables_and_samples():
    from mape.serving import offer
    from ui import render
    m = {"original": {"forget_acc": 1.0, "retain_acc": 0.99, "test_acc": 0.95, "mia": 0.1},
         "unlearned": {"forget_acc": 0.9, "retain_acc": 0.98, "test_acc": 0.94, "mia": 0.2},
         "retrain": {"forget_acc": 0.93, "retain_acc": 0.99, "test_acc": 0.95, "mia": 0.25}}
    gap = {"original": 0.06, "unlearned": 0.02}
    html = render.metrics_table_html(m, gap)
    assert "100.0%" in html and "90.0%" in html and "2.0 pts" in html and "vs retrain" in html
    assert "No retrain reference" in render.metrics_table_html({k: m[k] for k in ("original", "unlearned")}, None)
    train_y = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    test_y = np.array([0, 1, 2, 2, 1, 0])
    s = offer.pick_samples(train_y, test_y, np.array([2, 5, 8]), np.array([0, 1, 3, 4, 6]), forget_class=2, n=4)
    assert s["forget"] == [2, 5, 8]
    assert test_y[s["test"][0]] == 2 and len(s["test"]) == 4
    assert set(train_y[s["retain"]]) == {0, 1}
    assert offer.compose_spec("random", " 32 ") == "random:32"


def test_model_status_before_training(tmp_path, monkeypatch):
    """An empty cache: the preset is 'not trained yet', with the measured CPU training time."""
    monkeypatch.setenv("MAPE_CACHE", str(tmp_path))
    import app

    status = app.model_status("vit-mnist")
    assert "Not trained yet" in status
    if not app.ON_GPU:
        assert "about 2 minutes on a CPU" in status
    assert not any(tmp_path.iterdir())  # asking for the status trains and writes nothing
