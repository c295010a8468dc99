"""Where the rows of a comparison run: in this process (``local``) or as tasks on a Ray cluster (``ray``).

    compare(ws, "random:128", ["mape", "so"], seeds=[0, 1, 2], executor="ray")   # a local Ray instance
    compare(ws, ..., executor=RayExecutor(address="HEAD:6379"))               # or join a cluster

A comparison is made of units of work: the retrain reference of each distinct forget set (which also
measures the original model) and one (seed, method) run per row. :func:`mape.evaluation.compare.reference_rows`
and :func:`mape.evaluation.compare.method_rows` compute them; the local executor calls them one after the other
in today's order, the Ray executor as remote tasks. Results are the same numbers either way for the
same seeds, as long as a task uses as many torch threads as the local run did (``cpus_per_task``, one
by default; torch on a CPU does not add floating-point numbers in the same order with 1 and 2
threads) and the nodes have the same kind of CPU / GPU.

How the Ray executor shares work:

* Each task prepares its own :class:`mape.run.unlearn.Workspace` in its worker with
  :func:`mape.run.unlearn.prepare` (same preset, data folder, training limit, scenario and device); the
  original model comes from the model cache, so every node must see the driver's cache: ``MAPE_CACHE``
  on storage shared by the nodes at the same path (the driver's ``MAPE_CACHE``, ``MAPE_DATA_DIR``,
  ``HF_HUB_OFFLINE``, ``HF_HOME`` and ``TOKENIZERS_PARALLELISM`` are passed to the workers). A task
  checks that its original has the driver's weights (a digest) and fails otherwise. A worker keeps its
  workspace for the next task.
* The reference task of a forget set trains (or loads) the retrained model once and returns the
  reference metrics through the object store; the (seed, method) tasks of that forget set take that
  object as an argument, so Ray starts them only when it is ready. Retrained models need no shared
  storage (they are cached where they were trained).
* Each task asks Ray for ``cpus_per_task`` CPUs (and sets torch to that many threads) and, with
  ``--device cuda``, one GPU (then each task has a fresh worker process and prepares its workspace).
  Ray retries a task whose worker died (lost node, out of memory) up to ``max_retries`` times; a row
  that still fails is kept as a failed row with its error and the other rows are kept
  (:func:`failed_row`).
* The driver ships the ``mape`` package it runs to the workers (Ray ``py_modules``), so a cluster needs
  the requirements (``requirements.txt`` and ``requirements-ray.txt``) but not this repository.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from mape.base.errors import MapeError

EXECUTORS = ("local", "ray")
INSTALL_RAY = "--executor ray needs Ray, which is not installed: pip install -r requirements-ray.txt"
FORWARDED_ENV = ("MAPE_CACHE", "MAPE_DATA_DIR", "HF_HUB_OFFLINE", "HF_HOME", "TOKENIZERS_PARALLELISM")
FAULTS_ENV = "MAPE_RAY_TEST_FAULTS"   # tests only: a JSON file {"SEED:NAME": "crash-once" | "raise"}
DEFAULT_RETRIES = 2


# --------------------------------------------------------------------------- results of a sweep


@dataclass
class Sweep:
    """The rows an executor computed: ``rows[(seed, name)]`` is the list of rows of that (seed, method),
    one per request; ``failed[(seed, name)]`` the error of a row that could not be computed."""
    rows: dict = field(default_factory=dict)
    failed: dict = field(default_factory=dict)
    info: dict = field(default_factory=lambda: {"name": "local"})

    def row(self, seed: int, name: str, request: int) -> dict:
        if (seed, name) in self.failed:
            return failed_row(self.failed[(seed, name)])
        return self.rows[(seed, name)][request]


def failed_row(error: str) -> dict:
    """The row of a (seed, method) that failed: no metrics, the error (left out of means and stds)."""
    return {"metrics": {}, "gap_to_retrain": None, "time_s": None, "params_changed": None, "failed": error}


def open_executor(executor) -> tuple[object, bool]:
    """(executor, whether the caller owns it and must close it) for ``None``/``'local'``, ``'ray'`` or an
    executor object (anything with ``run`` and ``close``)."""
    if executor is None or executor == "local":
        return LocalExecutor(), False
    if executor == "ray":
        return RayExecutor(), True
    if isinstance(executor, str):
        raise MapeError(f"Unknown executor {executor!r}; choose one of {', '.join(EXECUTORS)}.")
    if not callable(getattr(executor, "run", None)):
        raise MapeError(f"Not an executor: {executor!r}.")
    return executor, False


# --------------------------------------------------------------------------- local


class LocalExecutor:
    """Every unit in this process, one after the other: seed by seed, the reference then each method."""

    name = "local"

    def run(self, ws, plans, specs, config, relearn_steps: int, progress=None) -> Sweep:
        from mape.evaluation.rows import ORIGINAL, REFERENCE, Ticks, method_rows, reference_rows, warm_up

        ticks = Ticks(progress, len(plans) * len(plans[0].sets) * (len(specs) + 1))
        warm_up(ws)
        sweep = Sweep()
        for plan in plans:
            ref, orig_rows, ref_rows = reference_rows(ws, plan, config, relearn_steps, ticks)
            sweep.rows[(plan.seed, ORIGINAL)], sweep.rows[(plan.seed, REFERENCE)] = orig_rows, ref_rows
            for spec in specs:
                sweep.rows[(plan.seed, spec.name)] = method_rows(ws, spec, plan, ref, config, relearn_steps, ticks)
        return sweep

    def close(self) -> None:
        pass


# --------------------------------------------------------------------------- Ray


def import_ray():
    """The ``ray`` module, or a MapeError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise MapeError(INSTALL_RAY) from None
    return ray


def _mape_package() -> str:
    return str(Path(__file__).resolve().parent)


def _forwarded_env() -> dict:
    return {k: os.environ[k] for k in (*FORWARDED_ENV, FAULTS_ENV) if os.environ.get(k) is not None}


def start_ray(address: str | None = None, num_cpus: int | None = None):
    """Join the cluster at ``address`` (or ``RAY_ADDRESS``), or start a local Ray instance with
    ``num_cpus`` CPUs (default: all); the workers get this ``mape`` package and the forwarded
    environment. Returns the ``ray`` module."""
    import logging

    ray = import_ray()
    address = address or os.environ.get("RAY_ADDRESS") or None
    runtime_env = {"py_modules": [_mape_package()], "env_vars": _forwarded_env()}
    kwargs = dict(runtime_env=runtime_env, log_to_driver=False, logging_level=logging.ERROR)
    try:
        if address:
            ray.init(address=address, **kwargs)
        else:
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=False,
                     object_store_memory=256 * 2**20, **kwargs)
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as exc:
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        raise MapeError(f"Cannot start or reach {where}: {_first_line(exc)}") from None
    return ray


@dataclass(frozen=True)
class WorkspaceSpec:
    """What a worker needs to prepare the driver's workspace again (and to check it got the same one)."""
    preset: object          # mape.data.presets.Preset (registered in the worker under its name)
    data_dir: str | None
    train_limit: int | None
    device: str             # cpu | cuda
    scenario: str | None
    key: str                # the original model's cache key
    weights: str            # digest of the original model's weights

    def ident(self) -> tuple:
        return (self.key, self.data_dir, self.train_limit, self.device, self.scenario, self.weights)


def weights_digest(model) -> str:
    """SHA-256 (16 hex digits) of a model's parameters and buffers, in state-dict order."""
    import hashlib

    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().view(-1).view(dtype=_byte_dtype()).numpy().tobytes())
    return h.hexdigest()[:16]


def _byte_dtype():
    import torch

    return torch.uint8


def workspace_spec(ws, data_dir: str | None = None) -> WorkspaceSpec:
    scenario = getattr(ws, "scenario", None)
    return WorkspaceSpec(ws.preset, data_dir, ws.train_limit, ws.device.type,
                         scenario.spec if scenario is not None else None, ws.key, weights_digest(ws.task.model))


_WORKER_WS: dict = {}   # in a Ray worker: the last workspace it prepared, by WorkspaceSpec.ident()


def worker_workspace(spec: WorkspaceSpec):
    """The workspace of ``spec`` in this worker process (prepared once, from the model cache)."""
    ws = _WORKER_WS.get(spec.ident())
    if ws is not None:
        return ws
    from mape.base import cache
    from mape.data.presets import PRESETS
    from mape.evaluation.rows import warm_up
    from mape.run.workspace import prepare

    _WORKER_WS.clear()
    PRESETS[spec.preset.name] = spec.preset
    host = socket.gethostname()
    if not spec.preset.finetuned and not cache.has_model("original", spec.key):
        raise MapeError(f"The original model (cache key {spec.key}) is not in the model cache {cache.cache_root()} "
                        f"on node {host}: put MAPE_CACHE on storage every node shares (same path).")
    extra = {"scenario": spec.scenario} if spec.scenario is not None else {}
    ws = prepare(spec.preset.name, spec.data_dir, spec.train_limit, spec.device, None, None, **extra)
    if ws.key != spec.key or weights_digest(ws.task.model) != spec.weights:
        raise MapeError(f"Node {host} prepared a different original model than the driver (cache key {ws.key} vs "
                        f"{spec.key}): check that the data and MAPE_CACHE are the same on every node.")
    warm_up(ws)
    _WORKER_WS[spec.ident()] = ws
    return ws


def node_info() -> dict:
    """Where this task runs: host name, Ray node id and the machine (CPU, cores, GPU)."""
    from mape.evaluation.rows import machine_info

    info = {"host": socket.gethostname()}
    try:
        import ray

        info["node_id"] = ray.get_runtime_context().get_node_id()
    except Exception:  # pragma: no cover - outside Ray
        pass
    machine = machine_info()
    info.update({k: machine[k] for k in ("cpu", "cores", "gpu") if k in machine})
    return info


def _injected_fault(seed: int, name: str) -> None:
    """Tests only: ``MAPE_RAY_TEST_FAULTS`` names a JSON file {"SEED:NAME": mode}; ``crash-once`` makes the
    first attempt's worker process exit (Ray retries the task), ``raise`` fails every attempt."""
    path = os.environ.get(FAULTS_ENV)
    if not path or not Path(path).is_file():
        return
    mode = json.loads(Path(path).read_text()).get(f"{seed}:{name}")
    if mode == "crash-once":
        marker = Path(f"{path}.{seed}-{name}.crashed")
        if not marker.exists():
            marker.touch()
            os._exit(1)
    elif mode == "raise":
        raise RuntimeError(f"injected failure of seed {seed} · {name}")


def set_worker_threads(threads: int) -> None:
    import torch

    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def reference_task(spec: WorkspaceSpec, plans, config, relearn_steps: int, threads: int) -> dict:
    """Ray task: the retrain reference (and the original's rows) of seeds that share their forget sets."""
    from mape.evaluation.rows import REFERENCE, reference_rows

    for plan in plans:
        _injected_fault(plan.seed, REFERENCE)
    set_worker_threads(threads)
    ws = worker_workspace(spec)
    out = {}
    for plan in plans:
        ref, orig_rows, ref_rows = reference_rows(ws, plan, config, relearn_steps)
        out[plan.seed] = {"ref": ref, "original": orig_rows, "retrain": ref_rows}
    return {"node": node_info(), "seeds": out}


def method_task(spec: WorkspaceSpec, method, plan, reference: dict, config, relearn_steps: int,
                threads: int) -> dict:
    """Ray task: the rows of one (seed, method), measured against the seed's reference metrics."""
    from mape.evaluation.rows import method_rows

    _injected_fault(plan.seed, method.name)
    set_worker_threads(threads)
    ws = worker_workspace(spec)
    rows = method_rows(ws, method, plan, reference["seeds"][plan.seed]["ref"], config, relearn_steps)
    return {"node": node_info(), "rows": rows}


def _first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split("\n")[0].split())
    return (text[:300] + "…") if len(text) > 300 else text


def error_text(exc: BaseException) -> str:
    """One line for a task that failed: the task's own exception where Ray has it."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        return f"{type(cause).__name__}: {_first_line(cause)}"
    return f"{type(exc).__name__}: {_first_line(exc)}"


class RayExecutor:
    """Every unit as a Ray task: one reference task per distinct forget set, then one task per
    (seed, method) that starts once its reference is done. Rows are reported as they finish."""

    name = "ray"

    def __init__(self, address: str | None = None, cpus_per_task: int = 1, max_retries: int = DEFAULT_RETRIES,
                 num_cpus: int | None = None, data_dir: str | None = None,
                 on_row: Callable[[str], None] | None = None):
        if not isinstance(cpus_per_task, int) or cpus_per_task < 1:
            raise MapeError(f"CPUs per task must be a whole number of at least 1, got {cpus_per_task!r}.")
        if not isinstance(max_retries, int) or max_retries < 0:
            raise MapeError(f"Retries must be a whole number of at least 0, got {max_retries!r}.")
        self.address, self.cpus_per_task, self.max_retries = address, cpus_per_task, max_retries
        self.num_cpus, self.data_dir, self.on_row = num_cpus, data_dir, on_row
        self._ray, self._started = None, False

    def connect(self):
        """Use the Ray connection this process already has, or open one (closed by :meth:`close`)."""
        if self._ray is None:
            ray = import_ray()
            if not ray.is_initialized():
                start_ray(self.address, self.num_cpus)
                self._started = True
            self._ray = ray
        return self._ray

    def close(self) -> None:
        if self._started and self._ray is not None:
            self._ray.shutdown()
        self._ray, self._started = None, False

    def run(self, ws, plans, specs, config, relearn_steps: int, progress=None) -> Sweep:
        ray = self.connect()
        pending = self._submit(ray, ws, plans, specs, config, relearn_steps)
        sweep = Sweep(info={"name": "ray", "address": self.address or os.environ.get("RAY_ADDRESS") or "local instance",
                            "ray": ray.__version__, "cpus_per_task": self.cpus_per_task,
                            "gpus_per_task": 1 if ws.device.type == "cuda" else 0, "max_retries": self.max_retries,
                            "tasks": len(pending), "nodes": {}})
        self._gather(ray, pending, sweep, progress)
        if not sweep.rows:
            raise MapeError(f"Every Ray task failed; the first error: {next(iter(sweep.failed.values()))}")
        return sweep

    def _submit(self, ray, ws, plans, specs, config, relearn_steps: int) -> dict:
        """Start one reference task per distinct forget set, then one task per (seed, method) that takes its
        reference's result as an argument (Ray starts it when that is ready). {object ref: (name, seeds)}."""
        from mape.evaluation.rows import REFERENCE, indices_digest

        wspec = ray.put(workspace_spec(ws, self.data_dir))
        gpus = 1 if ws.device.type == "cuda" else 0
        opts = dict(num_cpus=self.cpus_per_task, num_gpus=gpus, max_retries=self.max_retries, retry_exceptions=False)
        # a GPU task runs in a fresh worker process (CUDA picks its device once per process and the GPU memory
        # is freed when it exits); CPU workers are reused and keep their workspace
        remote = ray.remote(num_gpus=1, max_calls=1) if gpus else ray.remote
        ref_fn, row_fn = remote(reference_task), remote(method_task)
        groups: dict[tuple, list] = {}   # seeds with the same forget sets share one reference task
        for plan in plans:
            groups.setdefault(tuple(indices_digest(u.indices) for u in plan.unions), []).append(plan)
        pending, seed_ref = {}, {}
        for group in groups.values():
            ref = ref_fn.options(name=f"mape-retrain-seed{group[0].seed}", **opts).remote(
                wspec, group, config, relearn_steps, self.cpus_per_task)
            pending[ref] = (REFERENCE, [p.seed for p in group])
            seed_ref.update({p.seed: ref for p in group})
        for plan in plans:
            for spec in specs:
                ref = row_fn.options(name=f"mape-{spec.name}-seed{plan.seed}", **opts).remote(
                    wspec, spec, plan, seed_ref[plan.seed], config, relearn_steps, self.cpus_per_task)
                pending[ref] = (spec.name, [plan.seed])
        return pending

    def _gather(self, ray, pending: dict, sweep: Sweep, progress) -> None:
        """Collect the tasks as they finish (reporting each row); a task that still fails after its
        retries makes its rows failed ones. Cancels what is left when interrupted."""
        from mape.evaluation.rows import ORIGINAL, REFERENCE

        total, done = len(pending), 0
        stage = f"ray: {total} tasks (a reference per forget set, a task per seed × method)"
        if progress:
            progress(stage, 0.0)
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                name, seeds = pending.pop(ready[0])
                done += 1
                try:
                    out = ray.get(ready[0])
                except Exception as exc:  # noqa: BLE001 - a task that still fails after its retries
                    error = error_text(exc)
                    for seed in seeds:
                        for n in ([ORIGINAL, REFERENCE] if name == REFERENCE else [name]):
                            sweep.failed[(seed, n)] = error
                    self._report(f"seed {','.join(map(str, seeds))} · {name}: FAILED ({error})")
                else:
                    self._collect(sweep, name, seeds, out)
                if progress:
                    progress(stage, done / total)
        except BaseException:
            for ref in pending:
                try:
                    ray.cancel(ref, force=True)
                except Exception:  # noqa: BLE001 - already finished or gone
                    pass
            raise
        for (seed, name), error in list(sweep.failed.items()):
            if name not in (ORIGINAL, REFERENCE) and (seed, REFERENCE) in sweep.failed:
                sweep.failed[(seed, name)] = f"the retrain reference of seed {seed} failed: " \
                                             f"{sweep.failed[(seed, REFERENCE)]}"

    def _collect(self, sweep: Sweep, name: str, seeds: list[int], out: dict) -> None:
        from mape.evaluation.rows import ORIGINAL, REFERENCE

        node = out["node"]
        host = node["host"]
        sweep.info["nodes"].setdefault(host, {k: v for k, v in node.items() if k != "host"})
        if name == REFERENCE:
            for seed in seeds:
                part = out["seeds"][seed]
                for n, rows in ((ORIGINAL, part["original"]), (REFERENCE, part["retrain"])):
                    sweep.rows[(seed, n)] = [{**row, "node": host} for row in rows]
                self._report(f"seed {seed} · {REFERENCE}: reference ready on {host}")
        else:
            seed = seeds[0]
            sweep.rows[(seed, name)] = [{**row, "node": host} for row in out["rows"]]
            gap = out["rows"][-1].get("gap_to_retrain")
            self._report(f"seed {seed} · {name}: gap {100 * gap:.2f} pts on {host}" if gap is not None
                         else f"seed {seed} · {name}: done on {host}")

    def _report(self, line: str) -> None:
        if self.on_row:
            self.on_row(line)


# --------------------------------------------------------------------------- command line


def add_executor_args(p) -> None:
    """``--executor``, ``--address``, ``--cpus-per-task`` and ``--max-retries`` (compare and the benchmark)."""
    p.add_argument("--executor", default="local", choices=list(EXECUTORS),
                   help="where the (seed, method) rows run: in this process, or as Ray tasks (pip install -r "
                        "requirements-ray.txt)")
    p.add_argument("--address", default=None,
                   help="with --executor ray: the Ray cluster to join (default RAY_ADDRESS, else a local instance)")
    p.add_argument("--cpus-per-task", type=int, default=1,
                   help="with --executor ray: CPUs (and torch threads) per task")
    p.add_argument("--max-retries", type=int, default=DEFAULT_RETRIES,
                   help="with --executor ray: retries of a task whose worker died")


def executor_from_args(args, quiet: bool = False):
    """The executor the command line asks for (Ray is imported here: a missing Ray fails before any
    slow work)."""
    if getattr(args, "executor", "local") != "ray":
        if getattr(args, "address", None):
            raise MapeError("--address needs --executor ray.")
        return LocalExecutor()
    import_ray()
    on_row = None
    if not quiet:
        import sys

        from tqdm import tqdm

        on_row = lambda line: tqdm.write(line, file=sys.stderr)  # noqa: E731
    return RayExecutor(address=args.address, cpus_per_task=args.cpus_per_task, max_retries=args.max_retries,
                       data_dir=getattr(args, "data", None), on_row=on_row)


def failure_lines(res) -> list[str]:
    """One line per failed row of a comparison (empty when every row ran)."""
    return [f"seed {run['seed']} · {name}: {row['failed']}" for run in res.runs
            for name, row in run["methods"].items() if row.get("failed")]
