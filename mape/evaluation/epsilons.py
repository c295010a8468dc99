"""The audit's statistics (DESIGN.md §9): per-example epsilons from the losses of unlearned vs retrained models,
their points and bootstrap intervals, the scores of a row and the sanity check."""

from __future__ import annotations

import math

import numpy as np

from mape.base.errors import MapeError

ORIGINAL, RETRAIN, INDEPENDENT = "original", "retrain", "retrain (independent)"
DELTA = 1e-5


EPSILON_CAP = 50.0


PEAKY_RATIO = 0.01      # a population whose range is below 1 % of the other's: the cap (reference)


INTERVAL_BUFFER = 2.0   # intervals' widths: the peakier population's range ± this (reference)


BUCKET = 0.5


BOOTSTRAP = 1000


def _epsilon_of_rates(fpr: np.ndarray, fnr: np.ndarray, delta: float) -> np.ndarray:
    """ε of each rule from its false-positive and false-negative rates (NaN: rule skipped; inf: perfect)."""
    fpr, fnr = np.asarray(fpr, dtype=np.float64), np.asarray(fnr, dtype=np.float64)
    perfect = (fpr == 0) & (fnr == 0)
    skipped = ((fpr == 0) | (fnr == 0)) & ~perfect
    with np.errstate(divide="ignore", invalid="ignore"):
        eps = np.fmax(np.log(1 - delta - fpr) - np.log(fnr), np.log(1 - delta - fnr) - np.log(fpr))
    eps = np.clip(eps, 0, None)
    eps[skipped] = np.nan
    eps[perfect] = np.inf
    return eps


def _single_threshold_rates(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, FNR) of 'positive when φ ≥ t' for every distinct t (between consecutive pooled values)."""
    cuts = np.unique(np.concatenate([pos, neg]))
    tpr = (pos[None, :] >= cuts[:, None]).mean(1)
    fpr = (neg[None, :] >= cuts[:, None]).mean(1)
    return fpr, 1 - tpr


def _interval_rates(pos: np.ndarray, neg: np.ndarray, buffer: float) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, FNR) of 'positive when l ≤ φ ≤ r' with ``pos`` the peakier population, r − l within ``buffer`` of
    its range, for every contiguous run of pooled values such an interval can cover exactly."""
    width = float(pos.max() - pos.min())
    u = np.unique(np.concatenate([pos, neg]))
    k = len(u)
    ext = np.concatenate([[-np.inf], u, [np.inf]])
    i, j = np.triu_indices(k)                      # runs u[i..j]
    narrowest = u[j] - u[i]                         # l = u[i], r = u[j]
    widest = ext[j + 2] - ext[i]                   # l just above u[i−1], r just below u[j+1] (open)
    ok = (narrowest <= width + buffer) & (widest > width - buffer)
    i, j = i[ok], j[ok]
    pos_count = np.searchsorted(np.sort(pos), u, side="right")   # pooled value index → count ≤ it
    neg_count = np.searchsorted(np.sort(neg), u, side="right")
    below_p = np.where(i > 0, pos_count[np.maximum(i - 1, 0)], 0)
    below_n = np.where(i > 0, neg_count[np.maximum(i - 1, 0)], 0)
    tpr = (pos_count[j] - below_p) / len(pos)
    fpr = (neg_count[j] - below_n) / len(neg)
    return fpr, 1 - tpr


def example_epsilon(pos, neg, delta: float = DELTA, cap: float = EPSILON_CAP) -> float:
    """The ε of one forget example from its φ under the two model populations (``pos``: the one whose median
    is larger). See the module docstring for the rule families and the special cases."""
    pos, neg = np.asarray(pos, dtype=np.float64), np.asarray(neg, dtype=np.float64)
    if len(pos) < 2 or len(neg) < 2:
        raise MapeError("The audit needs at least two models per population.")
    range_p, range_n = float(pos.max() - pos.min()), float(neg.max() - neg.min())
    largest, smallest = max(range_p, range_n), min(range_p, range_n)
    if largest == 0:
        return 0.0 if pos[0] == neg[0] else cap
    if smallest / largest < PEAKY_RATIO:
        return cap
    peaky, wide = (pos, neg) if range_p < range_n else (neg, pos)
    rates = [_single_threshold_rates(pos, neg), _interval_rates(peaky, wide, INTERVAL_BUFFER)]
    eps = np.concatenate([_epsilon_of_rates(fpr, fnr, delta) for fpr, fnr in rates])
    if np.all(np.isnan(eps)):
        return 0.0
    return float(np.clip(np.nanmax(eps), 0, cap))


def epsilons(unlearned: np.ndarray, retrained: np.ndarray, delta: float = DELTA) -> np.ndarray:
    """ε of every forget example; ``unlearned`` and ``retrained`` are (models, examples) arrays of φ."""
    unlearned, retrained = np.asarray(unlearned, np.float64), np.asarray(retrained, np.float64)
    if unlearned.shape[1] != retrained.shape[1]:
        raise MapeError("Both populations must score the same forget examples.")
    retrain_up = np.median(retrained, 0) > np.median(unlearned, 0)
    return np.array([example_epsilon(retrained[:, e], unlearned[:, e], delta) if retrain_up[e]
                     else example_epsilon(unlearned[:, e], retrained[:, e], delta)
                     for e in range(unlearned.shape[1])])


def max_epsilon(n_models: int) -> float:
    """The largest ε N models per side can show (the reference's back-of-the-envelope ⌈log(N − 1)⌉)."""
    return float(math.ceil(math.log(n_models - 1)))


def example_points(eps: np.ndarray, n_models: int) -> np.ndarray:
    """The challenge's points per example: 1 for ε < 0.5, halved per further 0.5 of ε, 0 from ⌈log(N − 1)⌉."""
    eps = np.asarray(eps, dtype=np.float64)
    n_buckets = int(round(max_epsilon(n_models) / BUCKET))
    k = np.floor(eps / BUCKET)
    return np.where(k < n_buckets, 0.5 ** np.minimum(k, n_buckets), 0.0)


def bootstrap_interval(points: np.ndarray, seed: int = 0, resamples: int = BOOTSTRAP) -> tuple[float, float]:
    """95 % percentile bootstrap interval of the mean of ``points`` over the forget examples."""
    points = np.asarray(points, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = points[rng.integers(0, len(points), (resamples, len(points)))].mean(1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(lo), float(hi)


def row_scores(unlearned: list[dict], retrained: list[dict], n_models: int, seed: int = 0) -> dict:
    """F, its interval, the final score and the per-example ε of one population against the retrains."""
    u = np.array([r["conf"] for r in unlearned])
    r = np.array([r["conf"] for r in retrained])
    eps = epsilons(u, r)
    points = example_points(eps, n_models)
    f = float(points.mean())
    lo, hi = bootstrap_interval(points, seed)
    retain_u, retain_r = (float(np.mean([x["retain_acc"] for x in p])) for p in (unlearned, retrained))
    test_u, test_r = (float(np.mean([x["test_acc"] for x in p])) for p in (unlearned, retrained))
    scale = (retain_u / retain_r if retain_r else 0.0) * (test_u / test_r if test_r else 0.0)
    return {"forget_score": f, "forget_score_ci": [lo, hi], "final_score": f * scale,
            "final_score_ci": [lo * scale, hi * scale], "retain_acc": retain_u, "test_acc": test_u,
            "seconds_per_model": float(np.mean([x["seconds"] for x in unlearned])),
            "epsilon_median": float(np.median(eps)), "epsilons": [round(float(e), 4) for e in eps]}


def sanity_check(rows: dict) -> dict:
    """The sanity rows separate when the independent retrains' F interval lies above the original's."""
    orig, ind = rows[ORIGINAL], rows[INDEPENDENT]
    separated = ind["forget_score_ci"][0] > orig["forget_score_ci"][1]
    note = ("the sanity rows separate: independent retrains score above the original beyond both intervals"
            if separated else "the sanity rows do NOT separate (independent retrains vs the original): this audit "
            "cannot tell forgetting apart at this N and ranks no method; use more models")
    return {"original": orig["forget_score"], "independent": ind["forget_score"], "separated": bool(separated),
            "note": note}
