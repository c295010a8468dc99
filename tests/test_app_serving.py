"""mape.serving.owner, the one owner of the models the app shares: reads are safe against each other, Captum
works on private copies, and on ZeroGPU (a stub ``spaces`` module here) the engine functions are
wrapped with ``spaces.GPU`` and CUDA is touched only inside them.

Runs on the tiny text preset (``tiny-bbc``: a fresh cache trains it in seconds on a CPU)."""

from __future__ import annotations

import importlib.util
import sys
import threading
import types
from pathlib import Path

import numpy as np
import pytest

PRESET = "tiny-bbc"
TEXT = "The striker scored twice as the club won the cup final."


@pytest.fixture(scope="module")
def serving():
    from mape.serving import offer, owner as sv

    offer.register_tiny_presets()
    sv.prepare_preset(PRESET)
    return sv


def _run_once(sv, spec: str = "random:8", seed: int = 0) -> dict:
    for event in sv.run(PRESET, spec, {"seed": seed, "retain_sample": 64}, live=True):
        if event[0] == "error":
            raise AssertionError(event[1])
        if event[0] == "done":
            return event[1]
    raise AssertionError("the run ended without a result")


def test_predictions_during_attributions_are_exact_and_leave_the_original_alone(serving):
    """Bug 1 of issue 16: predict while Captum explains. Every prediction equals the one made alone, no
    Captum hook ever sits on the shared original, and its weights are bit-identical afterwards."""
    run = _run_once(serving)
    before = serving.original_weights(PRESET)
    reference = serving.predict(PRESET, {"run_key": run["run_key"], "delta": run["delta"], "forget_indices": None},
                                TEXT)
    shared_embeddings = serving.served_preset(PRESET).ws.task.model.get_input_embeddings()
    hooks_seen, errors, answers = [], [], []
    done = threading.Event()

    def explain_loop():
        try:
            for _ in range(2):
                out = serving.explain(PRESET, run["delta"], TEXT, None)
                assert len(out["original"]["tokens"]) == len(out["original"]["scores"]) > 3
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(repr(exc))
        finally:
            done.set()

    thread = threading.Thread(target=explain_loop)
    thread.start()
    while not done.is_set():
        hooks_seen.append(len(shared_embeddings._forward_hooks) + len(shared_embeddings._forward_pre_hooks))
        try:
            answers.append(serving.predict(PRESET, {"run_key": run["run_key"], "delta": run["delta"],
                                                    "forget_indices": None}, TEXT))
        except Exception as exc:  # noqa: BLE001
            errors.append(repr(exc))
    thread.join()
    assert not errors, errors
    assert len(answers) >= 2 and max(hooks_seen) == 0
    for out in answers:
        for name in ("original", "unlearned"):
            np.testing.assert_allclose(out[name], reference[name], rtol=0, atol=1e-6)
    after = serving.original_weights(PRESET)
    assert before.keys() == after.keys()
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_live_run_measures_on_seeded_samples_and_says_so(serving, tmp_path):
    run = _run_once(serving, "random:10", seed=3)
    ev = run["result"]["evaluation"]
    ds = serving.dataset(PRESET)
    assert ev["test_examples"] == min(serving.LIVE_EVAL_SAMPLE, len(ds.test))
    assert ev["retain_examples"] == serving.LIVE_EVAL_SAMPLE
    assert run["result"]["forget"]["spec"] == "random:10" and run["result"]["config"]["seed"] == 3
    # the shown samples' original predictions are the memoised ones of the shared original
    ws = serving.served_preset(PRESET).ws
    np.testing.assert_array_equal(run["probs"]["original"]["forget"],
                                  ws.original_train_probs(np.asarray(run["samples"]["forget"])))
    np.testing.assert_array_equal(run["probs"]["original"]["test"],
                                  ws.original_test_probs()[np.asarray(run["samples"]["test"])])
    # the exported model is the original plus the run's delta, and only there differs from it
    from safetensors.numpy import load_file

    exported = load_file(serving.export(PRESET, run["delta"], str(tmp_path), {"preset": PRESET}))
    original = serving.original_weights(PRESET)
    changed = {k for k in original if k in exported and not np.array_equal(original[k], exported[k])}
    assert changed == set(run["delta"])
    for name, (idx, vals) in run["delta"].items():
        np.testing.assert_array_equal(exported[name].reshape(-1)[idx], vals)


# --------------------------------------------------------------------------- ZeroGPU (stub spaces)


class CudaGuard:
    """Replaces torch.cuda's entry points: records each call and whether a ``spaces.GPU`` function was
    running (in any thread: on ZeroGPU the whole call, threads included, runs in the GPU worker);
    reports no GPU, so the work runs on the CPU here."""
    NAMES = ("is_available", "device_count", "current_device", "get_device_name", "synchronize", "empty_cache",
             "reset_peak_memory_stats", "max_memory_allocated", "init", "set_device")

    def __init__(self):
        self.depth = 0
        self.calls: list[tuple[str, bool]] = []

    def install(self, monkeypatch):
        import torch

        for name in self.NAMES:
            if hasattr(torch.cuda, name):
                monkeypatch.setattr(torch.cuda, name, self._guard(name))

    def _guard(self, name):
        def guarded(*args, **kwargs):
            self.calls.append((name, self.depth > 0))
            return False if name == "is_available" else 0
        return guarded

    def stub_spaces(self) -> types.ModuleType:
        guard, wrapped = self, []

        def GPU(duration: int = 60):  # noqa: N802 - the real package's name
            def decorate(fn):
                wrapped.append((fn.__name__, duration))
                if _is_generator(fn):
                    def gen_wrapper(*args, **kwargs):
                        for item in guard._inside(lambda: fn(*args, **kwargs), iterate=True):
                            yield item
                    return gen_wrapper

                def wrapper(*args, **kwargs):
                    return guard._inside(lambda: fn(*args, **kwargs))
                return wrapper
            return decorate

        module = types.ModuleType("spaces")
        module.GPU, module.wrapped = GPU, wrapped
        return module

    def _inside(self, call, iterate: bool = False):
        self.depth += 1
        try:
            return list(call()) if iterate else call()
        finally:
            self.depth -= 1


def _is_generator(fn) -> bool:
    import inspect

    return inspect.isgeneratorfunction(fn)


def test_zero_gpu_wraps_the_engine_and_touches_cuda_only_inside(monkeypatch):
    from mape.serving import offer
    offer.register_tiny_presets()
    guard = CudaGuard()
    guard.install(monkeypatch)
    stub = guard.stub_spaces()
    monkeypatch.setitem(sys.modules, "spaces", stub)
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    folder = Path(__file__).resolve().parents[1] / "mape" / "serving"
    for name in ("device", "owner"):  # second, isolated instances of the modules, imported under ZeroGPU
        spec = importlib.util.spec_from_file_location(f"mape.serving.{name}", folder / f"{name}.py")
        zg = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, spec.name, zg)  # the owner below imports this device module
        spec.loader.exec_module(zg)

    assert zg.ZERO_GPU and zg.ON_GPU and zg.spaces is stub
    assert {name for name, _ in stub.wrapped} == {"run", "compare", "predict", "explain", "export", "trigger_test"}
    assert guard.calls == []  # importing touched no CUDA
    run = None
    for event in zg.run(PRESET, "random:6", {"seed": 0, "retain_sample": 32}, live=True):
        assert event[0] != "error", event
        if event[0] == "done":
            run = event[1]
    assert run is not None and run["result"]["forget"]["size"] == 6
    assert isinstance(run["probs"]["unlearned"]["forget"], np.ndarray)  # NumPy back, no tensors
    out = zg.predict(PRESET, {"run_key": run["run_key"], "delta": run["delta"], "forget_indices": None}, TEXT)
    assert set(out) == {"original", "unlearned"} and all(isinstance(v, np.ndarray) for v in out.values())
    expl = zg.explain(PRESET, run["delta"], TEXT, None)
    assert isinstance(expl["unlearned"]["scores"], (list, np.ndarray))
    assert any(inside for _, inside in guard.calls), "the check never saw the engine ask for CUDA"
    outside = [name for name, inside in guard.calls if not inside]
    assert outside == [], f"CUDA touched outside spaces.GPU functions: {outside}"
    assert zg.served_preset(PRESET).ws.device.type == "cpu"  # the shared models stay on the CPU


# --------------------------------------------------------------------------- the app's shape


def test_app_shape_one_owner_of_the_models_and_small_sections():
    """app.py only assembles (≤ 150 lines); page sections and handlers are small functions; the engine has
    no gradio; the UI never imports torch nor reaches into mape.serving.owner's private state."""
    import ast

    root = Path(__file__).resolve().parents[1]
    assert len((root / "app.py").read_text().splitlines()) <= 150
    ui_files = [root / "app.py", *sorted((root / "ui").glob("*.py"))]
    for path in ui_files + sorted((root / "mape" / "serving").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                assert node.end_lineno - node.lineno < 80, f"{path.name}:{node.name} is long"
    for path in (root / "mape").glob("*.py"):
        imports = [n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, (ast.Import, ast.ImportFrom))]
        names = {a.name.split(".")[0] for n in imports for a in n.names} | {
            (n.module or "").split(".")[0] for n in imports if isinstance(n, ast.ImportFrom)}
        assert "gradio" not in names, path.name
    for path in ui_files:
        text = path.read_text()
        assert "import torch" not in text and "serving._" not in text, path.name


# --------------------------------------------------------------------------- scenarios (issue 15)


def test_a_scenario_is_served_under_its_own_name_with_its_own_data_and_original(serving):
    """``tiny-bbc@backdoor:cf:sport:8``: its own altered dataset and original model (cached under its own
    key), a run on ``poisoned`` records the scenario and its ASR, and the trigger tester puts the word into
    the input and predicts both with all models; the clean preset's original is untouched."""
    from mape.data.scenarios import parse_scenario

    name = serving.served_name(PRESET, "backdoor:cf:sport:8")
    assert serving.split_name(name) == (PRESET, "backdoor:cf:sport:8")
    assert serving.served_name(PRESET, "  ") == PRESET and serving.split_name(PRESET) == (PRESET, None)
    clean_ds, ds = serving.dataset(PRESET), serving.dataset(name)
    sc = serving.scenario_of(name)
    assert serving.scenario_of(PRESET) is None and sc.spec == parse_scenario("backdoor:cf:sport:8").spec
    assert sc.size == 8 and all(ds.classes[int(ds.train.y[i])] == "sport" for i in sc.indices)
    assert all(" cf " in f" {ds.train.x[i]} " and ds.train.x[i] != clean_ds.train.x[i] for i in sc.indices)
    clean_before = serving.original_weights(PRESET)
    serving.prepare_preset(name)
    assert serving.info(name)["scenario"] == "backdoor:cf:sport:8"
    assert serving.served_preset(name).ws.key != serving.served_preset(PRESET).ws.key

    events = list(serving.run(name, "poisoned", {"seed": 0, "retain_sample": 64}, live=True))
    assert events[-1][0] == "done", events[-1]
    run = events[-1][1]
    res = run["result"]
    assert run["preset"] == name and res["preset"] == PRESET
    assert res["scenario"]["spec"] == "backdoor:cf:sport:8" and sorted(res["forget"]["indices"]) == sorted(
        int(i) for i in sc.indices)
    assert {"asr", "forget_acc_true"} <= set(res["metrics"]["original"]) and "asr" in res["metrics"]["unlearned"]

    text = "Shares fell sharply after the bank reported a loss."
    models = {"run_key": run["run_key"], "delta": run["delta"], "forget_indices": None}
    out = serving.trigger_test(name, models, text)
    assert out["clean"] == text and out["triggered"].split().count("cf") == 1
    assert [w for w in out["triggered"].split() if w != "cf"] == text.split()  # the word inserted, nothing else
    assert out["target"] == "sport" and out["trigger"] == "cf"
    for key in ("clean", "triggered"):
        assert set(out["probs"][key]) == {"original", "unlearned"}
        assert all(abs(float(np.sum(p)) - 1) < 1e-4 for p in out["probs"][key].values())
    # the same input predicted directly: the tester's numbers are the models' own
    direct = serving.predict(name, models, out["triggered"])
    for m in ("original", "unlearned"):
        np.testing.assert_allclose(direct[m], out["probs"]["triggered"][m], rtol=1e-5, atol=1e-6)
    from mape.base.errors import MapeError

    with pytest.raises(MapeError, match="backdoor scenario"):
        serving.trigger_test(PRESET, None, text)
    after = serving.original_weights(PRESET)
    assert all(np.array_equal(clean_before[k], after[k]) for k in clean_before)


def test_the_originals_predictions_are_stored_once_and_read_back_by_a_restarted_app(serving):
    """Issue 16: the warm-up stores the original's predictions (test split, fixed retain sample) in the
    disk cache; a fresh workspace reads the same numbers back instead of predicting; a corrupt file is
    recomputed and replaced, never loaded."""
    import copy

    from mape.base import cache

    ws = serving.served_preset(PRESET).ws
    key = ws._probs_key()
    assert key is not None and cache.load_arrays("probs", key) is not None  # stored by the warm-up

    def fresh():
        view = copy.copy(ws)
        view._probs, view._test_probs, view._unseen = {}, None, None
        return view

    retain = ws.retain_eval_indices(np.array([], dtype=np.int64))
    expected_test = ws.task.predict_proba(ws.test_enc)
    expected_retain = ws.task.predict_proba(ws.train_enc.take(retain))
    view = fresh()
    assert view.measure_original(use_cache=True) is True
    np.testing.assert_allclose(view._test_probs, expected_test, atol=1e-6)
    np.testing.assert_allclose(np.stack([view._probs[int(i)] for i in retain]), expected_retain, atol=1e-6)

    path = cache._arrays_path("probs", key)
    path.write_bytes(b"not an npz file")
    view = fresh()
    assert view.measure_original(use_cache=True) is False  # recomputed
    np.testing.assert_allclose(view.original_test_probs(), expected_test, atol=1e-6)
    assert cache.load_arrays("probs", key) is not None  # and stored again, readable


def test_the_trigger_tester_on_images_adds_the_corner_patch_only(serving, monkeypatch):
    """tiny-mnist with ``backdoor:patch:0:30``: the tester's triggered image is the input with a white
    square in the bottom-right corner and nothing else changed; both are predicted by the original. (Served
    from 400 training digits, ``MAPE_APP_TRAIN_LIMIT``: only this test uses that original, and the tester's
    answer does not depend on how well it learned.)"""
    from mape.data.scenarios import patch_size_for

    monkeypatch.setenv("MAPE_APP_TRAIN_LIMIT", "400")
    name = serving.served_name("tiny-mnist", "backdoor:patch:0:30")
    ds = serving.dataset(name)
    x = np.asarray(ds.test.x[int(np.flatnonzero(np.asarray(ds.test.y) != 0)[0])])
    out = serving.trigger_test(name, None, x)
    k = patch_size_for(x.shape[:2])
    triggered = np.asarray(out["triggered"])
    assert triggered.shape == x.shape and (triggered[-k:, -k:] == 255).all()
    rest = np.ones(x.shape[:2], dtype=bool)
    rest[-k:, -k:] = False
    assert np.array_equal(triggered[rest], x[rest]) and out["trigger"] == "patch" and out["target"] == "0"
    assert set(out["probs"]["clean"]) == set(out["probs"]["triggered"]) == {"original"}


def test_the_gpu_probe_answers_like_torch_without_importing_it(monkeypatch, tmp_path):
    """The page is built before torch is imported, so whether the app runs on a GPU is first probed from files:
    CUDA hidden, a torch build without CUDA/ROCm libraries or no GPU driver means no GPU; otherwise torch is
    asked. On this machine the probe must agree with torch itself."""
    import torch

    from mape.serving import device

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert device._no_gpu_possible()
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    cpu_build = not any((Path(torch.__file__).parent / "lib").glob("libtorch_cuda*"))
    if cpu_build:  # this CI: the CPU wheel has no CUDA library, so the probe answers without torch
        assert device._no_gpu_possible()
    assert device.ON_GPU == torch.cuda.is_available()
    if device._no_gpu_possible():
        assert not torch.cuda.is_available()
    fake = tmp_path / "torch"  # a CUDA build of torch, but no driver on this machine: still no GPU
    (fake / "lib").mkdir(parents=True)
    (fake / "lib" / "libtorch_cuda.so").touch()
    spec = importlib.util.spec_from_file_location("torch", fake / "__init__.py", submodule_search_locations=[str(fake)])
    monkeypatch.setattr(device.importlib.util, "find_spec", lambda name: spec)
    no_driver = not any(Path(p).exists() for p in device.GPU_DRIVER_FILES)
    assert device._no_gpu_possible() == no_driver
