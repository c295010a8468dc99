"""On-disk cache of trained models: atomic writes, checksums, keys that change with the recipe.

Layout: ``<cache>/<kind>/<key>/{model.safetensors, meta.json}``; ``meta.json`` holds the SHA-256 of
the weights file, so a truncated or corrupted entry is detected and rebuilt instead of loaded.
An entry is written into a temporary folder ``.<key>.*`` next to its final place. To publish it, the
old entry (if any) is renamed aside to ``.<key>.old.*`` (one atomic rename), the new one is renamed in,
and only then is the old one removed. A process killed at any point therefore leaves the old entry or
the new one, never half of one: if it dies between the two renames, the entry's own folder is missing
and :func:`load_model` restores the intact old copy (checksum verified) in its place.
Weights are read with safetensors only (no pickle).

Training into the cache is serialised between processes (:func:`training_lock`, an advisory ``flock`` on
``<cache>/<kind>/<key>.lock``): two processes that need the same model at once (two test workers, the app
and a command line on one cache) train it once; the second waits, then loads what the first saved.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
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


@contextlib.contextmanager
def training_lock(kind: str, key: str):
    """Hold the cross-process lock of one cache entry (blocking). Where ``fcntl`` is missing (Windows) or
    the cache folder cannot hold a lock file, it does nothing: each process trains its own copy, as before."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    try:
        folder = cache_root() / kind
        folder.mkdir(parents=True, exist_ok=True)
        handle = open(folder / f"{key}.lock", "a")
    except OSError:
        yield
        return
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        handle.close()  # closing releases the lock


def _complete(folder: Path) -> bool:
    return (folder / "model.safetensors").is_file() and (folder / "meta.json").is_file()


def _remove_stale_temporaries(folder: Path, key: str, older_than_s: float = 3600.0) -> None:
    """Leftovers of a killed writer are removed after an hour (called right after a new entry
    was published, so none of them can be the only intact copy)."""
    import time

    for leftover in folder.glob(f".{key}.*"):
        try:
            if time.time() - leftover.stat().st_mtime > older_than_s:
                shutil.rmtree(leftover, ignore_errors=True)
        except OSError:
            pass


def _publish(tmp: Path, final: Path, key: str, asides: list[Path], attempts: int = 3) -> None:
    """Rename the old entry aside (atomic), then the new one in (atomic). If another process put an
    entry in place between the two renames, that one is moved aside too and the rename retried; if the
    rename fails for good, the old entry goes back where it was."""
    for attempt in range(attempts):
        if final.exists():
            asides.append(Path(tempfile.mkdtemp(prefix=f".{key}.old.", dir=final.parent)))
            os.replace(final, asides[-1])  # the old entry is now only under its aside name
        try:
            os.replace(tmp, final)  # the new entry is published
            return
        except BaseException as exc:
            if isinstance(exc, OSError) and final.exists() and attempt < attempts - 1:
                continue
            if asides and not final.exists():
                os.replace(asides.pop(), final)
            raise


def save_model(kind: str, key: str, model, meta: dict) -> Path:
    final = entry_dir(kind, key)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=final.parent))
    asides: list[Path] = []
    try:
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / "model.safetensors"))
        meta = {**meta, "sha256": _sha256(tmp / "model.safetensors")}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1, default=str))
        _publish(tmp, final, key, asides)
        _remove_stale_temporaries(final.parent, key)
    finally:
        for leftover in (tmp, *asides):
            if leftover.exists():
                shutil.rmtree(leftover, ignore_errors=True)
    return final


def _checked_meta(folder: Path) -> dict:
    """An entry's meta once its weights match the recorded checksum; raises otherwise."""
    meta = json.loads((folder / "meta.json").read_text())
    if not isinstance(meta, dict) or meta.get("sha256") != _sha256(folder / "model.safetensors"):
        raise ValueError("checksum mismatch")
    return meta


def _read_entry(folder: Path, model) -> dict:
    """Load a verified entry into ``model``; raises on anything missing, corrupt or mismatched."""
    meta = _checked_meta(folder)
    state = load_file(str(folder / "model.safetensors"))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"keys differ: {missing[:3]} {unexpected[:3]}")
    return meta


def _verified(folder: Path) -> bool:
    try:
        _checked_meta(folder)
        return True
    except (OSError, ValueError):
        return False


def _restore_from_leftovers(kind: str, key: str) -> bool:
    """A writer killed between its two renames leaves the entry missing and the old entry under a
    ``.<key>.old.*`` name. Copy the newest verified one back in place."""
    final = entry_dir(kind, key)
    if not final.parent.is_dir():
        return False
    candidates = [d for d in final.parent.glob(f".{key}.old.*") if d.is_dir() and _complete(d)]
    candidates.sort(key=lambda d: (d / "meta.json").stat().st_mtime, reverse=True)
    for candidate in candidates:
        if not _verified(candidate):
            continue
        staging = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=final.parent))
        try:
            for name in ("model.safetensors", "meta.json"):
                shutil.copy2(candidate / name, staging / name)
            if final.exists():  # another process published meanwhile: keep theirs
                return True
            os.replace(staging, final)
            shutil.rmtree(candidate, ignore_errors=True)
            return True
        except OSError:
            return final.exists()
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
    return False


def has_model(kind: str, key: str) -> bool:
    """Whether an entry is on disk (or can be restored from a killed writer's intact copy)."""
    return _complete(entry_dir(kind, key)) or _restore_from_leftovers(kind, key)


def load_model(kind: str, key: str, model) -> dict | None:
    """Load weights into ``model``; None when missing or corrupt (a corrupt entry is removed).
    Names starting with a dot are a writer's private folders, never entries."""
    if not key or key.startswith("."):
        return None
    d = entry_dir(kind, key)
    if not _complete(d) and not _restore_from_leftovers(kind, key):
        return None
    try:
        return _read_entry(d, model)
    except Exception:
        shutil.rmtree(d, ignore_errors=True)
        return None


def model_checksum(kind: str, key: str) -> str | None:
    """The recorded SHA-256 of an entry's weights (from its meta.json, not re-hashed); None if absent."""
    try:
        meta = json.loads((entry_dir(kind, key) / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    return meta.get("sha256") if isinstance(meta, dict) else None


def _arrays_path(kind: str, key: str) -> Path:
    return cache_root() / kind / f"{key}.npz"


def save_arrays(kind: str, key: str, arrays: dict) -> Path | None:
    """Store NumPy arrays under ``<cache>/<kind>/<key>.npz`` (written aside, then renamed in: atomic).
    A cache that cannot be written (read-only disk) is not an error: returns None."""
    path = _arrays_path(kind, key)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{key}.", suffix=".npz", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **{k: np.asarray(v) for k, v in arrays.items()})
        os.replace(tmp, path)
        return path
    except OSError:
        return None


def load_arrays(kind: str, key: str) -> dict | None:
    """Arrays stored by :func:`save_arrays`; None when missing or unreadable (a corrupt file is removed)."""
    path = _arrays_path(kind, key)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except Exception:  # noqa: BLE001 - truncated / corrupt: rebuilt by the caller
        path.unlink(missing_ok=True)
        return None
