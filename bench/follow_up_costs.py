"""Per-example cost of the passes the ``so`` follow-ups count (mape.method.update.GRAD_WORK).

    PYTHONPATH=. python bench/follow_up_costs.py minilm-bbc class:tech:120
    PYTHONPATH=. python bench/follow_up_costs.py vit-mnist class:3

Times, best of two, on the preset's cached original: the search's gradient pass (mask and parameter
gradients over D_f and the retain sample), a follow-up's two gradient passes (≤128 forget examples on the
log loss, 128 retain examples) and one step-size check (forward passes on the check samples). The follow-up
budget counts a gradient example as GRAD_WORK forward examples; this script is how that number was chosen.
"""
from __future__ import annotations

import sys

import numpy as np

from bench.common import wall_times
from mape.data.forget import select_forget
from mape.method.scoring import _unit_params, mask_gradients, param_stats
from mape.method.update import check
from mape.run.targets import request_samples
from mape.run.workspace import prepare


def best_of(fn, repeats: int = 2) -> float:
    return min(wall_times(fn, repeats))


def main(preset: str, spec: str) -> None:
    ws = prepare(preset)
    task = ws.task.clone()
    forget = select_forget(spec, ws.dataset, 0)
    smp = request_samples(ws, forget, forget.indices, 0, None)
    fe, re_ = smp.forget_enc, smp.retain_enc
    params = _unit_params(task)
    t_search = best_of(lambda: mask_gradients(task, fe, re_, 32, with_params=True))
    sub, rep = fe.take(np.arange(min(128, len(fe)))), re_.take(np.arange(min(128, len(re_))))
    t_follow = best_of(lambda: (param_stats(task, sub, params, "grad", 32, loss="logce"),
                                param_stats(task, rep, params, "grad", 32)))
    t_check = best_of(lambda: check(task, smp.check_f, smp.check_r))
    n_check = len(smp.check_f) + len(smp.check_r)
    print(f"{preset} {spec} on {ws.device}")
    print(f"search gradient pass  {t_search:7.2f} s  {1000 * t_search / (len(fe) + len(re_)):6.2f} ms/example")
    print(f"follow-up gradients   {t_follow:7.2f} s  {1000 * t_follow / (len(sub) + len(rep)):6.2f} ms/example")
    print(f"step-size check       {t_check:7.2f} s  {1000 * t_check / n_check:6.2f} ms/example")


if __name__ == "__main__":
    main(*sys.argv[1:3])
