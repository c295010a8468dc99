"""Shared fixtures: a private model cache and small, fast presets built on real models and data."""

import os
from dataclasses import replace
from pathlib import Path

import pytest

from mape.data.presets import PRESETS
from mape.method.recipe import Recipe

if os.environ.get("PYTEST_XDIST_WORKER"):  # `pytest -n N`: each worker gets its share of the cores (N
    import torch  # workers each running a thread per core would oversubscribe the CPU)

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))

SHARED_DATA = Path(os.environ.get("MAPE_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))

# Real MiniLM on real BBC News, short sequences and one epoch: trains in seconds on 2 cores.
FAST_PRESETS = {
    "test-minilm-bbc": replace(PRESETS["minilm-bbc"], name="test-minilm-bbc", max_length=32,
                               recipe=Recipe(epochs=2, lr=2e-4, batch_size=16, freeze_embeddings=True)),
    "test-vit-mnist": replace(PRESETS["vit-mnist"], name="test-vit-mnist",
                              recipe=Recipe(epochs=4, lr=2e-3, batch_size=64, weight_decay=0.05)),
}
PRESETS.update(FAST_PRESETS)


@pytest.fixture(scope="session", autouse=True)
def _cache(tmp_path_factory):
    if "MAPE_CACHE" not in os.environ:
        os.environ["MAPE_CACHE"] = str(tmp_path_factory.mktemp("mape-cache"))
    yield


@pytest.fixture(scope="session")
def bbc_ws():
    from mape.run.workspace import prepare

    return prepare("test-minilm-bbc", train_limit=400, device="cpu")
