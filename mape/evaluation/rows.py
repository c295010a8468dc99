"""The per-seed work of a comparison (DESIGN.md §9): the retrained reference and one row per method and seed,
measured against it; also what the executors run on a worker (warm-up, the machine, digests of index sets)."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mape.base.metrics import gap_to_retrain, loss_distance
from mape.data.forget import ForgetSet
from mape.evaluation.baselines import BaselineConfig, MethodSpec, relearn_curve, run_method
from mape.run.config import Progress

REFERENCE = "retrain"


ORIGINAL = "original"


def machine_info() -> dict:
    """CPU model, cores, torch / transformers versions and the GPU (if any) of this machine."""
    import torch
    import transformers

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__,
            "transformers": transformers.__version__, "python": platform.python_version()}
    try:
        info["torch_threads"] = torch.get_num_threads()
    except Exception:  # pragma: no cover
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def union_set(specs: list[str], sets: list[ForgetSet]) -> ForgetSet:
    if len(sets) == 1:
        return sets[0]
    idx = np.unique(np.concatenate([s.indices for s in sets]))
    classes = {s.forget_class for s in sets}
    fc = classes.pop() if len(classes) == 1 else None
    return ForgetSet(";".join(specs), idx, fc, sets[0].class_name if fc is not None else None)


def _row(metrics: dict, retrain_metrics: dict, time_s, params_changed, details=None, relearn=None) -> dict:
    """One table row. ``loss_distance`` is computed here from the per-example forget losses both metric
    dicts carry in memory (``_forget_losses``), which the row itself does not keep."""
    mine, ref = metrics.get("_forget_losses"), retrain_metrics.get("_forget_losses")
    metrics = {k: v for k, v in metrics.items() if not k.startswith("_")}
    if mine is not None and ref is not None:
        metrics["loss_distance"] = loss_distance(mine, ref)
    row = {"metrics": metrics, "gap_to_retrain": gap_to_retrain(metrics, retrain_metrics),
           "time_s": None if time_s is None else round(float(time_s), 4),
           "params_changed": None if params_changed is None else int(params_changed)}
    if details is not None:
        row["details"] = details
    if relearn is not None:
        row["relearn"] = relearn
    return row


@dataclass
class SeedPlan:
    """What the rows of one seed work on: its forget set per request and their running unions."""
    seed: int
    sets: list[ForgetSet]
    unions: list[ForgetSet]


class Ticks:
    """Progress over ``n`` units of work (a retrain or a method run on one request): ``ticks(stage, f)``
    reports fraction ``f`` of the current unit, :meth:`advance` ends it. Without ``progress``, silent."""

    def __init__(self, progress: Progress | None = None, n: int = 1):
        self.progress, self.n, self.done = progress, max(n, 1), 0

    def __call__(self, stage: str, frac: float = 0.0, *_):
        if self.progress:
            self.progress(stage, min(1.0, (self.done + min(max(frac, 0.0), 1.0)) / self.n))

    def advance(self) -> None:
        self.done += 1


def _relearn(ws, plan: SeedPlan, relearn_steps: int):
    """The relearn curve of a model on the seed's final forget set (None when switched off)."""
    if not relearn_steps:
        return lambda task: None
    last_enc = ws.train_enc.take(plan.unions[-1].indices)
    return lambda task: relearn_curve(task, last_enc, relearn_steps, ws.preset.recipe)


def reference_rows(ws, plan: SeedPlan, config: BaselineConfig, relearn_steps: int,
                   ticks: Ticks | None = None) -> tuple[list[dict], list[dict], list[dict]]:
    """The retrain reference of one seed: the model retrained without each request's union (trained
    once, then from the cache) and the original model, measured. Returns (the reference metrics per
    request, the original's rows, the reference's rows); the metrics dicts go to :func:`_row` as they are."""
    from mape.run.unlearn import evaluate_model, model_metrics

    ticks = ticks or Ticks()
    seed = plan.seed
    ref, orig, ref_models = [], [], []
    for u in plan.unions:
        retain_eval_idx = ws.retain_eval_indices(u.indices)
        ticks(f"seed {seed}: retrain")
        run = run_method(ws, MethodSpec(REFERENCE, REFERENCE), u, seed, config,
                         progress=lambda s, f: ticks(f"seed {seed}: {s}", f))
        ticks.advance()
        ref_models.append(run)
        ref.append(evaluate_model(ws, run.task, u, retain_eval_idx, seed))
        orig.append(model_metrics(ws, u, ws.original_train_probs(u.indices),
                                   ws.original_train_probs(retain_eval_idx), retain_eval_idx,
                                   ws.original_test_probs(), seed))
    curve = _relearn(ws, plan, relearn_steps)
    orig_rows, ref_rows = [], []
    for i in range(len(plan.unions)):
        final = i == len(plan.unions) - 1
        orig_rows.append(_row(orig[i], ref[i], None, 0, relearn=curve(ws.task) if final else None))
        rr = ref_models[i]
        ref_rows.append(_row(ref[i], ref[i], rr.time_s, rr.params_changed, rr.details,
                             relearn=curve(rr.task) if final else None))
    return ref, orig_rows, ref_rows


def method_rows(ws, spec: MethodSpec, plan: SeedPlan, ref: list[dict], config: BaselineConfig, relearn_steps: int,
                ticks: Ticks | None = None) -> list[dict]:
    """The rows of one (seed, method), one per request: the method applied to each request in turn (to
    its own previous result), measured on the union so far against ``ref[i]`` (:func:`reference_rows`)."""
    from mape.run.unlearn import evaluate_model

    ticks = ticks or Ticks()
    seed, n = plan.seed, len(plan.sets)
    curve = _relearn(ws, plan, relearn_steps)
    rows = []
    model, forgotten, total_t = None, None, 0.0
    for i, (fs, u) in enumerate(zip(plan.sets, plan.unions)):
        ticks(f"seed {seed}: {spec.name}")
        run = run_method(ws, spec, fs, seed, config, base=model, already_forgotten=forgotten,
                         progress=lambda s, f: ticks(f"seed {seed}: {s}", f))
        ticks.advance()
        total_t += run.time_s
        forgotten = u.indices
        model = run.task
        metrics = run.metrics if (run.metrics is not None and i == 0) else \
            evaluate_model(ws, run.task, u, ws.retain_eval_indices(u.indices), seed)
        final = i == n - 1
        rows.append(_row(metrics, ref[i], run.time_s if not final else total_t, run.params_changed, run.details,
                         relearn=curve(run.task) if final else None))
    return rows


def warm_up(ws) -> None:
    """One forward/backward pass on a few examples of a copy, so the first timed method does not pay
    for lazy initialisation (kernels, allocator, imports)."""
    import torch.nn.functional as Fn

    task = ws.task.clone()
    x, y = next(ws.train_enc.take(np.arange(min(8, len(ws.train_y)))).batches(8, ws.device))
    Fn.cross_entropy(task.logits(x).float(), y).backward()
    del task
    import sklearn.linear_model  # noqa: F401  (used by the MIA of every measurement)


def indices_digest(idx: np.ndarray) -> str:
    import hashlib

    return hashlib.sha256(np.asarray(np.sort(idx), dtype=np.int64).tobytes()).hexdigest()[:16]
