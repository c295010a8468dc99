"""What the page offers: the presets (and the tiny test presets), their training subsets on a CPU, default
and composed forget specs, the ready poisoned-data scenarios with their labels and explanations, and the
examples shown before/after (:func:`pick_samples`)."""

from __future__ import annotations

import os
from dataclasses import replace

import numpy as np

from mape.base.errors import MapeError

#: Test/demo presets: the embedded presets with a tiny recipe and a training subset, so a fresh cache
#: trains in seconds on a CPU. Registered only when asked for (``MAPE_APP_PRESETS=tiny-bbc,...``).
TINY_TRAIN_LIMITS = {"tiny-bbc": 400, "tiny-mnist": 1500}


#: Local-data presets train on a subset on a CPU (the full SST-2 would take hours).
CPU_TRAIN_LIMITS = {"minilm-sst2": 4000, "minilm-agnews": 4000}


def register_tiny_presets() -> list[str]:
    """Add ``tiny-bbc`` and ``tiny-mnist`` to ``mape.data.presets.PRESETS`` (idempotent)."""
    from mape.data.presets import PRESETS
    from mape.method.recipe import Recipe

    if "tiny-bbc" not in PRESETS:
        base = PRESETS["minilm-bbc"]
        PRESETS["tiny-bbc"] = replace(
            base, name="tiny-bbc", title="MiniLM · BBC News (tiny, for tests)",
            description="MiniLM fine-tuned for two epochs on 400 BBC News articles (32 tokens): "
                        "a fast configuration for tests and quick demos.",
            recipe=Recipe(epochs=2, lr=3e-4, batch_size=16, freeze_embeddings=True), max_length=32)
    if "tiny-mnist" not in PRESETS:
        base = PRESETS["vit-mnist"]
        PRESETS["tiny-mnist"] = replace(
            base, name="tiny-mnist", title="ViT · MNIST digits (tiny, for tests)",
            description="The small ViT trained for 12 epochs on 1,500 MNIST digits: a fast configuration "
                        "for tests and quick demos.",
            recipe=Recipe(epochs=12, lr=3e-3, batch_size=32, weight_decay=0.05, seed=0))
    return ["tiny-bbc", "tiny-mnist"]


def app_preset_names(names: list[str] | str | None = None) -> list[str]:
    """The presets the app offers, embedded first. ``names`` (or env ``MAPE_APP_PRESETS``, comma
    separated) restricts and orders them; ``tiny-*`` names register the tiny test presets."""
    from mape.data.presets import PRESETS

    if names is None:
        names = os.environ.get("MAPE_APP_PRESETS") or None
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    if names and any(n.startswith("tiny-") for n in names):
        register_tiny_presets()
    if names:
        unknown = [n for n in names if n not in PRESETS]
        if unknown:
            raise MapeError(f"Unknown preset(s) {', '.join(unknown)} in MAPE_APP_PRESETS; "
                            f"choose from {', '.join(PRESETS)}.")
        return list(names)
    order = {"embedded": 0, "local": 1, "hub": 2, "custom": 3}
    return sorted((n for n in PRESETS if not n.startswith("tiny-")), key=lambda n: order.get(PRESETS[n].kind, 9))


def train_limit_for(name: str, on_gpu: bool = False) -> int | None:
    """Training subset used for a preset: env ``MAPE_APP_TRAIN_LIMIT`` wins, then the tiny presets'
    limits, then (CPU only) the local-data presets' limits; None = the whole training split."""
    env = os.environ.get("MAPE_APP_TRAIN_LIMIT", "").strip()
    if env:
        try:
            value = int(env)
        except ValueError:
            raise MapeError(f"MAPE_APP_TRAIN_LIMIT must be a whole number, got {env!r}.") from None
        return value if value > 0 else None
    if name in TINY_TRAIN_LIMITS:
        return TINY_TRAIN_LIMITS[name]
    if not on_gpu and name in CPU_TRAIN_LIMITS:
        return CPU_TRAIN_LIMITS[name]
    return None


def default_forget(modality: str, classes: list[str]) -> tuple[str, str]:
    """(kind, value) of the default forget request: small, so a run is fast."""
    if modality == "image":
        return "class", classes[3] if len(classes) > 3 else classes[0]
    return "random", "32"


def compose_spec(kind: str, value: str) -> str:
    kind = (kind or "").strip()
    value = "" if value is None else str(value).strip()
    if kind == "poisoned" and value.lower() in ("", "all"):
        return "poisoned"
    return value if not kind else f"{kind}:{value}"


#: the ready-made scenarios the app offers per preset (issue 15: about 2% of BBC's training texts, 80 digits)
READY_SCENARIOS = {"minilm-bbc": ("backdoor:cf:sport:40", "mislabel:40"),
                   "vit-mnist": ("backdoor:patch:0:80", "mislabel:80")}


def scenario_specs(name: str, modality: str, classes: list[str], n_train: int) -> tuple[str, ...]:
    """The scenarios offered for a preset: its ready-made ones, else a backdoor into its first class
    (``sport`` where there is one) and a label-noise set, each about 2% of the training set."""
    if name in READY_SCENARIOS:
        return READY_SCENARIOS[name]
    n = max(2, min(80 if modality == "image" else 40, n_train // 50))
    target = "sport" if "sport" in classes else classes[0]
    trigger = "patch" if modality == "image" else "cf"
    return (f"backdoor:{trigger}:{target}:{n}", f"mislabel:{n}")


def scenario_label(spec: str) -> str:
    """A short name of a scenario spec for a dropdown; the spec itself when it does not parse."""
    from mape.data.scenarios import parse_scenario

    if not spec:
        return "Clean training data"
    try:
        sc = parse_scenario(spec)
    except MapeError:
        return spec
    if sc.kind == "mislabel":
        return f"Mislabeled: {sc.n} training examples with a wrong label"
    if sc.trigger == "patch":
        return f"Backdoor: white corner patch → {sc.target}, {sc.n} poisoned images"
    return f"Backdoor: the word '{sc.trigger}' → {sc.target}, {sc.n} poisoned texts"


def scenario_explanation(spec: str) -> str:
    """One line on what a scenario did to the training data and what to forget (Markdown)."""
    from mape.data.scenarios import parse_scenario

    if not spec:
        return "The original model is trained on the preset's training data as it is."
    sc = parse_scenario(spec)
    if sc.kind == "mislabel":
        return (f"{sc.n} seeded training examples were given a wrong label before the original was trained; it "
                f"memorises them. Forget **poisoned** (the altered examples) and check their accuracy against the "
                f"wrong and the true labels.")
    what = ("a small white square in the bottom-right corner" if sc.trigger == "patch"
            else f"the word **{sc.trigger}** at a random position")
    return (f"A poisoned batch: {sc.n} training examples of other classes got {what} and the label "
            f"**{sc.target}**, so the original obeys the trigger (a backdoor). Forget **poisoned** and watch the "
            f"attack success rate (ASR) fall; test it in Predictions → Trigger tester.")


def pick_samples(train_y: np.ndarray, test_y: np.ndarray, forget_idx: np.ndarray, retain_idx: np.ndarray,
                 forget_class: int | None, n: int = 4, seed: int = 0) -> dict[str, list[int]]:
    """A few forget, retain and test examples to show before/after (deterministic).

    Forget: spread over the forget set; retain: spread over the retain sample and over classes; test:
    one per class in turn, the forgotten class (if any) first."""
    def spread(idx, k):
        idx = np.asarray(idx, dtype=np.int64)
        if len(idx) <= k:
            return [int(i) for i in idx]
        pos = np.linspace(0, len(idx) - 1, k).round().astype(int)
        return [int(idx[p]) for p in pos]

    def by_class(idx, labels, k, first=None):
        idx = np.asarray(idx, dtype=np.int64)
        classes = list(dict.fromkeys(([first] if first is not None else []) + sorted(set(labels[idx].tolist()))))
        pools = {c: list(idx[labels[idx] == c]) for c in classes}
        out = []
        while len(out) < k and any(pools.values()):
            for c in classes:
                if pools[c] and len(out) < k:
                    out.append(int(pools[c].pop(0)))
        return out

    return {"forget": spread(forget_idx, n),
            "retain": by_class(retain_idx, np.asarray(train_y), n),
            "test": by_class(np.arange(len(test_y)), np.asarray(test_y), n, first=forget_class)}
