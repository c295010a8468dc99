"""Where the app computes (no gradio here): the ZeroGPU wrapper :func:`gpu` (``spaces.GPU`` when the ``spaces``
package is present), whether the app runs on a GPU, the device of a private working copy, the page's device badge
and torch's thread count. CUDA is not touched at import: on ZeroGPU only inside the ``@gpu`` functions."""

from __future__ import annotations

import os

try:  # Hugging Face ZeroGPU: CUDA is only available inside functions decorated with spaces.GPU
    import spaces  # type: ignore
except ImportError:  # pragma: no cover - the usual case off Spaces
    spaces = None


def gpu(duration: int = 120):
    """``spaces.GPU(duration=...)`` when the ``spaces`` package is present, else a no-op."""
    def wrap(fn):
        return spaces.GPU(duration=duration)(fn) if spaces is not None else fn
    return wrap


def _zero_gpu() -> bool:
    return spaces is not None and bool(os.environ.get("SPACES_ZERO_GPU") or os.environ.get("SPACE_ID"))


def _cuda_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # noqa: BLE001
        return False


ZERO_GPU = _zero_gpu()


ON_GPU = ZERO_GPU or _cuda_available()   # ZeroGPU: a GPU per call; CUDA is not touched at import


ATTRIBUTION_BATCH = 8 if not ON_GPU else 32   # Captum internal_batch_size (bounded)


ATTRIBUTION_STEPS = 32


def device_label() -> str:
    """What the page's device badge says: ZeroGPU, the GPU's name, or the CPU's core count."""
    if ZERO_GPU:
        return "ZeroGPU (on demand)"
    if ON_GPU:
        import torch

        return f"GPU · {torch.cuda.get_device_name(0)}"
    return f"CPU · {os.cpu_count()} cores"


def set_threads(n: int) -> None:
    """torch's intra-op threads (``MAPE_APP_TORCH_THREADS``)."""
    import torch

    torch.set_num_threads(n)


def work_device():
    import torch

    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
