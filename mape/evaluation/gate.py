"""The quality gate: canonical full-size cases, each run on the real presets and checked against its band.

    python -m mape gate                        # every case, seed 0; exit 1 when a case is out of its band
    python -m mape gate --cases bbc-sport,mnist-3 --out gate.json

A decision rule of the automatic step that holds on one table and breaks another is a regression (DESIGN.md §9,
"Quality gate"); the tests run tiny models and cannot see it, so ``.ci/run`` runs this after them. The cases
and their bands are the table :data:`CASES` below, one line each, so that changing a band is a visible line in
a diff. Each case is one ``unlearn`` run with the default method (MAPE, objective ``auto`` — ``mlr``, or
``contrast`` on the backdoor cases' poisoned examples — update ``so``, step ``auto``) at seed 0; originals
(one per preset and scenario) and retrained models are trained on first use, cached under ``MAPE_CACHE`` and
shared between cases. Every case also carries the budget band of every run: the whole run (search, update and
follow-ups) stays within half of a retrain's counted work (``update.work.retrain_share``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

from mape.base.errors import MapeError

Run = dict  # a run's results JSON (mape.run.unlearn.RunResult.to_json)


@dataclass(frozen=True)
class Band:
    """One acceptance bound on a run: ``measure(run)`` compared (``op``) with ``bound(run)``."""
    label: str                        # what is measured, e.g. "forget acc"
    op: str                           # "<=" or ">="
    measure: Callable[[Run], float]
    bound: Callable[[Run], float]
    bound_text: Callable[[Run], str]  # the bound in words, with the numbers it is made of
    percent: bool = True              # shown ×100

    def holds(self, run: Run) -> bool:
        value, bound = self.measure(run), self.bound(run)
        if value is None or bound is None or value != value or bound != bound:  # not measured (None / NaN)
            return False
        return value <= bound + 1e-12 if self.op == "<=" else value >= bound - 1e-12

    def shown(self, value) -> str:
        if value is None or value != value:
            return "n/a"
        if isinstance(value, bool):
            return "yes" if value else "no"
        return f"{100 * value:.1f} %" if self.percent else f"{value:.3f}"


def _m(model: str, metric: str) -> Callable[[Run], float]:
    return lambda run: run["metrics"].get(model, {}).get(metric)


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def at_most(metric: str, value: float, label: str | None = None) -> Band:
    """The unlearned model's ``metric`` at most ``value``."""
    return Band(label or metric, "<=", _m("unlearned", metric), lambda run: value,
                lambda run: f"≤ {_pct(value)} %")


def at_least_original(metric: str, points: float, label: str | None = None) -> Band:
    """The unlearned model's ``metric`` at least the original's minus ``points`` (a fraction: 0.01 = 1 point)."""
    orig = _m("original", metric)
    return Band(label or metric, ">=", _m("unlearned", metric), lambda run: orig(run) - points,
                lambda run: f"≥ original {_pct(orig(run))} − {_pct(points)}")


def within_retrain(metric: str, points: float, label: str | None = None) -> Band:
    """|unlearned − retrain| on ``metric`` at most ``points``."""
    ret = _m("retrain", metric)
    return Band(label or f"|{metric} − retrain's|", "<=",
                lambda run: abs(_m("unlearned", metric)(run) - ret(run)), lambda run: points,
                lambda run: f"≤ {_pct(points)} (retrain {_pct(ret(run))})")


def gap_share(share: float) -> Band:
    """The gap to retrain at most ``share`` of the original's gap."""
    orig = lambda run: run["gap_to_retrain"]["original"]  # noqa: E731
    return Band("gap to retrain", "<=", lambda run: run["gap_to_retrain"]["unlearned"],
                lambda run: share * orig(run), lambda run: f"≤ {share:g} × original's {_pct(orig(run))}")


def target_reached() -> Band:
    """The automatic step reached its forget target."""
    return Band("target reached", ">=", lambda run: bool(run["update"].get("reached_target")), lambda run: True,
                lambda run: "yes")


def retrain_share(at_most_share: float = 0.5) -> Band:
    """The run's counted work (search, update, follow-ups) at most this share of a retrain's."""
    return Band("share of a retrain's work", "<=", lambda run: run["update"].get("work", {}).get("retrain_share"),
                lambda run: at_most_share, lambda run: f"≤ {at_most_share:g}", percent=False)


@dataclass(frozen=True)
class Case:
    name: str
    preset: str
    forget: str
    bands: tuple[Band, ...]
    scenario: str | None = None
    retrain: bool = False             # the bands read the retrained model
    known_short: str | None = None    # printed ✗ with its numbers but does not fail the gate (say why)
    train_limit: int | None = None    # the canonical cases train on every example; tests use small ones

    @property
    def title(self) -> str:
        return f"{self.preset}{' ' + self.scenario if self.scenario else ''} · {self.forget}"


WITHIN_BUDGET = retrain_share(0.5)
CASES: tuple[Case, ...] = (
    Case("bbc-sport", "minilm-bbc", "class:sport",
         (at_most("forget_acc", 0.01), at_least_original("test_acc", 0.01, "test acc (other classes)"), WITHIN_BUDGET)),
    Case("mnist-3", "vit-mnist", "class:3",
         (at_most("forget_acc", 0.01), at_least_original("test_acc", 0.01, "test acc (other classes)"), WITHIN_BUDGET)),
    Case("bbc-tech120", "minilm-bbc", "class:tech:120",
         (gap_share(0.25), within_retrain("mia", 0.10, "|MIA − retrain's|"), WITHIN_BUDGET), retrain=True),
    Case("bbc-backdoor", "minilm-bbc", "poisoned",
         (at_most("asr", 0.05, "ASR"), at_least_original("test_acc", 0.01, "clean test acc"), WITHIN_BUDGET),
         scenario="backdoor:cf:sport:40"),
    Case("mnist-backdoor", "vit-mnist", "poisoned",
         (at_most("asr", 0.05, "ASR"), at_least_original("test_acc", 0.01, "clean test acc"), WITHIN_BUDGET),
         scenario="backdoor:patch:0:80"),
    Case("bbc-random32", "minilm-bbc", "random:32",
         (target_reached(), at_least_original("test_acc", 0.01), WITHIN_BUDGET)),
)


@dataclass
class CaseResult:
    case: str
    title: str
    rows: list[dict]              # {"measured", "value", "band", "ok"}
    seconds: float
    known_short: str | None = None
    error: str | None = None
    run: dict = field(default_factory=dict, repr=False)

    @property
    def ok(self) -> bool:
        return self.error is None and all(r["ok"] for r in self.rows)

    @property
    def fails_gate(self) -> bool:
        return not self.ok and self.known_short is None

    def to_json(self) -> dict:
        return {"case": self.case, "title": self.title, "ok": self.ok, "rows": self.rows,
                "seconds": round(self.seconds, 1), "known_short": self.known_short, "error": self.error,
                "run": self.run}


def judge(case: Case, run: Run) -> list[dict]:
    """Each band of ``case`` on one run: what was measured, its value, the band, and whether it holds."""
    rows = []
    for band in case.bands:
        try:
            value, text, ok = band.measure(run), band.bound_text(run), band.holds(run)
        except (KeyError, TypeError):  # the run lacks what the band reads (e.g. no retrained model)
            value, text, ok = None, "not measured", False
        rows.append({"measured": band.label, "value": value, "shown": band.shown(value), "band": text, "ok": ok})
    return rows


def select_cases(names: str | None) -> list[Case]:
    if not names:
        return list(CASES)
    known = {c.name: c for c in CASES}
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in known]
    if unknown or not wanted:
        raise MapeError(f"Unknown gate case(s) {', '.join(unknown) or '(none given)'}; the cases are "
                        f"{', '.join(known)}.")
    return [known[n] for n in wanted]


def run_case(case: Case, seed: int = 0, workspaces: dict | None = None, progress=None,
             device: str = "auto") -> CaseResult:
    """One case: prepare (or reuse) its workspace, run MAPE with the default configuration, judge the bands.
    The seconds include training what the cache lacks (originals and retrained models)."""
    from mape.run.config import UnlearnConfig
    from mape.run.unlearn import unlearn
    from mape.run.workspace import prepare

    workspaces = {} if workspaces is None else workspaces
    t0 = time.perf_counter()
    try:
        key = (case.preset, case.scenario, case.train_limit)
        if key not in workspaces:
            workspaces[key] = prepare(case.preset, train_limit=case.train_limit, device=device,
                                      scenario=case.scenario, progress=progress)
        result = unlearn(workspaces[key], case.forget, UnlearnConfig(seed=seed, retrain=case.retrain), progress)
        run = result.to_json()
    except MapeError as exc:
        return CaseResult(case.name, case.title, [], time.perf_counter() - t0, case.known_short, error=str(exc))
    return CaseResult(case.name, case.title, judge(case, run), time.perf_counter() - t0, case.known_short, run=run)


def table_lines(results: list[CaseResult]) -> list[str]:
    """One markdown table: case, what was measured, the value, the band, ✓/✗, seconds."""
    lines = ["| case | measured | value | band | ok | seconds |", "|---|---|---:|---|:-:|---:|"]
    for res in results:
        name = res.title + (f" (known short: {res.known_short})" if res.known_short else "")
        if res.error:
            lines.append(f"| {name} | error | | {res.error} | ✗ | {res.seconds:.0f} |")
            continue
        for i, row in enumerate(res.rows):
            lines.append(f"| {name if i == 0 else ''} | {row['measured']} | {row['shown']} | {row['band']} | "
                         f"{'✓' if row['ok'] else '✗'} | {f'{res.seconds:.0f}' if i == 0 else ''} |")
    return lines


def run_gate(cases: list[Case], seed: int = 0, progress=None, device: str = "auto",
             on_case: Callable[[CaseResult], None] | None = None) -> list[CaseResult]:
    workspaces: dict = {}
    results = []
    for case in cases:
        res = run_case(case, seed, workspaces, progress, device)
        results.append(res)
        if on_case:
            on_case(res)
    return results


def gate_passes(results: list[CaseResult]) -> bool:
    return not any(r.fails_gate for r in results)
