"""A run's settings (:class:`UnlearnConfig`, validated), the device, and the fixed sample sizes of a run."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np

from mape.base.errors import MapeError

if TYPE_CHECKING:  # torch is imported when a device is resolved (the app's page is served before torch loads)
    import torch

Progress = Callable[..., None]   # progress(stage: str, fraction: float, selection: Selection | None = None)


RETAIN_EVAL_SIZE = 1000   # the fixed retain sample for retain accuracy / MIA


UNSEEN_EVAL_SIZE = 1000   # unused training examples (training limit) for the forget target


CHECK_SIZE = 128          # forget check sample for the auto step size


CHECK_RETAIN = 256        # retain check sample for the auto step size: its accuracy decides feasibility within


REFERENCE_SIZE = 1024     # unseen-example losses in the forget set's class mix (the auto step's target)


CHECK_UNSEEN = 128        # unseen check sample (examples never trained on, of the retained classes): the step's


WHOLE_CLASS_SLACK = 0.005  # a whole class is forgotten when its check accuracy is 0 (< 1 of 128 wrong)


def resolve_device(device: str = "auto") -> torch.device:
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise MapeError("--device cuda was asked for but no CUDA GPU is available; use --device cpu or auto.")
    if device not in ("cpu", "cuda"):
        raise MapeError(f"Unknown device '{device}'; use auto, cpu or cuda.")
    return torch.device(device)


def device_name(device: torch.device) -> str:
    import torch

    return torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"


MAX_GREEDY_PASSES = 5  # refinement passes allowed; a pass that swaps nothing ends the refinement early


@dataclass
class UnlearnConfig:
    objective: str = "auto"          # auto: contrast for a backdoor's poisoned examples, mlr otherwise
    sparsity: float = 0.9
    update: str = "so"
    step: str | float = "auto"       # "auto", η for so, or a number of steps for ga/gd/rl/npo
    seed: int = 0
    retrain: bool = False
    joint_budget: bool = False
    greedy_passes: int = 1           # 0: the warm start only (at most MAX_GREEDY_PASSES)
    retain_sample: int | None = None  # None: 2,048 on a GPU, 512 on a CPU
    batch_size: int = 32
    tolerance: float = 0.02
    damping: float = 0.01            # λ = damping · mean(Î_r over the selection)
    so_steps: int = 20               # auto: at most this many so steps (follow-ups: ∇L on D_f left − ∇L_r); the
    # run's work budget (half a retrain's, RUN_WORK_SHARE) and "no progress or harm" (_no_follow_up) end them first
    lr: float | None = None          # iterative rules; None: the preset's training lr

    def validate(self) -> None:
        from mape.method.scoring import OBJECTIVES
        from mape.method.update import UPDATES

        if not isinstance(self.objective, str) or self.objective not in OBJECTIVES:
            raise MapeError(f"Unknown objective {self.objective!r}; choose one of {', '.join(OBJECTIVES)}.")
        if not isinstance(self.update, str) or self.update not in UPDATES:
            raise MapeError(f"Unknown update rule {self.update!r}; choose one of {', '.join(UPDATES)}.")
        if not (isinstance(self.sparsity, (int, float)) and not isinstance(self.sparsity, bool)
                and 0 < self.sparsity < 1):
            raise MapeError(f"Sparsity must be a number strictly between 0 and 1, got {self.sparsity!r}.")
        if self.step != "auto":
            try:
                value = float(self.step)
            except (TypeError, ValueError):
                raise MapeError(f"Step must be 'auto' or a number, got {self.step!r}.") from None
            if not np.isfinite(value) or value <= 0:
                raise MapeError(f"Step must be a positive number, got {self.step!r}.")
            if self.update != "so" and value != int(value):
                raise MapeError(f"For update '{self.update}' the step is a whole number of steps, got {self.step!r}.")
            self.step = value if self.update == "so" else int(value)
        if self.retain_sample is not None and (not is_int(self.retain_sample) or self.retain_sample < 1):
            raise MapeError(f"The retain sample size must be a whole number of at least 1, got {self.retain_sample!r}.")
        if not is_int(self.seed) or not 0 <= self.seed < 2**32:
            raise MapeError(f"The seed must be a whole number in 0..{2**32 - 1}, got {self.seed!r}.")
        self.seed = int(self.seed)
        if not is_int(self.greedy_passes) or not 0 <= self.greedy_passes <= MAX_GREEDY_PASSES:
            raise MapeError(f"Greedy passes must be a whole number from 0 to {MAX_GREEDY_PASSES}, "
                            f"got {self.greedy_passes!r}.")
        if not is_int(self.batch_size) or self.batch_size < 1:
            raise MapeError(f"The batch size must be a whole number of at least 1, got {self.batch_size!r}.")
        if not is_int(self.so_steps) or self.so_steps < 1:
            raise MapeError(f"The number of so steps must be a whole number of at least 1, got {self.so_steps!r}.")
        if not is_number(self.tolerance) or not 0 <= self.tolerance <= 1:
            raise MapeError(f"The retain-accuracy tolerance must be a number from 0 to 1, got {self.tolerance!r}.")
        if not is_number(self.damping) or self.damping <= 0:
            raise MapeError(f"The damping must be a positive number, got {self.damping!r}.")
        if self.lr is not None and (not is_number(self.lr) or self.lr <= 0):
            raise MapeError(f"The learning rate must be a positive number, got {self.lr!r}.")


def is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def is_number(value) -> bool:
    """A finite real number (not a bool)."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool) \
        and bool(np.isfinite(value))


RUN_WORK_SHARE = 0.5    # a whole run (search, update, follow-ups) does at most this share of a retrain's counted work


FOLLOW_UP_RETAIN = 128  # retain examples of a follow-up's repair gradient (the first of the seeded retain sample)


FOLLOW_UP_FORGET = 128  # at most this many of the forget examples left (the most confident) per follow-up gradient
