"""The words the page and the lessons use for results: percentages, gaps, units and parameters changed, the
share of a retrain's work, and the run summary. One place, so that the words agree with the numbers."""

from __future__ import annotations

import numpy as np


def pct(v) -> str:
    """A rate as the metrics table prints it ("97.5%"; "n/a" when not measured). The run summary and the
    lessons' readings (mape.serving.lessons) print through the same helpers, so the words and the table agree."""
    return "n/a" if v is None or not np.isfinite(float(v)) else f"{100 * float(v):.1f}%"


def gap_pts(g) -> str:
    """An average gap to retrain as the metrics table prints it ("3.2 pts")."""
    return f"{100 * float(g):.1f} pts"


def params_changed_text(params: dict) -> str:
    """'12,345 of 22,713,989 parameters changed (0.05%)', as the run summary prints it."""
    return (f"{params['changed']:,} of {params['total']:,} parameters changed "
            f"({100 * params['changed_share']:.2f}%)")


def units_text(selection: dict) -> str:
    """'7 of 72 attention heads and 921 of 9,216 FFN filters' (the units selected for update)."""
    heads, filters = np.asarray(selection["heads"]), np.asarray(selection["filters"])
    return (f"{int(heads.sum())} of {heads.size} attention heads and {int(filters.sum()):,} of {filters.size:,} "
            "FFN filters")


def retrain_share_pct(update: dict) -> str | None:
    """The share of a retrain's counted work a run used ("12%"), or None when the run did not count it."""
    share = (update.get("work") or {}).get("retrain_share")
    return None if share is None else f"{100 * share:.0f}%"


def _target_lines(update: dict) -> list[str]:
    """What the automatic step size aimed at (absent for a fixed step)."""
    target = update.get("target")
    if not update.get("auto") or not target:
        return []
    dist = target.get("loss_distribution")
    conf = (f" and the loss distribution of unseen examples (median loss {dist['reference_median_loss']:.2g}; "
            f"matched when P(forget loss > unseen loss) is within 50 ± {100 * dist['rank_shift_within']:.0f}%)"
            if dist and dist.get("reference_median_loss") is not None else "")
    lines = [f"**Forget target:** {100 * target['forget_acc']:.1f}% forget accuracy ({target['source']}){conf}, "
             f"retain accuracy at most {100 * target['tolerance']:.0f} points below "
             f"{100 * target['retain_acc']:.1f}% on the check sample."]
    kept = target.get("class_retain")
    if kept:
        lines[0] = lines[0][:-1] + (f"; at most {kept['may_turn_wrong']} of its {kept['examples']} examples of the "
                                    "forget set's class(es) that the original got right may turn wrong.")
    if update.get("stopped") and not no_update(update):
        lines.append(f"**Follow-up steps stopped early:** {update['stopped']}.")
    return lines


def no_update(update: dict) -> bool:
    """The automatic step changed nothing: the forget set already met its target at the start."""
    return bool(update.get("auto")) and update.get("step") == 0 and update.get("params_changed") == 0


def _work_lines(update: dict) -> list[str]:
    """The run's counted work against retraining's (the user's alternative), when the run counted it."""
    work = update.get("work") or {}
    if work.get("retrain_share") is None:
        return []
    return [f"**Work:** {retrain_share_pct(update)} of what retraining without the forget set would cost "
            f"({work['spent']:,.0f} of {work['retrain']:,.0f} counted example passes; a run may use at most half)."]


def summary_markdown(result: dict) -> str:
    sel, p, t, u, f = result["selection"], result["params"], result["timing"], result["update"], result["forget"]
    step = u.get("step")
    if no_update(u):
        step_text = ("none: the forget set already looks the way it would to a model retrained without it, so "
                     "nothing was changed (first, do no harm)")
    elif step is None:
        step_text = "n/a"
    elif u.get("rule") == "so":  # a list when several so steps were taken
        step_text = "η = " + " then ".join(f"{s:.4g}" for s in (step if isinstance(step, list) else [step]))
    else:
        step_text = f"{step} steps"
    lines = [
        f"**Forgot {f['size']} training examples** (`{f['spec']}`"
        + (f", the whole class *{f['forget_class']}*" if f.get("forget_class") is not None else "") + ").",
        f"**Selected for update:** {units_text(sel)}; the greedy refinement made {sel['swaps']} swap(s).",
        f"**Update:** `{u.get('rule')}`, {step_text}"
        + (" (chosen automatically" + (", target reached)" if u.get("reached_target") else ", closest to the target)")
           if u.get("auto") and not no_update(u) else "")
        + f"; {params_changed_text(p)}.",
        *_target_lines(u),
        *_work_lines(u),
        f"**Time:** search {t['search_s']:.1f} s, update {t['update_s']:.1f} s"
        + (f", retrain {t['retrain_s']:.1f} s" if "retrain_s" in t else "") + f" on {result.get('device', '?')}.",
    ]
    return "\n\n".join(lines)
