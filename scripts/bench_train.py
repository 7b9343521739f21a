#!/usr/bin/env python3
"""ResNet-18 CPU training step: candle with trainer/src/ops kernels vs PyTorch, side by side.

For every configuration the Rust benchmark (trainer/benches/train_step.rs) and the same step in
PyTorch run one after the other, each in its own process so the peak RSS belongs to that run.
The step is forward (train-mode BatchNorm) + cross-entropy + backward + SGD (lr 0.01) on random
images and labels, 7 classes, torchvision's ResNet-18 (7x7/2 stem and 3x3/2 max pool). The SGD is
the trainer's by default (momentum 0.9, Nesterov, weight decay 5e-4 on conv and linear weights,
none on BatchNorm and biases), in PyTorch the same through two parameter groups;
`--optimizer plain` uses lr alone (what the tables before session 9 measured).

    pip install torch numpy         # CPU is enough; any recent torch 2.x
    python3 scripts/bench_train.py --threads 2
    python3 scripts/bench_train.py --sizes 64 --batches 32 --reps 2 --candle-baseline
    python3 scripts/bench_train.py --threads 2 --rounds 5   # paired rounds, see --help
    python3 scripts/bench_train.py --threads 2 --interleave 21  # interleaved steps, see --help

Prints a markdown table: median seconds per step (after one warm-up), ratio candle/torch
(< 1 means candle is faster) and the peak RSS of each process. With `--rounds N` every
configuration is timed N times, the processes and configurations alternating their order from
round to round; the ratio is then the median of the N per-round ratios, each from two processes
run back to back, printed with their range, which holds up against a VM whose speed drifts
over minutes much better than one long block per implementation. With `--interleave N` one
process per implementation stays alive for each configuration (`train_step --serve`) and they
take turns of a few steps back to back; each turn's time is divided by the neighbouring turn of
the other process, seconds apart, which cancels the VM's drift best of all.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from statistics import median

NUM_CLASSES = 7


# --------------------------------------------------------------------------- PyTorch side
def torch_resnet18(torch):
    """torchvision.models.resnet18(num_classes=7) without needing torchvision."""
    nn = torch.nn

    class BasicBlock(nn.Module):
        def __init__(self, c_in, planes, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(c_in, planes, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
            self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(planes)
            self.relu = nn.ReLU(inplace=True)
            self.downsample = None
            if stride != 1 or c_in != planes:
                self.downsample = nn.Sequential(
                    nn.Conv2d(c_in, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
                )

        def forward(self, x):
            identity = x if self.downsample is None else self.downsample(x)
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            return self.relu(out + identity)

    layers = [
        nn.Conv2d(3, 64, 7, 2, 3, bias=False),
        nn.BatchNorm2d(64),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(3, 2, 1),
    ]
    c_in = 64
    for i, planes in enumerate([64, 128, 256, 512]):
        for b in range(2):
            layers.append(BasicBlock(c_in, planes, 2 if (i > 0 and b == 0) else 1))
            c_in = planes
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, NUM_CLASSES)]
    return nn.Sequential(*layers)


def torch_worker(what, image, batch, reps, threads, optimizer, serve=False):
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = torch_resnet18(torch)
    images = torch.rand(batch, 3, image, image) * 4 - 2
    labels = torch.randint(0, NUM_CLASSES, (batch,))
    if optimizer == "trainer":
        params = list(model.parameters())
        groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": 5e-4},
                  {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
        opt = torch.optim.SGD(groups, lr=0.01, momentum=0.9, nesterov=True)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
    loss_fn = torch.nn.CrossEntropyLoss()
    if what == "forward":
        model.eval()
    times, phases = [], ([], [], [])
    # With serve, each line of standard input asks for a block of that many repetitions,
    # answered with their times on one line (see train_step --serve).
    blocks = (int(line.strip() or 1) for line in iter(sys.stdin.readline, "")) if serve \
        else iter([reps])
    left, block = 0, []
    rep = 0
    while True:
        if rep > 0 and left == 0:
            left = next(blocks, 0)
            if left == 0:
                break
        start = time.perf_counter()
        if what == "step":
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(images), labels)
            forward_done = time.perf_counter()
            loss.backward()
            backward_done = time.perf_counter()
            opt.step()
            value = loss.item()
            if rep > 0:
                spans = (start, forward_done, backward_done, time.perf_counter())
                for phase, a, b in zip(phases, spans, spans[1:]):
                    phase.append(b - a)
        else:
            with torch.no_grad():
                value = model(images).sum().item()
        elapsed = time.perf_counter() - start
        if rep == 0:
            if serve:
                print("ready", flush=True)
        else:
            times.append(elapsed)
            block.append(elapsed)
            left -= 1
            if left == 0:
                if serve:
                    print(" ".join(f"{t:.6f}" for t in block), flush=True)
                block = []
        rep += 1
    assert times, "no step was timed"
    assert value == value, "non-finite result"
    times.sort()
    medians = {}
    if phases[0]:
        for name, phase in zip(("forward_s", "backward_s", "update_s"), phases):
            medians[name] = sorted(phase)[len(phase) // 2]
    print(json.dumps({
        **medians,
        "impl": f"torch-{torch.__version__}",
        "what": what, "image": image, "batch": batch, "threads": torch.get_num_threads(),
        "median_s": times[len(times) // 2], "min_s": times[0],
        # ru_maxrss is KiB on Linux.
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }))


# --------------------------------------------------------------------------- orchestration
def build_rust_bench(repo):
    """Builds the benchmark in the bench profile and returns the executable's path."""
    out = subprocess.run(
        ["cargo", "bench", "-p", "face2exp-trainer", "--bench", "train_step", "--no-run",
         "--message-format=json"],
        cwd=repo, check=True, stdout=subprocess.PIPE, text=True,
    ).stdout
    for line in out.splitlines():
        msg = json.loads(line)
        if msg.get("reason") == "compiler-artifact" and msg["target"]["name"] == "train_step" \
                and msg.get("executable"):
            return msg["executable"]
    sys.exit("could not find the train_step benchmark executable in cargo's output")


def run_json(cmd, env):
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sizes", default="64,112", help="square input sides")
    ap.add_argument("--batches", default="32,64",
                    help="batches of the step rows (empty: forward rows only)")
    ap.add_argument("--reps", type=int, default=3, help="timed steps after one warm-up")
    ap.add_argument("--forward-reps", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=1,
                    help="time every configuration this many times, alternating the order of the "
                         "processes and of the configurations; the ratio is the median of the "
                         "rounds' ratios, with their range (this VM drifts by 20-40 %% between runs)")
    ap.add_argument("--candle-baseline", action="store_true",
                    help="also time candle's built-in kernels (slow)")
    ap.add_argument("--minimal-model", action="store_true",
                    help="also time the bench's minimal ResNet-18 that uses the fused train-mode BatchNorm")
    ap.add_argument("--optimizer", choices=["trainer", "plain"], default="trainer",
                    help="the trainer's SGD (momentum, Nesterov, weight decay) or lr alone")
    ap.add_argument("--conv-baseline", metavar="ALGORITHM",
                    help="also time the fast kernels with this --conv of the step benchmark, e.g. "
                         "auto-no-taps (the default before per-tap GEMMs) or im2col")
    ap.add_argument("--baseline-exe", metavar="PATH",
                    help="also time another build of the train_step benchmark, e.g. an earlier "
                         "commit's (copy its executable aside before rebuilding)")
    ap.add_argument("--im2col-baseline", action="store_true",
                    help="same as --conv-baseline im2col (no Winograd, no per-tap GEMMs)")
    ap.add_argument("--phases", action="store_true",
                    help="also print each step's forward (with the loss), backward and update times")
    ap.add_argument("--bench-exe", help="prebuilt train_step executable (skips cargo)")
    ap.add_argument("--interleave", type=int, metavar="N",
                    help="instead of rounds of processes, keep one process per implementation and "
                         "configuration alive and give each N turns of --block steps (forwards) "
                         "back to back, taking turns (which goes first alternates too); a turn "
                         "counts the median of its steps after the first, the ratio is the median "
                         "of the N adjacent turns' ratios, with their interquartile range: turns "
                         "seconds apart share the VM's state")
    ap.add_argument("--block", type=int, default=3,
                    help="with --interleave, steps per turn (the first warms the caches up and is "
                         "not counted, unless it is the only one); forwards take turns of "
                         "--forward-reps (at least --block)")
    ap.add_argument("--gap", type=float, default=0.3,
                    help="with --interleave, seconds of idle before each turn, so that the other "
                         "process's worker threads (OpenMP's, rayon's) have stopped spinning")
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--torch-worker", nargs=3, metavar=("WHAT", "IMAGE", "BATCH"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.im2col_baseline:
        args.conv_baseline = args.conv_baseline or "im2col"

    if args.torch_worker:
        what, image, batch = args.torch_worker
        reps = args.reps if what == "step" else args.forward_reps
        torch_worker(what, int(image), int(batch), reps, args.threads, args.optimizer, args.serve)
        return

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    exe = args.bench_exe or build_rust_bench(repo)
    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads), OMP_NUM_THREADS=str(args.threads))
    batches = [int(b) for b in args.batches.split(",") if b]
    jobs = [("step", s, b) for s in map(int, args.sizes.split(",")) for b in batches]
    jobs += [("forward", s, 1) for s in map(int, args.sizes.split(","))]

    def measure_commands(what, image, batch):
        """The command of each implementation for one configuration, by name."""
        reps = args.reps if what == "step" else args.forward_reps
        common = [what, "--image", str(image), "--batch", str(batch), "--reps", str(reps),
                  "--optimizer", args.optimizer]
        commands = {
            "fast": [exe, *common, "--kernels", "fast"],
            "torch": [sys.executable, os.path.abspath(__file__), "--threads", str(args.threads),
                      "--reps", str(args.reps), "--forward-reps", str(args.forward_reps),
                      "--optimizer", args.optimizer, "--torch-worker", what, str(image), str(batch)],
        }
        if args.candle_baseline:
            commands["base"] = [exe, *common, "--kernels", "candle"]
        if args.minimal_model:
            commands["minimal"] = [exe, *common, "--model", "minimal"]
        if args.conv_baseline:
            commands["baseline"] = [exe, *common, "--conv", args.conv_baseline]
        elif args.baseline_exe:
            commands["baseline"] = [args.baseline_exe, *common]
        return commands

    def measure(what, image, batch, order):
        """One round of one configuration: every implementation once, in `order`."""
        commands = measure_commands(what, image, batch)
        names = list(commands) if order == 0 else list(reversed(commands))
        return {name: run_json(commands[name], env) for name in names}

    if args.interleave:
        rounds = {}
        for job in jobs:
            block = turn_length(args, job[0])
            rounds[job] = interleave(measure_commands(*job), args.interleave, block, args.gap, env)
            print(f"interleaved: done {job[0]} {job[1]}px batch {job[2]}", file=sys.stderr, flush=True)
        print_tables(args, jobs, rounds)
        return

    # Rounds over all configurations, each round in the opposite order of the one before, so that
    # a slow spell of this shared VM lands on both sides of a ratio instead of on one row.
    rounds = {job: [] for job in jobs}
    for r in range(args.rounds):
        for job in (jobs if r % 2 == 0 else reversed(jobs)):
            rounds[job].append(measure(*job, order=r % 2))
            print(f"round {r + 1}/{args.rounds}: done {job[0]} {job[1]}px batch {job[2]}",
                  file=sys.stderr, flush=True)
    print_tables(args, jobs, rounds)


def turn_length(args, what):
    """Repetitions per --interleave turn: --block steps; a forward at batch 1 takes ~10 ms, so a
    turn of three would be mostly the wake-up after the gap, and forwards take turns of
    --forward-reps (at least --block)."""
    return args.block if what == "step" else max(args.block, args.forward_reps)


def interleave(commands, turns, block, gap, env):
    """Starts every command with --serve, then gives each `turns` turns of `block` steps back to
    back, taking turns (the order reversed every other turn); a turn's time is the median of its
    steps after the first. Returns one pseudo-round per turn, in the shape `summarize` takes
    ({name: {"median_s": ...}}), with each process's final JSON (peak RSS, phases) merged in."""
    # Standard error goes to a file: a pipe nobody reads until the end could fill and block.
    procs, errors = {}, {}
    for name, cmd in commands.items():
        errors[name] = tempfile.TemporaryFile(mode="w+")
        procs[name] = subprocess.Popen([*cmd, "--serve"], env=env, stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, stderr=errors[name], text=True)

    def stderr_of(name):
        errors[name].seek(0)
        return errors[name].read()

    def reply(name):
        line = procs[name].stdout.readline()
        if not line:
            procs[name].wait()
            sys.exit(f"{' '.join(commands[name])} --serve stopped:\n{stderr_of(name)}")
        return line.strip()

    for name in procs:
        if reply(name) != "ready":
            sys.exit(f"{name}: expected 'ready'")
    names = list(procs)
    times = {name: [] for name in names}
    for turn in range(turns):
        for name in (names if turn % 2 == 0 else reversed(names)):
            time.sleep(gap)
            procs[name].stdin.write(f"{block}\n")
            procs[name].stdin.flush()
            steps = [float(t) for t in reply(name).split()]
            times[name].append(median(steps[1:] or steps))
    finals = {}
    for name, proc in procs.items():
        out, _ = proc.communicate()
        if proc.returncode != 0:
            sys.exit(f"{' '.join(commands[name])} --serve failed:\n{stderr_of(name)}")
        finals[name] = json.loads(out.strip().splitlines()[-1])
    return [{name: {**finals[name], "median_s": times[name][i]} for name in names}
            for i in range(turns)]


def summarize(results, name, reference=None):
    """Median time over rounds, the max RSS, and (against `reference`) the per-round ratios."""
    runs = [r[name] for r in results]
    out = {"s": median([x["median_s"] for x in runs]),
           "rss": max(x["peak_rss_mib"] for x in runs)}
    for phase in ("forward_s", "backward_s", "update_s"):
        if phase in runs[0]:
            out[phase] = median([x[phase] for x in runs])
    if reference:
        ratios = sorted(r[name]["median_s"] / r[reference]["median_s"] for r in results)
        out["ratio"], out["lo"], out["hi"] = median(ratios), ratios[0], ratios[-1]
        if len(ratios) >= 8:
            # Many rounds or turns: the interquartile range, not the extremes.
            out["lo"], out["hi"] = ratios[len(ratios) // 4], ratios[(3 * len(ratios)) // 4]
    return out


def ratio_cell(summary, rounds):
    if rounds == 1:
        return f"{summary['ratio']:.2f}"
    return f"{summary['ratio']:.2f} ({summary['lo']:.2f}-{summary['hi']:.2f})"



def print_tables(args, jobs, rounds):
    impl = next(iter(rounds.values()))[0]["torch"]["impl"]
    if args.interleave:
        args.rounds = args.interleave
        how = (f"{args.interleave} turns of {args.block} steps ({turn_length(args, 'forward')} "
               f"forwards) back to back for each process, taking turns, {args.gap} s idle before "
               f"each; a turn counts the median of its steps after the first. Times: median turn. "
               f"Ratio: median of the adjacent turns' ratios to torch (interquartile range)")
    else:
        how = (f"each round times the median of {args.reps} steps / {args.forward_reps} forwards "
               f"after one warm-up per process; {args.rounds} round(s), alternating order. Times: "
               f"median over rounds. Ratio: median of the rounds' ratios to torch "
               f"({'interquartile range' if args.rounds >= 8 else 'min-max'})")
    print(f"\nthreads: {args.threads}, {impl}, {args.optimizer} SGD; {how}" +
          (f"; baseline exe: {args.baseline_exe}" if args.baseline_exe else "") + "\n")
    head = "| what | image | batch | candle+ops s | torch s | ratio | RSS candle MiB | RSS torch MiB |"
    sep = "|---|---|---|---|---|---|---|---|"
    if args.minimal_model:
        head += " minimal+fused BN s | ratio | RSS MiB |"
        sep += "---|---|---|"
    if args.candle_baseline:
        head += " candle built-in s | RSS built-in MiB |"
        sep += "---|---|"
    if args.conv_baseline or args.baseline_exe:
        label = f"--conv {args.conv_baseline}" if args.conv_baseline else "baseline exe"
        head += f" {label} s | ratio | RSS MiB |"
        sep += "---|---|---|"
    print(head)
    print(sep)
    summaries = {}
    for job in jobs:
        what, image, batch = job
        results = rounds[job]
        fast, t = summarize(results, "fast", "torch"), summarize(results, "torch")
        summaries[job] = (fast, t)
        line = (f"| {what} | {image} | {batch} | {fast['s']:.3f} | {t['s']:.3f} | "
                f"{ratio_cell(fast, args.rounds)} | {fast['rss']:.0f} | {t['rss']:.0f} |")
        if args.minimal_model:
            m = summarize(results, "minimal", "torch")
            line += f" {m['s']:.3f} | {ratio_cell(m, args.rounds)} | {m['rss']:.0f} |"
        if args.candle_baseline:
            b = summarize(results, "base")
            line += f" {b['s']:.3f} | {b['rss']:.0f} |"
        if args.conv_baseline or args.baseline_exe:
            b = summarize(results, "baseline", "torch")
            line += f" {b['s']:.3f} | {ratio_cell(b, args.rounds)} | {b['rss']:.0f} |"
        print(line)
    if args.phases:
        print("\nPhases of a step, median ms: forward (with the loss) / backward / update\n")
        print("| image | batch | candle+ops | torch |")
        print("|---|---|---|---|")
        for (what, image, batch), (fast, t) in summaries.items():
            if what == "step" and "forward_s" in fast:
                ms = lambda r: " / ".join(f"{r[k] * 1e3:.0f}" for k in ("forward_s", "backward_s", "update_s"))
                print(f"| {image} | {batch} | {ms(fast)} | {ms(t)} |")


if __name__ == "__main__":
    main()
