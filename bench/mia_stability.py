"""Issue 14 (run: PYTHONPATH=. python bench/mia_stability.py minilm-bbc class:tech:120): MIA of the untouched
original on minilm-bbc class:tech:120 over seeds 0,1,2 (new vs old attack)."""
import json
import sys

import numpy as np
from sklearn.linear_model import LogisticRegression

from mape.base.metrics import example_losses, mia_scores
from mape.data.forget import select_forget
from mape.run.workspace import prepare


def old_mia(rp, ry, tp, ty, fp, fy, seed):
    def feats(p, y):
        p = np.clip(p, 1e-12, 1.0)
        pt = p[np.arange(len(y)), y]
        return np.stack([pt, p.max(1), -(p * np.log(p)).sum(1), -np.log(pt)], axis=1)
    rng = np.random.default_rng(seed)
    n = min(len(ry), len(ty))
    r = rng.choice(len(ry), n, replace=False)
    t = rng.choice(len(ty), n, replace=False)
    x = np.concatenate([feats(rp[r], ry[r]), feats(tp[t], ty[t])])
    y = np.concatenate([np.ones(n), np.zeros(n)])
    m, s = x.mean(0), x.std(0) + 1e-8
    clf = LogisticRegression(max_iter=1000).fit((x - m) / s, y)
    return float((clf.predict((feats(fp, fy) - m) / s) == 0).mean())

preset, spec = sys.argv[1], sys.argv[2]
ws = prepare(preset, device="cpu")
out = {}
for seed in (0, 1, 2):
    f = select_forget(spec, ws.dataset, seed)
    ridx = ws.retain_eval_indices(f.indices)
    fp, rp, tp = ws.original_train_probs(f.indices), ws.original_train_probs(ridx), ws.original_test_probs()
    fy, ry, ty = ws.train_y[f.indices], ws.train_y[ridx], ws.test_y
    new = mia_scores(rp, ry, tp, ty, fp, fy, seed=seed)
    # an "unseen" control: test examples of the same classes, as a retrained model would see D_f
    test_same = np.flatnonzero(np.isin(ty, np.unique(fy)))
    out[seed] = {"old_mia": old_mia(rp, ry, tp, ty, fp, fy, seed), "new_mia": float(new.mean()),
                 "new_mia_spread": float(new.std()),
                 "new_mia_on_unseen_test": float(mia_scores(rp, ry, tp, ty, tp[test_same], ty[test_same],
                                                            seed=seed).mean()),
                 "median_forget_loss": float(np.median(example_losses(fp, fy))),
                 "median_test_loss": float(np.median(example_losses(tp[test_same], ty[test_same])))}
    print(seed, out[seed], flush=True)
for k in ("old_mia", "new_mia"):
    v = [out[s][k] for s in out]
    print(k, "values", [round(100 * x, 1) for x in v], "std", round(100 * float(np.std(v, ddof=1)), 1))
json.dump(out, open(f"bench/results/mia-stability-{preset}-{spec.replace(':', '_')}.json", "w"), indent=1)
