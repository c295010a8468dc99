"""HTML the sections render: the forget set's class counts, the metrics and predictions tables, inputs,
probability bars, side-by-side panels, and image helpers for galleries."""

from __future__ import annotations

import base64
import html
import io

import numpy as np

from mape.serving.wording import gap_pts, pct


def shorten(text: str, limit: int = 160) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def upscale(img: np.ndarray, factor: int = 3) -> np.ndarray:
    """Nearest-neighbour upscaling of a small uint8 image (crisp pixels in galleries)."""
    img = np.asarray(img)
    return np.repeat(np.repeat(img, factor, axis=0), factor, axis=1)


def image_data_uri(img: np.ndarray, size: int = 56) -> str:
    """A small PNG data URI of a uint8 image (H,W) or (H,W,3), nearest-neighbour scaled to ``size``."""
    from PIL import Image

    arr = np.asarray(img)
    if arr.dtype != np.uint8:
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    im = Image.fromarray(arr).resize((size, size), Image.NEAREST)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


_TABLE = 'style="border-collapse:collapse;width:100%;font-size:0.92em;border:none;margin:0;"'


_TH = 'style="text-align:left;padding:6px 8px;border:none;border-bottom:2px solid #d1d5db;background:#f9fafb;"'


_TD = 'style="padding:6px 8px;border:none;border-bottom:1px solid #e5e7eb;vertical-align:middle;"'


_TDR = 'style="padding:6px 8px;border:none;border-bottom:1px solid #e5e7eb;vertical-align:middle;text-align:right;"'


def class_counts_html(classes: list[str], forget_y: np.ndarray, train_y: np.ndarray, spec: str) -> str:
    """Per-class counts of a forget set (bars relative to the class size)."""
    f = np.bincount(np.asarray(forget_y, dtype=np.int64), minlength=len(classes))
    t = np.bincount(np.asarray(train_y, dtype=np.int64), minlength=len(classes))
    rows = []
    for i, c in enumerate(classes):
        share = f[i] / t[i] if t[i] else 0.0
        bar = (f'<div style="background:#f3f4f6;border-radius:3px;height:10px;width:160px;">'
               f'<div style="background:#e4572e;height:10px;border-radius:3px;width:{100 * share:.1f}%;"></div></div>')
        rows.append(f"<tr style='border:none;'><td {_TD}>{html.escape(str(c))}</td><td {_TDR}>{int(f[i])}</td>"
                    f"<td {_TDR}>{int(t[i])}</td><td {_TD}>{bar}</td></tr>")
    head = (f'<div class="mape-forget-summary" style="margin-bottom:6px;"><b>{int(f.sum())}</b> of {int(t.sum())} '
            f'training examples selected by <code>{html.escape(spec)}</code></div>')
    return (head + f"<table class='mape-counts' {_TABLE}><tr style='border:none;'><th {_TH}>class</th>"
            f"<th {_TH}>to forget</th><th {_TH}>in training set</th><th {_TH}>share of the class</th></tr>"
            f"{''.join(rows)}</table>")


METRIC_COLUMNS = (("forget_acc", "Forget acc. (FA)",
                   "accuracy on the forget set: should fall to what the retrained model scores"),
                  ("retain_acc", "Retain acc. (RA)", "accuracy on a fixed retain sample: should stay high"),
                  ("test_acc", "Test acc. (TA)",
                   "accuracy on the test set (other classes when a whole class is forgotten)"),
                  ("test_forget_class_acc", "TA forgotten class", "test accuracy on the forgotten class"),
                  ("mia", "MIA efficacy", "share of the forget set a membership-inference attack calls 'not a member' "
                          "(mean over 16 resamples of the attack's training data)"),
                  ("asr", "Attack success (ASR)", "backdoor: share of the test examples of the other classes, with the "
                          "trigger added, predicted as the target class; should fall to the retrained model's "
                          "(its false-trigger rate)"),
                  ("forget_acc_true", "FA, true labels", "forget accuracy against the examples' true labels (poisoned "
                                      "or mislabeled data): the retrained model's is what they look like unseen"),
                  ("loss_distance", "Loss distance (KS)",
                   "Kolmogorov–Smirnov distance between the forget set's per-example "
                   "losses under this model and under the retrained one: 0 = the forget set looks to "
                   "this model exactly as to a model that never saw it"))


ROW_NAMES = {"original": "Original (before)", "unlearned": "MAPE (unlearned)", "retrain": "Retrain (gold standard)"}


def metrics_table_html(metrics: dict, gap: dict | None) -> str:
    """Metrics table: one row per model (original, MAPE, any baselines, retrain); with a retrain
    reference each cell also shows the difference to retrain and the last column the average gap."""
    cols = [c for c in METRIC_COLUMNS if any(c[0] in m for m in metrics.values())]
    names = [n for n in metrics if n != "retrain"] + (["retrain"] if "retrain" in metrics else [])
    ref = metrics.get("retrain")
    head = "".join(f'<th {_TH} title="{html.escape(tip)}">{html.escape(label)}</th>' for _, label, tip in cols)
    head += (f'<th {_TH} title="mean |difference to retrain| over FA, RA, TA and MIA; lower is better">'
             f'Avg. gap to retrain ↓</th>')
    body = []
    best = None
    if gap:
        cand = {n: g for n, g in gap.items() if n != "original" and g is not None}
        best = min(cand, key=cand.get) if cand else None
    for n in names:
        row = metrics[n]
        cells = []
        for key, _, _ in cols:
            v = row.get(key)
            extra = ""
            if ref is not None and n != "retrain" and v is not None and ref.get(key) is not None \
                    and np.isfinite(float(v)) and np.isfinite(float(ref[key])):
                d = 100 * (float(v) - float(ref[key]))
                colour = "#15803d" if abs(d) < 2 else ("#b45309" if abs(d) < 10 else "#b91c1c")
                extra = f'<div style="font-size:0.78em;color:{colour};">{d:+.1f} vs retrain</div>'
            cells.append(f'<td {_TDR}><span class="mape-num">{pct(v)}</span>{extra}</td>')
        g = gap.get(n) if gap else None
        if n == "retrain":
            gcell = ('<td style="padding:6px 8px;border:none;border-bottom:1px solid #e5e7eb;text-align:right;'
                     'color:#6b7280;">reference</td>')
        elif g is None:
            gcell = ('<td style="padding:6px 8px;border:none;border-bottom:1px solid #e5e7eb;text-align:right;" '
                     'title="tick “retrain reference” to compute it">—</td>')
        else:
            bg = "#dcfce7" if n == best else "#fef3c7"
            gcell = ('<td class="mape-gap" style="padding:6px 8px;border:none;border-bottom:1px solid #e5e7eb;'
                     f'text-align:right;background:{bg};font-weight:700;">{gap_pts(g)}</td>')
        style = (' style="border:none;background:#f3f4f6;font-style:italic;"' if n == "retrain"
                 else ' style="border:none;"')
        label = ROW_NAMES.get(n, n)
        body.append(f'<tr class="mape-row-{html.escape(n)}"{style}><td {_TD}><b>{html.escape(label)}</b></td>'
                    f'{"".join(cells)}{gcell}</tr>')
    note = ("" if ref is not None else
            '<div style="font-size:0.85em;color:#6b7280;margin-top:6px;">No retrain reference in this run: tick '
            '<b>Retrain reference</b> to train a model without the forget set (the gold standard) and see the gap '
            'to it.</div>')
    return (f"<table class='mape-metrics' {_TABLE}><tr style='border:none;'><th {_TH}>model</th>{head}</tr>"
            f"{''.join(body)}</table>{note}")


def _pred_cell(probs: np.ndarray, true: int | None, classes: list[str]) -> str:
    k = int(np.argmax(probs))
    p = float(probs[k])
    ok = true is None or k == true
    colour = "#15803d" if ok else "#b91c1c"
    mark = "" if true is None else ("✓ " if ok else "✗ ")
    bar = (f'<div style="background:#f3f4f6;border-radius:3px;height:6px;width:90px;margin-top:2px;">'
           f'<div style="background:{colour};height:6px;border-radius:3px;width:{100 * p:.0f}%;"></div></div>')
    ptrue = ("" if true is None or ok
             else f'<div style="font-size:0.78em;color:#6b7280;">p(true) {100 * float(probs[true]):.0f}%</div>')
    return (f'<td {_TD}><span class="mape-pred" style="color:{colour};font-weight:600;">{mark}'
            f'{html.escape(str(classes[k]))}</span> <span style="color:#374151;">{100 * p:.0f}%</span>'
            f'{bar}{ptrue}</td>')


def predictions_html(items: list[dict], classes: list[str], models: list[str], caption: str = "") -> str:
    """Before/after predictions. ``items``: {"index", "input_html", "true", "probs": {model: (C,) array}}."""
    if not items:
        return '<div style="color:#6b7280;">No examples.</div>'
    head = "".join(f"<th {_TH}>{html.escape(ROW_NAMES.get(m, m))}</th>" for m in models)
    rows = []
    for it in items:
        cells = "".join(_pred_cell(np.asarray(it["probs"][m]), it.get("true"), classes) for m in models
                        if m in it["probs"])
        true = "" if it.get("true") is None else html.escape(str(classes[it["true"]]))
        rows.append(f"<tr style='border:none;'><td {_TD}>{it.get('index', '')}</td><td {_TD}>{it['input_html']}</td>"
                    f"<td {_TD}>{true}</td>{cells}</tr>")
    cap = (f'<div style="font-size:0.85em;color:#4b5563;margin-bottom:4px;">{html.escape(caption)}</div>'
           if caption else "")
    return (f"{cap}<table class='mape-preds' {_TABLE}><tr style='border:none;'><th {_TH}>#</th><th {_TH}>input</th>"
            f"<th {_TH}>true label</th>{head}</tr>{''.join(rows)}</table>")


def input_html(x, modality: str) -> str:
    if modality == "image":
        return (f'<img src="{image_data_uri(x)}" width="56" height="56" '
                'style="image-rendering:pixelated;border-radius:3px;" alt="input image">')
    return f'<span title="{html.escape(shorten(x, 600), quote=True)}">{html.escape(shorten(x, 150))}</span>'


def prob_bars_html(classes: list[str], probs: dict[str, np.ndarray], note: str = "") -> str:
    """Full class distributions of one input under several models, side by side."""
    blocks = []
    for m, p in probs.items():
        p = np.asarray(p, dtype=float)
        top = int(np.argmax(p))
        rows = []
        for i, c in enumerate(classes):
            colour = "#e4572e" if i == top else "#9ca3af"
            rows.append(f'<div style="display:flex;align-items:center;gap:6px;margin:2px 0;">'
                        '<span style="width:110px;overflow:hidden;text-overflow:ellipsis;white-space:nowrap;">'
                        f'{html.escape(str(c))}</span>'
                        f'<div style="flex:1;background:#f3f4f6;border-radius:3px;height:12px;min-width:60px;">'
                        f'<div style="background:{colour};height:12px;border-radius:3px;width:{100 * p[i]:.1f}%;">'
                        '</div></div>'
                        f'<span style="width:48px;text-align:right;">{100 * p[i]:.1f}%</span></div>')
        blocks.append('<div class="mape-dist" style="flex:1;min-width:220px;">'
                      '<div style="font-weight:600;margin-bottom:4px;">'
                      f'{html.escape(ROW_NAMES.get(m, m))}: {html.escape(str(classes[top]))}</div>'
                      f'{"".join(rows)}</div>')
    extra = f'<div style="font-size:0.85em;color:#4b5563;margin-top:6px;">{html.escape(note)}</div>' if note else ""
    return f'<div style="display:flex;gap:24px;flex-wrap:wrap;">{"".join(blocks)}</div>{extra}'


def side_by_side_html(parts: list[str]) -> str:
    cols = "".join('<div style="flex:1;min-width:260px;border:1px solid #e5e7eb;border-radius:8px;padding:10px;">'
                   f'{p}</div>' for p in parts)
    return f'<div class="mape-side-by-side" style="display:flex;gap:16px;flex-wrap:wrap;">{cols}</div>'
