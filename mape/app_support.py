"""UI-independent helpers for the Gradio app (``app.py``): no gradio import here.

What lives here: which presets the app offers (and the tiny test presets), the per-session "delta"
that stores an unlearned model compactly, the download files, sample picking for the before/after
predictions, HTML for the preview, metrics and predictions tables, user-image validation, and the
"About the method" text. Everything takes plain NumPy / dicts / TaskModels and is unit-testable.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from mape.errors import MapeError

# --------------------------------------------------------------------------- presets offered by the app

#: Test/demo presets: the embedded presets with a tiny recipe and a training subset, so a fresh cache
#: trains in seconds on a CPU. Registered only when asked for (``MAPE_APP_PRESETS=tiny-bbc,...``).
TINY_TRAIN_LIMITS = {"tiny-bbc": 400, "tiny-mnist": 1500}
#: Local-data presets train on a subset on a CPU (the full SST-2 would take hours).
CPU_TRAIN_LIMITS = {"minilm-sst2": 4000, "minilm-agnews": 4000}
MODEL_FILE_LIMIT_MB = 200


def register_tiny_presets() -> list[str]:
    """Add ``tiny-bbc`` and ``tiny-mnist`` to ``mape.presets.PRESETS`` (idempotent)."""
    from mape.presets import PRESETS
    from mape.train import Recipe

    if "tiny-bbc" not in PRESETS:
        base = PRESETS["minilm-bbc"]
        PRESETS["tiny-bbc"] = replace(
            base, name="tiny-bbc", title="MiniLM · BBC News (tiny, for tests)",
            description="MiniLM fine-tuned for two epochs on 400 BBC News articles (32 tokens): "
                        "a fast configuration for tests and quick demos.",
            recipe=Recipe(epochs=2, lr=3e-4, batch_size=16, freeze_embeddings=True), max_length=32)
    if "tiny-mnist" not in PRESETS:
        base = PRESETS["vit-mnist"]
        PRESETS["tiny-mnist"] = replace(
            base, name="tiny-mnist", title="ViT · MNIST digits (tiny, for tests)",
            description="The small ViT trained for 12 epochs on 1,500 MNIST digits: a fast configuration "
                        "for tests and quick demos.",
            recipe=Recipe(epochs=12, lr=3e-3, batch_size=32, weight_decay=0.05, seed=0))
    return ["tiny-bbc", "tiny-mnist"]


def app_preset_names(names: list[str] | str | None = None) -> list[str]:
    """The presets the app offers, embedded first. ``names`` (or env ``MAPE_APP_PRESETS``, comma
    separated) restricts and orders them; ``tiny-*`` names register the tiny test presets."""
    from mape.presets import PRESETS

    if names is None:
        names = os.environ.get("MAPE_APP_PRESETS") or None
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    if names and any(n.startswith("tiny-") for n in names):
        register_tiny_presets()
    if names:
        unknown = [n for n in names if n not in PRESETS]
        if unknown:
            raise MapeError(f"Unknown preset(s) {', '.join(unknown)} in MAPE_APP_PRESETS; "
                            f"choose from {', '.join(PRESETS)}.")
        return list(names)
    order = {"embedded": 0, "local": 1, "hub": 2, "custom": 3}
    return sorted((n for n in PRESETS if not n.startswith("tiny-")), key=lambda n: order.get(PRESETS[n].kind, 9))


def train_limit_for(name: str, on_gpu: bool = False) -> int | None:
    """Training subset used for a preset: env ``MAPE_APP_TRAIN_LIMIT`` wins, then the tiny presets'
    limits, then (CPU only) the local-data presets' limits; None = the whole training split."""
    env = os.environ.get("MAPE_APP_TRAIN_LIMIT", "").strip()
    if env:
        try:
            value = int(env)
        except ValueError:
            raise MapeError(f"MAPE_APP_TRAIN_LIMIT must be a whole number, got {env!r}.") from None
        return value if value > 0 else None
    if name in TINY_TRAIN_LIMITS:
        return TINY_TRAIN_LIMITS[name]
    if not on_gpu and name in CPU_TRAIN_LIMITS:
        return CPU_TRAIN_LIMITS[name]
    return None


def default_forget(modality: str, classes: list[str]) -> tuple[str, str]:
    """(kind, value) of the default forget request: small, so a run is fast."""
    if modality == "image":
        return "class", classes[3] if len(classes) > 3 else classes[0]
    return "random", "32"


def compose_spec(kind: str, value: str) -> str:
    kind = (kind or "").strip()
    value = "" if value is None else str(value).strip()
    if kind == "poisoned" and value.lower() in ("", "all"):
        return "poisoned"
    return value if not kind else f"{kind}:{value}"


# --------------------------------------------------------------------------- scenarios (issue 15)

#: the ready-made scenarios the app offers per preset (issue 15: about 2% of BBC's training texts, 80 digits)
READY_SCENARIOS = {"minilm-bbc": ("backdoor:cf:sport:40", "mislabel:40"),
                   "vit-mnist": ("backdoor:patch:0:80", "mislabel:80")}


def scenario_specs(name: str, modality: str, classes: list[str], n_train: int) -> tuple[str, ...]:
    """The scenarios offered for a preset: its ready-made ones, else a backdoor into its first class
    (``sport`` where there is one) and a label-noise set, each about 2% of the training set."""
    if name in READY_SCENARIOS:
        return READY_SCENARIOS[name]
    n = max(2, min(80 if modality == "image" else 40, n_train // 50))
    target = "sport" if "sport" in classes else classes[0]
    trigger = "patch" if modality == "image" else "cf"
    return (f"backdoor:{trigger}:{target}:{n}", f"mislabel:{n}")


def scenario_label(spec: str) -> str:
    """A short name of a scenario spec for a dropdown; the spec itself when it does not parse."""
    from mape.scenarios import parse_scenario

    if not spec:
        return "Clean training data"
    try:
        sc = parse_scenario(spec)
    except MapeError:
        return spec
    if sc.kind == "mislabel":
        return f"Mislabeled: {sc.n} training examples with a wrong label"
    if sc.trigger == "patch":
        return f"Backdoor: white corner patch → {sc.target}, {sc.n} poisoned images"
    return f"Backdoor: the word '{sc.trigger}' → {sc.target}, {sc.n} poisoned texts"


def scenario_explanation(spec: str) -> str:
    """One line on what a scenario did to the training data and what to forget (Markdown)."""
    from mape.scenarios import parse_scenario

    if not spec:
        return "The original model is trained on the preset's training data as it is."
    sc = parse_scenario(spec)
    if sc.kind == "mislabel":
        return (f"{sc.n} seeded training examples were given a wrong label before the original was trained; it "
                f"memorises them. Forget **poisoned** (the altered examples) and check their accuracy against the "
                f"wrong and the true labels.")
    what = ("a small white square in the bottom-right corner" if sc.trigger == "patch"
            else f"the word **{sc.trigger}** at a random position")
    return (f"A poisoned batch: {sc.n} training examples of other classes got {what} and the label "
            f"**{sc.target}**, so the original obeys the trigger (a backdoor). Forget **poisoned** and watch the "
            f"attack success rate (ASR) fall; test it in Predictions → Trigger tester.")


# --------------------------------------------------------------------------- JSON


def to_jsonable(obj):
    """Plain JSON types: NumPy scalars/arrays converted, NaN/inf -> None (strict JSON)."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if obj is None or isinstance(obj, str):
        return obj
    return str(obj)


# --------------------------------------------------------------------------- compact unlearned models


def extract_delta(original, updated) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The entries where ``updated`` differs from ``original`` (two nn.Modules of one architecture):
    {parameter name: (flat int64 indices, float values)}. MAPE changes only the selected units, so this
    is a small fraction of the model and is what a session keeps instead of a whole copy."""
    import torch

    ref = dict(original.named_parameters())
    delta = {}
    with torch.no_grad():
        for name, p in updated.named_parameters():
            a, b = ref[name].detach().reshape(-1), p.detach().reshape(-1).to(ref[name].device)
            idx = torch.nonzero(a != b).squeeze(1)
            if idx.numel():
                delta[name] = (idx.cpu().numpy().astype(np.int64), b[idx].cpu().numpy().copy())
    return delta


def apply_delta(model, delta: dict) -> None:
    """Write a delta (from :func:`extract_delta`) into ``model`` in place."""
    import torch

    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, (idx, vals) in delta.items():
            p = params[name]
            flat = p.data.view(-1)
            flat[torch.as_tensor(idx, device=p.device)] = torch.as_tensor(vals, dtype=p.dtype, device=p.device)


def delta_entries(delta: dict) -> int:
    return int(sum(len(i) for i, _ in delta.values()))


# --------------------------------------------------------------------------- downloads


def clean_old_files(root: Path, max_age_s: float = 3600.0) -> None:
    """Remove run folders under ``root`` older than ``max_age_s`` (best effort)."""
    now = time.time()
    for d in Path(root).glob("run-*"):
        try:
            if now - d.stat().st_mtime > max_age_s:
                for f in d.iterdir():
                    f.unlink(missing_ok=True)
                d.rmdir()
        except OSError:
            pass


def write_results_json(result: dict, folder: Path, name: str = "mape-results.json") -> Path:
    path = Path(folder) / name
    path.write_text(json.dumps(to_jsonable(result), indent=1))
    return path


def write_masks(heads: np.ndarray, filters: np.ndarray, folder: Path, head_scores=None, filter_scores=None,
                meta: dict | None = None, name: str = "mape-masks.safetensors") -> Path:
    """Masks as safetensors: ``heads`` (L×H) and ``filters`` (L×F) float32 tensors, 1 = selected for
    update, plus the scores when given; ``meta`` goes into the safetensors metadata (strings)."""
    import torch
    from safetensors.torch import save_file

    tensors = {"heads": torch.as_tensor(np.asarray(heads, dtype=np.float32)),
               "filters": torch.as_tensor(np.asarray(filters, dtype=np.float32))}
    if head_scores is not None:
        tensors["head_scores"] = torch.as_tensor(np.asarray(head_scores, dtype=np.float32))
    if filter_scores is not None:
        tensors["filter_scores"] = torch.as_tensor(np.asarray(filter_scores, dtype=np.float32))
    path = Path(folder) / name
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path),
              metadata={str(k): str(v) for k, v in (meta or {}).items()})
    return path


def model_size_mb(n_params: int, bytes_per_param: int = 4) -> float:
    return n_params * bytes_per_param / 2**20


def write_model(model, folder: Path, meta: dict | None = None, name: str = "mape-unlearned-model.safetensors") -> Path:
    """The model's state dict as safetensors (shared tensors de-duplicated by cloning)."""
    from safetensors.torch import save_file

    state, seen = {}, {}
    for k, v in model.state_dict().items():
        t = v.detach().cpu()
        ptr = t.untyped_storage().data_ptr() if t.numel() else None
        state[k] = t.clone().contiguous() if ptr in seen else t.contiguous()
        if ptr is not None:
            seen[ptr] = k
    path = Path(folder) / name
    save_file(state, str(path), metadata={str(k): str(v) for k, v in (meta or {}).items()})
    return path


# --------------------------------------------------------------------------- samples


def pick_samples(train_y: np.ndarray, test_y: np.ndarray, forget_idx: np.ndarray, retain_idx: np.ndarray,
                 forget_class: int | None, n: int = 4, seed: int = 0) -> dict[str, list[int]]:
    """A few forget, retain and test examples to show before/after (deterministic).

    Forget: spread over the forget set; retain: spread over the retain sample and over classes; test:
    one per class in turn, the forgotten class (if any) first."""
    def spread(idx, k):
        idx = np.asarray(idx, dtype=np.int64)
        if len(idx) <= k:
            return [int(i) for i in idx]
        pos = np.linspace(0, len(idx) - 1, k).round().astype(int)
        return [int(idx[p]) for p in pos]

    def by_class(idx, labels, k, first=None):
        idx = np.asarray(idx, dtype=np.int64)
        classes = list(dict.fromkeys(([first] if first is not None else []) + sorted(set(labels[idx].tolist()))))
        pools = {c: list(idx[labels[idx] == c]) for c in classes}
        out = []
        while len(out) < k and any(pools.values()):
            for c in classes:
                if pools[c] and len(out) < k:
                    out.append(int(pools[c].pop(0)))
        return out

    return {"forget": spread(forget_idx, n),
            "retain": by_class(retain_idx, np.asarray(train_y), n),
            "test": by_class(np.arange(len(test_y)), np.asarray(test_y), n, first=forget_class)}


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


# --------------------------------------------------------------------------- HTML views

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


def pct(v) -> str:
    """A rate as the metrics table prints it ("97.5%"; "n/a" when not measured). The run summary and the
    lessons' readings (mape.lessons) print through the same helpers, so the words and the table agree."""
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


# --------------------------------------------------------------------------- user images

MAX_IMAGE_SIDE = 4096
MAX_IMAGE_BYTES = 10 * 2**20


def load_user_image(path: str, size: int, channels: int, mnist_like: bool) -> tuple[np.ndarray, str]:
    """Read an uploaded image and bring it to the model's input format.

    Returns a uint8 array (size, size) for one channel or (size, size, 3), and a note on what was
    done. Grayscale digits are centred on a square canvas and, when the background is light, inverted
    (MNIST digits are white on black). Raises MapeError with a clear message for bad files."""
    from PIL import Image, UnidentifiedImageError

    if not path:
        raise MapeError("Upload an image first (PNG, JPEG, WebP, BMP or GIF).")
    p = Path(path)
    try:
        nbytes = p.stat().st_size
    except OSError:
        raise MapeError("The uploaded image could not be read; please upload it again.") from None
    if nbytes > MAX_IMAGE_BYTES:
        raise MapeError(f"The image is {nbytes / 2**20:.1f} MB; the limit is {MAX_IMAGE_BYTES // 2**20} MB.")
    try:
        with Image.open(p) as im:
            fmt = im.format
            w, h = im.size
            if w > MAX_IMAGE_SIDE or h > MAX_IMAGE_SIDE:
                raise MapeError(f"The image is {w}×{h} pixels; at most {MAX_IMAGE_SIDE}×{MAX_IMAGE_SIDE} is accepted.")
            if w < 8 or h < 8:
                raise MapeError(f"The image is only {w}×{h} pixels; at least 8×8 is needed.")
            im.load()
            im = im.convert("RGBA") if im.mode in ("P", "LA", "RGBA") else im
            if im.mode == "RGBA":  # composite transparency onto white
                bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
                im = Image.alpha_composite(bg, im)
            im = im.convert("L" if channels == 1 else "RGB")
    except MapeError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        raise MapeError("That file is not an image this app can read; upload a PNG, JPEG, WebP, BMP or GIF.") from None
    notes = [f"{fmt or 'image'} {w}×{h}"]
    if channels == 1:
        arr = np.array(im, dtype=np.uint8)  # a writable copy (np.asarray of a PIL image is read-only)
        if mnist_like:
            border = np.concatenate([arr[0], arr[-1], arr[:, 0], arr[:, -1]])
            if border.mean() > 127:
                arr = 255 - arr
                notes.append("inverted (light background → MNIST's white-on-black)")
            side = max(arr.shape)
            canvas = np.zeros((side, side), dtype=np.uint8)
            y0, x0 = (side - arr.shape[0]) // 2, (side - arr.shape[1]) // 2
            canvas[y0:y0 + arr.shape[0], x0:x0 + arr.shape[1]] = arr
            arr = canvas
        out = np.array(Image.fromarray(arr).resize((size, size), Image.BILINEAR), dtype=np.uint8)
        notes.append(f"converted to grayscale {size}×{size}")
    else:
        out = np.array(im.resize((size, size), Image.BILINEAR), dtype=np.uint8)
        notes.append(f"resized to {size}×{size} RGB")
    return out, ", ".join(notes) + "."


# --------------------------------------------------------------------------- teaching text

ABOUT_MD = r"""
### What unlearning asks for
A model $f_\theta$ was trained on $D = D_f \cup D_r$. A request asks it to **forget** $D_f$ (say, for a privacy
request): afterwards it should behave like a model **retrained from scratch on $D_r$ only** (the gold standard),
without paying for that retraining. MAPE-Unlearn (Bao et al., 2025, arXiv 2508.17233) does this by updating only a
small, well-chosen set of Transformer **modules**: attention heads and feed-forward (FFN) filters.

### 1. Masks on heads and filters
Two gate tensors sit inside the trained model $\theta^*$: $m_h \in \mathbb{R}^{L\times H}$ for the $H$ heads and
$m_f \in \mathbb{R}^{L\times F}$ for the $F$ FFN filters of each of the $L$ layers. A head gate multiplies that
head's slice of the input of the attention output projection; a filter gate multiplies that unit's activation
before the FFN down projection. With all gates at 1 the model computes exactly what it computed before.
A head owns its rows of $W_Q, W_K, W_V$ (and biases) and its columns of $W_O$; a filter owns one row of the FFN
up projection and one column of the down projection.

### 2. Mask gradients and scores
With the parameters frozen, one pass over $D_f$ and one over a retain sample give, for every batch $b$, the
gradient $s_b = \nabla_m \ell(b)$ of the batch's summed loss at $m = 1$. From them:

$$G_f = \sum_b s_b^{(f)} \qquad F_r = \frac{1}{N_r}\sum_b \big(s_b^{(r)}\big)^2$$

($G_f$: gradient of the summed forget loss; $F_r$: diagonal empirical Fisher of the gates on the retain sample, in
per-example units). Switching unit $i$ off moves its gate from 1 to 0; a second-order Taylor expansion at $m = 1$
estimates the change of a loss $\mathcal{L}$ as $-\partial_i \mathcal{L} + \tfrac12 F_{ii}$. The objectives score
each unit with that estimate (higher = **selected for update**):

- **mlr** (default, minimise retain loss): $\;SC_i = G_{f,i} + \tfrac12 F_{r,i}\;$ — the rise of the retain loss,
  using $\nabla \mathcal{L}(D_r) = -\nabla \mathcal{L}(D_f)$ at the training optimum;
- **mlf** (maximise forget loss): $\;SC_i = -G_{f,i} + \tfrac12 F_{f,i}\;$ with $F_f$ the forget-set Fisher;
- **norm**: the norm of the unit's parameter gradient on the forget loss (fast, less control);
- **random**: a seeded random choice with the same budget (a control).

### 3. Budget, warm start and greedy refinement
Sparsity $S$ is the fraction of units **frozen**: $(1-S)\,L H$ heads and $(1-S)\,L F$ filters are selected.
The diagonal scores give the **warm start**: a global ranking, hence a number $k_l$ of selected units per layer.
Then, layer by layer with $k_l$ fixed, the **greedy refinement** uses the layer's block of the empirical Fisher:
the cost of freezing a set $P$ is

$$\mathrm{cost}(P) = \sum_{i\in P} G_{f,i} + \frac{1}{2N}\sum_b\Big(\sum_{i\in P} s_{b,i}\Big)^2 ,$$

(for **mlf**: $-G_f$ and the forget-set blocks), which equals the diagonal score for a single unit but also sees
how units interact. Each selected unit (lowest
score first) is tried in the frozen set in place of the frozen unit whose removal gives the lowest cost; the swap
is kept only if the cost falls. The heatmaps above show the warm start and then each refined layer as it lands.

### 4. The update: only the selected units move
The default rule **so** takes one Fisher-preconditioned second-order step that *ascends* the forget loss:

$$\theta \leftarrow \theta + \eta\,\lVert\theta_M\rVert\,\frac{d}{\lVert d\rVert},\qquad
d = M \odot (\hat I_r + \lambda)^{-1} \odot \nabla_\theta \mathcal{L}(D_f),$$

with $M$ the parameters owned by the selected units, $\hat I_r$ the diagonal parameter Fisher on the retain sample and
$\lambda$ a damping term (so $\eta$ is relative: the fraction of $\lVert\theta_M\rVert$ the step moves). Every other
parameter stays **bit-identical**. With step size **auto**, $\eta$ is chosen from a small grid by forward passes only,
so that $D_f$ ends up looking the way it would to a model retrained without it, while retain accuracy stays within a
tolerance and the model still tells its retain examples apart from examples it never saw as well as it did before
(a step that leaves them correct but as unsure as unseen data is one a membership attack reads; a change of
confidence on every example alike, which retraining itself can make, is allowed); when $D_f$ is part of a class, the
rest of that class must stay correct too (at most the tolerance's
share of the retain check's examples of that class may turn wrong: the whole retain sample hides a step that breaks
one class), and, unless $D_f$ is a whole class, a smallest grid step that breaks either is stepped below, by
thirds. For a whole class that is accuracy 0 (a class the model never learned). For a random, partial-class or
pattern set it is the accuracy **and the confidence** of examples the model never saw, of the same classes (the
original's per-example losses on training examples a training limit left out, else on the test set, drawn in
$D_f$'s class mix, with each class's log-probability moved by $\log\pi'_c - \log\pi_c$, the change of the class
prior when $D_f$ leaves the training set: a model retrained without part of a class is less sure of that class):
the step is right when $P(\ell_f > \ell_{\text{unseen}}) \approx \tfrac12$. Accuracy alone is
not enough: on a set the model generalises to, accuracy is reached almost at once while the examples keep the
near-certain confidence of training data — and that confidence is exactly what a membership attack reads.
If the forget set already looks that way, nothing changes. If one step cannot get there within the tolerance, up to
nineteen more steps follow, each from the point reached and
along $M \odot (\hat I_r + \lambda)^{-1} \odot (\hat g_f - \hat g_r)$: $\hat g_f$ is the gradient of the *log* loss
of the forget examples still more confident than the unseen example of the same rank (for a class: the loss of those
still classified correctly, found on all of $D_f$ — the follow-ups go on until none is, and check their step sizes on
them), $\hat g_r$ the retain gradient that repairs what the previous steps cost. They stop
early, and say why, when a step brings $D_f$ no closer or breaks what the retain check allows (it is undone: first,
do no harm), or when the run would do more than half the model work of retraining (forward and backward passes,
counted: the user's alternative is to retrain).
Other rules: **ga** (gradient ascent on $D_f$), **gd** (ascent on $D_f$ + descent on $D_r$), **rl** (random labels
on $D_f$ + $D_r$), **npo** (negative preference optimisation against $\theta^*$) — all restricted to the same units.

### 5. How to read the results
- **FA / RA / TA**: accuracy on the forget set, on a fixed retain sample, on the test set. A good unlearned model
  matches the retrained one: FA drops to retrain's level while RA and TA stay.
- **MIA efficacy**: a membership-inference classifier trained on retain (member) vs test (non-member) examples,
  on the scaled confidence $\phi = \log p_y - \log\sum_{j\ne y} p_j$ (on the raw probability a near-certain model's
  members and non-members differ by $10^{-4}$), applied to $D_f$ and averaged over 16 resamples; the share judged
  "not a member". Higher = the forget set looks unseen; a retrained model's value is what unseen data reads.
- **Loss distance**: the Kolmogorov–Smirnov distance between $D_f$'s per-example losses under a model and under
  the retrained model (0 = the same distribution, 1 = disjoint); it needs no attacker. The loss-distribution chart
  shows the same thing as a picture.
- **Average gap to retrain**: $\frac14\sum_{k\in\{FA,RA,TA,MIA\}} |k - k_{\text{retrain}}|$, in points. Lower is better.
"""
