"""Forget-set selectors: which training examples a request asks the model to forget.

Specs: ``random:N``, ``random:P%``, ``class:LABEL``, ``class:LABEL:N``, ``match:REGEX``,
``indices:i,j,k`` (ranges ``i-j`` allowed), ``indices-file:PATH`` and, on a scenario (mape.data.scenarios),
``poisoned`` / ``poisoned:K`` / ``poisoned:P%`` (the altered training examples, or a seeded part of them).
Same spec and seed give the same indices.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mape.base.errors import MapeError
from mape.data.datasets import Dataset, share_count
from mape.data.scenarios import select_poisoned

MAX_FORGET_FRACTION = 0.6
KINDS = ("random:N, random:P%, class:LABEL, class:LABEL:N, match:REGEX, indices:i,j,k, indices-file:PATH, "
         "poisoned, poisoned:K, poisoned:P% (on a scenario)")
_NUM_RE = re.compile(r"^[0-9]+$")
_RANGE_RE = re.compile(r"^([0-9]+)-([0-9]+)$")


def _show(text: str, limit: int = 80) -> str:
    """User text quoted on one line (repr escapes newlines), shortened."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _int(text: str) -> int:
    """A digit string as int; absurdly long ones are capped (int() refuses > 4300 digits)."""
    return int(text) if len(text) <= 18 else 10**18


@dataclass
class ForgetSet:
    """Sorted unique indices into ``dataset.train`` to forget."""

    spec: str
    indices: np.ndarray
    forget_class: int | None
    class_name: str | None = None
    scenario: str | None = None   # the dataset's scenario spec (None: clean training data)
    altered: int | None = None    # how many of the examples the scenario altered

    @property
    def size(self) -> int:
        return int(len(self.indices))

    def to_json(self) -> dict:
        name = self.class_name if self.class_name is not None else self.forget_class
        out = {"spec": self.spec, "size": self.size, "indices": [int(i) for i in self.indices],
               "forget_class": None if self.forget_class is None else name}
        if self.scenario is not None:
            out.update(scenario=self.scenario, altered=self.altered)
        return out


def _count(text: str, spec: str) -> int:
    text = text.strip()
    if not _NUM_RE.match(text):
        raise MapeError(f"The count {_show(text)} in forget spec {spec} must be a whole number, e.g. random:100.")
    n = _int(text)
    if n <= 0:
        raise MapeError(f"The count in forget spec {spec} must be positive, not {n}.")
    return n


def _sample(pool: np.ndarray, n: int, rng, spec: str) -> np.ndarray:
    if n > len(pool):
        raise MapeError(
            f"Forget spec {spec} asks for {n} examples but only {len(pool)} are available."
        )
    return rng.choice(pool, size=n, replace=False)


def _parse_indices(text: str, n_train: int, spec: str) -> np.ndarray:
    tokens = [t for t in re.split(r"[,\s]+", text) if t]
    if not tokens:
        raise MapeError(f"Forget spec {spec} lists no indices; write e.g. indices:0,5,10-20.")
    parts = []
    for t in tokens:
        m = _RANGE_RE.match(t)
        if _NUM_RE.match(t):
            lo = hi = _int(t)
        elif m:
            lo, hi = _int(m.group(1)), _int(m.group(2))
            if lo > hi:
                raise MapeError(f"The index range {_show(t)} in forget spec {spec} runs backwards; write low-high.")
        else:
            raise MapeError(
                f"{_show(t, 40)} in forget spec {spec} is not an index or a range; "
                f"write non-negative integers like 0,5,10-20."
            )
        if hi >= n_train:
            raise MapeError(
                f"Index {hi} in forget spec {spec} is out of range; valid indices are 0..{n_train - 1}."
            )
        parts.append(np.arange(lo, hi + 1, dtype=np.int64))
    return np.concatenate(parts)


def _read_index_file(arg: str) -> str:
    path = Path(arg.strip())
    try:
        path = path.expanduser()
    except RuntimeError:  # "~user" with no such user
        pass
    if not path.is_file():
        raise MapeError(f"Cannot read index file {_show(str(path))}: it does not exist or is not a regular file.")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, ValueError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise MapeError(f"Cannot read index file {_show(str(path))}: {reason}.") from None
    return " ".join(line.split("#", 1)[0] for line in text.splitlines())


def select_forget(spec: str, dataset: Dataset, seed: int = 0,
                  max_fraction: float = MAX_FORGET_FRACTION) -> ForgetSet:
    """Resolve a forget spec against ``dataset.train``."""
    if not isinstance(spec, str) or not spec.strip():
        raise MapeError(f"The forget spec is empty; valid kinds are {KINDS}.")
    spec = spec.strip()
    shown = _show(spec)
    kind, sep, arg = spec.partition(":")
    kind = kind.strip().lower()
    n_train = len(dataset.train)
    y = np.asarray(dataset.train.y)
    rng = np.random.default_rng(seed)
    forget_class = class_name = None
    if kind not in ("random", "class", "match", "indices", "indices-file", "poisoned"):
        raise MapeError(f"Unknown forget selector {_show(kind, 40)}; valid kinds are {KINDS}.")
    if kind != "poisoned" and (not sep or (kind != "match" and not arg.strip())):
        raise MapeError(f"Forget spec {shown} needs a value after '{kind}:'; valid kinds are {KINDS}.")
    if n_train == 0:
        raise MapeError(f"Dataset '{dataset.name}' has no training examples to forget.")

    if kind == "random":
        arg = arg.strip()
        if arg.endswith("%"):
            n = share_count(arg, n_train, shown, "random:5%")
        else:
            n = _count(arg, shown)
        idx = _sample(np.arange(n_train), n, rng, shown)
    elif kind == "class":
        label, n = arg.strip(), None
        if ":" in label and label.lower() not in (c.lower() for c in dataset.classes):
            label, count = label.rsplit(":", 1)
            n = _count(count, shown)
        c = dataset.class_index(label.strip())
        pool = np.flatnonzero(y == c)
        if len(pool) == 0:
            raise MapeError(f"Class '{dataset.classes[c]}' has no training examples to forget.")
        if n is None:
            idx, forget_class, class_name = pool, c, dataset.classes[c]
        else:
            idx = _sample(pool, n, rng, shown)
    elif kind == "match":
        if dataset.modality != "text":
            raise MapeError(f"match: selects texts, but dataset '{dataset.name}' holds {dataset.modality}s; "
                            "use random:, class: or indices:.")
        if not arg:
            raise MapeError("Forget spec 'match:' needs a regular expression, e.g. match:football.")
        try:
            pattern = re.compile(arg, re.IGNORECASE)
        except (re.error, OverflowError, RecursionError, ValueError) as e:
            raise MapeError(f"Invalid regular expression {_show(arg)} in forget spec: {e}.") from None
        idx = np.array([i for i, t in enumerate(dataset.train.x) if pattern.search(t)], dtype=np.int64)
        if len(idx) == 0:
            raise MapeError(f"The pattern {_show(arg)} matches no training text; try a broader pattern.")
    elif kind == "poisoned":
        idx = select_poisoned(arg, dataset, rng, spec)
    elif kind == "indices":
        idx = _parse_indices(arg, n_train, shown)
    else:
        idx = _parse_indices(_read_index_file(arg), n_train, shown)

    idx = np.unique(np.asarray(idx, dtype=np.int64))
    if len(idx) == 0:
        raise MapeError(f"Forget spec {shown} selects no training examples.")
    if len(idx) >= n_train:
        raise MapeError(
            f"Forget spec {shown} selects the whole training set ({n_train} examples); "
            f"at least one example must be retained."
        )
    if len(idx) > max_fraction * n_train:
        raise MapeError(
            f"Forget set {shown} is {len(idx)} of {n_train} training examples "
            f"({100 * len(idx) / n_train:.1f}%); the limit is {100 * max_fraction:g}%."
        )
    scenario = getattr(dataset, "scenario", None)
    if scenario is None:
        return ForgetSet(spec, idx, forget_class, class_name)
    return ForgetSet(spec, idx, forget_class, class_name, scenario=scenario.spec,
                     altered=int(scenario.altered_mask(idx).sum()))


def retain_indices(forget: ForgetSet, n_train: int) -> np.ndarray:
    """Training indices not in the forget set (sorted int64)."""
    if forget.size and int(forget.indices.max()) >= n_train:
        raise MapeError(f"Forget set {_show(forget.spec)} does not fit a training set of {n_train} examples.")
    keep = np.ones(n_train, dtype=bool)
    keep[forget.indices] = False
    return np.flatnonzero(keep).astype(np.int64)
