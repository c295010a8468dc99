"""Issue 14's acceptance table, computed from saved comparisons instead of read off by hand.

    PYTHONPATH=. python bench/acceptance.py A.json B-seed0.json+B-seed1.json+B-seed2.json ...

Each argument is one table: a saved ``python -m mape compare`` JSON, or several runs of the same comparison
with different seeds joined by ``+`` (merged exactly as the app's "Open saved comparison" merges them).
For each table it prints MAPE's mean gap to retrain against the original's, MAPE's rank among the methods
of the table (gap means, smallest first), the best other method, on how many seeds MAPE's gap is below the
best other method's on that seed, MAPE's MIA against retrain's, and for a whole class MAPE's forget accuracy
per seed. The last lines count the tables on which each acceptance line holds.
"""

from __future__ import annotations

import sys

from mape.base.errors import MapeError
from mape.evaluation.compare import CompareResult, open_saved

MIA_POINTS = 10.0  # MAPE's MIA within this many points of retrain's
CLASS_FORGET_PCT = 1.0  # whole class: forget accuracy at most this, every seed
METHOD = "mape"


def _gap(res: CompareResult, name: str) -> float:
    return 100 * res.results[name]["gap_to_retrain"]["mean"]


def _per_seed_gaps(res: CompareResult, name: str) -> list[float]:
    return [100 * run["methods"][name]["gap_to_retrain"] for run in res.runs]


def is_whole_class(res: CompareResult) -> bool:
    """D_f is a whole class: the saved forget set's ``forget_class``, the same signal the engine's target
    (``forget_target``) and metrics (``test_forget_class_acc``) use, not a second parse of the spec."""
    return all(run["forget"].get("forget_class") is not None for run in res.runs)


def table_row(res: CompareResult) -> dict:
    """The acceptance figures of one comparison (all in points / percent)."""
    if METHOD not in res.methods:
        raise MapeError(f"{res.preset} {res.forget}: no '{METHOD}' row in this comparison.")
    ranked = sorted(res.methods, key=lambda name: _gap(res, name))
    others = [name for name in ranked if name != METHOD]
    best_other = others[0] if others else None
    row = {
        "table": f"{res.preset} `{res.forget}`",
        "seeds": list(res.seeds), "methods": len(res.methods),
        "mape_gap": _gap(res, METHOD), "original_gap": _gap(res, "original"),
        "rank": ranked.index(METHOD) + 1, "best_other": best_other,
        "best_other_gap": _gap(res, best_other) if best_other else None,
        "mape_mia": 100 * res.results[METHOD]["mia"]["mean"],
        "retrain_mia": 100 * res.results["retrain"]["mia"]["mean"],
    }
    if best_other:
        mine, theirs = _per_seed_gaps(res, METHOD), _per_seed_gaps(res, best_other)
        row["seeds_below_best_other"] = sum(a < b for a, b in zip(mine, theirs))
    if is_whole_class(res):
        row["class_forget_pct"] = [100 * v for v in res.results[METHOD]["forget_acc"]["values"]]
    return row


def markdown(rows: list[dict]) -> str:
    lines = ["| table | seeds | MAPE gap | original gap | MAPE rank | best other (gap) | seeds MAPE < best other "
             "| MIA MAPE / retrain | whole class: forget % per seed |",
             "|---|---|---:|---:|---:|---|---:|---|---|"]
    for r in rows:
        best = f"{r['best_other']} ({r['best_other_gap']:.2f})" if r["best_other"] else "–"
        below = f"{r['seeds_below_best_other']} of {len(r['seeds'])}" if r["best_other"] else "–"
        forget = " / ".join(f"{v:.2f}" for v in r["class_forget_pct"]) if "class_forget_pct" in r else "–"
        lines.append(f"| {r['table']} | {','.join(map(str, r['seeds']))} | {r['mape_gap']:.2f} | "
                     f"{r['original_gap']:.2f} | {r['rank']} of {r['methods']} | {best} | {below} | "
                     f"{r['mape_mia']:.1f} / {r['retrain_mia']:.1f} | {forget} |")
    return "\n".join(lines)


def verdict(rows: list[dict]) -> list[str]:
    n = len(rows)
    below_original = sum(r["mape_gap"] < r["original_gap"] for r in rows)
    first = sum(r["rank"] == 1 for r in rows)
    mia = sum(abs(r["mape_mia"] - r["retrain_mia"]) <= MIA_POINTS for r in rows)
    classes = [r for r in rows if "class_forget_pct" in r]
    class_ok = sum(max(r["class_forget_pct"]) <= CLASS_FORGET_PCT for r in classes)
    return [f"MAPE gap below the original's: {below_original} of {n} tables",
            f"MAPE smallest gap of its table: {first} of {n} tables",
            f"MAPE MIA within {MIA_POINTS:.0f} points of retrain's: {mia} of {n} tables",
            f"whole class forget accuracy <= {CLASS_FORGET_PCT:.0f} % on every seed: "
            f"{class_ok} of {len(classes)} tables"]


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    try:
        rows = [table_row(open_saved(arg.split("+"))) for arg in argv]
    except MapeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(markdown(rows))
    print()
    print("\n".join(verdict(rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
