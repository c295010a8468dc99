"""Preparing a preset: the :class:`Workspace` (data set, encoded splits, the original model, trained once and
cached) and the models retrained without a forget set (cached by what they forgot)."""

from __future__ import annotations

import copy
import hashlib
import time
from typing import Callable

import numpy as np
import torch

from mape.base import cache
from mape.base.errors import MapeError
from mape.data.presets import Preset, build_start_model, custom_preset, get_preset, load_dataset_for, training_data
from mape.method.models import Encoded, TaskModel, parameter_count
from mape.method.train import train
from mape.run.config import RETAIN_EVAL_SIZE, UNSEEN_EVAL_SIZE, Progress, resolve_device


class Workspace:
    """A prepared preset: dataset, encoded splits and the original model (trained once, cached)."""

    def __init__(self, preset: Preset, dataset, task: TaskModel, device: torch.device, key: str,
                 train_limit: int | None):
        self.preset, self.dataset, self.task, self.device = preset, dataset, task, device
        self.key, self.train_limit = key, train_limit
        self.scenario = getattr(dataset, "scenario", None)  # mape.data.scenarios.Scenario or None (clean data)
        self.train_enc: Encoded = task.encode(dataset.train)
        self.test_enc: Encoded = task.encode(dataset.test)
        self.train_y = np.asarray(dataset.train.y)
        self.test_y = np.asarray(dataset.test.y)
        self._probs: dict[int, np.ndarray] = {}
        self._test_probs: np.ndarray | None = None
        self._unseen: tuple[np.ndarray, np.ndarray] | None = None
        self.total_params = parameter_count(task.model)

    def starting_from(self, task: TaskModel) -> "Workspace":
        """This workspace with ``task`` as its original (the audit's original of another training seed): the
        same data and cache keys, the original's memoised predictions started afresh."""
        other = copy.copy(self)
        other.task, other.total_params = task, parameter_count(task.model)
        other._probs, other._test_probs, other._unseen = {}, None, None
        return other

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


def model_key(preset: Preset, dataset, train_limit) -> dict:
    y = np.asarray(dataset.train.y)
    fingerprint = hashlib.sha256(y.tobytes() + str(len(dataset.test)).encode()).hexdigest()[:12]
    return {"preset": preset.name, "model": preset.model_id, "data": preset.dataset_id,
            "recipe": preset.recipe.to_json(), "max_length": preset.max_length, "vit": preset.vit_config,
            "n_train": len(y), "labels": fingerprint, "train_limit": train_limit}


def original_cache_spec(preset: Preset, dataset, train_limit) -> dict:
    """What the original model's cache key is made of (a scenario's alterations included)."""
    spec = model_key(preset, dataset, train_limit)
    if getattr(dataset, "scenario", None) is not None:
        spec["scenario"] = dataset.scenario.cache_spec()
    return spec


def train_or_load(kind: str, key: str, build: Callable[[], TaskModel], data: Encoded | Callable[[TaskModel], Encoded],
                   preset: Preset, device, progress: Progress | None, stage: str, meta: dict
                   ) -> tuple[TaskModel, float, bool]:
    """Load a cached model, or train and cache it. Returns (model, training seconds, from cache); for a
    cached model the seconds are those recorded when it was trained. ``data``: the training data, or a
    function of the model that encodes it (called only when there is training to do)."""
    task = build()
    cached = cache.load_model(kind, key, task.model)
    if cached is not None:
        return task.to(device), float(cached.get("train_s", float("nan"))), True
    with cache.training_lock(kind, key):  # another process training the same model: wait for it, then load
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

    ``scenario`` (mape.data.scenarios: ``backdoor:TRIGGER:TARGET:N``, ``backdoor:patch:TARGET:N``,
    ``mislabel:N``) alters the training split first; the original is trained on the altered set and
    cached under its own key."""
    if scenario is not None:  # a bad spec fails before any data is loaded
        from mape.data.scenarios import parse_scenario

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
        task, _, _ = train_or_load("original", key, builder, lambda t: t.encode(dataset.train), preset, dev,
                                    progress, "training the original model", spec)
    if progress:
        progress("original model ready", 1.0)
    return Workspace(preset, dataset, task, dev, key, train_limit)


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
    return train_or_load("retrain", key, builder, ws.train_enc.take(retain), preset, ws.device, progress,
                          "retraining without the forget set", {"forget": digest, "original": ws.key})
