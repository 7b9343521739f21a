#!/usr/bin/env python3
"""PyTorch's CPU convolutions on the same shapes as `cargo bench -p face2exp-trainer --bench
conv_algorithms`: ResNet-18's 3x3 convolutions at one input size and batch (each stage's stride-1
convolution and the stride-2 first convolutions of layers 2-4), forward, input gradient and
weight gradient, median milliseconds, and their total over one training step (the stride-1
ones four times in layer1, three in the other stages), for a side-by-side with the Rust table.

    pip install torch
    python3 scripts/bench_conv_torch.py --image 64 --batch 32 --threads 2
"""
import argparse
import time


def median_ms(fn, reps):
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return sorted(times)[len(times) // 2]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--image", type=int, default=64)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=7)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    print(f"threads: {args.threads}, torch {torch.__version__}, input {args.image} px, "
          f"batch {args.batch}, median of {args.reps} (ms)\n")
    print("| conv | plane | channels | forward | input grad | weight grad |")
    print("|---|---|---|---|---|---|")
    side, total = -(-args.image // 4), 0.0
    for layer, c in enumerate([64, 128, 256, 512]):
        convs = [(f"layer{layer + 1} 3x3/1", c, 1, 4 if layer == 0 else 3)]
        if layer > 0:
            convs.insert(0, (f"layer{layer + 1}.0.conv1", c // 2, 2, 1))
        for name, c_in, stride, uses in convs:
            x = torch.randn(args.batch, c_in, side, side)
            w = torch.randn(c, c_in, 3, 3)
            y = torch.nn.functional.conv2d(x, w, stride=stride, padding=1)
            grad_y = torch.randn_like(y)

            def backward(mask):
                return torch.ops.aten.convolution_backward(
                    grad_y, x, w, None, [stride, stride], [1, 1], [1, 1], False, [0, 0], 1, mask)

            times = [
                median_ms(lambda: torch.nn.functional.conv2d(x, w, stride=stride, padding=1), args.reps),
                median_ms(lambda: backward([True, False, False]), args.reps),
                median_ms(lambda: backward([False, True, False]), args.reps),
            ]
            total += uses * sum(times)
            out = y.shape[-1]
            print(f"| {name} | {side}x{side} -> {out}x{out} | {c_in} -> {c} | "
                  + " | ".join(f"{t:.2f}" for t in times) + " |")
            side = out
    print(f"\nAll 3x3 convolutions of one step (forward + both gradients): {total:.1f} ms")


if __name__ == "__main__":
    main()
