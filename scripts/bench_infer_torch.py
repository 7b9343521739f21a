"""PyTorch CPU reference for scripts/bench_infer.sh: ResNet-18 eval forward, batch 1.

Same networks and table columns as `cargo bench -p face2exp-infer --bench infer_latency`
(imagenet stem at 64 and 112 px, small stem at 64 px; 1 and 2 threads), median of N runs
after one warm-up, under torch.inference_mode(). The ResNet is written out here (torchvision
layout) so only `torch` is needed.
Usage: python scripts/bench_infer_torch.py [iterations]
"""

import sys
import time

import torch
from torch import nn


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return torch.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNet18(nn.Module):
    def __init__(self, stem, classes=7):
        super().__init__()
        if stem == "imagenet":
            self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                                      nn.MaxPool2d(3, 2, 1))
        else:
            self.stem = nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU())
        layers, cin = [], 64
        for stage, width in enumerate([64, 128, 256, 512]):
            for i in range(2):
                layers.append(BasicBlock(cin, width, 2 if stage > 0 and i == 0 else 1))
                cin = width
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(512, classes)

    def forward(self, x):
        x = self.layers(self.stem(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def median_ms(fn, iters):
    fn()
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    times.sort()
    return times[len(times) // 2]


def main():
    iters = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    print(f"torch {torch.__version__}, ResNet-18 eval forward, batch 1")
    print()
    print("| network | input | threads | forward ms |")
    print("|---|---|---|---|")
    for stem, size in [("imagenet", 64), ("imagenet", 112), ("small", 64)]:
        model = ResNet18(stem).eval()
        x = torch.randn(1, 3, size, size)
        for threads in [1, 2]:
            torch.set_num_threads(threads)
            with torch.inference_mode():
                ms = median_ms(lambda: model(x), iters)
            print(f"| resnet18 {stem} | {size} | {threads} | {ms:.2f} |")


if __name__ == "__main__":
    main()
