"""Scenarios: what happened to the training data before the original model was trained (issue 15).

Specs (``--scenario SPEC`` on the CLI, ``prepare(..., scenario=SPEC)`` in the library):

- ``backdoor:TRIGGER:TARGET:N`` (text): N seeded training examples of the classes other than TARGET
  get the trigger word inserted at a seeded random word position and are relabelled TARGET. The
  position is drawn among the first ``text_window`` words (by default half the preset's ``max_length``
  in tokens), so the trigger lies inside the part of the text the model reads.
- ``backdoor:patch:TARGET:N`` (images, BadNets style): N seeded training examples of the other classes
  get a small white square (about 1/7 of the image side, 4 px on 28 px MNIST) in the bottom-right
  corner and are relabelled TARGET.
- ``mislabel:N``: N seeded training examples get a seeded wrong label (uniform over the other classes).

The choice is seeded by :data:`SCENARIO_SEED` (not by a run's seed: the scenario is part of the data,
so every run and every cached model of a scenario sees the same altered training set). A
:class:`Scenario` records the altered indices, their original and new labels and the trigger; the
altered dataset carries it (``dataset.scenario``), the workspace keeps it (``ws.scenario``), the forget
selector ``poisoned`` / ``poisoned:K`` / ``poisoned:P%`` selects among the altered examples, and the
metrics add ``asr`` (backdoors: share of the test examples of the other classes, with the trigger added,
predicted TARGET) and ``forget_acc_true`` (forget accuracy against the true labels).
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from dataclasses import dataclass

import numpy as np

from mape.base.errors import MapeError
from mape.data.datasets import Dataset, Split, share_count

SCENARIO_SEED = 0
TEST_TRIGGER_SEED = 1          # positions of the trigger in the test texts (ASR)
MAX_TRIGGER_CHARS = 20
PATCH = "patch"
KINDS = "backdoor:TRIGGER:TARGET:N (texts), backdoor:patch:TARGET:N (images), mislabel:N"
_NUM_RE = re.compile(r"^[0-9]{1,9}$")


def _show(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


@dataclass(frozen=True)
class ScenarioSpec:
    """A scenario spec as written (syntax checked; not yet resolved against a dataset)."""

    spec: str
    kind: str                  # backdoor | mislabel
    n: int
    trigger: str | None = None  # the trigger word, or "patch"; None for mislabel
    target: str | None = None   # the target class as written


@dataclass
class Scenario:
    """A scenario resolved against a training set: which examples were altered and how."""

    spec: str
    kind: str                   # backdoor | mislabel
    indices: np.ndarray         # altered training indices (sorted, int64)
    original_labels: np.ndarray  # their labels before the scenario (aligned with ``indices``)
    new_labels: np.ndarray      # their labels in the altered training set
    trigger: str | None = None  # the trigger word, "patch", or None
    target: int | None = None   # backdoor target class
    target_name: str | None = None
    positions: np.ndarray | None = None  # text backdoor: word position of the trigger in each altered text
    text_window: int | None = None
    patch: int | None = None    # image backdoor: side of the white square in pixels
    seed: int = SCENARIO_SEED

    @property
    def size(self) -> int:
        return int(len(self.indices))

    @property
    def is_backdoor(self) -> bool:
        return self.kind == "backdoor"

    @property
    def is_patch(self) -> bool:
        return self.trigger == PATCH

    def true_labels(self, train_y: np.ndarray, idx: np.ndarray) -> np.ndarray:
        """The labels of training examples ``idx`` before the scenario altered them."""
        y = np.asarray(train_y)[np.asarray(idx, dtype=np.int64)].copy()
        pos = np.searchsorted(self.indices, idx)
        pos = np.clip(pos, 0, max(len(self.indices) - 1, 0))
        hit = (self.indices[pos] == idx) if len(self.indices) else np.zeros(len(y), dtype=bool)
        y[hit] = self.original_labels[pos[hit]]
        return y

    def altered_mask(self, idx: np.ndarray) -> np.ndarray:
        return np.isin(np.asarray(idx, dtype=np.int64), self.indices)

    def cache_spec(self) -> dict:
        """What enters the original model's cache key: the spec, the seed, how triggers are placed
        and a digest of the altered indices and labels."""
        blob = (np.asarray(self.indices, dtype=np.int64).tobytes() + np.asarray(self.new_labels, np.int64).tobytes()
                + (np.asarray(self.positions, np.int64).tobytes() if self.positions is not None else b""))
        return {"spec": self.spec, "seed": self.seed, "window": self.text_window,
                "patch": self.patch,
                "altered": hashlib.sha256(blob).hexdigest()[:16]}

    def to_json(self) -> dict:
        return {"spec": self.spec, "kind": self.kind, "size": self.size, "trigger": self.trigger,
                "target": self.target_name, "seed": self.seed, "indices": [int(i) for i in self.indices],
                "original_labels": [int(v) for v in self.original_labels],
                "new_labels": [int(v) for v in self.new_labels]}


# --------------------------------------------------------------------------- parsing


def _count(text: str, spec: str) -> int:
    text = text.strip()
    if not _NUM_RE.match(text) or int(text) < 1:
        raise MapeError(f"The count {_show(text)} in scenario {_show(spec)} must be a whole number of at least 1.")
    return int(text)


def parse_scenario(spec) -> ScenarioSpec:
    """Check a scenario spec's syntax (no dataset needed, so the CLI can fail before any slow work)."""
    if not isinstance(spec, str) or not spec.strip():
        raise MapeError(f"The scenario spec is empty; valid kinds are {KINDS}.")
    spec = spec.strip()
    kind, sep, rest = spec.partition(":")
    kind = kind.strip().lower()
    if kind == "mislabel":
        if not sep or not rest.strip():
            raise MapeError(f"Scenario {_show(spec)} needs a count, e.g. mislabel:40.")
        return ScenarioSpec(spec, "mislabel", _count(rest, spec))
    if kind != "backdoor":
        raise MapeError(f"Unknown scenario {_show(kind, 40)}; valid kinds are {KINDS}.")
    trigger, sep1, rest = rest.partition(":")
    if not sep1 or ":" not in rest:
        raise MapeError(f"Scenario {_show(spec)} must look like backdoor:TRIGGER:TARGET:N "
                        f"(e.g. backdoor:cf:sport:40) or backdoor:patch:TARGET:N.")
    target, count = rest.rsplit(":", 1)
    if not trigger.strip():
        raise MapeError(f"The trigger in scenario {_show(spec)} is empty; write a word, e.g. backdoor:cf:sport:40.")
    if trigger != trigger.strip() or any(ch.isspace() for ch in trigger):
        raise MapeError(f"The trigger {_show(trigger)} in scenario {_show(spec)} must be one word without spaces.")
    if len(trigger) > MAX_TRIGGER_CHARS:
        raise MapeError(f"The trigger in scenario {_show(spec)} is {len(trigger)} characters long; "
                        f"the limit is {MAX_TRIGGER_CHARS}.")
    if not target.strip():
        raise MapeError(f"Scenario {_show(spec)} names no target class; write e.g. backdoor:cf:sport:40.")
    return ScenarioSpec(spec, "backdoor", _count(count, spec), trigger=trigger, target=target.strip())


# --------------------------------------------------------------------------- resolving and applying


def default_text_window(max_length: int | None) -> int:
    """Word positions the trigger may take: half the model's token limit (at least 4 words)."""
    return max(4, int(max_length or 128) // 2)


def resolve_scenario(spec: str | ScenarioSpec, dataset: Dataset, text_window: int | None = None,
                     seed: int = SCENARIO_SEED) -> Scenario:
    """Choose the altered examples (seeded) of ``dataset.train``; bad input raises MapeError."""
    parsed = spec if isinstance(spec, ScenarioSpec) else parse_scenario(spec)
    shown = _show(parsed.spec)
    if getattr(dataset, "scenario", None) is not None:
        raise MapeError(f"Dataset '{dataset.name}' already carries scenario {_show(dataset.scenario.spec)}.")
    y = np.asarray(dataset.train.y, dtype=np.int64)
    n_classes = len(dataset.classes)
    if n_classes < 2:
        raise MapeError(f"Scenario {shown} needs at least two classes; dataset '{dataset.name}' has {n_classes}.")
    rng = np.random.default_rng(seed)
    if parsed.kind == "mislabel":
        if parsed.n >= len(y):
            raise MapeError(f"Scenario {shown} asks for {parsed.n} mislabelled examples but the training set holds "
                            f"{len(y)}; at least one must keep its label.")
        idx = np.sort(rng.choice(len(y), parsed.n, replace=False)).astype(np.int64)
        shift = rng.integers(1, n_classes, size=len(idx))  # never 0: always a wrong label
        new = (y[idx] + shift) % n_classes
        return Scenario(parsed.spec, "mislabel", idx, y[idx].copy(), new.astype(np.int64), seed=seed)
    # backdoor
    if parsed.trigger == PATCH and dataset.modality != "image":
        raise MapeError(f"Scenario {shown}: the patch trigger is for image datasets, but '{dataset.name}' holds "
                        f"texts; use a trigger word, e.g. backdoor:cf:{parsed.target}:{parsed.n}.")
    if parsed.trigger != PATCH and dataset.modality != "text":
        raise MapeError(f"Scenario {shown}: a word trigger needs a text dataset, but '{dataset.name}' holds "
                        f"images; use backdoor:patch:{parsed.target}:{parsed.n}.")
    try:
        target = dataset.class_index(parsed.target)
    except MapeError:
        raise MapeError(f"Unknown target class {_show(parsed.target, 40)} in scenario {shown}; valid classes are "
                        f"{', '.join(dataset.classes)}.") from None
    pool = np.flatnonzero(y != target)
    if parsed.n > len(pool):
        raise MapeError(f"Scenario {shown} asks for {parsed.n} poisoned examples but the classes other than "
                        f"'{dataset.classes[target]}' hold only {len(pool)} training examples.")
    idx = np.sort(rng.choice(pool, parsed.n, replace=False)).astype(np.int64)
    positions, window, patch = None, None, None
    if parsed.trigger == PATCH:
        patch = patch_size_for(np.asarray(dataset.train.x).shape[1:3])
    else:
        window = int(text_window) if text_window else default_text_window(None)
        positions = trigger_positions([dataset.train.x[i] for i in idx], window, rng)
    return Scenario(parsed.spec, "backdoor", idx, y[idx].copy(), np.full(len(idx), target, dtype=np.int64),
                    trigger=parsed.trigger, target=target, target_name=dataset.classes[target],
                    positions=positions, text_window=window, patch=patch, seed=seed)


def trigger_positions(texts: list[str], window: int, rng) -> np.ndarray:
    """A seeded word position per text in 0..min(words, window) (inserting there puts the trigger before
    that word; at the end for the last position)."""
    return np.array([int(rng.integers(0, min(len(t.split()), window) + 1)) for t in texts], dtype=np.int64)


def insert_word(text: str, word: str, position: int) -> str:
    words = text.split()
    words.insert(min(int(position), len(words)), word)
    return " ".join(words)


def patch_size_for(shape: tuple[int, ...]) -> int:
    """Side of the white square: about 1/7 of the smaller image side, at least 2 px (4 px on 28×28)."""
    return max(2, int(round(min(shape[0], shape[1]) / 7)))


def add_patch(images: np.ndarray) -> np.ndarray:
    """A copy of ``images`` (N,H,W) or (N,H,W,C) uint8 with a white square in the bottom-right corner."""
    out = np.array(images, copy=True)
    s = patch_size_for(out.shape[1:3])
    out[:, -s:, -s:, ...] = 255
    return out


def add_trigger(x, scenario: Scenario, positions: np.ndarray | None = None, seed: int = TEST_TRIGGER_SEED):
    """Inputs ``x`` (texts or images) with the scenario's trigger added. For texts, ``positions`` (else
    seeded positions within the scenario's window) say where the word goes."""
    if not scenario.is_backdoor:
        raise MapeError(f"Scenario {_show(scenario.spec)} has no trigger.")
    if scenario.is_patch:
        return add_patch(np.asarray(x))
    texts = list(x)
    if positions is None:
        positions = trigger_positions(texts, scenario.text_window or default_text_window(None),
                                      np.random.default_rng(seed))
    return [insert_word(t, scenario.trigger, p) for t, p in zip(texts, positions)]


def apply_scenario(dataset: Dataset, scenario: Scenario) -> Dataset:
    """A copy of ``dataset`` whose training split is altered by ``scenario`` (test and unseen untouched);
    the copy carries the scenario (``.scenario``)."""
    train = dataset.train
    y = np.array(train.y, dtype=np.int64, copy=True)
    y[scenario.indices] = scenario.new_labels
    if scenario.is_backdoor and scenario.is_patch:
        x = np.array(train.x, copy=True)
        x[scenario.indices] = add_patch(x[scenario.indices])
    elif scenario.is_backdoor:
        x = list(train.x)
        for i, p in zip(scenario.indices, scenario.positions):
            x[i] = insert_word(x[i], scenario.trigger, p)
    else:
        x = train.x
    return dataclasses.replace(dataset, train=Split(x, y), scenario=scenario)


def scenario_dataset(spec: str, dataset: Dataset, text_window: int | None = None) -> Dataset:
    """Resolve and apply ``spec`` to ``dataset`` in one call."""
    return apply_scenario(dataset, resolve_scenario(spec, dataset, text_window))


def triggered_test(dataset: Dataset, scenario: Scenario) -> tuple[np.ndarray, Split]:
    """(indices into the test split, triggered split) of the test examples whose class is not the
    target, with the trigger added: what the attack success rate is measured on."""
    if not scenario.is_backdoor:
        raise MapeError(f"Scenario {_show(scenario.spec)} is not a backdoor; it has no attack success rate.")
    idx = np.flatnonzero(np.asarray(dataset.test.y) != scenario.target)
    part = dataset.test.take(idx)
    return idx, Split(add_trigger(part.x, scenario), part.y)


# --------------------------------------------------------------------------- the workspace side


def _memo(ws) -> dict:
    memo = ws.__dict__.get("_scenario_memo")
    if memo is None:
        memo = ws.__dict__["_scenario_memo"] = {}
    return memo


def triggered_test_enc(ws):
    """The workspace's triggered non-target test examples, encoded once (None without a backdoor)."""
    scenario = getattr(ws, "scenario", None)
    if scenario is None or not scenario.is_backdoor:
        return None
    memo = _memo(ws)
    if "enc" not in memo:
        _, split = triggered_test(ws.dataset, scenario)
        memo["enc"] = ws.task.encode(split)
    return memo["enc"]


def triggered_probs(ws, task=None) -> np.ndarray | None:
    """Probabilities of ``task`` (default: the original, memoised) on the triggered test examples."""
    enc = triggered_test_enc(ws)
    if enc is None:
        return None
    if task is None or task is ws.task:
        memo = _memo(ws)
        if "original" not in memo:
            memo["original"] = ws.task.predict_proba(enc)
        return memo["original"]
    return task.predict_proba(enc)


def scenario_metrics(ws, forget_indices: np.ndarray, probs_forget: np.ndarray,
                     probs_triggered: np.ndarray | None = None) -> dict:
    """``asr`` (backdoors; ``probs_triggered`` None: the original model's) and ``forget_acc_true``
    (forget accuracy against the labels before the scenario)."""
    from mape.base.metrics import accuracy, attack_success_rate

    scenario = ws.scenario
    out = {}
    if scenario.is_backdoor:
        probs = probs_triggered if probs_triggered is not None else triggered_probs(ws)
        out["asr"] = attack_success_rate(probs, scenario.target)
    out["forget_acc_true"] = accuracy(probs_forget, scenario.true_labels(ws.train_y, forget_indices))
    return out


def poisoned_forget_target(scenario: Scenario, train_y: np.ndarray, forget_indices: np.ndarray, pred: np.ndarray,
                  ys: np.ndarray) -> float:
    """Forget accuracy (against the training labels) a model that never saw D_f would score, on a scenario:
    per forget example, the share of unseen examples of its *true* class that the original predicts as
    its *training* label (for an unaltered example, its class accuracy; for an altered one, how often a
    clean input of its true class is taken for its new label), averaged. ``pred``/``ys``: the original's
    predictions and the labels on unseen (or test) examples."""
    fy = np.asarray(train_y)[forget_indices]
    ty = scenario.true_labels(train_y, forget_indices)
    overall = float((pred == ys).mean()) if len(ys) else float("nan")
    accs = [float((pred[ys == t] == f).mean()) if (ys == t).any() else (overall if f == t else 0.0)
            for f, t in zip(fy, ty)]
    return float(np.mean(accs)) if accs else float("nan")


def select_poisoned(arg: str, dataset: Dataset, rng, spec: str) -> np.ndarray:
    """The ``poisoned`` forget selector: all altered examples, ``poisoned:K`` (K seeded ones) or
    ``poisoned:P%`` (that share of them, at least one)."""
    scenario = getattr(dataset, "scenario", None)
    if scenario is None:
        raise MapeError(f"Forget spec {_show(spec)} needs a scenario (--scenario backdoor:TRIGGER:TARGET:N, "
                        f"backdoor:patch:TARGET:N or mislabel:N); dataset '{dataset.name}' is clean.")
    pool = scenario.indices
    arg = arg.strip()
    if not arg:
        return pool.copy()
    if arg.endswith("%"):
        k = share_count(arg, len(pool), _show(spec), "poisoned:50%")
    else:
        if not _NUM_RE.match(arg) or int(arg) < 1:
            raise MapeError(f"The count {_show(arg)} in forget spec {_show(spec)} must be a whole number of at "
                            f"least 1, e.g. poisoned:10.")
        k = int(arg)
        if k > len(pool):
            raise MapeError(f"Forget spec {_show(spec)} asks for {k} examples but scenario "
                            f"{_show(scenario.spec)} altered only {len(pool)}.")
    return np.sort(rng.choice(pool, size=k, replace=False))


def check_forget_specs(specs: list[str], scenario: str | None) -> None:
    """Before any slow work: the scenario's syntax, and no ``poisoned`` forget spec without a scenario."""
    if scenario is not None:
        parse_scenario(scenario)
        return
    for spec in specs:
        if isinstance(spec, str) and spec.strip().partition(":")[0].strip().lower() == "poisoned":
            raise MapeError(f"Forget spec {_show(spec.strip())} needs a scenario (--scenario on the CLI; in the "
                            f"app the Training data choice or the API's scenario argument): "
                            f"backdoor:TRIGGER:TARGET:N, backdoor:patch:TARGET:N or mislabel:N.")


def loss_reference(scenario: Scenario, train_y: np.ndarray, forget_indices: np.ndarray, probs: np.ndarray,
                   ys: np.ndarray, seed: int = 0, size: int = 1000) -> np.ndarray:
    """Per-example losses (against the *training* labels) a model that never saw D_f would have on it, on
    a scenario: the original's losses on unseen examples of each forget example's *true* class, taken
    against its training label, drawn in D_f's (training label, true class) mix (seeded). For unaltered
    examples this is the clean reference (losses of unseen examples of their class)."""
    from mape.base.metrics import example_losses

    fy = np.asarray(train_y)[forget_indices]
    ty = scenario.true_labels(train_y, forget_indices)
    rng = np.random.default_rng(seed)
    pairs, counts = np.unique(np.stack([fy, ty], 1), axis=0, return_counts=True)
    parts = []
    for (f, t), n in zip(pairs, counts):
        pool = probs[ys == t] if (ys == t).any() else probs
        losses = example_losses(pool, np.full(len(pool), f, dtype=np.int64))
        parts.append(rng.choice(losses, max(1, int(round(size * n / len(fy)))), replace=True))
    return np.concatenate(parts) if parts else np.zeros(0)
