"""How much less confident a *retrained* model is on the auto step's retain check sample than the original.

    python bench/retain_shift.py vit-mnist class:3
    python bench/retain_shift.py minilm-bbc class:tech:120

For seeds 0, 1, 2: the rank shift P(ℓ_retrain > ℓ_original) − ½ of the retain check sample's per-example
losses (the quantity ``Target.feasible`` bounds by ``retain_shift_slack``), with both retain accuracies. A
bound below what retraining itself does rejects steps a retrained model would take. Trains the retrained
models that are not cached yet.
"""
from __future__ import annotations

import sys

import numpy as np

from mape.forget import select_forget
from mape.metrics import rank_shift
from mape.pipeline import prepare, request_samples, retrain_model
from mape.update import check


def main(preset: str, spec: str, train_limit: int | None = None) -> None:
    ws = prepare(preset, train_limit=train_limit)
    for seed in (0, 1, 2):
        forget = select_forget(spec, ws.dataset, seed)
        smp = request_samples(ws, forget, forget.indices, seed, None)
        before = check(ws.task, smp.check_f, smp.check_r)
        retrained, _, _ = retrain_model(ws, forget.indices)
        after = check(retrained, smp.check_f, smp.check_r)
        print(f"seed {seed}: retain check accuracy {before.retain_acc:.4f} (original) / {after.retain_acc:.4f} "
              f"(retrained); rank shift of its losses {rank_shift(after.retain_losses, before.retain_losses):+.3f}; "
              f"median loss {np.median(before.retain_losses):.2e} / {np.median(after.retain_losses):.2e}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else None)
