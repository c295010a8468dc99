"""Metrics (DESIGN.md §9): forget / retain / test accuracy, MIA efficacy, loss distance, the gap to retrain.

All values are fractions in [0, 1]. ``gap_to_retrain`` is the mean absolute difference to the retrained
model over (forget_acc, retain_acc, test_acc, mia); multiply by 100 for "points".

Per-example loss and confidence are computed from the probabilities without losing the confident end:
with r = Σ_{j≠y} p_j the probability mass off the true label, the loss is ``log1p(r / p_y)`` (= −log p_y,
exact even when p_y rounds to 1 in float32) and the *scaled confidence* is φ = log p_y − log r (the logit
of the true-label probability, as in LiRA, Carlini et al. 2022). A fine-tuned classifier is near certain
on its training data *and* on most test data; on the raw probability scale members and non-members differ
by 1e-4, which is why a classifier on raw confidence sits near chance and its threshold flips with the
sample it is fitted on (the untouched BBC model read 7 %, 14 % and 79 % on three seeds of one forget set).
On the φ scale the two populations are well separated and roughly Gaussian.

MIA efficacy: a logistic-regression membership classifier on φ (members = the fixed retain sample,
non-members = test examples, balanced), fitted on ``MIA_RESAMPLES`` seeded bootstrap resamples of both
and applied to the forget set; the efficacy is the mean over resamples of the share of forget examples
judged "not a member" (higher = the forget set looks unseen), ``mia_spread`` the std over resamples.

``loss_distance``: the two-sample Kolmogorov–Smirnov statistic between the forget set's per-example loss
distribution under a model and under the retrained model (0 = the same distribution, 1 = disjoint). It
needs no attacker, is scale-free (KS is invariant to monotone maps, so it is the same on loss, log-loss
or φ) and reads what a membership attack reads: whether the forget examples are as unsure as unseen ones.
"""

from __future__ import annotations

import numpy as np

GAP_METRICS = ("forget_acc", "retain_acc", "test_acc", "mia")
MIA_RESAMPLES = 16


def accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    if len(labels) == 0:
        return float("nan")
    return float((probs.argmax(1) == labels).mean())


def _true_and_rest(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    p_true = p[np.arange(len(labels)), labels]
    others = np.where(np.arange(p.shape[1])[None, :] == labels[:, None], 0.0, p).sum(1)
    rest = np.where(p_true > 0.5, others, 1.0 - p_true)  # the off-label mass, exact at either end
    return np.clip(p_true, 1e-300, 1.0), np.clip(rest, 1e-300, 1.0)


def example_losses(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-example cross-entropy −log p_y, exact at the confident end (see the module docstring)."""
    if len(labels) == 0:
        return np.zeros(0)
    p_true, rest = _true_and_rest(probs, labels)
    return np.log1p(rest / p_true)


def scaled_confidence(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """φ = log p_y − log Σ_{j≠y} p_j per example (the MIA feature)."""
    p_true, rest = _true_and_rest(probs, labels)
    return np.log(p_true) - np.log(rest)


def mia_scores(retain_probs, retain_labels, test_probs, test_labels, forget_probs, forget_labels,
               seed: int = 0, resamples: int = MIA_RESAMPLES) -> np.ndarray:
    """Per resample, the share of the forget set judged non-member (empty if it cannot be measured)."""
    from sklearn.linear_model import LogisticRegression

    n = min(len(retain_labels), len(test_labels))
    if n < 2 or len(forget_labels) == 0:
        return np.zeros(0)
    xr = scaled_confidence(retain_probs, retain_labels)
    xt = scaled_confidence(test_probs, test_labels)
    xf = scaled_confidence(forget_probs, forget_labels)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(resamples):
        r = rng.choice(len(xr), n, replace=True)
        t = rng.choice(len(xt), n, replace=True)
        x = np.concatenate([xr[r], xt[t]])[:, None]
        y = np.concatenate([np.ones(n), np.zeros(n)])
        mean, std = x.mean(), x.std() + 1e-8
        clf = LogisticRegression(max_iter=1000).fit((x - mean) / std, y)
        out.append(float((clf.predict((xf[:, None] - mean) / std) == 0).mean()))
    return np.asarray(out)


def mia_efficacy(retain_probs, retain_labels, test_probs, test_labels, forget_probs, forget_labels,
                 seed: int = 0) -> float:
    """Share of the forget set that the membership attack classifies as non-member (mean over resamples)."""
    scores = mia_scores(retain_probs, retain_labels, test_probs, test_labels, forget_probs, forget_labels, seed)
    return float(scores.mean()) if len(scores) else float("nan")


def ks_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov–Smirnov statistic sup_x |F_a(x) − F_b(x)| (nan if either is empty)."""
    a, b = np.sort(np.asarray(a, dtype=np.float64)), np.sort(np.asarray(b, dtype=np.float64))
    if len(a) == 0 or len(b) == 0:
        return float("nan")
    grid = np.concatenate([a, b])
    fa = np.searchsorted(a, grid, side="right") / len(a)
    fb = np.searchsorted(b, grid, side="right") / len(b)
    return float(np.abs(fa - fb).max())


def rank_shift(a: np.ndarray, b: np.ndarray) -> float:
    """P(A > B) + ½ P(A = B) − ½ for independent draws (Mann–Whitney, in [−½, ½]); for losses:
    negative = ``a`` is more confident than ``b``, positive = less."""
    a, b = np.asarray(a, dtype=np.float64), np.sort(np.asarray(b, dtype=np.float64))
    if len(a) == 0 or len(b) == 0:
        return float("nan")
    below = np.searchsorted(b, a, side="left")
    ties = np.searchsorted(b, a, side="right") - below
    return float((below + 0.5 * ties).mean() / len(b) - 0.5)


def loss_distance(losses: np.ndarray, reference_losses: np.ndarray) -> float:
    """Distance between the forget set's loss distribution under a model and under the retrained model."""
    return ks_distance(losses, reference_losses)


def gap_to_retrain(metrics: dict, retrain: dict) -> float:
    return float(np.mean([abs(metrics[k] - retrain[k]) for k in GAP_METRICS]))


def attack_success_rate(triggered_probs: np.ndarray, target: int) -> float:
    """Backdoor attack success rate: the share of triggered test examples (of the classes other than the
    target) predicted as the target class (issue 15)."""
    if len(triggered_probs) == 0:
        return float("nan")
    return float((np.asarray(triggered_probs).argmax(1) == int(target)).mean())
