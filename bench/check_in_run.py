"""Is a step-size check slower inside a run than on a fresh model?

    PYTHONPATH=. python bench/check_in_run.py minilm-bbc class:tech:120 2

Times `mape.method.update.check` on the request's check samples: on a fresh clone of the original before the run,
every check `unlearn` makes (step-size trials of the first step and of the follow-ups), on the model the run
leaves behind, and on fresh clones afterwards. Written to rule out a slowdown that the search leaves in the
model or the allocator as the reason some follow-ups run past their search on the clock (BENCHMARKS.md,
"Follow-ups: the scan of D_f counted ...")."""
from __future__ import annotations

import sys
import time

import mape.run.targets as pipeline
from bench.common import wall_times
from mape.data.forget import select_forget
from mape.method.update import check
from mape.run.config import UnlearnConfig
from mape.run.targets import request_samples
from mape.run.unlearn import unlearn
from mape.run.workspace import prepare


def timed(fn, repeats: int = 3) -> list[float]:
    return [round(t, 2) for t in wall_times(fn, repeats)]


def main(preset: str, spec: str, seed: int) -> None:
    ws = prepare(preset)
    forget = select_forget(spec, ws.dataset, seed)
    smp = request_samples(ws, forget, forget.indices, seed, None)  # the samples unlearn draws
    in_run = []

    def counted_check(*a, **k):
        t0 = time.perf_counter()
        out = check(*a, **k)
        in_run.append(round(time.perf_counter() - t0, 2))
        return out

    def on(task):
        return timed(lambda: check(task, smp.check_f, smp.check_r))

    fresh = ws.task.clone()
    print(f"{preset} {spec} seed {seed}: {len(smp.check_f)} + {len(smp.check_r)} examples per check")
    print("fresh clone, before the run ", on(fresh))
    pipeline.check = counted_check
    try:
        res = unlearn(ws, spec, UnlearnConfig(seed=seed))
    finally:
        pipeline.check = check
    print("checks inside the run       ", in_run, res.timing, res.update.get("step_seconds"))
    print("the run's model, after      ", on(res.unlearned))
    print("same fresh clone, after     ", on(fresh))
    print("new fresh clone, after      ", on(ws.task.clone()))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 0)
