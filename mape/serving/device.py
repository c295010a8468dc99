"""Where the app computes (no gradio here): the ZeroGPU wrapper :func:`gpu` (``spaces.GPU`` when the ``spaces``
package is present), whether the app runs on a GPU, the device of a private working copy, the page's device badge
and torch's thread count. CUDA is not touched at import: on ZeroGPU only inside the ``@gpu`` functions."""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
import threading
from pathlib import Path

log = logging.getLogger(__name__)

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


#: files that exist on Linux when an NVIDIA (first two) or AMD ROCm (last) GPU driver is loaded
GPU_DRIVER_FILES = ("/proc/driver/nvidia/version", "/dev/nvidiactl", "/dev/kfd")


def _no_gpu_possible() -> bool:
    """True when torch can't have a GPU here, found without importing torch (which takes seconds on a small CPU,
    and the first page is served before it): CUDA hidden, a torch build without CUDA/ROCm libraries, or no GPU
    driver. Anything else (a GPU build with a driver, or an unknown platform) is left to torch to answer."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return True
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        return True
    lib = Path(next(iter(spec.submodule_search_locations))) / "lib"
    gpu_build = any(lib.glob("libtorch_cuda*")) or any(lib.glob("libtorch_hip*")) or any(lib.glob("torch_cuda*"))
    if not gpu_build:
        return True
    if os.name == "posix" and sys.platform.startswith("linux"):
        return not any(Path(p).exists() for p in GPU_DRIVER_FILES)
    return False


def _cuda_available() -> bool:
    if "torch" not in sys.modules and _no_gpu_possible():
        return False
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


_ENGINE_IMPORT = threading.Event()   # the import below has started
_ENGINE_GUARD = threading.Lock()


def load_engine_in_background() -> threading.Thread | None:
    """Import torch, transformers and the engine in a daemon thread, once per process (later calls return None):
    the page is served before they are needed (they take seconds on a small CPU), and the first Run should not
    wait for them. :func:`mape.serving.owner.warm_in_background` does this and more (it prepares the page's
    preset)."""
    with _ENGINE_GUARD:
        if _ENGINE_IMPORT.is_set():
            return None
        _ENGINE_IMPORT.set()

    def work():
        try:
            import transformers  # noqa: F401

            import mape.run.unlearn  # noqa: F401 - torch and the method modules
        except Exception:  # noqa: BLE001 - the first request that needs them reports it
            log.exception("loading torch/transformers failed")

    thread = threading.Thread(target=work, daemon=True, name="mape-engine-import")
    thread.start()
    return thread
