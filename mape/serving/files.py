"""The download files: the results JSON, the masks and the unlearned model (safetensors), and the cleanup of
old ones."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from mape.base.jsonsafe import json_safe

MODEL_FILE_LIMIT_MB = 200


def clean_old_files(root: Path, max_age_s: float = 3600.0) -> None:
    """Remove run folders under ``root`` older than ``max_age_s`` (best effort)."""
    now = time.time()
    for d in Path(root).glob("run-*"):
        try:
            if now - d.stat().st_mtime > max_age_s:
                for f in d.iterdir():
                    f.unlink(missing_ok=True)
                d.rmdir()
        except OSError:
            pass


def write_results_json(result: dict, folder: Path, name: str = "mape-results.json") -> Path:
    path = Path(folder) / name
    path.write_text(json.dumps(json_safe(result), indent=1))
    return path


def write_masks(heads: np.ndarray, filters: np.ndarray, folder: Path, head_scores=None, filter_scores=None,
                meta: dict | None = None, name: str = "mape-masks.safetensors") -> Path:
    """Masks as safetensors: ``heads`` (L×H) and ``filters`` (L×F) float32 tensors, 1 = selected for
    update, plus the scores when given; ``meta`` goes into the safetensors metadata (strings)."""
    import torch
    from safetensors.torch import save_file

    tensors = {"heads": torch.as_tensor(np.asarray(heads, dtype=np.float32)),
               "filters": torch.as_tensor(np.asarray(filters, dtype=np.float32))}
    if head_scores is not None:
        tensors["head_scores"] = torch.as_tensor(np.asarray(head_scores, dtype=np.float32))
    if filter_scores is not None:
        tensors["filter_scores"] = torch.as_tensor(np.asarray(filter_scores, dtype=np.float32))
    path = Path(folder) / name
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path),
              metadata={str(k): str(v) for k, v in (meta or {}).items()})
    return path


def model_size_mb(n_params: int, bytes_per_param: int = 4) -> float:
    return n_params * bytes_per_param / 2**20


def write_model(model, folder: Path, meta: dict | None = None, name: str = "mape-unlearned-model.safetensors") -> Path:
    """The model's state dict as safetensors (shared tensors de-duplicated by cloning)."""
    from safetensors.torch import save_file

    state, seen = {}, {}
    for k, v in model.state_dict().items():
        t = v.detach().cpu()
        ptr = t.untyped_storage().data_ptr() if t.numel() else None
        state[k] = t.clone().contiguous() if ptr in seen else t.contiguous()
        if ptr is not None:
            seen[ptr] = k
    path = Path(folder) / name
    save_file(state, str(path), metadata={str(k): str(v) for k, v in (meta or {}).items()})
    return path
