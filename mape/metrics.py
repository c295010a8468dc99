"""Metrics (SPEC §3): forget / retain / test accuracy, MIA efficacy, the average gap to retrain.

All values are fractions in [0, 1]. ``gap_to_retrain`` is the mean absolute difference to the retrained
model over (forget_acc, retain_acc, test_acc, mia); multiply by 100 for "points".

MIA efficacy: a logistic-regression membership classifier on confidence features (probability of the
true label, top probability, entropy, loss) is trained on the model's outputs for retain examples
(members) against test examples (non-members), balanced, and applied to the forget set; the efficacy
is the share of forget examples it judges "not a member". Higher = the forget set looks unseen.
"""

from __future__ import annotations

import numpy as np

GAP_METRICS = ("forget_acc", "retain_acc", "test_acc", "mia")


def accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    if len(labels) == 0:
        return float("nan")
    return float((probs.argmax(1) == labels).mean())


def confidence_features(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    p = np.clip(probs, 1e-12, 1.0)
    p_true = p[np.arange(len(labels)), labels]
    entropy = -(p * np.log(p)).sum(1)
    return np.stack([p_true, p.max(1), entropy, -np.log(p_true)], axis=1)


def mia_efficacy(retain_probs, retain_labels, test_probs, test_labels, forget_probs, forget_labels,
                 seed: int = 0) -> float:
    """Share of the forget set that a confidence-based MIA classifies as non-member."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(seed)
    n = min(len(retain_labels), len(test_labels))
    if n < 2 or len(forget_labels) == 0:
        return float("nan")
    r = rng.choice(len(retain_labels), n, replace=False)
    t = rng.choice(len(test_labels), n, replace=False)
    x = np.concatenate([confidence_features(retain_probs[r], retain_labels[r]),
                        confidence_features(test_probs[t], test_labels[t])])
    y = np.concatenate([np.ones(n), np.zeros(n)])
    mean, std = x.mean(0), x.std(0) + 1e-8
    clf = LogisticRegression(max_iter=1000).fit((x - mean) / std, y)
    pred = clf.predict((confidence_features(forget_probs, forget_labels) - mean) / std)
    return float((pred == 0).mean())


def gap_to_retrain(metrics: dict, retrain: dict) -> float:
    return float(np.mean([abs(metrics[k] - retrain[k]) for k in GAP_METRICS]))
