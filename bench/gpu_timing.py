"""GPU timing of MAPE's steps at BERT-base shape (random init, no download, no network).

    python bench/gpu_timing.py                       # CUDA, BERT-base shape
    python bench/gpu_timing.py --device cpu --small  # smoke test on a CPU

Model: ``BertForSequenceClassification`` from a ``BertConfig`` with 12 layers × 12 heads × 3,072
filters, hidden 768, 2 labels, random weights. Data: 128 forget and 2,048 retain examples of random
token ids at sequence length 64, batch size 64 (``--small``: 2 layers × 4 heads × 128 filters, hidden
64, 16 + 64 examples, length 16, batch 16).

Timed, each after one untimed warm-up run, with ``torch.cuda.synchronize()`` around every timing
(median of ``--repeats``; peak memory = ``torch.cuda.max_memory_allocated`` after a reset, or the
process's peak RSS on a CPU):
  (a) one mask-gradient pass over the 2,176 examples (``mape.method.scoring.mask_gradients``: forget pass +
      retain pass), in fp32 and under bf16 autocast; also with the parameter statistics that the
      ``so`` update needs (``with_params=True``, the pipeline's setting);
  (b) the full mask search ``mape.method.search.search`` (mask gradients + warm start + greedy block
      refinement), without and with the parameter statistics, and the warm start + refinement alone;
  (c) the ``so`` update: the preconditioned direction plus one step with a fixed η, and the ``auto``
      step-size search over the whole η grid (forward passes on 128 forget + 128 retain check examples).
The last line printed is one JSON object with every number.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench.common import proc_status_mb, reset_peak_rss, sync as _sync  # noqa: E402

FULL = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
            vocab_size=30522, n_forget=128, n_retain=2048, seq_len=64, batch_size=64)
SMALL = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
             vocab_size=1000, n_forget=16, n_retain=64, seq_len=16, batch_size=16)


def timed(fn, dev, repeats: int, warmup: int = 1) -> dict:
    """Median / min seconds of ``fn()`` after ``warmup`` untimed calls, and the peak memory."""
    for _ in range(warmup):
        fn()
    _sync(dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    else:
        reset_peak_rss()
    secs = []
    out = None
    for _ in range(repeats):
        _sync(dev)
        t0 = time.perf_counter()
        out = fn()
        _sync(dev)
        secs.append(time.perf_counter() - t0)
    peak = (torch.cuda.max_memory_allocated(dev) / 2**20) if dev.type == "cuda" else proc_status_mb("VmHWM")
    res = {"median_s": round(statistics.median(secs), 4), "min_s": round(min(secs), 4),
           "runs_s": [round(s, 4) for s in secs], "peak_mb": None if peak is None else round(peak, 1)}
    return res, out


def build(cfg: dict, dev, seed: int):
    import transformers as T

    from mape.method.models import Encoded, TaskModel

    torch.manual_seed(seed)
    config = T.BertConfig(hidden_size=cfg["hidden_size"], num_hidden_layers=cfg["num_hidden_layers"],
                          num_attention_heads=cfg["num_attention_heads"], intermediate_size=cfg["intermediate_size"],
                          vocab_size=cfg["vocab_size"], max_position_embeddings=max(512, cfg["seq_len"]), num_labels=2)
    model = T.BertForSequenceClassification(config).to(dev).eval()
    task = TaskModel(model, "text", ["neg", "pos"])
    g = torch.Generator().manual_seed(seed + 1)

    def data(n):
        ids = torch.randint(1000 if cfg["vocab_size"] > 2000 else 5, cfg["vocab_size"], (n, cfg["seq_len"]),
                            generator=g)
        return Encoded({"input_ids": ids, "attention_mask": torch.ones_like(ids),
                        "token_type_ids": torch.zeros_like(ids)}, torch.randint(0, 2, (n,), generator=g))

    return task, data(cfg["n_forget"]), data(cfg["n_retain"])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Time MAPE's mask gradients, search and so update at BERT-base shape.")
    ap.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    ap.add_argument("--small", action="store_true", help="a tiny model and data (CPU smoke test)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sparsity", type=float, default=0.9)
    ap.add_argument("--no-bf16", action="store_true", help="skip the bf16 autocast timing")
    ap.add_argument("--out", default=None, help="also write the JSON to this file")
    args = ap.parse_args(argv)
    if args.device == "auto":
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    elif args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but no CUDA GPU is available", file=sys.stderr)
        return 2
    else:
        dev = torch.device(args.device)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # honest fp32 numbers
        torch.backends.cudnn.allow_tf32 = False

    from mape.method.adapters import unit_param_masks
    from mape.method.scoring import mask_gradients, unit_scores
    from mape.method.search import refine, search, warm_start
    from mape.method.update import MaskedParams, Target, model_accuracy, so_direction, so_update

    cfg = SMALL if args.small else FULL
    task, forget, retain = build(cfg, dev, args.seed)
    bs = cfg["batch_size"]
    n_params = sum(p.numel() for p in task.model.parameters())
    log = lambda *a: print(*a, file=sys.stderr, flush=True)  # noqa: E731
    log(f"device {torch.cuda.get_device_name(dev) if dev.type == 'cuda' else 'CPU'}; {n_params:,} parameters; "
        f"{len(forget)} forget + {len(retain)} retain examples, length {cfg['seq_len']}, batch {bs}")
    out = {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU",
           "torch": torch.__version__, "transformers": __import__("transformers").__version__,
           "config": {**cfg, "params": n_params, "small": args.small, "repeats": args.repeats,
                      "sparsity": args.sparsity, "attn_implementation":
                      getattr(task.model.config, "_attn_implementation", None)},
           "examples_per_pass": len(forget) + len(retain)}

    # (a) mask gradients
    r, mg = timed(lambda: mask_gradients(task, forget, retain, bs), dev, args.repeats)
    out["mask_grad_fp32"] = r
    log(f"(a) mask gradients fp32: {r['median_s']:.3f}s, peak {r['peak_mb']} MB")
    if not args.no_bf16:
        def bf16():
            with torch.autocast(device_type=dev.type, dtype=torch.bfloat16):
                return mask_gradients(task, forget, retain, bs)
        r, mg16 = timed(bf16, dev, args.repeats)
        hs32, fs32 = unit_scores("mlr", mg)
        hs16, fs16 = unit_scores("mlr", mg16)
        cos = float(torch.nn.functional.cosine_similarity(torch.cat([hs32.flatten(), fs32.flatten()]).double(),
                                                          torch.cat([hs16.flatten(), fs16.flatten()]).double(), 0))
        r["score_cosine_vs_fp32"] = round(cos, 5)
        out["mask_grad_bf16"] = r
        log(f"(a) mask gradients bf16 autocast: {r['median_s']:.3f}s, peak {r['peak_mb']} MB, score cosine {cos:.4f}")
        del mg16
    r, _ = timed(lambda: mask_gradients(task, forget, retain, bs, with_params=True), dev, args.repeats)
    out["mask_grad_with_params_fp32"] = r
    log(f"(a) mask gradients + parameter statistics fp32: {r['median_s']:.3f}s, peak {r['peak_mb']} MB")

    # (b) search
    a = task.adapter

    def refine_only():
        hs, fs = unit_scores("mlr", mg)
        hs, fs = hs.double().numpy(), fs.double().numpy()
        heads, filters = warm_start(hs, fs, args.sparsity)
        swaps = 0
        for (fst, rst, cur, sc) in ((mg.forget_heads, mg.retain_heads, heads, hs),
                                    (mg.forget_filters, mg.retain_filters, filters, fs)):
            _, k = refine(fst.grad_sum, rst.batch_grads, rst.n, sc, cur, 1)
            swaps += k
        return swaps

    r, swaps = timed(refine_only, dev, args.repeats)
    r["swaps"] = swaps
    out["warm_start_and_refine"] = r
    log(f"(b) warm start + greedy refinement: {r['median_s']:.3f}s ({swaps} swaps)")
    r, res = timed(lambda: search(task, forget, retain, "mlr", args.sparsity, batch_size=bs), dev, args.repeats)
    r["swaps"] = res[0].swaps
    out["search"] = r
    log(f"(b) full search: {r['median_s']:.3f}s, peak {r['peak_mb']} MB")
    r, res = timed(lambda: search(task, forget, retain, "mlr", args.sparsity, batch_size=bs, with_params=True),
                   dev, args.repeats)
    out["search_with_params"] = r
    sel, mgp = res
    log(f"(b) full search + parameter statistics (pipeline setting for so): {r['median_s']:.3f}s, "
        f"peak {r['peak_mb']} MB")

    # (c) so update
    masks = unit_param_masks(a, torch.as_tensor(sel.heads), torch.as_tensor(sel.filters))
    mp = MaskedParams(masks)
    check_f, check_r = (forget.take(torch.arange(min(128, len(forget)))),
                        retain.take(torch.arange(min(128, len(retain)))))

    def evaluate():
        return model_accuracy(task, check_f), model_accuracy(task, check_r)

    def fixed():
        d = so_direction(mp, mgp.param_forget_grad, mgp.param_retain_fisher, 1.0)
        return so_update(task, mp, d, 0.01, evaluate, Target(0.0, 0.0))

    r, rep = timed(fixed, dev, args.repeats)
    r["params_changed"] = rep.params_changed
    r["params_selected"] = mp.count
    out["so_update_fixed"] = r
    log(f"(c) so update, fixed step: {r['median_s']:.3f}s, {rep.params_changed:,} parameters changed")
    never = Target(forget_acc=-1.0, retain_acc=0.0, tolerance=1.0)  # never reached: the whole grid is tried

    def auto():
        d = so_direction(mp, mgp.param_forget_grad, mgp.param_retain_fisher, 1.0)
        return so_update(task, mp, d, "auto", evaluate, never)

    r, rep = timed(auto, dev, args.repeats)
    r["trials"] = len(rep.trials)
    out["so_update_auto"] = r
    log(f"(c) so update, auto step ({len(rep.trials)} trials): {r['median_s']:.3f}s")
    out["total_mape_s"] = round(out["search_with_params"]["median_s"] + out["so_update_auto"]["median_s"], 4)
    line = json.dumps(out)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(line + "\n")
    print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
