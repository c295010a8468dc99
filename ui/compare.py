"""⑧ Compare methods against retraining: every chosen method on the forget set of ②, for each seed, with
the table, three charts, the downloads and "Open saved comparison(s)"."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import gradio as gr

from mape.base.errors import MapeError
from mape.serving import charts, figures as FG, offer, owner as serving
from ui import method
from ui.common import deferred_plot, fmt_status, tmp_folder
from ui.model_data import model_status

CHOICES = [
    ("mape — MAPE (auto scores: mlr, or contrast on a backdoor's poisoned examples; so update)", "mape"),
    ("mape-mlr — MAPE, mlr scores", "mape-mlr"), ("mape-mlf — MAPE, mlf scores", "mape-mlf"),
    ("mape-contrast — MAPE, forget-vs-retain contrast scores", "mape-contrast"),
    ("mape-norm — MAPE, gradient-norm scores", "mape-norm"), ("mape-random — random units, same budget", "mape-random"),
    ("mape+ga", "mape+ga"), ("mape+gd", "mape+gd"), ("mape+rl", "mape+rl"), ("mape+npo", "mape+npo"),
    ("salun — saliency-masked random labels", "salun"), ("ssd — selective synaptic dampening", "ssd"),
    ("ft — fine-tune on the retain set", "ft"), ("l1-sparse — ft with an l1 penalty", "l1-sparse"),
    ("so — full-parameter second-order step", "so"), ("ga — full-parameter gradient ascent", "ga"),
    ("gd — full-parameter NegGrad+", "gd"), ("rl — full-parameter random labels", "rl"),
    ("npo — full-parameter NPO", "npo"),
]
DEFAULT = ("mape", "mape-norm", "mape-random", "salun")
MAX_METHODS, MAX_SEEDS, MAX_RELEARN = 12, 5, 10
INTRO = ("Applies every chosen method to the forget set of ② (for each seed: the same forget set and the same samples "
         "for all methods) and measures it against a model **retrained without the forget set** (the gold standard; "
         "trained once per forget set, then cached). MAPE variants use the sparsity, retain sample and tolerance of ③. "
         "*Gap* = mean |difference| to retrain over forget, retain and test accuracy and MIA efficacy; lower is "
         "better. The same table is written by `python -m mape compare`.")
OPEN_NOTE = ("*Open saved comparison(s)* shows a comparison JSON written earlier (this view's download, "
             "`python -m mape compare --out`, or `bench/results/`); several runs of the same comparison with "
             "different seeds are merged into one table (mean ± std over all their seeds).")


def build(ctx) -> SimpleNamespace:
    gr.Markdown("## ⑧ Compare methods against retraining", elem_classes=["mape-section"])
    gr.Markdown(INTRO, elem_classes=["mape-sub"])
    with gr.Row():
        methods = gr.Dropdown(CHOICES, value=list(DEFAULT), multiselect=True, scale=4, label="Methods",
                              elem_id="compare-methods", info="mape = MAPE (auto scores, so update); full-parameter "
                                                              "rules change every Transformer-layer weight.")
        seeds = gr.Textbox("0", label="Seeds", scale=1, elem_id="compare-seeds",
                           info=f"e.g. 0,1,2 (at most {MAX_SEEDS}); mean ± std over seeds.")
        relearn = gr.Number(3, label="Relearn steps", precision=0, minimum=0, maximum=MAX_RELEARN, scale=1,
                            elem_id="compare-relearn",
                            info="Fine-tuning steps on the forget set afterwards (0: no relearn test).")
    with gr.Row():
        btn = gr.Button("Compare methods", variant="primary", scale=4, elem_id="compare-btn")
        stop = gr.Button("Stop", variant="stop", scale=1, elem_id="compare-stop-btn")
    status = gr.HTML(fmt_status("idle", "Not started."), elem_id="compare-status")
    table = gr.Markdown("", elem_id="compare-table")
    with gr.Row():
        plot = deferred_plot(label="Metrics", elem_id="compare-plot", scale=3)
        gap_plot = deferred_plot(label="Gap vs. time", elem_id="compare-gap-plot", scale=2)
    relearn_plot = deferred_plot(label="Relearn test", elem_id="compare-relearn-plot")
    with gr.Row():
        dl_json = gr.DownloadButton("Comparison JSON", interactive=False, elem_id="dl-compare-json")
        dl_md = gr.DownloadButton("Comparison table (.md)", interactive=False, elem_id="dl-compare-md")
        open_btn = gr.UploadButton("Open saved comparison(s)", file_types=[".json"], file_count="multiple",
                                   elem_id="compare-open", variant="secondary")
        open_audit_btn = gr.UploadButton("Open saved audit", file_types=[".json"], file_count="single",
                                         elem_id="audit-open", variant="secondary")
    gr.Markdown(OPEN_NOTE, elem_classes=["mape-sub"])
    return SimpleNamespace(methods=methods, seeds=seeds, relearn=relearn, btn=btn, stop=stop, status=status,
                           table=table, plot=plot, gap_plot=gap_plot, relearn_plot=relearn_plot, dl_json=dl_json,
                           dl_md=dl_md, open_btn=open_btn, open_audit_btn=open_audit_btn, flags=gr.State({}))


def _empty(which: str):
    titles = {"metrics": ("Metrics by method: after a comparison", 380),
              "gap": ("Gap vs. time: after a comparison", 380),
              "relearn": ("Relearn test: after a comparison", 360)}
    return FG.empty_figure(*titles[which])


def wire(page) -> None:
    C, f, m = page.compare, page.forget, page.method
    outputs = [*views(page), page.model.status]

    def on_compare(preset_name, scenario, kind_v, value_v, owner, methods_v, seeds_v, relearn_v, sparsity_v, retain_v,
                   tol_v, flags, progress=gr.Progress()):
        name = serving.served_name(preset_name, scenario)
        yield from _compare(page, name, offer.compose_spec(kind_v, value_v), owner,
                            (methods_v, seeds_v, relearn_v, sparsity_v, retain_v, tol_v), flags, progress)

    C.btn.click(on_compare, [page.model.preset, page.model.scenario, f.kind, f.value, f.owner, C.methods, C.seeds,
                             C.relearn, m.sparsity, m.retain_sample, m.tolerance, C.flags], outputs,
                api_visibility="private", concurrency_id="engine", concurrency_limit=page.ctx.engine_limit,
                show_progress_on=[C.status])
    C.open_btn.upload(lambda files: open_saved(page, files), C.open_btn, outputs, api_visibility="private")
    C.open_audit_btn.upload(lambda file: open_audit(page, file), C.open_audit_btn, outputs, api_visibility="private")
    C.stop.click(_on_stop, C.flags, None, api_visibility="private", queue=False)
    page.model.preset.input(lambda: reset(page), None, outputs, api_visibility="private", queue=False)
    page.model.scenario.input(lambda: reset(page), None, outputs, api_visibility="private", queue=False)


def _on_stop(flags):
    flags["stop"] = True


def _compare(page, preset_name, spec, owner, values, flags, progress):
    C = page.compare
    flags["stop"] = False
    from ui.live_search import forget_spec_of

    spec = forget_spec_of(preset_name, spec, owner)
    try:
        req = request(preset_name, spec, *values, allowed=page.ctx.names)
    except MapeError as exc:
        gr.Warning(str(exc))
        yield {C.status: fmt_status("error", str(exc))}
        return
    t0, last = time.perf_counter(), 0.0
    progress(0.0, desc="starting")
    yield {C.status: fmt_status("busy", "Starting…", f"{len(req['methods'])} method(s) × {len(req['seeds'])} "
                                                     "seed(s) + retrain")}
    events = serving.compare(preset_name, spec, req)
    for event in events:
        kind, now = event[0], time.monotonic()
        if flags.get("stop"):
            events.close()
            yield {C.status: fmt_status("stopped", "Stopped."), page.model.status: model_status(preset_name)}
            return
        if kind in ("prep", "progress"):
            label = f"Preparing the original model: {event[1]}" if kind == "prep" else event[1]
            progress(min(0.999, event[2]), desc=label)
            if now - last > 0.5:
                last = now
                yield {C.status: fmt_status("busy", label, f"{100 * event[2]:.0f}%")}
        elif kind in ("error", "cancelled"):
            text = event[1] if kind == "error" else "Stopped."
            if kind == "error":
                gr.Warning(text)
            yield {C.status: fmt_status("error" if kind == "error" else "stopped", text),
                   page.model.status: model_status(preset_name)}
            return
        elif kind == "done":
            yield {**show(page, event[1], time.perf_counter() - t0), page.model.status: model_status(preset_name)}
            return


def request(preset_name: str, spec: str, methods, seeds, relearn, sparsity, retain_sample, tolerance,
            allowed: list[str] | None = None) -> dict:
    """Validated comparison settings ({methods, seeds, relearn, config}); MapeError with a clear message."""
    from mape.evaluation.baselines import BaselineConfig, parse_methods
    from mape.evaluation.compare import parse_seeds

    names = [m.strip() for m in (methods.split(",") if isinstance(methods, str) else methods or []) if m and m.strip()]
    specs = [m for m in parse_methods(names) if m.name != "retrain"] if names else []
    if not specs:
        raise MapeError("Choose at least one method to compare (retrain is always run as the reference).")
    if len(specs) > MAX_METHODS:
        raise MapeError(f"At most {MAX_METHODS} methods at a time here; use `python -m mape compare` for more.")
    seed_list = parse_seeds(seeds if seeds not in (None, "") else "0")
    if len(seed_list) > MAX_SEEDS:
        raise MapeError(f"At most {MAX_SEEDS} seeds at a time here; use `python -m mape compare` for more.")
    try:
        relearn = int(relearn if relearn not in (None, "") else 0)
        cfg = method.config("auto", sparsity, "so", "auto", seed_list[0], False, retain_sample, 1, False, tolerance)
    except (TypeError, ValueError):
        raise MapeError("Relearn steps must be a whole number.") from None
    if not 0 <= relearn <= MAX_RELEARN:
        raise MapeError(f"Relearn steps must be between 0 and {MAX_RELEARN}.")
    for s in seed_list:
        method.validate_request(preset_name, spec, {**cfg, "seed": s}, allowed)
    config = {"sparsity": cfg["sparsity"], "retain_sample": cfg["retain_sample"], "tolerance": cfg["tolerance"]}
    BaselineConfig(**config).validate()
    return {"methods": [m.name for m in specs], "seeds": seed_list, "relearn": relearn, "config": config}


def show(page, res, wall_s: float = 0.0, status: str | None = None) -> dict:
    """Status, table, the three charts and the two downloads of a finished (or opened) comparison."""
    C = page.compare
    json_path, md_path = res.save(tmp_folder("compare-") / "mape-compare.json")
    best = res.best_method()
    ref_t = res.results.get("retrain", {}).get("time_s", {}).get("mean")
    done = status or f"Done in {wall_s:.1f} s." + (f" Closest to retrain: {best}." if best else "")
    if ref_t is not None and status is None:
        done += f" Retrain took {ref_t:.1f} s" + (" (from the cache)." if res.runs and all(
            (r["methods"]["retrain"].get("details") or {}).get("cached") for r in res.runs) else ".")
    relearn = (charts.relearn_figure(res.results, res.names())
               if any("relearn" in res.results.get(n, {}) for n in res.names())
               else FG.empty_figure("Relearn test: not run (relearn steps = 0)", 360))
    chart = charts.metrics_figure(res.rows())
    chart.update_layout(legend=dict(orientation="h", y=-0.14, x=0.5, xanchor="center"), margin=dict(b=90))
    return {C.status: fmt_status("done", done), C.table: res.markdown(), C.plot: chart,
            C.gap_plot: charts.gap_time_figure(res.results, res.methods, best), C.relearn_plot: relearn,
            C.dl_json: gr.DownloadButton(value=str(json_path), interactive=True),
            C.dl_md: gr.DownloadButton(value=str(md_path), interactive=True)}


def open_saved(page, files) -> dict:
    from mape.evaluation.compare import open_saved as open_files

    paths = [f if isinstance(f, str) else getattr(f, "name", str(f)) for f in (files or [])]
    try:
        res = open_files(paths)
    except MapeError as exc:
        gr.Warning(str(exc))
        return {page.compare.status: fmt_status("error", str(exc))}
    seeds = ", ".join(map(str, res.seeds))
    best = res.best_method()
    text = (f"Opened {len(paths)} file(s): {res.preset} · {res.forget} · seed{'s' if len(res.seeds) > 1 else ''} "
            f"{seeds} · {res.device} ({res.machine.get('cpu', 'unknown machine')})."
            + (f" Closest to retrain: {best}." if best else ""))
    return show(page, res, status=text)


def open_audit(page, file) -> dict:
    """A saved audit (``python -m mape audit --out``): its table and the per-example ε histogram."""
    from mape.evaluation.audit import audit_markdown, open_saved_audit

    path = file if isinstance(file, str) else getattr(file, "name", str(file))
    try:
        res = open_saved_audit(path)
        table = audit_markdown(res)
    except MapeError as exc:
        gr.Warning(str(exc))
        return {page.compare.status: fmt_status("error", str(exc))}
    except (KeyError, TypeError, ValueError) as exc:
        message = f"{Path(path).name} is not a complete saved audit ({type(exc).__name__}: {exc})."
        gr.Warning(message)
        return {page.compare.status: fmt_status("error", message)}
    C = page.compare
    text = (f"Opened audit: {res['preset']} · {res['forget']} · N = {res['models']} models per population. "
            f"{res['sanity']['note'][:1].upper()}{res['sanity']['note'][1:]}.")
    return {**reset(page), C.status: fmt_status("done", text), C.table: table, C.plot: charts.audit_epsilon_figure(res)}


def views(page) -> list:
    """The comparison's views (what :func:`reset` clears)."""
    C = page.compare
    return [C.status, C.table, C.plot, C.gap_plot, C.relearn_plot, C.dl_json, C.dl_md]


def reset(page) -> dict:
    C = page.compare
    return {C.status: fmt_status("idle", "Not started."), C.table: "", C.plot: _empty("metrics"),
            C.gap_plot: _empty("gap"), C.relearn_plot: _empty("relearn"),
            C.dl_json: gr.DownloadButton(value=None, interactive=False),
            C.dl_md: gr.DownloadButton(value=None, interactive=False)}
