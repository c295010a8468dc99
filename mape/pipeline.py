"""Orchestration: prepare a preset (original model, cached) and run unlearning requests on it.

    ws = prepare("minilm-bbc")                       # trains on first use, then loads from the cache
    result = unlearn(ws, "class:sport", UnlearnConfig(retrain=True))
    result.to_json()                                  # the CLI's / app's results JSON

``Workspace`` holds the dataset, the encoded splits and the original model once per process; every
run works on its own copy of the network, so the shared original is never modified.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import torch

from mape import cache
from mape.errors import MapeError
from mape.forget import ForgetSet, select_forget
from mape.metrics import accuracy, example_losses, gap_to_retrain, loss_distance, mia_scores
from mape.models import Encoded, TaskModel, parameter_count
from mape.presets import Preset, build_start_model, custom_preset, get_preset, load_dataset_for
from mape.scoring import OBJECTIVES, param_stats, sample_retain
from mape.search import Selection, search
from mape.train import train
from mape.update import (
    GRAD_WORK,
    SO_GRID,
    UPDATES,
    Check,
    MaskedParams,
    Target,
    UpdateReport,
    Work,
    check,
    iterative_update,
    retrain_work,
    so_direction,
    so_update,
)

Progress = Callable[..., None]   # progress(stage: str, fraction: float, selection: Selection | None = None)

RETAIN_EVAL_SIZE = 1000   # the fixed retain sample for retain accuracy / MIA
UNSEEN_EVAL_SIZE = 1000   # unused training examples (training limit) for the forget target
CHECK_SIZE = 128          # forget check sample for the auto step size
CHECK_RETAIN = 256        # retain check sample for the auto step size: its accuracy decides feasibility within
# a 2-point tolerance, and on 128 examples that was 2 mistakes — ViT · MNIST class:3 kept 19.0 % of the class
# over 5 seeds with 128, 5.8 % with 256 (the chosen steps' full retain accuracy 97.8 vs 98.0 %)
REFERENCE_SIZE = 1024     # unseen-example losses in the forget set's class mix (the auto step's target)
CHECK_UNSEEN = 128        # unseen check sample (examples never trained on, of the retained classes): the step's
# retain examples must stay told apart from these as well as at the start (mape.update.Target.feasible)
WHOLE_CLASS_SLACK = 0.005  # a whole class is forgotten when its check accuracy is 0 (< 1 of 128 wrong)


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise MapeError("--device cuda was asked for but no CUDA GPU is available; use --device cpu or auto.")
    if device not in ("cpu", "cuda"):
        raise MapeError(f"Unknown device '{device}'; use auto, cpu or cuda.")
    return torch.device(device)


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"


MAX_GREEDY_PASSES = 5  # refinement passes allowed; a pass that swaps nothing ends the refinement early


@dataclass
class UnlearnConfig:
    objective: str = "mlr"
    sparsity: float = 0.9
    update: str = "so"
    step: str | float = "auto"       # "auto", η for so, or a number of steps for ga/gd/rl/npo
    seed: int = 0
    retrain: bool = False
    joint_budget: bool = False
    greedy_passes: int = 1           # 0: the warm start only (at most MAX_GREEDY_PASSES)
    retain_sample: int | None = None  # None: 2,048 on a GPU, 512 on a CPU
    batch_size: int = 32
    tolerance: float = 0.02
    damping: float = 0.01            # λ = damping · mean(Î_r over the selection)
    so_steps: int = 20               # auto: at most this many so steps (follow-ups: ∇L on D_f left − ∇L_r); the
    # run's work budget (half a retrain's, RUN_WORK_SHARE) and "no progress or harm" (_no_follow_up) end them first
    lr: float | None = None          # iterative rules; None: the preset's training lr

    def validate(self) -> None:
        if not isinstance(self.objective, str) or self.objective not in OBJECTIVES:
            raise MapeError(f"Unknown objective {self.objective!r}; choose one of {', '.join(OBJECTIVES)}.")
        if not isinstance(self.update, str) or self.update not in UPDATES:
            raise MapeError(f"Unknown update rule {self.update!r}; choose one of {', '.join(UPDATES)}.")
        if not (isinstance(self.sparsity, (int, float)) and not isinstance(self.sparsity, bool)
                and 0 < self.sparsity < 1):
            raise MapeError(f"Sparsity must be a number strictly between 0 and 1, got {self.sparsity!r}.")
        if self.step != "auto":
            try:
                value = float(self.step)
            except (TypeError, ValueError):
                raise MapeError(f"Step must be 'auto' or a number, got {self.step!r}.") from None
            if not np.isfinite(value) or value <= 0:
                raise MapeError(f"Step must be a positive number, got {self.step!r}.")
            if self.update != "so" and value != int(value):
                raise MapeError(f"For update '{self.update}' the step is a whole number of steps, got {self.step!r}.")
            self.step = value if self.update == "so" else int(value)
        if self.retain_sample is not None and (not _is_int(self.retain_sample) or self.retain_sample < 1):
            raise MapeError(f"The retain sample size must be a whole number of at least 1, got {self.retain_sample!r}.")
        if not _is_int(self.seed) or not 0 <= self.seed < 2**32:
            raise MapeError(f"The seed must be a whole number in 0..{2**32 - 1}, got {self.seed!r}.")
        self.seed = int(self.seed)
        if not _is_int(self.greedy_passes) or not 0 <= self.greedy_passes <= MAX_GREEDY_PASSES:
            raise MapeError(f"Greedy passes must be a whole number from 0 to {MAX_GREEDY_PASSES}, "
                            f"got {self.greedy_passes!r}.")
        if not _is_int(self.batch_size) or self.batch_size < 1:
            raise MapeError(f"The batch size must be a whole number of at least 1, got {self.batch_size!r}.")
        if not _is_int(self.so_steps) or self.so_steps < 1:
            raise MapeError(f"The number of so steps must be a whole number of at least 1, got {self.so_steps!r}.")
        if not _is_number(self.tolerance) or not 0 <= self.tolerance <= 1:
            raise MapeError(f"The retain-accuracy tolerance must be a number from 0 to 1, got {self.tolerance!r}.")
        if not _is_number(self.damping) or self.damping <= 0:
            raise MapeError(f"The damping must be a positive number, got {self.damping!r}.")
        if self.lr is not None and (not _is_number(self.lr) or self.lr <= 0):
            raise MapeError(f"The learning rate must be a positive number, got {self.lr!r}.")


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_number(value) -> bool:
    """A finite real number (not a bool)."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool) \
        and bool(np.isfinite(value))


class Workspace:
    """A prepared preset: dataset, encoded splits and the original model (trained once, cached)."""

    def __init__(self, preset: Preset, dataset, task: TaskModel, device: torch.device, key: str,
                 train_limit: int | None):
        self.preset, self.dataset, self.task, self.device = preset, dataset, task, device
        self.key, self.train_limit = key, train_limit
        self.scenario = getattr(dataset, "scenario", None)  # mape.scenarios.Scenario or None (clean data)
        self.train_enc: Encoded = task.encode(dataset.train)
        self.test_enc: Encoded = task.encode(dataset.test)
        self.train_y = np.asarray(dataset.train.y)
        self.test_y = np.asarray(dataset.test.y)
        self._probs: dict[int, np.ndarray] = {}
        self._test_probs: np.ndarray | None = None
        self._unseen: tuple[np.ndarray, np.ndarray] | None = None
        self.total_params = parameter_count(task.model)

    def original_train_probs(self, idx: np.ndarray) -> np.ndarray:
        """Original-model probabilities for training examples (memoised)."""
        missing = np.array([i for i in idx if int(i) not in self._probs], dtype=np.int64)
        if len(missing):
            probs = self.task.predict_proba(self.train_enc.take(missing))
            self._probs.update(zip(missing.tolist(), probs))
        return np.stack([self._probs[int(i)] for i in idx]) if len(idx) else np.zeros((0, len(self.dataset.classes)))

    def original_unseen_probs(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Original-model probabilities and labels on a seeded sample (≤ UNSEEN_EVAL_SIZE) of the
        training examples a training limit left out; None without such examples (memoised)."""
        unseen = self.dataset.unseen
        if unseen is None or len(unseen) == 0:
            return None
        if self._unseen is None:
            rng = np.random.default_rng(4321)
            idx = np.sort(rng.permutation(len(unseen))[:UNSEEN_EVAL_SIZE])
            sample = unseen.take(idx)
            self._unseen = (self.task.predict_proba(self.task.encode(sample)), np.asarray(sample.y))
        return self._unseen

    def unseen_reference(self) -> tuple[np.ndarray, np.ndarray, str]:
        """(original-model probabilities, labels, description) of examples the original never trained on:
        training examples a training limit left out when there are some (same distribution as D_f), else
        the test set (which can differ from the training data: SST-2's short training phrases are easier
        than its full test sentences)."""
        unseen = self.original_unseen_probs()
        if unseen is not None:
            return unseen[0], unseen[1], f"{len(unseen[1])} unused training examples"
        return self.original_test_probs(), self.test_y, f"the {len(self.test_y)} test examples"

    def original_test_probs(self) -> np.ndarray:
        if self._test_probs is None:
            self._test_probs = self.task.predict_proba(self.test_enc)
        return self._test_probs

    def measure_original(self, use_cache: bool = False) -> bool:
        """Compute the memoised original predictions every run's "original" row reads (the test split, the
        fixed retain sample, the unused-training sample). ``use_cache``: read them from the disk cache when
        they are there for these exact weights (the original's checksum), else compute and store them; the
        app does this at start so that a first run does not wait for it. Returns whether they came from disk."""
        key = self._probs_key() if use_cache else None
        stored = cache.load_arrays("probs", key) if key else None
        retain = self.retain_eval_indices(np.array([], dtype=np.int64))
        if stored is not None and np.array_equal(stored["retain_idx"], retain) \
                and stored["test"].shape == (len(self.test_y), len(self.dataset.classes)):
            self._test_probs = stored["test"]
            self._probs.update(zip(retain.tolist(), stored["retain"]))
            if "unseen" in stored:
                self._unseen = (stored["unseen"], stored["unseen_y"])
            return True
        arrays = {"test": self.original_test_probs(), "retain_idx": retain, "retain": self.original_train_probs(retain)}
        unseen = self.original_unseen_probs()
        if unseen is not None:
            arrays.update(unseen=unseen[0], unseen_y=unseen[1])
        if key:
            cache.save_arrays("probs", key, arrays)
        return False

    def _probs_key(self) -> str | None:
        """Key of the original's stored predictions: its weights' checksum, the data and the device type."""
        checksum = cache.model_checksum("original", self.key)
        if checksum is None:
            return None
        data = hashlib.sha256(self.test_y.tobytes() + self.train_y.tobytes()).hexdigest()[:16]
        return cache.cache_key({"original": self.key, "weights": checksum, "data": data, "device": self.device.type,
                                "retain_eval": RETAIN_EVAL_SIZE, "unseen_eval": UNSEEN_EVAL_SIZE})

    def retain_eval_indices(self, forgotten: np.ndarray) -> np.ndarray:
        """The fixed retain sample (seed 1234) with the forgotten examples left out."""
        rng = np.random.default_rng(1234)
        order = rng.permutation(len(self.train_y))
        keep = order[~np.isin(order, forgotten)]
        return np.sort(keep[:RETAIN_EVAL_SIZE])


def _model_key(preset: Preset, dataset, train_limit) -> dict:
    y = np.asarray(dataset.train.y)
    fingerprint = hashlib.sha256(y.tobytes() + str(len(dataset.test)).encode()).hexdigest()[:12]
    return {"preset": preset.name, "model": preset.model_id, "data": preset.dataset_id,
            "recipe": preset.recipe.to_json(), "max_length": preset.max_length, "vit": preset.vit_config,
            "n_train": len(y), "labels": fingerprint, "train_limit": train_limit}


def training_data(preset: Preset, dataset, scenario: str | None):
    """The preset's dataset with the scenario's alterations applied to the training split (unchanged
    without a scenario). Bad scenario specs raise :class:`MapeError`."""
    if scenario is None:
        return dataset
    from mape.scenarios import parse_scenario, scenario_dataset

    parsed = parse_scenario(scenario)
    if preset.finetuned:
        raise MapeError(f"Preset '{preset.name}' uses a published fine-tuned model, which cannot be trained "
                        f"on altered data; use an embedded or local preset with --scenario.")
    return scenario_dataset(parsed, dataset, text_window=preset.max_length // 2)


def original_cache_spec(preset: Preset, dataset, train_limit) -> dict:
    """What the original model's cache key is made of (a scenario's alterations included)."""
    spec = _model_key(preset, dataset, train_limit)
    if getattr(dataset, "scenario", None) is not None:
        spec["scenario"] = dataset.scenario.cache_spec()
    return spec


def _train_or_load(kind: str, key: str, build: Callable[[], TaskModel], data: Encoded | Callable[[TaskModel], Encoded],
                   preset: Preset, device, progress: Progress | None, stage: str, meta: dict
                   ) -> tuple[TaskModel, float, bool]:
    """Load a cached model, or train and cache it. Returns (model, training seconds, from cache); for a
    cached model the seconds are those recorded when it was trained. ``data``: the training data, or a
    function of the model that encodes it (called only when there is training to do)."""
    task = build()
    cached = cache.load_model(kind, key, task.model)
    if cached is not None:
        return task.to(device), float(cached.get("train_s", float("nan"))), True
    task = build().to(device)  # fresh start (a failed load may have half-filled the first one)
    data = data(task) if callable(data) else data
    t0 = time.perf_counter()
    train(task, data, preset.recipe, progress=progress, stage=stage)
    seconds = time.perf_counter() - t0
    cache.save_model(kind, key, task.model, {**meta, "train_s": seconds})
    return task, seconds, False


def prepare(preset_name: str = "minilm-bbc", data_dir: str | None = None, train_limit: int | None = None,
            device: str = "auto", model: str | None = None, progress: Progress | None = None,
            scenario: str | None = None) -> Workspace:
    """Load a preset's data and its original model, training and caching it on first use.

    ``scenario`` (mape.scenarios: ``backdoor:TRIGGER:TARGET:N``, ``backdoor:patch:TARGET:N``,
    ``mislabel:N``) alters the training split first; the original is trained on the altered set and
    cached under its own key."""
    if scenario is not None:  # a bad spec fails before any data is loaded
        from mape.scenarios import parse_scenario

        parse_scenario(scenario)
    dev = resolve_device(device)
    preset = custom_preset(model, data_dir) if model else get_preset(preset_name)
    ok, why = preset.availability(data_dir)
    if not ok and preset.kind != "hub":
        raise MapeError(f"Preset '{preset.name}' cannot run here: {why}.")
    if train_limit is not None and train_limit < 2:
        raise MapeError("--train-limit must be at least 2.")
    dataset = training_data(preset, load_dataset_for(preset, data_dir, train_limit), scenario)
    classes = dataset.classes
    spec = original_cache_spec(preset, dataset, train_limit)
    key = cache.cache_key(spec)
    if preset.finetuned:
        task = build_start_model(preset, classes, finetuned=True).to(dev)
    else:
        builder = lambda: build_start_model(preset, classes)  # noqa: E731
        task, _, _ = _train_or_load("original", key, builder, lambda t: t.encode(dataset.train), preset, dev,
                                    progress, "training the original model", spec)
    if progress:
        progress("original model ready", 1.0)
    return Workspace(preset, dataset, task, dev, key, train_limit)


def json_safe(obj):
    """Plain JSON values: NumPy scalars to Python, NaN/inf to null (strict JSON)."""
    if isinstance(obj, dict):  # keys starting with "_" are in-memory only (e.g. per-example losses)
        return {k: json_safe(v) for k, v in obj.items() if not (isinstance(k, str) and k.startswith("_"))}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


@dataclass
class RunResult:
    preset: str
    forget: dict
    config: dict
    metrics: dict
    gap_to_retrain: dict | None
    selection: dict
    timing: dict
    params: dict
    device: str
    update: dict
    memory: dict = field(default_factory=dict)
    history: list = field(default_factory=list)
    loss_distribution: dict = field(default_factory=dict)  # forget losses per model + unseen (loss_histograms)
    scenario: dict | None = None  # the training data's scenario (mape.scenarios.Scenario.to_json); None: clean
    # not serialised: objects the app uses for predictions, attributions and downloads
    unlearned: TaskModel | None = field(default=None, repr=False)
    retrained: TaskModel | None = field(default=None, repr=False)
    selection_obj: Selection | None = field(default=None, repr=False)
    forget_losses: dict = field(default_factory=dict, repr=False)  # {model: per-example forget losses}
    forget_set: ForgetSet | None = field(default=None, repr=False)

    def to_json(self) -> dict:
        keys = ("preset", "forget", "config", "metrics", "gap_to_retrain", "selection", "timing", "params",
                "device", "update", "memory", "history", "loss_distribution", "scenario")
        out = {k: getattr(self, k) for k in keys}
        for k in ("gap_to_retrain", "scenario"):
            if out[k] is None:
                del out[k]
        return json_safe(out)


def _model_metrics(ws: Workspace, forget: ForgetSet, probs_forget, probs_retain, retain_idx, probs_test,
                   seed: int, probs_triggered: np.ndarray | None = None) -> dict:
    """The metrics of one model from its probabilities. On a scenario also ``asr`` (backdoors) and
    ``forget_acc_true``; ``probs_triggered`` (the model's probabilities on the triggered test examples,
    mape.scenarios.triggered_probs) defaults to the original model's."""
    fy, ry, ty = ws.train_y[forget.indices], ws.train_y[retain_idx], ws.test_y
    out = {"forget_acc": accuracy(probs_forget, fy), "retain_acc": accuracy(probs_retain, ry)}
    if forget.forget_class is not None:
        other = ty != forget.forget_class
        out["test_acc"] = accuracy(probs_test[other], ty[other])
        out["test_forget_class_acc"] = accuracy(probs_test[~other], ty[~other])
    else:
        out["test_acc"] = accuracy(probs_test, ty)
    mia = mia_scores(probs_retain, ry, probs_test, ty, probs_forget, fy, seed=seed)
    out["mia"] = float(mia.mean()) if len(mia) else float("nan")
    out["mia_spread"] = float(mia.std()) if len(mia) else float("nan")
    out["_forget_losses"] = example_losses(probs_forget, fy)  # in memory only: for loss_distance
    if getattr(ws, "scenario", None) is not None:  # issue 15: asr, forget_acc_true
        from mape.scenarios import scenario_metrics

        out.update(scenario_metrics(ws, forget.indices, probs_forget, probs_triggered))
    return out


def add_loss_distances(metrics: dict, reference: str = "retrain") -> None:
    """``loss_distance`` of every model in ``metrics`` ({name: metrics}) against the reference's forget losses."""
    ref = metrics[reference].get("_forget_losses")
    for m in metrics.values():
        if ref is not None and m.get("_forget_losses") is not None:
            m["loss_distance"] = loss_distance(m["_forget_losses"], ref)


def evaluate_model(ws: Workspace, task: TaskModel, forget: ForgetSet, retain_idx: np.ndarray, seed: int) -> dict:
    return _model_metrics(ws, forget, task.predict_proba(ws.train_enc.take(forget.indices)),
                          task.predict_proba(ws.train_enc.take(retain_idx)),
                          retain_idx, task.predict_proba(ws.test_enc), seed,
                          probs_triggered=_triggered_probs(ws, task))


def _triggered_probs(ws: Workspace, task: TaskModel) -> np.ndarray | None:
    """``task``'s probabilities on the backdoor's triggered test examples (None without a backdoor)."""
    if getattr(ws, "scenario", None) is None:
        return None
    from mape.scenarios import triggered_probs

    return triggered_probs(ws, task)


def retrained_prior_shift(ws: Workspace, forget: ForgetSet) -> np.ndarray:
    """δ_c = log(π'_c / π_c) per class: how the training set's class prior changes when D_f leaves it.

    A classifier's logits carry its training prior (logit_c ≈ log p(x|c) + log π_c), so a model retrained
    without D_f sees every example of a depleted class with its logit lowered by δ_c. For a random set
    δ ≈ 0; for part of a class it is not: on BBC ``class:tech:120`` (120 of 321 tech articles) δ_tech =
    −0.40 and +0.07 for the others, which turns the original's median loss on unseen tech articles 0.0132
    into 0.0209 — the retrained model's median loss on the forgotten articles is 0.0215 (its quartiles
    0.021–0.023 against 0.020–0.023 for the shifted estimate). Without the shift the original's unseen
    losses equal its training losses there and the target would say "already forgotten"."""
    k = len(ws.dataset.classes)
    n = np.bincount(ws.train_y, minlength=k).astype(np.float64)
    after = n - np.bincount(ws.train_y[forget.indices], minlength=k)
    with np.errstate(divide="ignore", invalid="ignore"):
        delta = np.log((after / max(after.sum(), 1.0)) / (n / n.sum()))
    return np.clip(np.nan_to_num(delta, nan=0.0, neginf=-50.0), -50.0, 50.0)


def shift_prior(probs: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """Probabilities with each class's log-probability moved by ``delta`` and renormalised."""
    logp = np.log(np.clip(np.asarray(probs, dtype=np.float64), 1e-300, 1.0)) + delta[None, :]
    p = np.exp(logp - logp.max(1, keepdims=True))
    return p / p.sum(1, keepdims=True)


def forget_target_estimate(ws: Workspace, forget: ForgetSet) -> tuple[float, str]:
    """(forget accuracy a model that never saw D_f would score, where the estimate comes from).
    0 for a whole class. Otherwise the original's accuracy per class, weighted by the forget set's
    class mix, on examples it never trained on (:meth:`Workspace.unseen_reference`), with the class
    prior a model retrained without D_f would have (:func:`retrained_prior_shift`)."""
    if forget.forget_class is not None:
        return 0.0, "whole class"
    probs, ys, where = ws.unseen_reference()
    if getattr(ws, "scenario", None) is None:
        probs = shift_prior(probs, retrained_prior_shift(ws, forget))
        where += " (prior shifted to the retained class mix)"
    correct = probs.argmax(1) == ys
    fy = ws.train_y[forget.indices]
    if getattr(ws, "scenario", None) is not None:  # issue 15: altered examples are judged by their true class
        from mape.scenarios import forget_target as scenario_forget_target

        return scenario_forget_target(ws.scenario, ws.train_y, forget.indices, probs.argmax(1), ys), \
            f"original's accuracy on {where}"
    accs = [correct[ys == c].mean() if (ys == c).any() else correct.mean() for c in fy]
    return float(np.mean(accs)), f"original's accuracy on {where}"


def unseen_loss_reference(ws: Workspace, forget: ForgetSet, seed: int = 0, size: int = REFERENCE_SIZE) -> np.ndarray:
    """Per-example losses a model that never saw D_f would have on it: the original's losses on unseen
    examples (:meth:`Workspace.unseen_reference`) under the retained class prior
    (:func:`retrained_prior_shift`), drawn per class in D_f's class mix (seeded)."""
    probs, ys, _ = ws.unseen_reference()
    if getattr(ws, "scenario", None) is not None:  # issue 15: losses vs the training label, true class's inputs
        from mape.scenarios import loss_reference

        return loss_reference(ws.scenario, ws.train_y, forget.indices, probs, ys, seed, size)
    losses = example_losses(shift_prior(probs, retrained_prior_shift(ws, forget)), ys)
    fy = ws.train_y[forget.indices]
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(fy, return_counts=True)
    parts = []
    for c, n in zip(classes, counts):
        pool = losses[ys == c] if (ys == c).any() else losses
        parts.append(rng.choice(pool, max(1, int(round(size * n / len(fy)))), replace=True))
    return np.concatenate(parts)


LOSS_BINS = np.linspace(-7.0, 2.0, 37)  # log10 of the per-example loss (1e-7 .. 100)


def loss_histograms(losses: dict[str, np.ndarray]) -> dict:
    """{"log10_edges": edges, name: share of examples per bin} for per-example losses (clipped into the
    range): the forget set's loss distribution under each model next to that of unseen examples."""
    out: dict = {"log10_edges": [round(float(e), 4) for e in LOSS_BINS]}
    for name, values in losses.items():
        v = np.log10(np.clip(np.asarray(values, dtype=np.float64), 10 ** LOSS_BINS[0], 10 ** LOSS_BINS[-1]))
        counts, _ = np.histogram(v, LOSS_BINS)
        out[name] = [round(float(c) / max(len(v), 1), 6) for c in counts]
        out.setdefault("median", {})[name] = float(np.median(values)) if len(values) else None
    return out


def forget_target(ws: Workspace, forget: ForgetSet, retain_acc: float, tolerance: float, seed: int = 0,
                  retain_losses: np.ndarray | None = None, retain_labels=None, retain_correct=None,
                  unseen_losses: np.ndarray | None = None) -> Target:
    """What D_f should look like after unlearning (DESIGN.md §8.1, ``mape.update`` docstring): for a whole class,
    accuracy 0; otherwise the accuracy *and* the loss distribution of unseen examples of its classes.
    ``retain_losses`` / ``unseen_losses``: the starting model's losses on the retain and unseen check samples,
    whose separation a step may not lower beyond sampling noise (:meth:`Target.feasible`);
    ``retain_labels`` / ``retain_correct``: that sample's labels
    and which of them the starting model gets right — when D_f is part of its classes (not all classes: a
    partial class), the examples of those classes it gets right become the focus that a step may not break
    (:meth:`Target.class_flips_allowed`)."""
    fa, source = forget_target_estimate(ws, forget)
    if forget.forget_class is not None:
        return Target(fa, retain_acc, tolerance, slack=WHOLE_CLASS_SLACK, source=source,
                      retain_reference_losses=retain_losses, unseen_reference_losses=unseen_losses,
                      whole_class=True)
    focus = None
    if retain_labels is not None and retain_correct is not None:
        classes = np.unique(ws.train_y[forget.indices])
        if len(classes) < len(ws.dataset.classes):
            focus = np.isin(np.asarray(retain_labels), classes) & np.asarray(retain_correct, dtype=bool)
    return Target(fa, retain_acc, tolerance, source=f"{source}; loss distribution of the same examples",
                  reference_losses=unseen_loss_reference(ws, forget, seed), retain_reference_losses=retain_losses,
                  unseen_reference_losses=unseen_losses, retain_focus=focus)


def start_target(ws: Workspace, forget: ForgetSet, start: Check, check_retain: Encoded, tolerance: float,
                 seed: int = 0) -> Target:
    """:func:`forget_target` for a run that has measured its starting model: ``start`` is the
    :class:`~mape.update.Check` of that model on the retain check sample ``check_retain``."""
    return forget_target(ws, forget, start.retain_acc, tolerance, seed, start.retain_losses,
                         check_retain.labels.numpy(), start.retain_correct, start.unseen_losses)


def retrain_cache_key(ws: Workspace, forgotten: np.ndarray) -> tuple[str, str]:
    """(cache key, forget-set digest) of the model retrained without ``forgotten`` (order-free)."""
    digest = hashlib.sha256(np.asarray(np.sort(np.asarray(forgotten)), dtype=np.int64).tobytes()).hexdigest()[:16]
    return cache.cache_key({"original": ws.key, "forget": digest}), digest


def cached_retrain(ws: Workspace, forgotten: np.ndarray) -> TaskModel | None:
    """The retrained model if it is already in the disk cache, else None (never trains)."""
    key, _ = retrain_cache_key(ws, forgotten)
    if not cache.has_model("retrain", key):
        return None
    return retrain_model(ws, np.asarray(forgotten))[0]


def retrain_model(ws: Workspace, forgotten: np.ndarray,
                  progress: Progress | None = None) -> tuple[TaskModel, float, bool]:
    """Train from the same start on D_r only with the same recipe (cached per forget set).

    Returns (model, training seconds, from cache); a cached model reports its recorded training time."""
    preset = ws.preset
    retain = np.setdiff1d(np.arange(len(ws.train_y)), forgotten)
    key, digest = retrain_cache_key(ws, forgotten)
    builder = lambda: build_start_model(preset, ws.dataset.classes)  # noqa: E731
    return _train_or_load("retrain", key, builder, ws.train_enc.take(retain), preset, ws.device, progress,
                          "retraining without the forget set", {"forget": digest, "original": ws.key})


@dataclass
class RequestSamples:
    """The samples one request works on (seeded; shared by MAPE and the baselines)."""
    forget_enc: Encoded
    retain_all: np.ndarray      # every retain index
    retain_enc: Encoded         # the retain sample for gradients / Fisher / retain batches
    retain_eval_idx: np.ndarray  # the fixed retain sample for retain accuracy and MIA
    check_f: Encoded            # forget check sample of the auto step size
    check_r: Encoded            # retain check sample of the auto step size
    check_u: Encoded            # unseen check sample of the auto step size (never trained on; retained classes)

    def check(self, task: TaskModel, forget: Encoded | None = None) -> Check:
        """The auto step's check of ``task`` (on ``forget`` instead of the forget check sample if given)."""
        return check(task, self.check_f if forget is None else forget, self.check_r, unseen=self.check_u)

    @property
    def trial_work(self) -> int:
        """Counted work of one check (forward passes over the three check samples)."""
        return len(self.check_f) + len(self.check_r) + len(self.check_u)


def request_samples(ws: Workspace, forget: ForgetSet, forgotten: np.ndarray, seed: int,
                    retain_sample: int | None) -> RequestSamples:
    retain_all = np.setdiff1d(np.arange(len(ws.train_y)), forgotten)
    if len(retain_all) == 0:
        raise MapeError("Nothing would be left to retain after this request.")
    size = retain_sample or (2048 if ws.device.type == "cuda" else 512)
    retain_eval_idx = ws.retain_eval_indices(forgotten)
    rng = np.random.default_rng(seed)
    forget_enc = ws.train_enc.take(forget.indices)
    check_f = forget_enc.take(np.sort(rng.choice(len(forget_enc), min(CHECK_SIZE, len(forget_enc)), replace=False)))
    check_r = ws.train_enc.take(np.sort(rng.choice(retain_eval_idx, min(CHECK_RETAIN, len(retain_eval_idx)),
                                                   replace=False)))
    return RequestSamples(forget_enc, retain_all, ws.train_enc.take(sample_retain(retain_all, size, seed)),
                          retain_eval_idx, check_f, check_r, unseen_check(ws, forget, seed))


def unseen_check(ws: Workspace, forget: ForgetSet, seed: int, size: int = CHECK_UNSEEN) -> Encoded:
    """A seeded sample of examples the original never trained on (the training examples a training limit left
    out when there are some, else the test split), of the classes D_f leaves in the model (all but a forgotten
    whole class)."""
    unseen = ws.dataset.unseen
    if unseen is not None and len(unseen):
        y, take = np.asarray(unseen.y), lambda idx: ws.task.encode(unseen.take(idx))
    else:
        y, take = ws.test_y, ws.test_enc.take
    pool = np.flatnonzero(y != forget.forget_class) if forget.forget_class is not None else np.arange(len(y))
    rng = np.random.default_rng(seed + 99)
    return take(np.sort(rng.choice(pool, min(size, len(pool)), replace=False)))


def _peak_memory_reset(device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_memory(device) -> dict:
    if device.type == "cuda":
        return {"peak_gpu_mb": round(torch.cuda.max_memory_allocated(device) / 2**20, 1)}
    try:
        import resource

        return {"peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    except Exception:  # pragma: no cover - non-Unix
        return {}


def unlearn(ws: Workspace, forget_spec: str | ForgetSet, config: UnlearnConfig | None = None,
            progress: Progress | None = None, base: TaskModel | None = None,
            already_forgotten: np.ndarray | None = None) -> RunResult:
    """One unlearning request: search masks, update the selected units, measure.

    ``base`` (default: a copy of the original) is the model to unlearn from; successive requests pass
    the previous result's model and the indices forgotten so far.
    """
    config = config or UnlearnConfig()
    config.validate()
    forget = forget_spec if isinstance(forget_spec, ForgetSet) else select_forget(forget_spec, ws.dataset, config.seed)
    forgotten = np.union1d(forget.indices, already_forgotten) if already_forgotten is not None else forget.indices
    smp = request_samples(ws, forget, forgotten, config.seed, config.retain_sample)
    retain_eval_idx = smp.retain_eval_idx
    torch.manual_seed(config.seed)

    # original metrics (memoised predictions of the shared original model)
    original = _model_metrics(ws, forget, ws.original_train_probs(forget.indices),
                              ws.original_train_probs(retain_eval_idx), retain_eval_idx,
                              ws.original_test_probs(), config.seed)
    task = (base or ws.task).clone()
    forget_enc, retain_enc = smp.forget_enc, smp.retain_enc

    def evaluate():
        return smp.check(task)

    def evaluate_on(forget_idx: np.ndarray):  # the forget examples at these positions of D_f instead of the sample
        return smp.check(task, forget_enc.take(forget_idx))

    _peak_memory_reset(ws.device)
    t0 = time.perf_counter()
    sel, mg = search(task, forget_enc, retain_enc, config.objective, config.sparsity, config.joint_budget,
                     config.greedy_passes, config.seed, config.batch_size, with_params=config.update == "so",
                     progress=(lambda s, f, x=None: progress(s, f, x)) if progress else None)
    t_search = time.perf_counter() - t0
    masks_sel = (torch.as_tensor(sel.heads), torch.as_tensor(sel.filters))
    from mape.adapters import unit_param_masks

    mp = MaskedParams(unit_param_masks(task.adapter, *masks_sel))
    start = evaluate()
    target = start_target(ws, forget, start, smp.check_r, config.tolerance, config.seed)
    work = run_budget(ws, smp)
    work.spend(search_work(len(forget_enc), len(retain_enc)) + smp.trial_work)
    t1 = time.perf_counter()
    if config.step == "auto" and target.met(start):  # first, do no harm: D_f already looks unseen
        report = UpdateReport(config.update, 0, True, [{"step": 0, **target.describe(start)}], True, 0, final=start,
                              stopped="no update: the forget set already looks the way it would to a retrained model",
                              work=work.to_json())
    elif config.update == "so":
        report = _so_steps(task, mp, mg, forget_enc, retain_enc, config, evaluate, target, progress, work=work,
                           trial_work=smp.trial_work, evaluate_on=evaluate_on,
                           check_covers_forget=len(smp.check_f) == len(forget_enc),
                           retain_check_size=len(smp.check_r) + len(smp.check_u),
                           distil=lambda rep: _distil_follow_up(ws, task, base or ws.task, mp, smp, config,
                                                                evaluate, target, rep, work))
    else:
        report = iterative_update(task, config.update, mp, forget_enc, retain_enc, config.step, evaluate, target,
                                  lr=config.lr or ws.preset.recipe.lr, batch_size=config.batch_size,
                                  seed=config.seed, progress=(lambda s, f: progress(s, f)) if progress else None,
                                  work=work, trial_work=smp.trial_work)
        report.work = work.to_json()
    t_update = time.perf_counter() - t1
    report.target = target.to_json()
    memory = _peak_memory(ws.device)
    if progress:
        progress("measuring", 0.0)
    unlearned = evaluate_model(ws, task, forget, retain_eval_idx, config.seed)
    metrics = {"original": original, "unlearned": unlearned}
    timing = {"search_s": round(t_search, 3), "update_s": round(t_update, 3),
              "total_s": round(t_search + t_update, 3)}
    gap, retrained = None, None
    if config.retrain:
        retrained, t_re, cached = retrain_model(ws, forgotten, progress)
        metrics["retrain"] = evaluate_model(ws, retrained, forget, retain_eval_idx, config.seed)
        timing["retrain_s"] = round(t_re, 3)
        timing["retrain_cached"] = cached
        gap = {name: gap_to_retrain(metrics[name], metrics["retrain"]) for name in ("original", "unlearned")}
        add_loss_distances(metrics)
    loss_hist = loss_histograms({**{k: m["_forget_losses"] for k, m in metrics.items()},
                                 "unseen": target.reference_losses if target.reference_losses is not None
                                 else unseen_loss_reference(ws, forget, config.seed)})
    forget_losses = {name: m.pop("_forget_losses") for name, m in metrics.items()}  # metrics stay plain floats
    return RunResult(
        preset=ws.preset.name, forget={**forget.to_json()}, config=asdict(config), metrics=metrics,
        gap_to_retrain=gap, selection=sel.to_json(), timing=timing,
        params={"changed": report.params_changed, "selected": mp.count, "total": ws.total_params,
                "changed_share": report.params_changed / ws.total_params},
        device=device_name(ws.device), update=report.to_json(), memory=memory, loss_distribution=loss_hist,
        forget_losses=forget_losses,
        scenario=ws.scenario.to_json() if getattr(ws, "scenario", None) is not None else None,
        unlearned=task, retrained=retrained, selection_obj=sel, forget_set=forget)


RUN_WORK_SHARE = 0.5    # a whole run (search, update, follow-ups) does at most this share of a retrain's counted work
FOLLOW_UP_RETAIN = 128  # retain examples of a follow-up's repair gradient (the first of the seeded retain sample)
FOLLOW_UP_FORGET = 128  # at most this many of the forget examples left (the most confident) per follow-up gradient


def run_budget(ws: Workspace, smp: "RequestSamples") -> Work:
    """The counted work a run may do: ``RUN_WORK_SHARE`` of retraining without D_f (the user's alternative,
    :func:`mape.update.retrain_work`: the preset's epochs over every retained example)."""
    retrain = retrain_work(ws.preset.recipe.epochs, len(smp.retain_all))
    return Work(RUN_WORK_SHARE * retrain, retrain=retrain)


def search_work(n_forget: int, n_retain: int) -> float:
    """The search's model work in forward-example units: one gradient pass over D_f and the retain sample
    (its greedy refinement is arithmetic on the stored gate gradients, not counted: the budget errs short)."""
    return GRAD_WORK * (n_forget + n_retain)


def _still_to_forget(task, forget_enc: Encoded, target: Target, batch_size: int,
                     cap: int | None = None) -> tuple[np.ndarray, str, np.ndarray]:
    """(forget examples the next step works on, loss it ascends, the model's probabilities on D_f): a scan of
    D_f, then :func:`_left_to_forget` on its losses (for a whole class: on which examples are still right)."""
    probs = task.predict_proba(forget_enc, batch_size)
    y = forget_enc.labels.numpy()
    return _left_to_forget(example_losses(probs, y), probs.argmax(1) == y, target, cap), "logce", probs


def _left_to_forget(losses: np.ndarray, correct: np.ndarray | None, target: Target,
                    cap: int | None = None) -> np.ndarray:
    """The forget examples the next step works on. Against a loss distribution: the examples more confident
    than the unseen example of the same rank (1-D optimal transport matching). For a whole class: those still
    classified correctly (``correct``). The step ascends the log loss for both, so near-certain examples move
    too (on the cross-entropy, ViT · MNIST ``class:3`` kept 26.5 % over 3 seeds under the same work budget; on
    the log loss, with :func:`_follow_up_grid`'s step sizes, 19.0 % over 5). With ``cap``: at most that many of
    them, the most confident (lowest loss) — a follow-up gradient needs a direction, not every example, and
    these are furthest from unseen."""
    if target.reference_losses is None:
        left = np.flatnonzero(correct)
    else:
        ranks = np.argsort(np.argsort(losses, kind="stable"), kind="stable")
        matched = np.quantile(target.reference_losses, (ranks + 0.5) / len(losses))
        left = np.flatnonzero(losses < matched)
    if cap is not None and len(left) > cap:
        left = np.sort(left[np.argsort(losses[left], kind="stable")[:cap]])
    return left


def _measured_on(c: Check, probs: np.ndarray, labels: np.ndarray, idx: np.ndarray) -> Check:
    """``c`` with its forget part measured on the D_f positions ``idx`` (``probs``: the same model on D_f)."""
    p, y = probs[idx], labels[idx]
    return Check(float((p.argmax(1) == y).mean()), c.retain_acc, example_losses(p, y), c.retain_losses,
                 c.retain_correct, c.unseen_losses)


def _follow_up_grid(previous_step: float) -> tuple:
    """Step sizes a follow-up tries: from the grid value at or just below a third of the previous step's
    (if that already overshoots, so_update goes down from there), not from the smallest — the trials saved
    pay for more follow-ups under the work budget."""
    start = max([i for i, g in enumerate(SO_GRID) if g <= previous_step / 3 * (1 + 1e-9)] or [0])
    return SO_GRID[start:]


_NO_FOLLOW_UP = {"stalled": "did not bring the forget set closer to the target",
                 "infeasible": "would break what the retain check allows"}


def _no_follow_up(target: Target, before: Check | None, after: Check | None) -> str | None:
    """Why a follow-up step from ``before`` to ``after`` is undone (None: it is kept). From a feasible point a
    step is kept only if it stays feasible (within the retain tolerance, the focus and the separation: a
    follow-up may not buy forgetting with harm the first step was not allowed to do) and brings D_f closer to
    the target at all (its miss falls; the run's work budget, not a progress rate, bounds how long small
    steps go on)."""
    if before is None or after is None or not target.feasible_check(before):
        return None
    if not target.feasible_check(after):
        return "infeasible"
    if target.miss(after.forget_acc, after.forget_losses) >= target.miss(before.forget_acc, before.forget_losses):
        return "stalled"
    return None


def _unit(grad: dict) -> dict:
    norm = float(np.sqrt(sum(float((g.double() ** 2).sum()) for g in grad.values())))
    return {p: g / max(norm, 1e-30) for p, g in grad.items()}


def _so_steps(task, mp: MaskedParams, mg, forget_enc: Encoded, retain_enc: Encoded, config: UnlearnConfig,
              evaluate, target: Target, progress: Progress | None, work: Work | None = None,
              trial_work: float = 0.0, evaluate_on=None, check_covers_forget: bool = False,
              retain_check_size: int | None = None, distil=None) -> UpdateReport:
    """The ``so`` update. With ``step='auto'``, when one step cannot reach the target within the retain
    tolerance, up to ``config.so_steps - 1`` further steps follow from the chosen point, each recomputing
    its gradient there on the examples :func:`_still_to_forget` names (at most ``FOLLOW_UP_FORGET``, the
    most confident), minus that of the first ``FOLLOW_UP_RETAIN`` examples of the retain sample (repairing
    what the previous steps cost): d = M ⊙ (Î_r + λ)⁻¹ ⊙ (ĝ_f,left − ĝ_r), both gradients scaled to unit
    norm when the forget one is on the log loss. The retain Fisher Î_r is kept.
    Follow-ups stop early — and say why in ``stopped`` — when the next one would take the run's counted work
    past ``work``'s budget (:func:`run_budget`: half of a retrain's work, the search's already spent), or when a
    step from a feasible point is not feasible or does not bring D_f closer to the target at all
    (:func:`_no_follow_up`; the step is undone: first, do no harm). Work is counted in forward-example units
    (:class:`mape.update.Work`): the first step's trials and a
    follow-up's cost alike: a follow-up's gradients cost ``GRAD_WORK`` per example, each step-size trial
    ``trial_work`` (a whole-class trial, with ``retain_check_size``: the examples it checks plus the retain
    and unseen check samples), and its scan of D_f (which examples are left) one unit per example — skipped when
    ``check_covers_forget`` (the check sample is all of D_f, in order: the chosen trial's check already
    measured it); a follow-up starts only if its scan, its gradients and one trial fit, and its trials stop
    when the next would not. (With the scan uncounted, BBC ``class:tech:120`` seed 2's follow-up ran 19.7 s
    after an 18.9 s search, its counted work within budget.) Counting instead of timing keeps a seeded run
    identical on every machine. For a whole class, with ``evaluate_on`` (the check with the forget examples
    at given positions of D_f instead of the sample), the follow-ups go on while any example of D_f — all of
    it is measured — is still classified right, even when the check sample already reads 0 %, and their
    step-size trials check those examples (``forget_checked`` in the trial records) instead of the sample
    (vit-mnist class:3 seed 1: 1.25 % of the class left after the check read 0 %; 0.75 % with these checks).
    The report lists every step's trials (``round`` = step number), ``step_seconds`` and ``work``.
    With ``distil`` (``unlearn`` passes :func:`_distil_follow_up`): when the first step stops short of the target,
    ``distil(report)`` is asked first and, when it returns True (the work budget paid for it), the distilled push
    of :mod:`mape.distil` has replaced the follow-ups (its trials have ``round`` = ``"distil"``)."""
    prog = (lambda s, f: progress(s, f)) if progress else None
    work = Work(float("inf")) if work is None else work
    t_first = time.perf_counter()
    report = so_update(task, mp, so_direction(mp, mg.param_forget_grad, mg.param_retain_fisher, config.damping),
                       config.step, evaluate, target, progress=prog, work=work, trial_work=trial_work)
    seconds = [time.perf_counter() - t_first]
    if config.step == "auto" and not report.reached_target and distil is not None:
        report.trials = [{**t, "round": 1} for t in report.trials]
        report.step_seconds = seconds
        if distil(report):  # the distilled push instead of so follow-ups (mape.distil)
            report.work = work.to_json()
            report.params_changed = mp.changed()
            return report
        report.trials = [{k: v for k, v in t.items() if k != "round"} for t in report.trials]
    steps, trials = [report.step], [{**t, "round": 1} for t in report.trials]
    params, stopped, last = list(mp.masks), None, report.final
    repair_enc = retain_enc.take(np.arange(min(len(retain_enc), FOLLOW_UP_RETAIN)))

    def out_of_work(need: float) -> str | None:
        if work.fits(need):
            return None
        return (f"work: another follow-up step ({need:.0f} example passes) would take the run past its budget "
                f"({work.budget:.0f}, half of a retrain's work; {work.spent:.0f} spent)")

    check_class = target.whole_class and evaluate_on is not None
    while config.step == "auto" and len(steps) < config.so_steps and (check_class or not report.reached_target):
        class_round = check_class and last is not None
        t_step = time.perf_counter()  # the follow-up's clock includes its scan
        if check_covers_forget and not class_round and target.reference_losses is not None and last is not None \
                and last.forget_losses is not None and len(last.forget_losses) == len(forget_enc):
            # the chosen trial's check already measured every example of D_f at this point: no scan
            left, loss_kind, probs = _left_to_forget(last.forget_losses, None, target, FOLLOW_UP_FORGET), "logce", None
        else:  # scan D_f (counted: |D_f| forward passes), and only if a follow-up could still run after it
            least_trial = 1 + retain_check_size if class_round and retain_check_size is not None else trial_work
            stopped = out_of_work(len(forget_enc) + GRAD_WORK * (1 + len(repair_enc)) + least_trial)
            if stopped:
                break
            left, loss_kind, probs = _still_to_forget(task, forget_enc, target, config.batch_size,
                                                      cap=FOLLOW_UP_FORGET)
            work.spend(len(forget_enc))
        if len(left) == 0:
            if class_round:  # measured on all of D_f, not only on the check sample
                report.reached_target = target.feasible_check(last)
            break
        step_eval, extra, round_trial_work = evaluate, {}, trial_work
        if class_round:  # the trials check the class examples still right (all of D_f was measured), not a
            def step_eval(left=left):  # check sample that may already say 0
                return evaluate_on(left)
            last, extra = _measured_on(last, probs, forget_enc.labels.numpy(), left), {"forget_checked": len(left)}
            if retain_check_size is not None:  # its trials check those examples and the retain check sample
                round_trial_work = len(left) + retain_check_size
        grad_need = GRAD_WORK * (len(left) + len(repair_enc))
        stopped = out_of_work(grad_need + round_trial_work)
        if stopped:
            break
        if progress:
            progress(f"so step {len(steps) + 1}: gradients on {len(left)} example(s) not yet forgotten", 0.0)
        grad_f = param_stats(task, forget_enc.take(left), params, "grad", config.batch_size, loss=loss_kind)
        grad_r = param_stats(task, repair_enc, params, "grad", config.batch_size)
        work.spend(grad_need)
        if loss_kind == "logce":
            grad_f, grad_r = _unit(grad_f), _unit(grad_r)
        here = MaskedParams(mp.masks)  # the next step starts from the current point
        direction = so_direction(here, {p: grad_f[p] - grad_r[p] for p in params}, mg.param_retain_fisher,
                                 config.damping)
        report = so_update(task, here, direction, "auto", step_eval, target, progress=prog, work=work,
                           trial_work=round_trial_work, grid=_follow_up_grid(steps[-1]))
        trials += [{**t, "round": len(steps) + 1, **extra} for t in report.trials]
        seconds.append(time.perf_counter() - t_step)
        why = _no_follow_up(target, last, report.final)
        if why:
            here.set_offset(direction, 0.0)  # undo: first, do no harm
            report.reached_target = target.met(last)
            report.final = last
            stopped = f"{why}: step {len(steps) + 1} {_NO_FOLLOW_UP[why]} (undone)"
            break
        steps.append(report.step)
        last = report.final
    if len(steps) > 1 or stopped:
        report.step = steps if len(steps) > 1 else steps[0]
        report.trials = trials
    report.stopped = stopped
    if config.step == "auto":
        report.step_seconds = seconds
        report.work = work.to_json()
    report.params_changed = mp.changed()
    return report


def _start_log_probs(model: TaskModel, enc: Encoded, batch_size: int) -> torch.Tensor:
    """The model's log-probabilities on ``enc`` (CPU, in ``enc``'s order)."""
    out = []
    model.model.eval()
    with torch.no_grad():
        for x, _ in enc.batches(batch_size, model.device):
            out.append(torch.log_softmax(model.logits(x).float(), -1).cpu())
    return torch.cat(out)


def _distil_follow_up(ws: Workspace, task: TaskModel, start_model: TaskModel, mp: MaskedParams,
                      smp: RequestSamples, config: UnlearnConfig, evaluate, target: Target, report: UpdateReport,
                      work: Work) -> bool:
    """After a first ``so`` step that stopped short of the target, the distilled push (:mod:`mape.distil`) from
    there instead of ``so`` follow-ups, held to the starting model's predictions on the retain sample; ``report``
    records it. False (nothing done) when the run's work budget cannot pay for its first block of steps (the
    BBC presets: half a retrain's work is 1.5 epochs there, less than a block after the search): then the
    cheaper ``so`` follow-ups run."""
    from mape.distil import distil_steps, first_block_work

    if report.final is None or not work.fits(len(smp.retain_enc) + first_block_work(
            len(smp.forget_enc), len(smp.retain_enc), smp.trial_work, len(smp.forget_enc))):
        return False
    ref_logp = _start_log_probs(start_model, smp.retain_enc, config.batch_size)
    work.spend(len(smp.retain_enc))
    left = lambda: _still_to_forget(task, smp.forget_enc, target, config.batch_size)[0]  # noqa: E731
    out = distil_steps(task, mp, smp.forget_enc, smp.retain_enc, ref_logp, config.lr or ws.preset.recipe.lr,
                       config.seed, evaluate, target, report.final, left, work, smp.trial_work, len(smp.forget_enc))
    report.trials = (report.trials or []) + out["trials"]
    report.final = out["final"]
    report.reached_target = target.met(out["final"])
    report.distil = {"steps": out["steps"], "taken": out["taken"], "stopped": out["stopped"]}
    if report.step_seconds is not None:
        report.step_seconds.append(out["seconds"])
    return True


def unlearn_successively(ws: Workspace, specs: list[str], config: UnlearnConfig | None = None,
                         progress: Progress | None = None) -> list[RunResult]:
    """Several forget requests in a row on the same model, each with a fresh mask search."""
    results, model, forgotten = [], None, None
    for i, spec in enumerate(specs):
        res = unlearn(ws, spec, config, progress, base=model, already_forgotten=forgotten)
        forgotten = res.forget_set.indices if forgotten is None else np.union1d(forgotten, res.forget_set.indices)
        model = res.unlearned
        res.history = [{"request": j + 1, "spec": r.forget["spec"], "size": r.forget["size"],
                        "metrics": r.metrics["unlearned"]} for j, r in enumerate(results + [res])]
        results.append(res)
    return results
