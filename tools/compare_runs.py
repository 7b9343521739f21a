#!/usr/bin/env python3
"""Compares paired training runs (an SL control and a Meta-Face2Exp run per seed) from their logs.

Each pair is two run folders written by `face2exp train` that started from the same weights
with the same seed, schedule and labeled batches. Reads every run's metrics.jsonl (evaluation
records: `kind` "eval", `net` "base" or "adaptation") and prints, as Markdown tables:

  1. every evaluation of both runs of each pair: overall / mean / std of per-class accuracy on
     the validation set (the paper's metrics) and the Meta run minus its control;
  2. per evaluation step, the paired differences averaged over the pairs with the standard
     error of that average, and on how many pairs the Meta run had the higher mean class
     accuracy and the lower std (the paper's claim);
  3. the Meta runs' feedback statistics over their logged windows: f's mean, the mean of its
     window means' magnitudes, its root mean square over single steps, the share of steps
     with positive f, |L_f| against L_s (the feedback term's size relative to the supervised
     loss), the mean of f_raw (f as computed, before a baseline is subtracted or
     `zero_feedback` forces it to 0) and the share of windows whose mean f_raw is positive,
     L_c over the run's second half (after lambda_u's usual ramp-up), the confidence mask
     rate and the median labeled images per second.

The paper's claim holds on a pair at a step when Meta's mean class accuracy is higher and its
std lower than the control's; nothing here decides significance, it only lays the numbers out.

Usage: compare_runs.py --pair SL_DIR META_DIR [--pair SL_DIR META_DIR ...] [--net base]
                       [--labels CONTROL RUN]   (names for the columns; default SL Meta)
       compare_runs.py --meta META_DIR [--meta META_DIR ...]   (table 3 only, no control needed)
Only the Python standard library.
"""
import argparse
import json
import os
import statistics
import sys


def read_records(run_dir):
    path = os.path.join(run_dir, "metrics.jsonl")
    try:
        with open(path) as f:
            lines = [line for line in f if line.strip()]
    except OSError as e:
        sys.exit(f"{path}: cannot read ({e.strerror})")
    records = []
    for number, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            # A run killed mid-write leaves a torn last line; anything else is a broken log.
            if number == len(lines):
                print(f"{path}: line {number} is incomplete, ignored", file=sys.stderr)
            else:
                sys.exit(f"{path}: line {number} is not JSON ({e.msg})")
    return records


def evaluations(records, net):
    """The evaluation records of one network, by step (a resumed run's later record wins)."""
    found = {}
    for r in records:
        if r.get("kind") == "eval" and r.get("net", "base") == net:
            found[r["step"]] = r
    return found


def triple(record):
    return tuple(100.0 * record[k] for k in ("overall_acc", "mean_class_acc", "std_class_acc"))


def fmt(values):
    return " / ".join(f"{v:.2f}" for v in values)


def signed(values):
    return " / ".join(f"{v:+.2f}" for v in values)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pair", nargs=2, action="append", default=[],
                        metavar=("SL_DIR", "META_DIR"), help="a control run and its Meta run")
    parser.add_argument("--meta", action="append", default=[], metavar="META_DIR",
                        help="a Meta run without a control: only its feedback statistics")
    # The control need not be SL: an f = 0 Meta run against its exact-f twin is the ablation.
    parser.add_argument("--labels", nargs=2, metavar=("CONTROL", "RUN"),
                        help="the names the tables give the two runs of a pair (default: SL Meta)")
    parser.add_argument("--net", choices=["base", "adaptation"],
                        help="which of the Meta run's networks to compare with the control"
                             " (default: base)")
    args = parser.parse_args()
    if not args.pair and not args.meta:
        parser.error("give at least one --pair or --meta")
    if args.meta:
        if args.pair:
            parser.error("--meta prints only the feedback table; give it without --pair")
        # The feedback table has no network column; a --net here would be silently ignored.
        if args.net is not None:
            parser.error("--net picks the network compared in --pair tables; --meta has none")
        if args.labels is not None:
            parser.error("--labels names the runs of --pair tables; --meta has none")
        feedback_table([(run_name(d), read_records(d)) for d in args.meta])
        return

    pairs = []
    for sl_dir, meta_dir in args.pair:
        sl = evaluations(read_records(sl_dir), "base")
        meta_records = read_records(meta_dir)
        meta = evaluations(meta_records, args.net or "base")
        steps = sorted(set(sl) & set(meta))
        if not steps:
            # A run cut short (the GPU script's time budget) leaves its pair incomplete;
            # the other pairs still say something.
            print(f"{sl_dir} and {meta_dir}: no evaluation step in common, pair skipped",
                  file=sys.stderr)
            continue
        name = run_name(meta_dir)
        pairs.append((name, sl, meta, steps, meta_records))
    if not pairs:
        sys.exit("no pair has an evaluation step in common")

    control, run = args.labels or ("SL", "Meta")
    print(f"| pair | step | {control} overall / mean / std | {run} overall / mean / std |"
          f" {run} - {control} |")
    print("|---|---|---|---|---|")
    deltas = {}
    for name, sl, meta, steps, _ in pairs:
        for step in steps:
            a, b = triple(sl[step]), triple(meta[step])
            d = tuple(y - x for x, y in zip(a, b))
            deltas.setdefault(step, []).append(d)
            print(f"| {name} | {step} | {fmt(a)} | {fmt(b)} | {signed(d)} |")

    print()
    print(f"| step | pairs | mean of {run} - {control} (overall / mean / std) |"
          " its standard error | pairs with higher mean | with lower std | with both |")
    print("|---|---|---|---|---|---|---|")
    for step in sorted(deltas):
        ds = deltas[step]
        avg = tuple(statistics.fmean(d[i] for d in ds) for i in range(3))
        # The spread of the paired differences over the seeds, as the standard error of
        # their mean (undefined for one pair).
        if len(ds) > 1:
            se = fmt(tuple(statistics.stdev(d[i] for d in ds) / len(ds) ** 0.5 for i in range(3)))
        else:
            se = "-"
        higher = sum(d[1] > 0 for d in ds)
        lower = sum(d[2] < 0 for d in ds)
        both = sum(d[1] > 0 and d[2] < 0 for d in ds)
        print(f"| {step} | {len(ds)} | {signed(avg)} | {se} | {higher} | {lower} | {both} |")

    print()
    feedback_table([(name, records) for name, _, _, _, records in pairs])


def run_name(run_dir):
    return os.path.basename(os.path.normpath(run_dir))


def feedback_table(runs):
    print("| Meta run | logged windows | mean f | mean abs f | rms f per step | steps with f > 0 |"
          " mean abs L_f / mean L_s | mean f_raw | windows with f_raw > 0 |"
          " mean L_c, second half | mask rate | labeled images/s (median) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, records in runs:
        train = [r for r in records if r.get("kind") == "train" and "f" in r]
        if not train:
            continue
        mean_f = statistics.fmean(r["f"] for r in train)
        # Of the window means: how large the feedback was, whichever its sign.
        abs_f = statistics.fmean(abs(r["f"]) for r in train)
        # Per step, not per window: a window logs its mean f and f_std, the population std of
        # its steps' f, so the mean of f^2 over its steps is f_std^2 + f^2 (windows are equally
        # long). Steps of opposite sign cancel in the window means; they do not here.
        if all("f_std" in r for r in train):
            rms = statistics.fmean(r["f_std"] ** 2 + r["f"] ** 2 for r in train) ** 0.5
            rms_f = f"{rms:.2e}"
        else:
            rms_f = "-"
        # L_f = f * CE(pseudo, B) against the supervised loss it is added to.
        with_losses = [r for r in train if "loss_f" in r and "loss_s" in r]
        if with_losses:
            size = statistics.fmean(abs(r["loss_f"]) for r in with_losses) / statistics.fmean(
                r["loss_s"] for r in with_losses)
            term = f"{size:.2e}"
        else:
            term = "-"
        # Each window logs its share of steps with f > 0; the windows are equally long.
        positive = statistics.fmean(r.get("f_positive_ratio", 0.0) for r in train)
        # f_raw is what the feedback computed; with `zero_feedback` (the ablation) f is 0 and
        # only f_raw says what the feedback would have been. Logs older than f_raw lack it.
        raw = [r["f_raw"] for r in train if "f_raw" in r]
        mean_raw = f"{statistics.fmean(raw):.2e}" if raw else "-"
        raw_positive = f"{100 * sum(v > 0 for v in raw) / len(raw):.0f} %" if raw else "-"
        last_step = max(r["step"] for r in train)
        late_c = [r["loss_c"] for r in train if "loss_c" in r and r["step"] > last_step / 2]
        loss_c = f"{statistics.fmean(late_c):.3f}" if late_c else "-"
        mask = statistics.fmean(r.get("mask_rate", 0.0) for r in train)
        speed = statistics.median(r["labeled_images_per_s"] for r in train)
        print(f"| {name} | {len(train)} | {mean_f:.2e} | {abs_f:.2e} | {rms_f} |"
              f" {100 * positive:.0f} % | {term} | {mean_raw} | {raw_positive} | {loss_c} |"
              f" {mask:.4f} | {speed:.1f} |")


if __name__ == "__main__":
    try:
        main()
    except BrokenPipeError:
        # `compare_runs.py ... | head` closed the pipe: the reader has what it wanted. Point
        # stdout at /dev/null so the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
