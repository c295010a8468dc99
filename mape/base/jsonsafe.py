"""Strict JSON from results: one rule for every file and endpoint that writes results."""

from __future__ import annotations

import math

import numpy as np


def json_safe(obj):
    """Plain JSON values: NumPy scalars and arrays to Python, NaN/inf to null (strict JSON), dict keys to strings;
    keys starting with "_" are in-memory only (e.g. per-example losses) and are left out; anything else becomes
    its ``str``."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items() if not (isinstance(k, str) and k.startswith("_"))}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if obj is None or isinstance(obj, str):
        return obj
    return str(obj)
