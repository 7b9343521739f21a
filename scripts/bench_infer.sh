#!/usr/bin/env bash
# Latency of face2exp-infer (ResNet-18, batch 1, 1 and 2 threads); prints a markdown table.
# Usage: scripts/bench_infer.sh [iterations]   (default 20 timed iterations per row)
set -euo pipefail
cd "$(dirname "$0")/.."
INFER_BENCH_ITERS="${1:-20}" cargo bench -p face2exp-infer --bench infer_latency
