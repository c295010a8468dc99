"""Compare MAPE with baselines and the retrained gold standard over several seeds (DESIGN.md §9).

    ws = prepare("minilm-bbc")
    res = compare(ws, "random:128", ["mape", "mape-random", "so", "ft"], seeds=[0, 1, 2])
    res.to_json(); res.markdown(); metrics_figure(res.rows())
    res.save("out/compare.json")        # also writes out/compare.md

Seeds: seed s selects the forget set (``select_forget(spec, dataset, s)``) *and* seeds every method
(retain sample, check samples, random units, random labels, dropout), so within one seed all methods
see the same forget set. The original model and the retrained model (``retrain``, always run) are
measured on the same sets. Mean ± std are over seeds (sample std, ddof = 1; 0 for one seed).

With several ``requests`` (successive forget requests) each method is applied to its own previous
result; after request i every model is measured on the union of requests 1..i against a model
retrained without that union, and the summary (``results``) is the state after the last request.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mape.base.errors import MapeError
from mape.base.jsonsafe import json_safe
from mape.base.metrics import GAP_METRICS
from mape.data.forget import select_forget
from mape.evaluation.baselines import BaselineConfig, MethodSpec, config_json, parse_methods
from mape.evaluation.rows import ORIGINAL, REFERENCE, SeedPlan, indices_digest, machine_info, union_set
from mape.run.config import Progress

SUMMARY_KEYS = GAP_METRICS + ("test_forget_class_acc", "gap_to_retrain", "time_s", "params_changed",
                              "loss_distance", "mia_spread")
SUMMARY_KEYS += ("asr", "forget_acc_true")  # scenarios (issue 15): backdoor success rate, accuracy vs true labels


def _mean_std(values: list[float]) -> dict:
    arr = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if arr.size == 0:
        return {"mean": None, "std": None, "values": list(values)}
    std = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
    return {"mean": float(arr.mean()), "std": std, "values": [float(v) for v in values]}


def _summarise(per_seed: list[dict], names: list[str]) -> dict:
    """{name: {key: {mean, std, values}}} from [{name: row}] (one dict per seed)."""
    out = {}
    for name in names:
        rows = [run[name] for run in per_seed if name in run and not run[name].get("failed")]
        entry = {}
        for key in SUMMARY_KEYS:
            vals = [r["metrics"].get(key) if key in r["metrics"] else r.get(key) for r in rows]
            if all(v is None for v in vals):
                continue
            entry[key] = _mean_std([np.nan if v is None else float(v) for v in vals])
        curves = [r["relearn"] for r in rows if r.get("relearn")]
        if curves:
            arr = np.asarray(curves, dtype=float)
            entry["relearn"] = {"mean": arr.mean(0).tolist(),
                                "std": (arr.std(0, ddof=1) if len(arr) > 1 else np.zeros(arr.shape[1])).tolist()}
        entry["n"] = len(rows)
        out[name] = entry
    return out


@dataclass
class CompareResult:
    preset: str
    forget: str
    requests: list[str]
    seeds: list[int]
    methods: list[str]                 # compared methods, in order (without original / retrain)
    device: str
    total_params: int
    config: dict
    runs: list[dict]                   # per seed: {"seed", "forget", "methods": {name: row}}
    results: dict                      # {name: {metric: {mean, std, values}}}, original + methods + retrain
    successive: list[dict] = field(default_factory=list)   # per request when several requests
    machine: dict = field(default_factory=machine_info)
    wall_s: float = 0.0
    scenario: str | None = None        # the training data's scenario (mape.data.scenarios); None: clean
    executor: dict = field(default_factory=lambda: {"name": "local"})  # where the rows ran (mape.evaluation.executors)

    # ------------------------------------------------------------------ views
    def names(self) -> list[str]:
        return [ORIGINAL] + self.methods + [REFERENCE]

    def rows(self, results: dict | None = None) -> dict[str, dict[str, float]]:
        """{name: {metric: mean}} (fractions) for :func:`mape.serving.figures.metrics_figure`."""
        results = results or self.results
        return {n: {k: v["mean"] for k, v in results[n].items() if isinstance(v, dict) and "mean" in v}
                for n in self.names() if n in results}

    def best_method(self, results: dict | None = None) -> str | None:
        results = results or self.results
        cands = [(results[m]["gap_to_retrain"]["mean"], i, m) for i, m in enumerate(self.methods)
                 if m in results and results[m].get("gap_to_retrain", {}).get("mean") is not None]
        return min(cands)[2] if cands else None

    def to_json(self) -> dict:
        """JSON-safe (NaN becomes null): see the module docstring and the README for the schema."""
        return json_safe({"preset": self.preset, "forget": self.forget, "requests": self.requests, "seeds": self.seeds,
                "methods": self.methods, "reference": REFERENCE, "device": self.device,
                "total_params": self.total_params, "machine": self.machine, "config": self.config,
                "metrics": list(GAP_METRICS), "results": self.results, "runs": self.runs,
                "successive": self.successive, "wall_s": round(self.wall_s, 3), "scenario": self.scenario,
                "executor": self.executor})

    def markdown(self, title: str | None = None) -> str:
        seeds = ", ".join(str(s) for s in self.seeds)
        size = self.runs[0]["forget"]["size"] if self.runs else "?"
        scenario = f" · scenario `{self.scenario}`" if self.scenario else ""
        head = title or f"{self.preset}{scenario} · forget `{self.forget}` ({size} examples) · seeds {seeds}"
        lines = [f"**{head}**", "",
                 f"Device: {self.device}; machine: {self.machine.get('cpu')} ({self.machine.get('cores')} cores), "
                 f"torch {self.machine.get('torch')}. Values in % (mean ± std over {len(self.seeds)} seed(s)); "
                 "gap = mean |Δ| to retrain over FA, RA, TA, MIA, in points; loss dist. = Kolmogorov–Smirnov "
                 "distance (×100) between the forget set's per-example losses under the method and under retrain "
                 "(0 = the same distribution); best method in bold.", ""]
        lines += self._table(self.results)
        if self.successive:
            for step in self.successive:
                lines += ["", f"After request {step['request']} (`{step['spec']}`, "
                              f"{step['forgotten']} examples forgotten so far):", ""]
                lines += self._table(step["results"], relearn=False)
        relearn = [(n, self.results[n]["relearn"]["mean"]) for n in self.names()
                   if n in self.results and "relearn" in self.results[n]]
        if relearn:
            steps = len(relearn[0][1]) - 1
            lines += ["", "Relearn test: forget accuracy (%) after k fine-tuning steps on D_f "
                          "(mean over seeds; lower and slower = more robust).", "",
                      "| Method | " + " | ".join(f"k={k}" for k in range(steps + 1)) + " |",
                      "|---|" + "---:|" * (steps + 1)]
            for n, curve in relearn:
                lines.append(f"| {n} | " + " | ".join(f"{100 * v:.1f}" for v in curve) + " |")
        from mape.evaluation.executors import failure_lines

        lines += ["", "Failed rows (left out of the means): " + "; ".join(failure_lines(self)) + "."] \
            if failure_lines(self) else []
        return "\n".join(lines) + "\n"

    def _table(self, results: dict, relearn: bool = True) -> list[str]:
        class_col = any("test_forget_class_acc" in results.get(n, {}) for n in self.names())
        cols = (["Method", "Forget acc", "Retain acc", "Test acc"]
                + (["Test acc (forgotten class)"] if class_col else []))
        extra = [(k, name) for k, name in (("asr", "ASR"), ("forget_acc_true", "Forget acc (true labels)"))
                 if any(k in results.get(n, {}) for n in self.names())]  # scenarios (issue 15)
        cols += [name for _, name in extra]
        cols += ["MIA", "Loss dist.", "Gap to retrain (pts)", "Time (s)", "Params changed"]
        out = ["| " + " | ".join(cols) + " |", "|---|" + "---:|" * (len(cols) - 1)]
        best = self.best_method(results)

        def pct(entry, key):
            v = entry.get(key)
            if not v or v["mean"] is None:
                return "n/a"
            return f"{100 * v['mean']:.1f} ± {100 * v['std']:.1f}"

        for n in self.names():
            if n not in results:
                continue
            e = results[n]
            label = n + (" (reference)" if n == REFERENCE else " (no unlearning)" if n == ORIGINAL else "")
            gap = pct(e, "gap_to_retrain")
            if n == best:
                label, gap = f"**{label}**", f"**{gap}**"
            t = e.get("time_s", {}).get("mean")
            pc = e.get("params_changed", {}).get("mean")
            cells = [label, pct(e, "forget_acc"), pct(e, "retain_acc"), pct(e, "test_acc")]
            if class_col:
                cells.append(pct(e, "test_forget_class_acc"))
            cells += [pct(e, k) for k, _ in extra]
            cells += [pct(e, "mia"), pct(e, "loss_distance"), gap, "–" if t is None or n == ORIGINAL else f"{t:.2f}",
                      "–" if pc is None or n == ORIGINAL else
                      f"{pc:,.0f} ({100 * pc / max(self.total_params, 1):.2f}%)"]
            out.append("| " + " | ".join(cells) + " |")
        return out

    @classmethod
    def from_json(cls, data: dict) -> "CompareResult":
        """The inverse of :meth:`to_json` (a saved comparison, e.g. to merge seeds run separately)."""
        try:
            _check_saved_shape(data)
            return cls(preset=data["preset"], forget=data["forget"], requests=list(data["requests"]),
                       seeds=[int(s) for s in data["seeds"]], methods=list(data["methods"]),
                       device=data["device"], total_params=int(data["total_params"]), config=dict(data["config"]),
                       runs=list(data["runs"]), results=dict(data["results"]),
                       successive=list(data.get("successive") or []), machine=dict(data.get("machine") or {}),
                       wall_s=float(data.get("wall_s") or 0.0), scenario=data.get("scenario"),
                       executor=dict(data.get("executor") or {"name": "local"}))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise MapeError(f"Not a saved comparison (python -m mape compare --out FILE.json): {exc!r}.") from None

    @classmethod
    def load(cls, path: str | os.PathLike) -> "CompareResult":
        try:
            data = json.loads(Path(path).read_text())
        except OSError as exc:
            raise MapeError(f"Cannot read {Path(path).name}: {exc.strerror or exc}.") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            where = f" ({exc.msg} at line {exc.lineno})" if isinstance(exc, json.JSONDecodeError) else ""
            raise MapeError(f"{Path(path).name} is not valid JSON{where}.") from None
        if not isinstance(data, dict):
            raise MapeError(f"{Path(path).name} is not a saved comparison.")
        return cls.from_json(data)

    def save(self, path: str | os.PathLike) -> tuple[Path, Path]:
        """Write the JSON to ``path`` and the markdown table next to it (same name, ``.md``)."""
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        md = out.with_suffix(".md")
        for target, text in ((out, json.dumps(self.to_json(), indent=1, default=float)), (md, self.markdown())):
            tmp = target.with_name(target.name + ".tmp")
            tmp.write_text(text)
            os.replace(tmp, target)
        return out, md


def _check_saved_shape(data: dict) -> None:
    """Raise KeyError/TypeError/ValueError unless ``data`` has the shape :meth:`CompareResult.to_json` writes
    (the views index into it, so a wrong file must fail here, not in the middle of a table)."""
    if not isinstance(data["methods"], list) or not all(isinstance(m, str) for m in data["methods"]):
        raise TypeError("'methods' is not a list of method names")
    for name in [ORIGINAL, *data["methods"], REFERENCE]:
        entry = data["results"][name]
        for key, value in entry.items():
            if key in SUMMARY_KEYS and not (isinstance(value, dict) and "mean" in value and "std" in value):
                raise TypeError(f"results[{name!r}][{key!r}] has no mean and std")
    if not data["runs"]:
        raise ValueError("no per-seed runs")
    for run in data["runs"]:
        int(run["seed"])
        for name in [ORIGINAL, *data["methods"], REFERENCE]:
            if not isinstance(run["methods"][name]["metrics"], dict):
                raise TypeError(f"the row of {name!r} for seed {run['seed']} has no metrics")


MAX_OPEN_FILES = 20
MAX_OPEN_MB = 50


def open_saved(paths) -> CompareResult:
    """One saved comparison, or several runs of the same comparison with different seeds merged into one
    (:func:`merge_seeds`): what the app's "Open saved comparison" shows."""
    paths = [Path(p) for p in (paths or [])]
    if not paths:
        raise MapeError("Choose one or more comparison JSON files (python -m mape compare --out FILE.json).")
    if len(paths) > MAX_OPEN_FILES:
        raise MapeError(f"At most {MAX_OPEN_FILES} comparison files at once, got {len(paths)}.")
    for p in paths:
        try:
            size_mb = p.stat().st_size / 2**20
        except OSError as exc:
            raise MapeError(f"Cannot read {p.name}: {exc.strerror or exc}.") from None
        if size_mb > MAX_OPEN_MB:
            raise MapeError(f"{p.name} is {size_mb:.0f} MB; a saved comparison is far smaller "
                            f"(limit {MAX_OPEN_MB} MB).")
    parts = [CompareResult.load(p) for p in paths]
    return parts[0] if len(parts) == 1 else merge_seeds(parts)


MERGE_MUST_MATCH = ("preset", "scenario", "forget", "requests", "methods", "device", "total_params", "config")
MACHINE_MUST_MATCH = ("cpu", "cores", "torch", "gpu")


def merge_seeds(parts: list[CompareResult]) -> CompareResult:
    """One comparison over the seeds of several runs of the same comparison (say one seed per session).

    The runs must agree on everything but the seeds (preset, forget spec, methods, configuration,
    device and machine: times from different machines are not averaged); a seed may appear only once.
    Mean ± std are recomputed from the per-seed rows exactly as :func:`compare` computes them, so merging
    runs of seeds 0 and 1 gives the numbers of one run over seeds 0,1 (times aside). Comparisons of
    successive requests keep only their last request per seed and cannot be merged.
    """
    if not parts:
        raise MapeError("Nothing to merge: give at least one saved comparison.")
    first = parts[0]
    for p in parts:
        if p.successive or len(p.requests) > 1:
            raise MapeError("Comparisons of successive requests cannot be merged (their per-request rows are "
                            "not stored per seed).")
        for key in MERGE_MUST_MATCH:
            a, b = getattr(first, key), getattr(p, key)
            if a != b:
                if isinstance(a, dict) and isinstance(b, dict):  # name only the entries that differ
                    keys = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
                    a, b = ({k: d.get(k) for k in keys} for d in (a, b))
                raise MapeError(f"Cannot merge: {key} differs ({a!r} vs {b!r}).")
        for key in MACHINE_MUST_MATCH:
            if p.machine.get(key) != first.machine.get(key):
                raise MapeError(f"Cannot merge runs from different machines: {key} "
                                f"{first.machine.get(key)!r} vs {p.machine.get(key)!r}.")
    runs = sorted((run for p in parts for run in p.runs), key=lambda run: run["seed"])
    seeds = [int(run["seed"]) for run in runs]
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise MapeError(f"Cannot merge: seed(s) {', '.join(map(str, repeated))} appear in more than one run.")
    names = [ORIGINAL] + first.methods + [REFERENCE]
    return CompareResult(preset=first.preset, forget=first.forget, requests=list(first.requests), seeds=seeds,
                         methods=list(first.methods), device=first.device, total_params=first.total_params,
                         config=dict(first.config), runs=runs,
                         results=_summarise([run["methods"] for run in runs], names),
                         machine=dict(first.machine), wall_s=sum(p.wall_s for p in parts), scenario=first.scenario)


def compare(ws, forget_spec: str | None, methods, seeds=(0,), progress: Progress | None = None,
            config: BaselineConfig | None = None, requests: list[str] | None = None,
            relearn_steps: int = 5, executor=None) -> CompareResult:
    """Run ``methods`` (names or :class:`MethodSpec`) for every seed and summarise them against retrain.

    ``executor``: ``"local"`` (default: every row in this process), ``"ray"`` (a local Ray instance, or
    the cluster of ``RAY_ADDRESS``) or an executor object (:mod:`mape.evaluation.executors`).

    ``requests``: several forget specs applied in a row (successive requests); ``forget_spec`` is then
    ignored. ``relearn_steps`` > 0 adds the relearn curve (on the final forget set) for every row.
    """
    config = config or BaselineConfig()
    config.validate()
    if not isinstance(methods, str):
        methods = [m.name if isinstance(m, MethodSpec) else m for m in methods]
    specs = [s for s in parse_methods(methods) if s.name != REFERENCE]
    names = [s.name for s in specs]
    reqs = [r.strip() for r in (requests or []) if r and r.strip()] or ([forget_spec] if forget_spec else [])
    if not reqs:
        raise MapeError("No forget set given: pass a forget spec (e.g. random:128) or requests.")
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise MapeError("No seeds given; pass at least one, e.g. 0.")
    if relearn_steps < 0:
        raise MapeError("The number of relearn steps cannot be negative.")
    # resolve every forget set first: bad specs fail before any slow work
    forget_sets = {s: [select_forget(r, ws.dataset, s) for r in reqs] for s in seeds}
    plans = [SeedPlan(s, forget_sets[s], [union_set(reqs[:i + 1], forget_sets[s][:i + 1]) for i in range(len(reqs))])
             for s in seeds]
    from mape.evaluation.executors import open_executor

    t_start = time.perf_counter()
    runner, owned = open_executor(executor)
    try:
        sweep = runner.run(ws, plans, specs, config, relearn_steps, progress)
    finally:
        if owned:
            runner.close()
    per_request: list[list[dict]] = [[] for _ in reqs]   # [request][seed] -> {name: row}
    runs = []
    for plan in plans:
        rows_by_req = [{name: sweep.row(plan.seed, name, i) for name in [ORIGINAL, REFERENCE, *names]}
                       for i in range(len(reqs))]
        for i in range(len(reqs)):
            per_request[i].append(rows_by_req[i])
        last = plan.unions[-1]
        runs.append({"seed": plan.seed, "forget": {**{k: v for k, v in last.to_json().items() if k != "indices"},
                                                   "indices_sha256": indices_digest(last.indices)},
                     "methods": rows_by_req[-1]})
    all_names = [ORIGINAL] + names + [REFERENCE]
    results = _summarise(per_request[-1], all_names)
    successive = []
    if len(reqs) > 1:
        for i, spec in enumerate(reqs):
            sizes = [len(union_set(reqs[:i + 1], forget_sets[s][:i + 1]).indices) for s in seeds]
            successive.append({"request": i + 1, "spec": spec, "forgotten": int(np.mean(sizes)),
                               "results": _summarise(per_request[i], all_names)})
    if progress:
        progress("done", 1.0)
    from mape.run.config import device_name

    return CompareResult(preset=ws.preset.name, forget=";".join(reqs), requests=reqs, seeds=seeds, methods=names,
                         device=device_name(ws.device), total_params=int(ws.total_params),
                         config={**config_json(config), "relearn_steps": relearn_steps},
                         runs=runs, results=results, successive=successive, wall_s=time.perf_counter() - t_start,
                         executor=sweep.info,
                         scenario=ws.scenario.spec if getattr(ws, "scenario", None) is not None else None)


# --------------------------------------------------------------------------- command line


def parse_seeds(text: str) -> list[int]:
    parts = [t.strip() for t in str(text).split(",") if t.strip()]
    if not parts:
        raise MapeError("--seeds needs at least one seed, e.g. 0 or 0,1,2.")
    out = []
    for t in parts:
        try:
            out.append(int(t))
        except ValueError:
            raise MapeError(f"Seed {t!r} is not a whole number; write e.g. --seeds 0,1,2.") from None
        if out[-1] < 0:
            raise MapeError(f"Seeds must be non-negative, got {out[-1]}.")
    return list(dict.fromkeys(out))


def summary_lines(res: CompareResult) -> list[str]:
    best = res.best_method()
    lines = [f"{res.preset}{' · ' + res.scenario if res.scenario else ''} · {res.forget} · "
             f"seeds {', '.join(map(str, res.seeds))} · {res.device}"]
    for n in res.names():
        e = res.results.get(n)
        if not e or e.get("gap_to_retrain", {}).get("mean") is None:  # no row (every seed failed)
            continue
        g = e.get("gap_to_retrain", {}).get("mean")
        t = e.get("time_s", {}).get("mean")
        vals = "  ".join(f"{k.replace('_acc', '')} {100 * e[k]['mean']:5.1f}"
                         for k in GAP_METRICS + ("asr", "forget_acc_true", "loss_distance")
                         if e.get(k, {}).get("mean") is not None)
        lines.append(f"  {n + (' *' if n == best else ''):16s} {vals}  gap {100 * g:5.2f} pts"
                     + (f"  {t:8.2f}s" if t is not None and n != ORIGINAL else ""))
    return lines


def cmd_compare(args, prepare_fn, progress_cls) -> int:
    """``python -m mape compare``: validate everything cheap first, then prepare and run."""
    specs = parse_methods(args.methods)
    seeds = parse_seeds(args.seeds)
    if args.requests:
        requests = [r.strip() for r in args.requests.split(";") if r.strip()]
        if not requests:
            raise MapeError("--requests needs forget specs separated by ';', e.g. 'random:64;class:sport'.")
        if args.forget:
            raise MapeError("Give either --forget or --requests, not both.")
    elif args.forget:
        requests = None
    else:
        raise MapeError("compare needs --forget SPEC (e.g. random:128) or --requests 'spec1;spec2'.")
    if args.relearn < 0:
        raise MapeError("--relearn cannot be negative.")
    config = BaselineConfig(sparsity=args.sparsity, retain_sample=args.retain_sample)
    config.validate()
    from mape.evaluation.executors import executor_from_args, failure_lines

    executor = executor_from_args(args, quiet=args.quiet)  # without Ray: exit 2 before any slow work
    ws = prepare_fn(args)
    progress = progress_cls(not args.quiet)
    try:
        res = compare(ws, args.forget, specs, seeds, progress, config=config, requests=requests,
                      relearn_steps=args.relearn, executor=executor)
    finally:
        progress.close()
        executor.close()
    json_path, md_path = res.save(args.out)
    for line in summary_lines(res):
        print(line)
    print(f"wrote {json_path} and {md_path}")
    failed = failure_lines(res)
    for line in failed:
        print(f"failed: {line}", file=sys.stderr)
    return 1 if failed else 0
