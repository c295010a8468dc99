"""What retraining does to the quantity the auto step bounds: the separation of retain from unseen examples.

    PYTHONPATH=. python bench/separation.py                    # every quality-gate case, seed 0
    PYTHONPATH=. python bench/separation.py bbc-sport,mnist-3 0,1,2

For each case of ``mape.evaluation.gate.CASES`` (and seed): on the auto step's retain and unseen check samples, the
separation P(ℓ_unseen > ℓ_retain) − ½ of the original and of the model retrained without D_f, the floor a step
may not go below (the original's minus ``mape.method.update.separation_margin``), and — the quantity the old rule
bounded — how far the retrained model's retain and unseen losses rank above the original's. A step rule must
never refuse what a retrained model does: the retrained separation should sit above the floor on every case.
Trains the retrained models that are not cached yet.
"""
from __future__ import annotations

import sys

from mape.base.metrics import rank_shift
from mape.data.forget import select_forget
from mape.evaluation.gate import select_cases
from mape.method.update import separation, separation_margin
from mape.run.targets import request_samples
from mape.run.workspace import prepare, retrain_model


def main(cases: str | None = None, seeds: str = "0") -> None:
    print("| case | seed | separation: original | retrained | floor | retrained above floor | retrain's retain "
          "losses vs original's | its unseen losses vs original's |")
    print("|---|---:|---:|---:|---:|:-:|---:|---:|")
    workspaces = {}
    for case in select_cases(cases):
        key = (case.preset, case.scenario)
        ws = workspaces.get(key) or workspaces.setdefault(key, prepare(case.preset, scenario=case.scenario))
        for seed in (int(s) for s in seeds.split(",")):
            forget = select_forget(case.forget, ws.dataset, seed)
            smp = request_samples(ws, forget, forget.indices, seed, None)
            retrained, _, _ = retrain_model(ws, forget.indices)
            before, after = smp.check(ws.task), smp.check(retrained)
            s0 = separation(before.retain_losses, before.unseen_losses)
            s1 = separation(after.retain_losses, after.unseen_losses)
            floor = s0 - separation_margin(len(smp.check_r), len(smp.check_u))
            print(f"| {case.title} | {seed} | {s0:+.3f} | {s1:+.3f} | {floor:+.3f} | "
                  f"{'yes' if s1 >= floor else 'NO'} | "
                  f"{rank_shift(after.retain_losses, before.retain_losses):+.3f} | "
                  f"{rank_shift(after.unseen_losses, before.unseen_losses):+.3f} |", flush=True)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None, sys.argv[2] if len(sys.argv) > 2 else "0")
