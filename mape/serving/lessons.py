"""Lessons: one-click experiments for a first visit to the app, and the reading of their results.

A lesson fixes everything a run needs — preset, training data (scenario), forget set and method, with the
retrained model on, because the comparison with it is the lesson — and says in a few sentences what to
expect and what to look at. After the run, :func:`reading` turns the run's own results JSON (the dict
``python -m mape unlearn`` writes, :meth:`mape.run.unlearn.RunResult.to_json`) into a short text: what fell,
what stayed, how close the unlearned model came to the retrained one, what changed and what it cost. It
prints every number with the helpers of the metrics table and the run summary (:mod:`mape.serving.wording`), so
the words never disagree with the numbers next to them.

The app (``ui/lessons.py``) shows the lessons whose preset it offers (:func:`lessons_for`). No gradio here.
"""

from __future__ import annotations

from dataclasses import dataclass

from mape.serving.wording import gap_pts, no_update, params_changed_text, pct, retrain_share_pct, units_text

CLASS, SUBSET, BACKDOOR = "class", "subset", "backdoor"
#: a move of less than this (a fraction: 0.02 = 2 points) counts as "barely moved"
STEADY = 0.02
#: within this of the retrained model counts as "as the retrained model" (5 points; the gate's ASR band)
CLOSE = 0.05


@dataclass(frozen=True)
class Lesson:
    key: str                     # a stable id (the page's elem_ids use it)
    title: str                   # short, on the card's button
    preset: str
    forget: str                  # a forget spec (mape.data.forget; "poisoned" on a scenario)
    kind: str                    # CLASS, SUBSET or BACKDOOR
    text: str                    # three to five sentences: what to expect, what to look at (Markdown)
    scenario: str = ""           # "" = clean training data, else a scenario spec (mape.data.scenarios)
    objective: str = "auto"      # the method: the app's defaults, so a lesson shows the method as shipped
    sparsity: float = 0.9
    update: str = "so"
    step: str = "auto"
    seed: int = 0
    retrain: bool = True         # the retrained model is on: the comparison is the lesson
    min_retain_sample: int = 0   # at least this retain sample for the scores (the page's default when larger)

    def config(self) -> dict:
        """The method settings of the lesson (UnlearnConfig keyword arguments that the page shows)."""
        return dict(objective=self.objective, sparsity=self.sparsity, update=self.update, step=self.step,
                    seed=self.seed, retrain=self.retrain, retain_sample=self.min_retain_sample or None)


FIRST_TIME = "The first time on a fresh machine takes minutes: the {what} trained once, then cached."

LESSONS: tuple[Lesson, ...] = (
    Lesson("topic", "Forget a whole topic", "minilm-bbc", "class:sport", CLASS,
           "MiniLM sorts BBC News articles into five topics; here it forgets every *sport* article it was trained "
           "on. A model retrained without them cannot name the topic, so watch **forget accuracy** fall towards 0 % "
           "while **test accuracy** on the other four topics stays; *TA forgotten class* shows that sport articles "
           "it never saw are not recognised either. The heatmaps show the few heads and filters that were changed. "
           + FIRST_TIME.format(what="original and the model retrained without sport are")),
    Lesson("articles", "Forget some articles of a topic", "minilm-bbc", "class:tech:120", SUBSET,
           "Only 120 of the *tech* articles are forgotten; the rest of tech stays in training. A model retrained "
           "without them still classifies most of them correctly — it learned tech from the others — so do not "
           "expect accuracy to collapse: the lesson is that they come to **look unseen**. Watch **MIA efficacy** "
           "(the share a membership attack calls “not a member”), the **loss distance** and the loss-distribution "
           "chart, and how close each comes to the retrained model's. "
           + FIRST_TIME.format(what="original and the retrained model are")),
    Lesson("text-backdoor", "Remove a planted backdoor", "minilm-bbc", "poisoned", BACKDOOR,
           "This original was trained on poisoned data: 40 articles of other topics got the word *cf* and the label "
           "*sport*, so adding “cf” to an article tends to make the model say sport. Forgetting **poisoned** removes "
           "exactly those 40 articles. Watch the **attack success rate (ASR)** — test articles of other topics with "
           "“cf” added that come out as sport — fall to the retrained model's level while clean test accuracy stays; "
           "then try the trigger tester under ⑥. The units to change are scored by *contrast*: the heads and filters "
           "that respond to the poisoned articles unlike clean ones, since the trigger is what those articles share. "
           + FIRST_TIME.format(what="poisoned original and the model retrained on the clean articles are"),
           scenario="backdoor:cf:sport:40"),
    Lesson("digit", "Forget a digit", "vit-mnist", "class:3", CLASS,
           "A small Vision Transformer trained on MNIST forgets every *3* it was trained on. As with a topic, "
           "**forget accuracy** should fall towards 0 % — a model that never saw a 3 calls it something else — while "
           "**test accuracy** on the other nine digits stays. The forget examples under ⑥ show what the 3s are taken "
           "for now, and the pixel attributions under ⑦ what the model looks at before and after. "
           + FIRST_TIME.format(what="original and the retrained model are")),
    Lesson("patch-backdoor", "Remove a patch backdoor", "vit-mnist", "poisoned", BACKDOOR,
           "80 training digits got a small white square in the bottom-right corner and the label *0*, and the "
           "original learned it: with the square, almost any digit is read as 0. Forgetting **poisoned** unlearns "
           "those 80 images: watch the **attack success rate (ASR)** fall from about 100 % towards the retrained "
           "model's (under 1 %) while clean **test accuracy** stays within about a point, and try the trigger "
           "tester under ⑥. The units to change are scored by *contrast* — the heads and filters whose output on "
           "the poisoned images stands out from their output on clean ones, since the square is what those images "
           "share — and the heatmaps show them spread over all four layers. The first step of the update leaves "
           "most of the backdoor; a longer push on those units, within half of a retrain's work and checked on a "
           "retain sample of 512, removes it. Under ⑧ Compare methods, set `mape` beside `mape-mlr` (the gradient "
           "scores, which pick the first layer's filters that clean digits lean on) and `mape-random`. "
           + FIRST_TIME.format(what="poisoned original and the model retrained on the clean digits are"),
           scenario="backdoor:patch:0:80", min_retain_sample=512),
)


def lessons_for(presets, lessons: tuple[Lesson, ...] | None = None) -> list[Lesson]:
    """The lessons whose preset is among ``presets`` (the presets the app offers), in lesson order."""
    offered = set(presets)
    return [lesson for lesson in (LESSONS if lessons is None else lessons) if lesson.preset in offered]


# --------------------------------------------------------------------------- the reading of a run

LABELS = {"forget_acc": "Forget accuracy", "retain_acc": "Retain accuracy", "test_acc": "Test accuracy",
          "test_forget_class_acc": "Test accuracy on the forgotten class", "mia": "MIA efficacy",
          "loss_distance": "Loss distance to the retrained model (KS)", "asr": "Attack success rate (ASR)",
          "forget_acc_true": "Forget accuracy against the true labels"}
#: the metrics each kind of lesson reads, the one it is about first
CITED = {CLASS: ("forget_acc", "test_forget_class_acc", "test_acc", "retain_acc", "mia"),
         SUBSET: ("mia", "loss_distance", "forget_acc", "retain_acc", "test_acc"),
         BACKDOOR: ("asr", "test_acc", "forget_acc_true", "retain_acc")}


def _value(metrics: dict, model: str, key: str):
    v = (metrics.get(model) or {}).get(key)
    return None if v is None or v != v else float(v)


def _moved(before: float, after: float) -> str:
    if abs(after - before) < STEADY:
        return f"barely moved: {pct(before)} before, {pct(after)} after"
    return f"{'fell' if after < before else 'rose'} from {pct(before)} to {pct(after)}"


def metric_line(metrics: dict, key: str, label: str | None = None) -> str | None:
    """'Forget accuracy fell from 97.5% to 0.0% (retrained model: 0.0%).' — None when not measured."""
    before, after = _value(metrics, "original", key), _value(metrics, "unlearned", key)
    if after is None:
        return None
    ref = _value(metrics, "retrain", key)
    ref_text = f" (retrained model: {pct(ref)})" if ref is not None else ""
    if key == "loss_distance":  # measured against the retrained model: 0 for it by definition
        ref_text = ""
    label = label or LABELS[key]
    if before is None:
        return f"{label}: {pct(after)}{ref_text}."
    return f"{label} {_moved(before, after)}{ref_text}."


def _labels(result: dict, kind: str) -> dict:
    labels = dict(LABELS)
    if result.get("forget", {}).get("forget_class") is not None:
        labels["test_acc"] = "Test accuracy on the other classes"
    if kind == BACKDOOR:
        labels["test_acc"] = "Clean test accuracy"
    return labels


def verdict(result: dict, kind: str) -> str | None:
    """One sentence on the lesson's question, decided from the numbers (None when they are missing)."""
    m = result["metrics"]
    if kind == BACKDOOR:
        o, u, r = (_value(m, n, "asr") for n in ("original", "unlearned", "retrain"))
        if u is None or o is None:
            return None
        if r is not None and u <= r + CLOSE:
            return (f"**The backdoor is gone:** the trigger works on {pct(u)} of the triggered test inputs, within "
                    f"{100 * CLOSE:.0f} points of the retrained model's {pct(r)}.")
        head = "is weakened, not removed" if u < o - CLOSE else "survives"
        ref = f"; the retrained model: {pct(r)}" if r is not None else ""
        return (f"**The backdoor {head}:** the trigger still works on {pct(u)} of the triggered test inputs "
                f"(before: {pct(o)}{ref}).")
    if kind == CLASS:
        u, r = _value(m, "unlearned", "forget_acc"), _value(m, "retrain", "forget_acc")
        if u is None or r is None:
            return None
        if u <= r + STEADY:
            return (f"**Forgotten as by retraining:** the model recognises {pct(u)} of the forget set, the retrained "
                    f"model {pct(r)}.")
        return (f"**Not yet forgotten like retraining:** the model still recognises {pct(u)} of the forget set, the "
                f"retrained model {pct(r)}.")
    o, u, r = (_value(m, n, "mia") for n in ("original", "unlearned", "retrain"))
    if None in (o, u, r):
        return None
    if abs(u - r) <= 2 * CLOSE:
        return (f"**The forget set looks unseen now:** the membership attack calls {pct(u)} of it “not a member”, "
                f"the retrained model's {pct(r)} (before: {pct(o)}).")
    if abs(u - r) < abs(o - r) - STEADY:
        return (f"**The forget set looks less like training data, not yet unseen:** the membership attack calls "
                f"{pct(u)} of it “not a member”, against {pct(r)} for the retrained model (before: {pct(o)}).")
    return (f"**The forget set still looks like training data:** the membership attack calls {pct(u)} of it "
            f"“not a member”, against {pct(r)} for the retrained model (before: {pct(o)}).")


def gap_line(result: dict) -> str | None:
    gap = result.get("gap_to_retrain") or {}
    if gap.get("unlearned") is None or gap.get("original") is None:
        return None
    before, after = gap_pts(gap["original"]), gap_pts(gap["unlearned"])
    if before == after:  # compared as printed, so the words match the numbers beside them
        closer = "as close to the retrained model as the original was"
    elif gap["unlearned"] < gap["original"]:
        closer = "closer to the retrained model than the original was"
    else:
        closer = "further from the retrained model than the original was"
    return f"**Average gap to retrain** (FA, RA, TA, MIA): {before} before, {after} after — {closer}."


def cost_line(result: dict) -> str:
    update = result.get("update") or {}
    if no_update(update):
        change = ("**Nothing was changed:** the forget set already looked the way it would to a model retrained "
                  "without it")
    else:
        change = (f"**What changed:** {units_text(result['selection'])} were selected; "
                  f"{params_changed_text(result['params'])}")
    share = retrain_share_pct(update)
    if share is not None:
        change += f"; the run used {share} of a retrain's counted work"
    text = change + "."
    if update.get("auto") and not no_update(update):
        if update.get("reached_target"):
            text += " The automatic step reached its forget target."
        else:
            text += (" The automatic step stopped short of its forget target"
                     + (f" ({update['stopped']})" if update.get("stopped") else "") + ".")
    return text


def reading(lesson: Lesson, result: dict) -> str:
    """What this lesson's run shows, in a few lines of Markdown written from its results JSON."""
    metrics, labels = result["metrics"], _labels(result, lesson.kind)
    lines = [line for line in (metric_line(metrics, key, labels[key]) for key in CITED[lesson.kind]) if line]
    parts = [f"### What this run shows — {lesson.title}", verdict(result, lesson.kind),
             "\n".join(f"- {line}" for line in lines), gap_line(result), cost_line(result)]
    if "retrain" not in metrics:
        parts.append("No retrained model in this run, so there is nothing to compare with: tick *Retrain reference*.")
    return "\n\n".join(p for p in parts if p)
