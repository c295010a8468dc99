"""Counted work (DESIGN.md §7): a run's budget and what it spends, in forward examples, relative to a retrain's."""

from __future__ import annotations

from dataclasses import dataclass

GRAD_WORK = 3  # work of one example's gradient (forward + backward) in forward examples; measured on the CPU


@dataclass
class Work:
    """A budget of model passes in forward-example units (a gradient example counts ``GRAD_WORK``).
    Counted, not timed, so a seed gives the same run on any machine, under any load and on any executor
    (a wall-clock deadline made Ray rows differ from local ones). ``retrain``: the counted work of the
    user's alternative, retraining without D_f (:func:`retrain_work`), which the report states the run's
    share of."""
    budget: float
    spent: float = 0.0
    retrain: float | None = None

    def fits(self, units: float) -> bool:
        return self.spent + units <= self.budget

    def spend(self, units: float) -> None:
        self.spent += units

    def to_json(self) -> dict:
        out = {"budget": round(self.budget, 1), "spent": round(self.spent, 1)}
        if self.retrain:
            out.update(retrain=round(self.retrain, 1), retrain_share=round(self.spent / self.retrain, 4))
        return out


def retrain_work(epochs: int, n_retain: int) -> float:
    """A retrain's counted work: one gradient per retained example per epoch of the preset's recipe."""
    return float(GRAD_WORK * epochs * n_retain)
