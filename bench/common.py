"""Helpers shared by the benchmark scripts: device synchronisation and process memory."""

from __future__ import annotations

from pathlib import Path


def proc_status_mb(field: str) -> float | None:
    """A memory field of /proc/self/status (e.g. VmRSS, VmHWM) in MB; None off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset the process's peak RSS (VmHWM); False where the kernel does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def sync(device) -> None:
    """Wait for the GPU's queued work (a no-op on a CPU), so wall-clock timings are honest."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
