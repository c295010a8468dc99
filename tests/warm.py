"""Train the models that several test files share before the xdist workers start.

With one model cache for all workers (``MAPE_CACHE`` set, as in CI), the first worker that needs a shared model
trains it on its one torch thread while every other worker that needs it waits on the training lock, idle. Here
the controller trains them first, in as many one-thread processes as there will be workers, so no worker waits.
Each job is what the tests themselves would call (same preset, training limit, scenario and forget set), so the
cache keys are theirs; a job whose consumers are not all in the run, or that fails, is left to the tests.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


def _with_retrain(preset: str, train_limit: int, forget: str, scenario: str | None = None) -> None:
    from mape.data.forget import select_forget
    from mape.run.workspace import prepare, retrain_model

    ws = prepare(preset, train_limit=train_limit, device="cpu", scenario=scenario)
    if forget:
        retrain_model(ws, select_forget(forget, ws.dataset, 0).indices)


def minilm_bbc() -> None:
    """``bbc_ws`` (conftest) and its ``class:sport`` retrain (test_pipeline's and test_lessons' class runs)."""
    import tests.conftest  # noqa: F401 - registers test-minilm-bbc

    _with_retrain("test-minilm-bbc", 400, "class:sport")


def app_bbc() -> None:
    """The app's tiny text preset at its training limit."""
    from mape.serving import offer

    offer.register_tiny_presets()
    _with_retrain("tiny-bbc", offer.train_limit_for("tiny-bbc"), "")


def app_bbc_backdoor() -> None:
    """The app's first text scenario and the model retrained without its poisoned examples."""
    from mape.serving import offer

    offer.register_tiny_presets()
    _with_retrain("tiny-bbc", offer.train_limit_for("tiny-bbc"), "poisoned", scenario="backdoor:cf:sport:8")


def app_mnist() -> None:
    """The app's tiny image preset and its ``class:3`` retrain."""
    from mape.serving import offer

    offer.register_tiny_presets()
    _with_retrain("tiny-mnist", offer.train_limit_for("tiny-mnist"), "class:3")


#: (job, the test files that need its models), longest job first.
JOBS = (
    (app_mnist, {"test_app_browser", "test_app_client", "test_app_lessons"}),
    (app_bbc_backdoor, {"test_app_browser", "test_app_client", "test_app_serving", "test_lessons", "test_app_lessons"}),
    (minilm_bbc, {"test_unlearning_goal", "test_pipeline", "test_lessons", "test_gate"}),
    (app_bbc, {"test_app_browser", "test_app_client", "test_app_chain", "test_chain", "test_app_serving",
               "test_app_lessons"}),
)


def files_in_run(args: list[str], tests_dir: Path) -> set[str]:
    """Names of the test files the command line asks for (a folder: all of its test files)."""
    names = set()
    for arg in args or [str(tests_dir)]:
        path = Path(arg.split("::")[0]).resolve()
        if path.is_dir():
            names |= {p.stem for p in path.rglob("test_*.py")}
        elif path.name.startswith("test_"):
            names.add(path.stem)
    return names


def jobs_for(files: set[str]) -> list:
    """The jobs with at least two of their consumers in the run (with one, nobody waits for it)."""
    return [job for job, needs in JOBS if len(needs & files) >= 2]


def _run(job) -> tuple[str, float, str | None]:
    t0 = time.perf_counter()
    try:
        job()
    except Exception as exc:  # the tests train it themselves, and report what fails
        return job.__name__, time.perf_counter() - t0, f"{type(exc).__name__}: {exc}"
    return job.__name__, time.perf_counter() - t0, None


def warm(jobs: list, processes: int) -> list[tuple[str, float, str | None]]:
    """Run ``jobs`` in ``processes`` one-thread processes; (job, seconds, error or None) for each."""
    if not jobs:
        return []
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    with ProcessPoolExecutor(max_workers=max(1, min(processes, len(jobs))), mp_context=get_context("spawn"),
                             initializer=_one_thread) as pool:
        return list(pool.map(_run, jobs))
