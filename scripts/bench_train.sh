#!/usr/bin/env bash
# ResNet-18 CPU training step, candle (trainer/src/ops kernels) vs PyTorch, see docs/BENCHMARKS.md.
# Needs a Python with torch (`pip install torch numpy`); pick it with PYTHON=/path/to/python.
# Extra arguments go to scripts/bench_train.py, e.g. --sizes 64 --batches 32 --candle-baseline.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c 'import torch' 2>/dev/null; then
    echo "error: $PYTHON cannot import torch; install it (pip install torch numpy) or set PYTHON" >&2
    exit 1
fi
exec "$PYTHON" scripts/bench_train.py "$@"
