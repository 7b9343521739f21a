#!/usr/bin/env bash
# The FER2013 10 % + LFW experiment of docs/RESULTS_META.md on one CUDA GPU, in one call:
#   1. scripts/gpu-train.sh on the packed data: Meta-Face2Exp steps per second, alone on the GPU;
#   2. SL-10 % from scratch (the CPU run `sl10`'s recipe);
#   3. for each seed, from SL-10 %'s best weights: SL continued and Meta-Face2Exp, STEPS each,
#      every run of this stage at once (the GPU is far from full with one 48 px ResNet-18).
# Stage 3 is cut off by `timeout` so that the whole script ends within BUDGET_S seconds;
# the evaluations every STEPS/4 steps that finished are in each run's metrics.jsonl.
#
# DATA is what tools/pack_gpu_data.py writes (fer10/, val/, lfw48/).
# Usage: scripts/gpu-meta10.sh FACE2EXP_BINARY DATA RESULTS_DIR [STEPS] [SEED ...]
set -uo pipefail
bin=${1:?usage: gpu-meta10.sh FACE2EXP_BINARY DATA RESULTS_DIR [STEPS] [SEED ...]}
data=${2:?missing DATA}
results=${3:?missing RESULTS_DIR}
steps=${4:-1000}
shift $(( $# < 4 ? $# : 4 ))
seeds=${*:-2 3 5}
budget=${BUDGET_S:-480}
runs=${RUNS_DIR:-/tmp/face2exp-gpu-runs}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$results"
export LD_LIBRARY_PATH="/usr/local/nvidia/lib64:/usr/local/nvidia/lib:$(echo /opt/torch/.venv/lib/python3*/site-packages/nvidia/cu13/lib):${LD_LIBRARY_PATH:-}"
nvidia-smi -L || true
"$bin" --version || exit 1
rm -rf "$runs"; mkdir -p "$runs"

echo "== 1. steps/s (${SPEED_STEPS:-60} steps, mu 7, batch 64, 48 px) =="
LABELED=imagefolder:$data/fer10 LABELED_FRACTION=1 UNLABELED=folder:$data/lfw48 UNLABELED_CROP=1 \
  VAL=imagefolder:$data/val INPUT_SIZE=48 OUT_DIR=$runs/speed \
  "$here/gpu-train.sh" "$bin" "$data" "${SPEED_STEPS:-60}" || { echo "speed run failed"; exit 1; }

F=("$bin" train --device "${DEVICE:-cuda:0}" --labeled "imagefolder:$data/fer10" --val "imagefolder:$data/val"
   --batch-size 64 --input-size 48 --label-smoothing 0.1 --workers 4 --quiet)
echo "== 2. SL-10 % from scratch, 500 steps (at $SECONDS s) =="
"${F[@]}" --method sl --out "$runs/sl10" --steps "${SL_STEPS:-500}" --lr 0.05 --warmup-steps 50 \
  --eval-every 250 --checkpoint-every 250 --log-every 10 --seed 1 || { echo "sl10 failed"; exit 1; }
echo "sl10 done at $SECONDS s"

left=$(( budget - SECONDS - 30 ))
echo "== 3. pairs, $steps steps each, seeds $seeds, cut at $left s =="
COMMON=(--init "$runs/sl10/best_base.safetensors" --steps "$steps" --lr 0.01 --warmup-steps 10
        --eval-every $(( steps / 4 )) --checkpoint-every "$steps" --log-every 10)
pairs=()
for seed in $seeds; do
  timeout "$left" "${F[@]}" --method sl --out "$runs/sl10-ft-s$seed" "${COMMON[@]}" --seed "$seed" \
    > "$runs/sl10-ft-s$seed.log" 2>&1 &
  pairs+=($!)
  # By epochs like its SL pair, so both draw the same labeled batches (the subset is balanced).
  timeout "$left" "${F[@]}" --method meta --no-balanced-sampler --out "$runs/meta10-ft-s$seed" \
    "${COMMON[@]}" --seed "$seed" \
    --unlabeled "folder:$data/lfw48" --unlabeled-center-crop 1 --mu 2 --lr-adaptation 0.001 \
    --uda-steps $(( steps / 2 )) --feedback exact > "$runs/meta10-ft-s$seed.log" 2>&1 &
  pairs+=($!)
done
nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv -l 20 > "$runs/gpu-load.csv" 2>&1 &
monitor=$!
wait "${pairs[@]}"
kill "$monitor" 2>/dev/null
echo "pairs done at $SECONDS s"

# Results: every run's metrics, config, plots and log; no weights.
(cd "$runs" && tar czf "$results/gpu-runs.tar.gz" --exclude='*.safetensors' .)
python3 - "$runs" <<'PY'
import json, os, sys
root = sys.argv[1]
for name in sorted(os.listdir(root)):
    path = os.path.join(root, name, "metrics.jsonl")
    if not os.path.exists(path):
        continue
    recs = [json.loads(l) for l in open(path) if l.strip()]
    train = [r for r in recs if r.get("kind") == "train"]
    for e in (r for r in recs if r.get("kind") == "eval"):
        print(f"{name:16s} {e['net']:10s} step {e['step']:5d}  overall {e['overall_acc']:.4f}"
              f"  mean {e['mean_class_acc']:.4f}  std {e['std_class_acc']:.4f}")
    if len(train) > 1:
        ips = [r["labeled_images_per_s"] for r in train[1:]]
        print(f"{name:16s} last step {train[-1]['step']}  labeled images/s {sum(ips)/len(ips):.1f}")
PY
# The paired comparison (each Meta run against its SL control), as in docs/RESULTS_META.md.
compare=()
for seed in $seeds; do compare+=(--pair "$runs/sl10-ft-s$seed" "$runs/meta10-ft-s$seed"); done
python3 "$here/../tools/compare_runs.py" "${compare[@]}" || true
