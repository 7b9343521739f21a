#!/usr/bin/env bash
# A/B of two builds of the training-step benchmark (trainer/benches/train_step.rs), alternating
# them so that this shared VM's drift (20-40 % over minutes) lands on both sides of each ratio:
# round r runs A then B (odd r) or B then A (even r), each a fresh process timing the median of
# --reps steps after one warm-up. Prints each configuration's per-round ratios B/A and their
# median (< 1: B is faster). Build A, copy the executable aside, change the code, build B:
#
#   cargo bench -p face2exp-trainer --bench train_step --no-run   # prints the executable
#   cp target/release/deps/train_step-<hash> /tmp/step-a
#   ... change ..., build again, then:
#   scripts/bench_ab.sh /tmp/step-a target/release/deps/train_step-<hash> 5 "48/32 64/64"
#
# Arguments: EXE_A EXE_B ROUNDS "IMAGE/BATCH ..." [more train_step arguments, e.g. --conv im2col];
# REPS=N times N steps per process (default 3).
set -euo pipefail
if [ $# -lt 4 ]; then
    sed -n '2,14p' "$0" >&2
    exit 2
fi
a=$1 b=$2 rounds=$3 configs=$4
shift 4
export RAYON_NUM_THREADS="${RAYON_NUM_THREADS:-2}"
median_s() {
    "$1" step --image "$2" --batch "$3" --reps "${REPS:-3}" --optimizer trainer "${@:4}" 2>/dev/null |
        python3 -c 'import json, sys; print(json.loads(sys.stdin.read().strip().splitlines()[-1])["median_s"])'
}
echo "| image | batch | B/A per round | median B/A |"
echo "|---|---|---|---|"
for config in $configs; do
    image=${config%/*} batch=${config#*/}
    ratios=()
    for r in $(seq "$rounds"); do
        if [ $((r % 2)) = 1 ]; then
            ta=$(median_s "$a" "$image" "$batch" "$@"); tb=$(median_s "$b" "$image" "$batch" "$@")
        else
            tb=$(median_s "$b" "$image" "$batch" "$@"); ta=$(median_s "$a" "$image" "$batch" "$@")
        fi
        ratios+=("$(python3 -c "print(f'{$tb / $ta:.3f}')")")
    done
    median=$(python3 -c "import statistics, sys; print(f'{statistics.median(map(float, sys.argv[1:])):.3f}')" "${ratios[@]}")
    echo "| $image | $batch | ${ratios[*]} | $median |"
done
