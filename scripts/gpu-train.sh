#!/usr/bin/env bash
# A short Meta-Face2Exp run on a CUDA machine that prints training steps per second.
#
# Build here (no GPU needed to compile; a CUDA 13.0 toolkit from PyPI wheels is enough):
#   source <(../shared/cuda/setup.sh)
#   cargo build --release -p face2exp-trainer --features cuda
# Then, on the GPU machine, with the binary and a data folder (fer2013/{train,val}, lfw/) beside it:
#   scripts/gpu-train.sh target/release/face2exp DATA_DIR [STEPS]
# The same config runs on the CPU by replacing --device (DEVICE=cpu scripts/gpu-train.sh ...).
# The data can be swapped through LABELED, LABELED_FRACTION, UNLABELED, UNLABELED_CROP, VAL and
# INPUT_SIZE, e.g. for the packed copy that tools/pack_gpu_data.py writes:
#   LABELED=imagefolder:P/fer10 LABELED_FRACTION=1 UNLABELED=folder:P/lfw48 UNLABELED_CROP=1 \
#   VAL=imagefolder:P/val INPUT_SIZE=48 scripts/gpu-train.sh BIN P
set -euo pipefail
bin=${1:?usage: gpu-train.sh FACE2EXP_BINARY DATA_DIR [STEPS]}
data=${2:?usage: gpu-train.sh FACE2EXP_BINARY DATA_DIR [STEPS]}
steps=${3:-200}
device=${DEVICE:-cuda:0}
out=${OUT_DIR:-/tmp/face2exp-gpu-run}
batch=${BATCH_SIZE:-64}
rm -rf "$out"
# Driver libraries of the GPU machine and CUDA 13 runtime libraries from the PyTorch install.
export LD_LIBRARY_PATH="/usr/local/nvidia/lib64:/usr/local/nvidia/lib:$(echo /opt/torch/.venv/lib/python3*/site-packages/nvidia/cu13/lib):${LD_LIBRARY_PATH:-}"
start=$(date +%s.%N)
"$bin" train --method meta --device "$device" \
  --labeled "${LABELED:-imagefolder:$data/fer2013/train}" \
  --labeled-fraction "${LABELED_FRACTION:-0.1}" --balanced --balanced-sampler \
  --unlabeled "${UNLABELED:-folder:$data/lfw}" --unlabeled-center-crop "${UNLABELED_CROP:-0.46}" \
  --val "${VAL:-imagefolder:$data/fer2013/val}" --eval-every "$steps" \
  --steps "$steps" --batch-size "$batch" --mu "${MU:-7}" --input-size "${INPUT_SIZE:-64}" \
  --workers "${WORKERS:-4}" --log-every 20 --quiet --out "$out"
end=$(date +%s.%N)
python3 - "$out/metrics.jsonl" "$start" "$end" "$batch" <<'PY'
import json, sys
recs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
train = [r for r in recs if r.get("kind") == "train"]
evals = [r for r in recs if r.get("kind") == "eval" and r.get("net") == "base"]
batch = int(sys.argv[4])
steps = train[-1]["step"] if train else 0
# The first logged window holds start-up (kernel loading, first allocations): leave it out.
ips = [r["labeled_images_per_s"] for r in train[1:]] or [0]
wall = float(sys.argv[3]) - float(sys.argv[2])
print(f"steps {steps}  wall {wall:.1f} s (incl. data preload)  labeled images/s {sum(ips)/len(ips):.1f}"
      f"  steps/s {sum(ips)/len(ips)/batch:.2f}")
if evals:
    e = evals[-1]
    print(f"val overall {e['overall_acc']:.4f}  mean class {e['mean_class_acc']:.4f}  std {e['std_class_acc']:.4f}")
PY
