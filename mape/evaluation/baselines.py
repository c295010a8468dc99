"""Baselines for the comparison (DESIGN.md §9), run on the same footing as MAPE.

Every method starts from a copy of the original model (or of a previous request's result), sees the
same forget set, the same seeded retain sample (2,048 on a GPU, 512 on a CPU) and the same forget /
retain check samples as :func:`mape.run.unlearn.unlearn`, and reports the wall time of the procedure
(gradient passes + update + step-size search; not the final measurement) and the number of
parameter entries it changed.

Methods (names as the CLI takes them):

- ``mape`` (objective ``auto``: ``mlr``, or ``contrast`` on a backdoor's poisoned examples; update ``so``),
  ``mape-mlr``, ``mape-mlf``, ``mape-norm``, ``mape-random``, ``mape-contrast``
  (MAPE with another objective at the same budget, sparsity 0.9), and ``mape+RULE`` /
  ``mape-OBJ+RULE`` for another update rule (``mape+ga``, ``mape-norm+rl``, ...). These call
  :func:`mape.run.unlearn.unlearn`.
- ``so``, ``ga``, ``gd``, ``rl``, ``npo``: the same update rules on **all parameters of the Transformer
  layers** (Q/K/V/O, FFN up/down, their biases and the layers' LayerNorms). Embeddings, the final
  LayerNorm, pooler and classifier stay frozen, as they do for MAPE, so the comparison isolates the
  choice of units. Step size ``auto`` with the same :class:`mape.method.update.Target` as MAPE; the
  iterative rules (``ga``/``gd``/``rl``/``npo``, and SalUn) check the target after *every* step
  (``eval_every=1``, up to ``max_steps=60``) rather than every 5th as MAPE's pipeline does: a full-
  parameter ascent at the recipe's learning rate can overshoot within 5 steps, and the finer choice
  can only favour the baselines.
- ``salun``: SalUn. Saliency |∇θ L(D_f)| (mean forget loss) over the same parameters; the top
  ``salun_fraction`` (default 50 %) of entries, ranked globally, form the mask; then ``rl`` (random
  labels on D_f plus D_r) on that mask with the auto number of steps.
- ``scrub``: SCRUB (Kurmanji et al., 2023), teacher–student: the original is a frozen teacher; epochs of
  a max pass on D_f (ascend the distillation KL) and a min pass on the retain sample (KL + cross-entropy),
  Adam at a tenth of the recipe's lr (``scrub_lr_scale``; at the full lr the first max pass already broke
  MiniLM · BBC: forget 33 %, retain 92 %) on the same parameters as the full-parameter rules, the number of
  epochs chosen by the same target, checked after every max pass and every epoch (:func:`scrub`).
- ``ssd``: selective synaptic dampening. Diagonal Fisher on D_f (F_f) and on the retain sample (F_r),
  both per-example (``mape.method.scoring`` convention), over the same parameters; entries with
  F_f > α·F_r are multiplied by min(λ·F_r/F_f, 1); α = 10, λ = 1. No step size (α, λ fixed), so the
  result may miss the forget target; it never increases a parameter's magnitude.
- ``ft``: fine-tune on all of D_r with the training recipe's optimiser (AdamW, lr, batch size, linear
  schedule with warm-up, clipping, dropout on) for ``ft_epochs`` (default 1) epoch, optionally capped at
  ``ft_max_steps``; every parameter the recipe trains may change (embeddings frozen when the recipe
  freezes them). One epoch costs about 1/epochs of a retrain.
- ``l1-sparse``: ``ft`` with an L1 penalty γ_t·‖W‖₁ on the weight matrices, applied as a proximal
  (soft-threshold) step after each optimiser step, |w| ← max(|w| − lr_t·γ_t, 0), with γ_t decaying
  linearly from ``l1_strength`` (default 0.5) to 0 over the run (Jia et al., 2023).
- ``retrain``: the gold standard (:func:`mape.run.unlearn.retrain_model`, cached per forget set); its
  time is the recorded training time of the cached model.
"""

from __future__ import annotations

import copy
import re
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as Fn

from mape.base.errors import MapeError
from mape.data.forget import ForgetSet
from mape.evaluation.baseline_rules import SCRUB_T, layer_params, salun_mask, scrub, ssd_dampen
from mape.method.iterative import iterative_update
from mape.method.models import Encoded, TaskModel
from mape.method.recipe import Recipe
from mape.method.scoring import param_stats
from mape.method.train import embedding_params, train
from mape.method.update import UPDATES, MaskedParams, Target, UpdateReport, model_accuracy, so_direction, so_update
from mape.run.config import Progress

if TYPE_CHECKING:
    from mape.run.targets import RequestSamples


MAPE_OBJECTIVES = ("auto", "mlr", "mlf", "norm", "random", "contrast")
FULL_RULES = UPDATES  # so, ga, gd, rl, npo on all Transformer-layer parameters
BASE_METHODS = ("mape", "mape-mlf", "mape-norm", "mape-random", "ft", "so", "ga", "gd", "rl", "npo",
                "salun", "ssd", "scrub", "l1-sparse", "retrain")
DEFAULT_METHODS = ("mape", "mape-mlf", "mape-norm", "mape-random", "ft", "so", "ga", "gd", "rl", "salun",
                   "ssd", "scrub", "l1-sparse")
_MAPE_RE = re.compile(r"^mape(?:-(?P<obj>[a-z]+))?(?:\+(?P<rule>[a-z]+))?$")


@dataclass(frozen=True)
class MethodSpec:
    name: str
    kind: str                 # mape | full | salun | ssd | scrub | ft | l1-sparse | retrain
    objective: str | None = None
    update: str | None = None


def valid_methods_text() -> str:
    return (", ".join(BASE_METHODS) + f"; or mape+RULE / mape-OBJECTIVE+RULE with RULE in {', '.join(UPDATES)} "
            f"and OBJECTIVE in {', '.join(MAPE_OBJECTIVES)} (e.g. mape+ga)")


def parse_method(name: str) -> MethodSpec:
    """A method name as the CLI takes it; :class:`MapeError` listing the valid names otherwise."""
    raw = name
    name = (name or "").strip().lower()
    m = _MAPE_RE.match(name)
    if m:
        obj, rule = m.group("obj") or "auto", m.group("rule") or "so"
        if obj in MAPE_OBJECTIVES and rule in UPDATES:
            canonical = "mape" + ("" if obj == "auto" else f"-{obj}") + ("" if rule == "so" else f"+{rule}")
            return MethodSpec(canonical, "mape", obj, rule)
    elif name in FULL_RULES:
        return MethodSpec(name, "full", None, name)
    elif name in ("salun", "ssd", "scrub", "ft", "l1-sparse", "retrain"):
        return MethodSpec(name, name, None, "rl" if name == "salun" else None)
    raise MapeError(f"Unknown method {raw!r}; valid methods: {valid_methods_text()}.")


def parse_methods(text: str | list[str]) -> list[MethodSpec]:
    """A comma-separated list (or a list) of method names, de-duplicated in order."""
    names = [t.strip() for t in (text.split(",") if isinstance(text, str) else text)]
    names = [t for t in names if t]
    if not names:
        raise MapeError(f"No methods given; valid methods: {valid_methods_text()}.")
    out, seen = [], set()
    for n in names:
        spec = parse_method(n)
        if spec.name not in seen:
            seen.add(spec.name)
            out.append(spec)
    return out


@dataclass
class BaselineConfig:
    sparsity: float = 0.9               # MAPE variants
    retain_sample: int | None = None    # None: 2,048 on a GPU, 512 on a CPU (as unlearn)
    batch_size: int = 32
    tolerance: float = 0.02             # auto step: allowed retain-accuracy drop
    damping: float | None = None        # so: None = the engine's default (UnlearnConfig.damping)
    lr: float | None = None             # iterative rules; None: the recipe's lr
    max_steps: int = 60                 # iterative rules, auto number of steps
    eval_every: int = 1                 # full-parameter iterative rules / SalUn: check after every step
    ft_epochs: int = 1                  # ft / l1-sparse
    ft_max_steps: int | None = None     # cap on ft / l1-sparse optimiser steps (None: whole epochs)
    l1_strength: float = 0.5            # l1-sparse: γ_0 (shrink per step = lr_t·γ_t)
    salun_fraction: float = 0.5         # SalUn: share of parameter entries in the saliency mask
    ssd_alpha: float = 10.0             # SSD selection threshold α
    ssd_lambda: float = 1.0             # SSD dampening constant λ
    scrub_epochs: int = 5               # SCRUB: at most this many max/min epochs (auto: stops at the target)
    scrub_lr_scale: float = 0.1         # SCRUB: Adam lr = this × the recipe's (or --lr); 1.0 overshot (below)

    def validate(self) -> None:
        from mape.run.config import UnlearnConfig

        # the settings shared with the MAPE rows: the engine's own checks (one rule for both)
        shared = dict(sparsity=self.sparsity, retain_sample=self.retain_sample, batch_size=self.batch_size,
                      tolerance=self.tolerance, lr=self.lr)
        UnlearnConfig(**shared, **({} if self.damping is None else {"damping": self.damping})).validate()
        if not 0 < self.salun_fraction <= 1:
            raise MapeError(f"The SalUn fraction must be in (0, 1], got {self.salun_fraction!r}.")
        if self.ssd_alpha <= 0 or self.ssd_lambda <= 0:
            raise MapeError("SSD's alpha and lambda must be positive.")
        if not 0 < self.scrub_lr_scale <= 10:
            raise MapeError(f"The SCRUB lr scale must be in (0, 10], got {self.scrub_lr_scale!r}.")
        if self.ft_epochs < 1 or (self.ft_max_steps is not None and self.ft_max_steps < 1):
            raise MapeError("ft needs at least one epoch and one step.")
        if not isinstance(self.scrub_epochs, int) or self.scrub_epochs < 1:
            raise MapeError(f"SCRUB needs at least one epoch, got {self.scrub_epochs!r}.")
        if self.max_steps < 1 or self.eval_every < 1:
            raise MapeError("max_steps and eval_every must be at least 1.")


@dataclass
class MethodRun:
    """One method applied to one request: the resulting model and what it cost."""
    method: str
    task: TaskModel
    time_s: float
    params_changed: int
    details: dict = field(default_factory=dict)
    metrics: dict | None = None   # already measured (MAPE runs measure themselves)


# --------------------------------------------------------------------------- shared pieces




def full_masks(task: TaskModel) -> dict[torch.nn.Parameter, torch.Tensor]:
    return {p: torch.ones_like(p, dtype=torch.bool) for p in layer_params(task)}


def count_changed(before: torch.nn.Module, after: torch.nn.Module) -> int:
    """Parameter entries that differ between two copies of the same network."""
    total = 0
    with torch.no_grad():
        for p, q in zip(before.parameters(), after.parameters()):
            total += int((p.detach() != q.detach().to(p.device)).sum())
    return total


@dataclass
class _Context:
    forget: ForgetSet
    forget_enc: Encoded
    retain_all: np.ndarray
    retain_enc: Encoded        # the seeded retain sample (gradients / Fisher / retain batches)
    check_f: Encoded
    check_r: Encoded
    samples: RequestSamples    # mape.run.unlearn's samples of this request (its check)
    target: Target | None = None


def _context(ws, forget: ForgetSet, seed: int, config: BaselineConfig, forgotten: np.ndarray) -> _Context:
    """The same samples :func:`mape.run.unlearn.unlearn` draws for this seed."""
    from mape.run.targets import request_samples

    smp = request_samples(ws, forget, forgotten, seed, config.retain_sample)
    return _Context(forget, smp.forget_enc, smp.retain_all, smp.retain_enc, smp.check_f, smp.check_r, smp)


def _evaluator(task: TaskModel, ctx: _Context):
    return lambda: ctx.samples.check(task)


# --------------------------------------------------------------------------- SalUn and SSD








# --------------------------------------------------------------------------- SCRUB







# --------------------------------------------------------------------------- fine-tuning


def finetune(task: TaskModel, data: Encoded, recipe: Recipe, epochs: int = 1, max_steps: int | None = None,
             l1: float = 0.0, seed: int = 0, progress: Progress | None = None, stage: str = "ft") -> int:
    """Fine-tune in place with :func:`mape.method.train.train`'s recipe for ``epochs`` epochs or ``max_steps``
    steps; ``l1`` > 0 adds the proximal L1 step. Returns the number of optimiser steps."""
    return train(task, data, recipe, progress=progress, stage=stage, epochs=epochs, max_steps=max_steps,
                 l1=l1, seed=seed)


def relearn_curve(task: TaskModel, forget_enc: Encoded, steps: int = 5, recipe: Recipe | None = None,
                  max_eval: int | None = 512) -> list[float]:
    """Relearn test: accuracy on D_f before and after each of ``steps`` fine-tuning steps on D_f with
    the recipe's optimiser (AdamW, its lr, weight decay and batch size, constant lr, dropout on).
    Works on a copy; returns ``steps + 1`` accuracies (index 0 = before relearning), measured on D_f
    or, when it is larger than ``max_eval``, on a fixed seeded sample of ``max_eval`` of its examples."""
    recipe = recipe or Recipe()
    eval_enc = forget_enc
    if max_eval is not None and len(forget_enc) > max_eval:
        pick = np.sort(np.random.default_rng(recipe.seed).choice(len(forget_enc), max_eval, replace=False))
        eval_enc = forget_enc.take(pick)
    work = task.clone()
    model, device = work.model, work.device
    frozen = embedding_params(model) if recipe.freeze_embeddings else set()
    params = [p for p in model.parameters() if p not in frozen]
    for p in model.parameters():
        p.requires_grad_(p not in frozen)
    opt = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    torch.manual_seed(recipe.seed)
    curve = [model_accuracy(work, eval_enc)]
    epoch, done = 0, 0
    while done < steps:
        for x, y in forget_enc.batches(recipe.batch_size, device, shuffle_seed=recipe.seed * 1000 + epoch):
            model.train()
            loss = Fn.cross_entropy(work.logits(x).float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            done += 1
            curve.append(model_accuracy(work, eval_enc))
            if done >= steps:
                break
        epoch += 1
    model.eval()
    return curve


# --------------------------------------------------------------------------- retrain


# --------------------------------------------------------------------------- running a method


def run_method(ws, method: str | MethodSpec, forget: ForgetSet, seed: int = 0, config: BaselineConfig | None = None,
               base: TaskModel | None = None, already_forgotten: np.ndarray | None = None,
               progress: Progress | None = None) -> MethodRun:
    """Apply one method to one request on a copy of ``base`` (default: the original model)."""
    spec = method if isinstance(method, MethodSpec) else parse_method(method)
    config = config or BaselineConfig()
    config.validate()
    forgotten = forget.indices if already_forgotten is None else np.union1d(forget.indices, already_forgotten)
    base = base or ws.task
    prog = (lambda s, f, *_: progress(f"{spec.name}: {s}", f)) if progress else None
    if spec.kind == "retrain":
        return _run_retrain(ws, spec, forgotten, prog)
    if spec.kind == "mape":
        return _run_mape(ws, spec, forget, seed, config, base, already_forgotten, prog)
    rule = RULES.get(spec.kind)
    if rule is None:  # pragma: no cover - parse_method guards this
        raise MapeError(f"Unknown method kind {spec.kind!r}")
    ctx = _context(ws, forget, seed, config, forgotten)
    task = base.clone()
    torch.manual_seed(seed)
    run = RuleRun(ws, spec, forget, seed, config, task, ctx, _evaluator(task, ctx), prog)
    t0 = time.perf_counter()
    details = rule(run)
    secs = time.perf_counter() - t0
    return MethodRun(spec.name, task, secs, count_changed(ws.task.model, task.model), details)


def _run_retrain(ws, spec: MethodSpec, forgotten: np.ndarray, prog) -> MethodRun:
    from mape.run.workspace import retrain_model

    task, secs, cached = retrain_model(ws, forgotten, prog)
    return MethodRun(spec.name, task, secs, count_changed(ws.task.model, task.model),
                     {"cached": cached, "epochs": ws.preset.recipe.epochs})


def _run_mape(ws, spec: MethodSpec, forget: ForgetSet, seed: int, config: BaselineConfig, base: TaskModel,
              already_forgotten, prog) -> MethodRun:
    from mape.run.config import UnlearnConfig
    from mape.run.unlearn import unlearn

    extra = {} if config.damping is None else {"damping": config.damping}
    cfg = UnlearnConfig(objective=spec.objective, sparsity=config.sparsity, update=spec.update, seed=seed,
                        retain_sample=config.retain_sample, batch_size=config.batch_size,
                        tolerance=config.tolerance, lr=config.lr, **extra)
    res = unlearn(ws, forget, cfg, prog, base=None if base is ws.task else base, already_forgotten=already_forgotten)
    details = {"search_s": res.timing["search_s"], "update_s": res.timing["update_s"], "step": res.update["step"],
               "reached_target": res.update["reached_target"], "selected_heads": res.selection["selected_heads"],
               "selected_filters": res.selection["selected_filters"], "swaps": res.selection["swaps"],
               "params_selected": res.params["selected"], **res.memory,
               **{k: res.update[k] for k in ("stopped", "step_seconds", "work") if k in res.update}}
    changed = count_changed(ws.task.model, res.unlearned.model)
    return MethodRun(spec.name, res.unlearned, res.timing["total_s"], changed, details,
                     metrics={**res.metrics["unlearned"], "_forget_losses": res.forget_losses.get("unlearned")})


@dataclass
class RuleRun:
    """What a baseline's update rule works with: the request, a private copy ``task`` and its check samples."""
    ws: object
    spec: MethodSpec
    forget: ForgetSet
    seed: int
    config: BaselineConfig
    task: TaskModel
    ctx: object
    evaluate: object
    prog: object

    @property
    def lr(self) -> float:
        return self.config.lr or self.ws.preset.recipe.lr

    def target(self, details: dict) -> Target:
        """The forget target from the copy's start (as MAPE's, DESIGN.md §6), recorded in ``details``."""
        from mape.run.targets import start_target

        start = self.evaluate()
        target = start_target(self.ws, self.forget, start, self.ctx.check_r, self.config.tolerance, self.seed)
        details["forget_target"] = target.to_json()
        return target


def _masked_rule(r: RuleRun) -> dict:
    """A published rule (so, ga, gd, rl, npo) on every layer parameter ("full") or on SalUn's saliency mask."""
    details: dict = {}
    config, task, ctx = r.config, r.task, r.ctx
    if r.spec.kind == "full":
        masks = full_masks(task)
    else:
        masks = salun_mask(task, ctx.forget_enc, config.salun_fraction, config.batch_size)
        details["mask_entries"] = int(sum(int(m.sum()) for m in masks.values()))
        details["mask_fraction"] = config.salun_fraction
    mp = MaskedParams(masks)
    target = r.target(details)
    if r.spec.update == "so":
        from mape.run.config import UnlearnConfig

        params = list(mp.masks)
        grad_f = param_stats(task, ctx.forget_enc, params, "grad", config.batch_size)
        fisher_r = param_stats(task, ctx.retain_enc, params, "fisher", config.batch_size)
        damping = UnlearnConfig().damping if config.damping is None else config.damping
        details["damping"] = damping
        direction = so_direction(mp, grad_f, fisher_r, damping)
        del grad_f, fisher_r
        report: UpdateReport = so_update(task, mp, direction, "auto", r.evaluate, target, progress=r.prog)
    else:
        report = iterative_update(task, r.spec.update, mp, ctx.forget_enc, ctx.retain_enc, "auto", r.evaluate, target,
                                  lr=r.lr, batch_size=config.batch_size, seed=r.seed, max_steps=config.max_steps,
                                  eval_every=config.eval_every, progress=r.prog)
    details.update({"rule": report.rule, "step": report.step, "reached_target": report.reached_target,
                    "params_selected": mp.count, "trials": len(report.trials)})
    return details


def _scrub_rule(r: RuleRun) -> dict:
    details: dict = {}
    target = r.target(details)
    scrub_lr = r.lr * r.config.scrub_lr_scale
    report = scrub(r.task, r.ctx.forget_enc, r.ctx.retain_enc, r.evaluate, target, lr=scrub_lr,
                   batch_size=r.config.batch_size, seed=r.seed, max_epochs=r.config.scrub_epochs, progress=r.prog)
    details.update({"rule": "scrub", "epochs": report.step, "reached_target": report.reached_target,
                    "trials": len(report.trials), "temperature": SCRUB_T, "lr": scrub_lr})
    return details


def _ssd_rule(r: RuleRun) -> dict:
    c = r.config
    return ssd_dampen(r.task, r.ctx.forget_enc, r.ctx.retain_enc, c.ssd_alpha, c.ssd_lambda, c.batch_size).to_json()


def _finetune_rule(r: RuleRun) -> dict:
    """Fine-tuning on the retain set (ft), optionally with an L1 penalty (l1-sparse)."""
    c, recipe, l1 = r.config, r.ws.preset.recipe, r.spec.kind == "l1-sparse"
    data = r.ws.train_enc.take(r.ctx.retain_all)
    steps = finetune(r.task, data, recipe, c.ft_epochs, c.ft_max_steps, l1=c.l1_strength if l1 else 0.0,
                     seed=r.seed, progress=r.prog, stage=r.spec.name)
    details = {"steps": steps, "epochs": c.ft_epochs, "examples": len(data), "lr": recipe.lr}
    if l1:
        details["l1_strength"] = c.l1_strength
    return details


#: the update rule of each method kind besides MAPE and retraining (one entry per kind, as adapters.LAYOUTS)
RULES = {"full": _masked_rule, "salun": _masked_rule, "scrub": _scrub_rule, "ssd": _ssd_rule,
         "ft": _finetune_rule, "l1-sparse": _finetune_rule}


def config_json(config: BaselineConfig) -> dict:
    return copy.deepcopy(asdict(config))
