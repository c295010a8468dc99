"""Per-example audit of unlearning (issue 29): can a forget example's output under unlearned models be told
apart from its output under retrained ones?

    res = audit(ws, "random:128", ["mape", "mape-random"], models=16)            # or executor="ray"
    res.save("audit.json")   # JSON + a Markdown table next to it

The score is the one of the NeurIPS 2023 Machine Unlearning Challenge (reference code:
google-deepmind/unlearning_evaluation, ``metric.py``). For each forget example, the logit-scaled confidence
φ = log p_y − log Σ_{j≠y} p_j under N unlearned models (run s of the method starts from the original of
training seed s) and under N retrained models (N training seeds, trained without the forget set) are two samples;
the example's ε is the largest ε of an (ε, δ)-distinguisher among the threshold attacks on them:

    ε = max over decision rules of max(log(1 − δ − FPR) − log FNR, log(1 − δ − FNR) − log FPR), clipped to [0, cap]

over two families of rules: one threshold (above it: the population with the larger median), and an interval
(inside it: the peakier population, i.e. the one with the smaller range; width within ±2 of that range). The
forgetting score F is the mean over forget examples of the bucketed points 2^−k for ε in [k/2, (k+1)/2),
k < 2·⌈log(N − 1)⌉, and 0 beyond; the final score is F × (retain acc / retrain's) × (test acc / retrain's),
accuracies averaged over the N models. F is 1 when no example can be told apart and 0 when all can.

Where and why this differs from the reference:

* **Thresholds.** The reference tries a grid of thresholds 0.01 apart (and, for intervals, 400 left ends per
  right end), on a GPU. Every rule of a family that classifies the pooled sample the same way has the same
  rates, so we evaluate each distinct decision once: single thresholds between consecutive pooled values,
  intervals covering each contiguous run of pooled values whose width constraint can be met. Same families,
  the exact maximum over them (the grid can miss a gap narrower than 0.01, and needs no GPU here). The
  reference also keeps an interval's right end within ±2 of the peakier population's maximum; we do not (an
  interval covering none of that population gives ε = 0, so this only adds wide intervals of wide populations).
* **δ = 1e−5 and the cap of 50** are the reference's. Rules with FPR = FNR = 0 (perfect separation) give the cap;
  rules with exactly one of FPR, FNR at 0 are skipped, as in the reference (too few samples to estimate ε).
* **One original per run.** The challenge starts every unlearning run from one original model. Its N runs
  then vary only as much as the method's own randomness, while the N retrained models vary as much as
  training does (ViT · MNIST ``random:128``: a per-example spread of 0.15–0.47 for four methods' runs against
  1.28 for the retrains and 0.89 for the originals). The interval rule tells so narrow a population from the
  retrains whatever its centre, so the original's row was not a floor: every method scored below it. Here run
  s starts from the original of training seed s (the originals of the original's sanity row, the design of
  U-LiRA, Hayes et al. 2024), so a method that changes nothing gets the original's row exactly. The originals
  are kept in the model cache by seed and shared by every method and forget set of the preset.
* **A deterministic method.** When one population's range is below 1 % of the other's, the reference gives
  the cap for that example (an unlearned population that never varies is itself a tell). We keep that rule.
  With one original per run, a deterministic method's runs still vary as its originals do. When both
  populations are constant we give 0 if they are equal and the cap otherwise (the reference divides 0 by 0
  there).
* **Sanity rows** (not in the reference): the original model trained with N seeds on all the data (F near
  its floor: it has seen the forget set) and a second, independent set of N retrained models (F near its
  ceiling). An audit whose sanity rows do not separate beyond their confidence intervals says so and does not
  rank methods. Every F has a 95 % bootstrap interval over the forget examples (the models fixed).

Each model is a task (:class:`AuditTask`) whose result (the forget confidences, retain and test accuracy,
seconds) is written under ``MAPE_CACHE/audit/<key>/``; an interrupted audit resumes from the tasks it has.
Tasks run in this process (``executor="local"``) or as Ray tasks (``"ray"``, one task per model, see
:mod:`mape.evaluation.executors`); with the same torch threads per task both give the same JSON numbers.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from mape.base import cache
from mape.base.errors import MapeError
from mape.base.metrics import scaled_confidence
from mape.data.forget import ForgetSet
from mape.evaluation.epsilons import INDEPENDENT, ORIGINAL, RETRAIN, row_scores, sanity_check

AUDIT_VERSION = 1
MIN_MODELS = 3
RUNS_FROM = "the original of training seed s"   # where run s of a method starts (saved audits before: one original)

# --------------------------------------------------------------------------- tasks: one model each


@dataclass(frozen=True)
class AuditTask:
    """One model of the audit: ``kind`` original | retrain | method; ``name`` the row it belongs to."""
    kind: str
    name: str
    seed: int

    @property
    def ident(self) -> str:
        """The task's file name: a trained model by kind and seed (the retrain of seed 8 is the same model in
        an audit of N = 16, where it is a reference, and of N = 8, where it is an independent retrain)."""
        return f"{self.kind if self.kind != 'method' else self.name}@{self.seed}"


def plan_tasks(methods: list[str], models: int) -> list[AuditTask]:
    """Every model of an audit of ``models`` per population: originals and retrains (seeds 0..N−1), the
    independent retrains (seeds N..2N−1), and N runs of each method (run s with seed s, from original s).
    The originals come first, so that the runs find their start models trained."""
    tasks = [AuditTask("original", ORIGINAL, s) for s in range(models)]
    tasks += [AuditTask("retrain", RETRAIN, s) for s in range(models)]
    tasks += [AuditTask("retrain", INDEPENDENT, s) for s in range(models, 2 * models)]
    tasks += [AuditTask("method", m, s) for m in methods for s in range(models)]
    return tasks


def _with_seed(preset, seed: int):
    """The preset with training seed ``seed``."""
    return dataclasses.replace(preset, recipe=dataclasses.replace(preset.recipe, seed=seed))


def _seeded_training(ws, forgotten: np.ndarray, seed: int):
    """The preset's recipe from its start model, with training seed ``seed``, on all but ``forgotten``."""
    from mape.data.presets import build_start_model
    from mape.method.train import train

    preset = _with_seed(ws.preset, seed)
    task = build_start_model(preset, ws.dataset.classes).to(ws.device)
    keep = np.setdiff1d(np.arange(len(ws.train_y)), forgotten)
    train(task, ws.train_enc.take(keep), preset.recipe)
    return task


def seeded_original(ws, seed: int):
    """The original model of training seed ``seed``: the workspace's own for the preset's seed, else trained
    once and kept in the model cache under the original's key and the seed, so that the originals' row and
    every method's run s, on any forget set of this preset, start from the same weights."""
    from mape.data.presets import build_start_model
    from mape.run.workspace import train_or_load

    if seed == ws.preset.recipe.seed:
        return ws.task
    preset = _with_seed(ws.preset, seed)
    spec = {"original": ws.key, "training_seed": seed}
    return train_or_load("original", cache.cache_key(spec), lambda: build_start_model(preset, ws.dataset.classes),
                         ws.train_enc, preset, ws.device, None, f"training the original of seed {seed}", spec)[0]


def _model_of(ws, forget: ForgetSet, task: AuditTask, config):
    """The model of one task (seed 0 of the original and of the retrain come from the model cache). A method's
    run starts from ``ws``'s original (:func:`run_task` passes the workspace of the run's own original)."""
    from mape.evaluation.baselines import run_method
    from mape.run.workspace import retrain_model

    if task.kind == "original":
        return seeded_original(ws, task.seed)
    if task.kind == "retrain":
        if task.seed == ws.preset.recipe.seed:
            return retrain_model(ws, forget.indices)[0]
        return _seeded_training(ws, forget.indices, task.seed)
    return run_method(ws, task.name, forget, seed=task.seed, config=config).task


def run_task(ws, forget: ForgetSet, task: AuditTask, config) -> dict:
    """Train or run the task's model and measure it: φ of every forget example, retain and test accuracy."""
    from mape.base.metrics import accuracy

    started = time.time()
    # a run's clock starts from its original, loaded (or trained, the first time) before
    start = ws.starting_from(seeded_original(ws, task.seed)) if task.kind == "method" else ws
    t0 = time.perf_counter()
    model = _model_of(start, forget, task, config)
    seconds = time.perf_counter() - t0
    fy = ws.train_y[forget.indices]
    conf = scaled_confidence(model.predict_proba(ws.train_enc.take(forget.indices)), fy)
    retain_idx = ws.retain_eval_indices(forget.indices)
    retain_acc = accuracy(model.predict_proba(ws.train_enc.take(retain_idx)), ws.train_y[retain_idx])
    test_probs, ty = model.predict_proba(ws.test_enc), ws.test_y
    if forget.forget_class is not None:
        keep = ty != forget.forget_class
        test_probs, ty = test_probs[keep], ty[keep]
    return {"task": dataclasses.asdict(task), "conf": [float(c) for c in conf], "retain_acc": float(retain_acc),
            "test_acc": float(accuracy(test_probs, ty)), "seconds": round(seconds, 3),
            "wall": [round(started, 3), round(time.time(), 3)]}


def most_at_once(results: list[dict]) -> int:
    """The most tasks that ran at the same time (from their wall-clock start and end)."""
    events = sorted([(r["wall"][0], 1) for r in results] + [(r["wall"][1], -1) for r in results],
                    key=lambda e: (e[0], e[1]))
    level = best = 0
    for _, step in events:
        level += step
        best = max(best, level)
    return best


# --------------------------------------------------------------------------- the store (resume)


class TaskStore:
    """Task results under ``MAPE_CACHE/audit/<key>/<task>.json``, written atomically."""

    def __init__(self, ws, forget: ForgetSet, config):
        from mape.evaluation.baselines import config_json
        from mape.run.workspace import retrain_cache_key

        _, digest = retrain_cache_key(ws, forget.indices)
        self.key = cache.cache_key({"audit": AUDIT_VERSION, "original": ws.key, "forget": digest})
        # a run's file names its start (runs from one shared original, before, are not read as runs from their own)
        self.config_key = cache.cache_key({"config": config_json(config), "start": "original of the run's seed"})
        self.folder = cache.cache_root() / "audit" / self.key

    def path(self, task: AuditTask) -> Path:
        suffix = f"-{self.config_key}" if task.kind == "method" else ""
        return self.folder / f"{task.ident}{suffix}.json"

    def load(self, task: AuditTask) -> dict | None:
        path = self.path(task)
        try:
            out = json.loads(path.read_text())
        except (OSError, ValueError):
            return None   # missing, or a torn / corrupted file: computed again
        return out if isinstance(out, dict) and "conf" in out else None

    def save(self, task: AuditTask, result: dict) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.path(task).with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(result))
        os.replace(tmp, self.path(task))


# --------------------------------------------------------------------------- running the tasks


def _run_local(ws, forget, todo: list[AuditTask], config, store: TaskStore, threads: int | None,
               done: Callable[[AuditTask, dict], None]) -> dict:
    from mape.evaluation.executors import set_worker_threads

    if threads:
        set_worker_threads(threads)
    for task in todo:
        result = run_task(ws, forget, task, config)
        store.save(task, result)
        done(task, result)
    return {"name": "local", "threads": threads}


def audit_task(spec, forget: ForgetSet, task: AuditTask, config, threads: int) -> dict:
    """Ray task: one model of the audit, in a worker that prepares the driver's workspace once."""
    from mape.evaluation.executors import node_info, set_worker_threads, worker_workspace

    set_worker_threads(threads)
    ws = worker_workspace(spec)
    return {**run_task(ws, forget, task, config), "node": node_info()}


def _run_ray(executor, ws, forget, todo: list[AuditTask], config, store: TaskStore,
             done: Callable[[AuditTask, dict], None]) -> dict:
    from mape.evaluation.executors import error_text, workspace_spec

    ray = executor.connect()
    spec = ray.put(workspace_spec(ws, executor.data_dir))
    remote = ray.remote(audit_task).options(num_cpus=executor.cpus_per_task, max_retries=executor.max_retries,
                                            num_gpus=1 if ws.device.type == "cuda" else 0)
    pending = {remote.remote(spec, forget, t, config, executor.cpus_per_task): t for t in todo}
    nodes = {}
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        task = pending.pop(ready[0])
        try:
            result = ray.get(ready[0])
        except Exception as exc:  # noqa: BLE001 - a task's own error, reported as the audit's
            raise MapeError(f"Audit task {task.ident} failed: {error_text(exc)} (finished tasks are kept; "
                            f"run the audit again to resume).") from None
        node = result.pop("node", {})
        nodes[node.get("host", "?")] = nodes.get(node.get("host", "?"), 0) + 1
        store.save(task, result)
        done(task, result)
    return {"name": "ray", "cpus_per_task": executor.cpus_per_task, "tasks": len(todo), "nodes": nodes}


# --------------------------------------------------------------------------- scores and the result




@dataclass
class AuditResult:
    preset: str
    forget: str
    models: int
    methods: list[str]
    rows: dict                  # name → row_scores(...)
    sanity: dict                # original's and independent retrains' F, and whether they separate
    ranking: list[str] | None   # methods by final score (None when the sanity rows do not separate)
    tasks: dict                 # counts: planned, computed now, resumed from the store; seconds
    executor: dict
    scenario: str | None = None
    n_forget: int = 0
    time_s: float = 0.0
    machine: dict = field(default_factory=dict)
    runs_from: str = RUNS_FROM

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    def markdown(self) -> str:
        return audit_markdown(self.to_json())

    def save(self, path) -> tuple[Path, Path]:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=1))
        md = path.with_suffix(".md")
        md.write_text(self.markdown())
        return path, md


def audit_markdown(res: dict) -> str:
    scen = f" · {res['scenario']}" if res.get("scenario") else ""
    lines = [f"Audit · {res['preset']}{scen} · forget `{res['forget']}` ({res['n_forget']} examples) · "
             f"N = {res['models']} models per population",
             "", "| Row | F (95 % CI) | Final score (95 % CI) | Retain acc | Test acc | median ε | s / model |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, row in res["rows"].items():
        f_lo, f_hi = row["forget_score_ci"]
        s_lo, s_hi = row["final_score_ci"]
        label = {ORIGINAL: "original (sanity: near the floor)",
                 INDEPENDENT: "independent retrains (sanity: near the ceiling)"}.get(name, name)
        lines.append(f"| {label} | {row['forget_score']:.3f} ({f_lo:.3f}–{f_hi:.3f}) | {row['final_score']:.3f} "
                     f"({s_lo:.3f}–{s_hi:.3f}) | {100 * row['retain_acc']:.1f} | {100 * row['test_acc']:.1f} | "
                     f"{row['epsilon_median']:.2f} | {row['seconds_per_model']:.1f} |")
    runs_from = res.get("runs_from", "one original (the preset's)")  # audits saved before 2026-12-07: one
    lines += ["", f"Sanity: {res['sanity']['note']}.", f"Run s of each method starts from {runs_from}."]
    if res["ranking"]:
        lines.append("Ranking by final score: " + " > ".join(res["ranking"]) + ".")
    t = res["tasks"]
    lines.append(f"Models: {t['planned']} ({t['computed']} computed in this run, {t['resumed']} resumed); "
                 f"executor {res['executor'].get('name')}; {res['time_s']:.0f} s.")
    return "\n".join(lines) + "\n"


def audit_methods(methods: list[str] | str) -> list[str]:
    """The method names of an audit (``retrain`` is its reference, not a method)."""
    from mape.evaluation.baselines import parse_methods

    names = [m.name for m in parse_methods(methods)]
    if "retrain" in names:
        raise MapeError("The retrained models are the audit's reference; leave 'retrain' out of the methods.")
    return names


def audit(ws, forget_spec: str | ForgetSet, methods: list[str] | str, models: int = 16, executor="local",
          config=None, threads: int | None = None, progress: Callable[[str, float], None] | None = None,
          seed: int = 0) -> AuditResult:
    """Audit ``methods`` on one forget set with ``models`` models per population (see the module docstring).

    ``executor``: ``"local"``, ``"ray"`` or a :class:`mape.evaluation.executors.RayExecutor`; ``threads``: torch threads
    per local task (Ray tasks use the executor's ``cpus_per_task``). Finished tasks are kept in the store, so a
    call after an interruption computes only the missing models."""
    from mape.data.forget import select_forget
    from mape.evaluation.baselines import BaselineConfig
    from mape.evaluation.executors import LocalExecutor, open_executor

    if not isinstance(models, int) or models < MIN_MODELS:
        raise MapeError(f"An audit needs at least {MIN_MODELS} models per population, got {models!r}.")
    if ws.preset.finetuned:
        raise MapeError(f"Preset '{ws.preset.name}' starts from a published fine-tuned model, which the audit cannot "
                        "train again with other seeds; use an embedded or local preset.")
    names = audit_methods(methods)
    config = config or BaselineConfig()
    config.validate()
    forget = forget_spec if isinstance(forget_spec, ForgetSet) else select_forget(forget_spec, ws.dataset, seed=seed)
    store = TaskStore(ws, forget, config)
    tasks = plan_tasks(names, models)
    results = {t: store.load(t) for t in tasks}
    todo = [t for t in tasks if results[t] is None]
    t0 = time.perf_counter()
    count = [len(tasks) - len(todo)]

    def done(task: AuditTask, result: dict) -> None:
        results[task] = result
        count[0] += 1
        if progress:
            progress(f"{task.name} · seed {task.seed}", count[0] / len(tasks))

    runner, owned = open_executor(executor)
    try:
        if isinstance(runner, LocalExecutor):
            info = _run_local(ws, forget, todo, config, store, threads, done)
        else:
            info = _run_ray(runner, ws, forget, todo, config, store, done)
    finally:
        if owned:
            runner.close()
    if todo:
        info["most_at_once"] = most_at_once([results[t] for t in todo])
    by_row: dict[str, list[dict]] = {}
    for t in tasks:
        by_row.setdefault(t.name, []).append(results[t])
    rows = {name: row_scores(by_row[name], by_row[RETRAIN], models, seed)
            for name in [ORIGINAL, *names, INDEPENDENT]}
    sanity = sanity_check(rows)
    ranking = sorted(names, key=lambda n: -rows[n]["final_score"]) if sanity["separated"] else None
    from mape.evaluation.rows import machine_info

    scenario = getattr(ws, "scenario", None)
    return AuditResult(ws.preset.name, forget.spec, models, names, rows, sanity, ranking,
                       {"planned": len(tasks), "computed": len(todo), "resumed": len(tasks) - len(todo),
                        "model_seconds": round(sum(r["seconds"] for r in results.values()), 1)},
                       info, scenario.spec if scenario is not None else None, len(forget.indices),
                       round(time.perf_counter() - t0, 1), machine_info())


# --------------------------------------------------------------------------- command line


def cmd_audit(args, prepare_fn, progress_cls) -> int:
    """``python -m mape audit``: validate everything cheap first, then prepare and run (resumable)."""
    from mape.evaluation.baselines import BaselineConfig
    from mape.evaluation.executors import executor_from_args

    audit_methods(args.methods)
    if args.models < MIN_MODELS:
        raise MapeError(f"--models must be at least {MIN_MODELS}.")
    if args.threads is not None and args.threads < 1:
        raise MapeError("--threads must be at least 1.")
    config = BaselineConfig(sparsity=args.sparsity, retain_sample=args.retain_sample)
    config.validate()
    executor = executor_from_args(args, quiet=args.quiet)  # without Ray: exit 2 before any slow work
    ws = prepare_fn(args)
    progress = progress_cls(not args.quiet)
    try:
        res = audit(ws, args.forget, args.methods, args.models, executor, config, args.threads,
                    progress=lambda stage, frac: progress("audit models", frac))
    finally:
        progress.close()
        executor.close()
    json_path, md_path = res.save(args.out)
    print(res.markdown(), end="")
    print(f"wrote {json_path} and {md_path}")
    return 0


MAX_OPEN_MB = 50
REQUIRED_KEYS = ("preset", "forget", "models", "methods", "rows", "sanity", "tasks", "executor")


def open_saved_audit(path) -> dict:
    """A saved audit's JSON (``python -m mape audit --out``), checked: what the app's "Open saved audit" shows."""
    path = Path(path)
    try:
        size_mb = path.stat().st_size / 2**20
    except OSError as exc:
        raise MapeError(f"Cannot read {path.name}: {exc.strerror or exc}.") from None
    if size_mb > MAX_OPEN_MB:
        raise MapeError(f"{path.name} is {size_mb:.0f} MB; a saved audit is far smaller (limit {MAX_OPEN_MB} MB).")
    try:
        res = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        raise MapeError(f"{path.name} is not a JSON file.") from None
    missing = [k for k in REQUIRED_KEYS if not isinstance(res, dict) or k not in res]
    if missing:
        raise MapeError(f"{path.name} is not a saved audit (no {', '.join(missing)}); write one with "
                        "python -m mape audit --out FILE.json.")
    return res
