"""MAPE-Unlearn: module-aware parameter-efficient machine unlearning on Transformers.

The package is layered: each folder is one layer and imports only from the layers below it (checked by
``tests/test_layers.py``, with no import cycle and no module importing another's private names):

- ``base/`` — the error type, the model cache on disk, the measures on predicted probabilities, strict JSON;
- ``method/`` — the method itself: adapters and gates on heads and FFN filters, the task model and its training,
  unit scores, the mask search, the masked update rules, counted work and the distilled push;
- ``data/`` — data sets, forget-set specs, poisoned-data scenarios and the presets;
- ``run/`` — one unlearning run: the prepared workspace, the request's samples and forget target, the run, and the
  follow-up step loop of the automatic step;
- ``evaluation/`` — baselines, comparisons against retraining and their executors, the audit, the quality gate
  and the attributions;
- ``serving/`` — what the app serves, without gradio: the one owner of the shared models and what the page offers,
  shows and downloads; ``ui/`` and ``app.py`` (gradio) sit on top, the CLI (:mod:`mape.cli`) beside them.

The short way in (imported on first use, so ``import mape`` stays light)::

    from mape import prepare, unlearn, UnlearnConfig
    ws = prepare("minilm-bbc")
    result = unlearn(ws, "class:sport", UnlearnConfig(retrain=True))
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

#: the public API: name -> the module that defines it
API = {
    "MapeError": "mape.base.errors",
    "UnlearnConfig": "mape.run.config",
    "Workspace": "mape.run.workspace",
    "prepare": "mape.run.workspace",
    "RunResult": "mape.run.unlearn",
    "unlearn": "mape.run.unlearn",
    "unlearn_successively": "mape.run.unlearn",
    "run_method": "mape.evaluation.baselines",
    "compare": "mape.evaluation.compare",
    "audit": "mape.evaluation.audit",
    "run_gate": "mape.evaluation.gate",
}
__all__ = ["__version__", *API]


def __getattr__(name: str):
    if name in API:
        value = getattr(importlib.import_module(API[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'mape' has no attribute {name!r}")
