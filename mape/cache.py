"""On-disk cache of trained models: atomic writes, checksums, keys that change with the recipe.

Layout: ``<cache>/<kind>/<key>/{model.safetensors, meta.json}``; ``meta.json`` holds the SHA-256 of
the weights file, so a truncated or corrupted entry is detected and rebuilt instead of loaded.
An entry is written into a temporary folder next to its final place and moved there with one
``os.replace``, so a killed process leaves either the old entry or the new one, never half of one.
Weights are read with safetensors only (no pickle).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from safetensors.torch import load_file, save_file

CODE_VERSION = 1  # bump when training code changes results


def cache_root() -> Path:
    return Path(os.environ.get("MAPE_CACHE", Path.home() / ".cache" / "mape"))


def cache_key(spec: dict) -> str:
    blob = json.dumps({"code": CODE_VERSION, **spec}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def entry_dir(kind: str, key: str) -> Path:
    return cache_root() / kind / key


def _remove_stale_temporaries(folder: Path, key: str, older_than_s: float = 3600.0) -> None:
    """Temporary folders left by a killed writer (never loadable) are removed after an hour."""
    import time

    for leftover in folder.glob(f".{key}.*"):
        try:
            if time.time() - leftover.stat().st_mtime > older_than_s:
                shutil.rmtree(leftover, ignore_errors=True)
        except OSError:
            pass


def save_model(kind: str, key: str, model, meta: dict) -> Path:
    final = entry_dir(kind, key)
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(final.parent, key)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=final.parent))
    try:
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / "model.safetensors"))
        meta = {**meta, "sha256": _sha256(tmp / "model.safetensors")}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1, default=str))
        if final.exists():
            shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def load_model(kind: str, key: str, model) -> dict | None:
    """Load weights into ``model``; None when missing or corrupt (a corrupt entry is removed)."""
    d = entry_dir(kind, key)
    weights, meta_path = d / "model.safetensors", d / "meta.json"
    if not weights.exists() or not meta_path.exists():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("sha256") != _sha256(weights):
            raise ValueError("checksum mismatch")
        state = load_file(str(weights))
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"keys differ: {missing[:3]} {unexpected[:3]}")
        return meta
    except Exception:
        shutil.rmtree(d, ignore_errors=True)
        return None
