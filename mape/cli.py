"""Command line: ``python -m mape presets | prepare | unlearn | compare | merge | gate``.

Bad input exits with code 2 and one line on stderr (``error: ...``), never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from mape.base.errors import MapeError
from mape.evaluation.executors import add_executor_args


class TqdmProgress:
    """Progress callback drawing one tqdm bar per stage (on stderr)."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.bar = None
        self.stage = None

    def __call__(self, stage: str, fraction: float, selection=None) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        if stage != self.stage:
            self.close()
            self.stage = stage
            self.bar = tqdm(total=100, desc=stage, unit="%", leave=False, file=sys.stderr,
                            bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}")
        self.bar.n = int(round(100 * min(max(fraction, 0.0), 1.0)))
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own errors: one line, exit 2
        raise MapeError(message)


def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="minilm-bbc", help="preset name (python -m mape presets)")
    p.add_argument("--data", default=None, help="data folder (local presets) or dataset id/folder with --model")
    p.add_argument("--model", default=None, help="any model id or folder (custom preset, needs --data)")
    p.add_argument("--train-limit", type=int, default=None, help="train on a seeded subset of N examples")
    p.add_argument("--scenario", default=None,
                   help="alter the training data before the original is trained: backdoor:TRIGGER:TARGET:N "
                        "(texts), backdoor:patch:TARGET:N (images) or mislabel:N")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _method_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--forget", required=True, action="append",
                   help="forget set (random:N, random:P%%, class:L, class:L:N, match:RE, indices:..., "
                        "indices-file:PATH, poisoned[:K|:P%%] with --scenario); repeat for successive requests")
    p.add_argument("--objective", default="auto",
                   help="auto (mlr; contrast on a backdoor's poisoned examples) | mlr | mlf | norm | random | contrast")
    p.add_argument("--sparsity", type=float, default=0.9, help="fraction of units frozen, in (0, 1)")
    p.add_argument("--update", default="so", help="so | ga | gd | rl | npo")
    p.add_argument("--step", default="auto", help="auto, η for so, or a number of steps for ga/gd/rl/npo")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--retrain", action="store_true", help="also retrain without the forget set (gold standard)")
    p.add_argument("--joint-budget", action="store_true", help="one budget counted in parameters")
    p.add_argument("--retain-sample", type=int, default=None,
                   help="retain examples for the scores (default 2048 GPU / 512 CPU)")
    p.add_argument("--greedy-passes", type=int, default=1,
                   help="passes of the greedy block refinement (0: warm start only; "
                        "stops early when a pass swaps nothing)")


def _audit_args(p: argparse.ArgumentParser) -> None:
    """The options of ``python -m mape audit`` (data options and the executor's are added by the CLI)."""
    p.add_argument("--forget", required=True, help="forget set, e.g. random:128 or class:3")
    p.add_argument("--methods", default="mape,mape-random", help="comma-separated methods (not retrain)")
    p.add_argument("--models", type=int, default=16, help="models per population (N)")
    p.add_argument("--sparsity", type=float, default=0.9, help="MAPE sparsity")
    p.add_argument("--retain-sample", type=int, default=None, help="retain examples (default 2048 GPU / 512 CPU)")
    p.add_argument("--threads", type=int, default=None, help="torch threads of a local task (default: torch's)")
    p.add_argument("--out", required=True, help="audit JSON path (the markdown table goes next to it, .md)")


def _prog() -> str:
    """`mape` when started as the installed console script, `python -m mape` otherwise."""
    return "mape" if Path(sys.argv[0]).name == "mape" else "python -m mape"


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog=_prog(), description="Module-aware parameter-efficient machine unlearning.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    p = sub.add_parser("presets", help="list presets and whether each can run here")
    p.add_argument("--data", default=None)
    p = sub.add_parser("prepare", help="train and cache the original model")
    _data_args(p)
    p = sub.add_parser("unlearn", help="run MAPE unlearning and write a results JSON")
    _data_args(p)
    _method_args(p)
    p.add_argument("--out", required=True, help="results JSON path")
    p = sub.add_parser("compare", help="compare MAPE with baselines and retraining over seeds (JSON + markdown)")
    _data_args(p)
    p.add_argument("--forget", default=None, help="forget set, e.g. random:128 or class:sport")
    p.add_argument("--requests", default=None, help="successive requests 'spec1;spec2;...' (instead of --forget)")
    p.add_argument("--methods", default="mape,mape-random,so,ft", help="comma-separated methods (retrain always runs)")
    p.add_argument("--seeds", default="0", help="comma-separated seeds, e.g. 0,1,2")
    p.add_argument("--relearn", type=int, default=5, help="relearn-test steps (0: off)")
    p.add_argument("--sparsity", type=float, default=0.9, help="MAPE sparsity")
    p.add_argument("--retain-sample", type=int, default=None, help="retain examples (default 2048 GPU / 512 CPU)")
    p.add_argument("--out", required=True, help="results JSON path (the markdown table goes next to it, .md)")
    add_executor_args(p)  # --executor local|ray, --address, --cpus-per-task, --max-retries
    p = sub.add_parser("audit", help="per-example forgetting score over N unlearned vs N retrained models (JSON + md)")
    _data_args(p)
    _audit_args(p)
    add_executor_args(p)
    p = sub.add_parser("merge", help="one comparison over the seeds of several compare runs (JSON + markdown)")
    p.add_argument("inputs", nargs="+", help="compare JSON files of the same comparison with different seeds")
    p.add_argument("--out", required=True, help="merged JSON path (the markdown table goes next to it, .md)")
    p = sub.add_parser("gate",
                       help="the quality gate: canonical full-size cases, each against its band (exit 1 if out)")
    p.add_argument("--cases", default=None, help="comma-separated case names (default: every case)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--out", default=None, help="also write every case's bands and run JSON here")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def cmd_gate(args) -> int:
    from mape.evaluation.gate import gate_passes, run_gate, select_cases, table_lines

    cases = select_cases(args.cases)  # before any slow work
    progress = TqdmProgress(not args.quiet)

    def done(res) -> None:
        progress.close()
        mark = "ok" if res.ok else ("known short" if res.known_short else "OUT OF BAND")
        print(f"{res.case}: {mark} ({res.seconds:.0f} s)" + (f": {res.error}" if res.error else ""), flush=True)

    t0 = time.perf_counter()
    try:
        results = run_gate(cases, args.seed, progress, args.device, on_case=done)
    finally:
        progress.close()
    passed = gate_passes(results)
    print("\n".join(table_lines(results)))
    print(f"gate {'passed' if passed else 'FAILED'}: {sum(r.ok for r in results)} of {len(results)} cases in band, "
          f"{time.perf_counter() - t0:.0f} s")
    if args.out:
        _write_json(args.out, {"passed": passed, "seed": args.seed, "cases": [r.to_json() for r in results]})
        print(f"wrote {args.out}")
    return 0 if passed else 1


def cmd_merge(args) -> int:
    from mape.evaluation.compare import CompareResult, merge_seeds, summary_lines

    res = merge_seeds([CompareResult.load(p) for p in args.inputs])
    json_path, md_path = res.save(args.out)
    for line in summary_lines(res):
        print(line)
    print(f"wrote {json_path} and {md_path}")
    return 0


def cmd_presets(args) -> int:
    from mape.data.presets import PRESETS

    for p in PRESETS.values():
        ok, why = p.availability(args.data)
        print(f"{p.name:15s} {p.kind:9s} {'yes' if ok else 'no ':3s}  {p.title} — {why}")
    return 0


def _prepare(args):
    from mape.data.scenarios import check_forget_specs
    from mape.run.workspace import prepare

    check_forget_specs(_forget_specs(args), args.scenario)  # before any slow work
    progress = TqdmProgress(not args.quiet)
    try:
        return prepare(args.preset, args.data, args.train_limit, args.device, args.model, progress,
                       scenario=args.scenario)
    finally:
        progress.close()


def _forget_specs(args) -> list[str]:
    """The forget specs a command was given (unlearn: --forget, repeatable; compare: --forget or --requests)."""
    forget = getattr(args, "forget", None)
    specs = list(forget) if isinstance(forget, list) else [forget] if forget else []
    requests = getattr(args, "requests", None)
    return specs + ([r for r in requests.split(";")] if requests else [])


def cmd_prepare(args) -> int:
    ws = _prepare(args)
    print(f"{ws.preset.name}: original model ready ({len(ws.dataset.train)} train / {len(ws.dataset.test)} test, "
          f"{ws.total_params:,} parameters, cache key {ws.key}, device {ws.device})")
    if ws.scenario is not None:
        sc = ws.scenario
        print(f"scenario {sc.spec}: {sc.size} training examples altered"
              + (f" (trigger {sc.trigger!r}, relabelled {sc.target_name})" if sc.is_backdoor else " (wrong labels)"))
    return 0


def _write_json(path: str, payload: dict) -> None:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1, default=float))
    os.replace(tmp, out)


def _summary(result) -> str:
    m = result.metrics
    rows = []
    for name, vals in m.items():
        rows.append(f"  {name:10s} forget {vals['forget_acc']:.3f}  retain {vals['retain_acc']:.3f}  "
                    f"test {vals['test_acc']:.3f}  mia {vals['mia']:.3f}")
    gap = result.gap_to_retrain
    tail = f"\n  gap to retrain: original {gap['original']:.4f}, unlearned {gap['unlearned']:.4f}" if gap else ""
    return (f"{result.preset} · {result.forget['spec']} ({result.forget['size']} examples) · "
            f"search {result.timing['search_s']:.1f}s, update {result.timing['update_s']:.1f}s, "
            f"{result.params['changed']:,}/{result.params['total']:,} parameters changed, "
            f"{result.selection['swaps']} swaps, step {result.update['step']}\n" + "\n".join(rows) + tail)


def cmd_unlearn(args) -> int:
    from mape.run.config import UnlearnConfig
    from mape.run.unlearn import unlearn_successively

    config = UnlearnConfig(objective=args.objective, sparsity=args.sparsity, update=args.update, step=args.step,
                           seed=args.seed, retrain=args.retrain, joint_budget=args.joint_budget,
                           retain_sample=args.retain_sample, greedy_passes=args.greedy_passes)
    config.validate()  # before any slow work
    ws = _prepare(args)
    progress = TqdmProgress(not args.quiet)
    try:
        results = unlearn_successively(ws, args.forget, config, progress)
    finally:
        progress.close()
    final = results[-1]
    _write_json(args.out, final.to_json())
    for r in results:
        print(_summary(r))
    print(f"wrote {args.out}")
    return 0


def _one_line(message: str) -> str:
    """A message on one line: user text may hold any line separator (\\n, \\r, \\u2028, ...)."""
    return " ".join(part.strip() for part in message.splitlines() if part.strip())


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        if args.command == "compare":
            from mape.evaluation.compare import cmd_compare

            return cmd_compare(args, _prepare, TqdmProgress)
        if args.command == "audit":
            from mape.evaluation.audit import cmd_audit

            return cmd_audit(args, _prepare, TqdmProgress)
        return {"presets": cmd_presets, "prepare": cmd_prepare, "unlearn": cmd_unlearn,
                "merge": cmd_merge, "gate": cmd_gate}[args.command](args)
    except MapeError as exc:
        print(f"error: {_one_line(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print("error: out of memory; try a smaller --retain-sample or --train-limit", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - last line of defence: no traceback for users
        if os.environ.get("MAPE_DEBUG"):
            raise
        if "out of memory" in str(exc).lower():
            print("error: the GPU ran out of memory; try --device cpu or a smaller --retain-sample", file=sys.stderr)
            return 2
        print(f"error: unexpected {type(exc).__name__}: {_one_line(str(exc).split(chr(10))[0])} "
              f"(set MAPE_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1
