"""PyTorch CPU reference for the inference benchmarks: ResNet-18 eval forward, batch 1.

Median of N runs after one warm-up, under torch.inference_mode(), on 1 and 2 threads. The
ResNet is written out here with torchvision's parameter names, so only `torch` is needed.

  python scripts/bench_infer_torch.py [iterations]
      random weights, the networks of `cargo bench -p face2exp-infer --bench infer_latency`
      (imagenet stem at 64 and 112 px, small stem at 64 px); prints a markdown table.
  python scripts/bench_infer_torch.py ITERATIONS --tsv FILE.safetensors...
      the given face2exp weight files (docs/FORMAT.md), loaded with strict=True; prints
      `file<TAB>threads<TAB>ms` lines. `cargo bench -p face2exp-tests --bench infer_vs_candle`
      calls this when PYTHON is set.
"""

import json
import struct
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
    """torchvision.models.resnet18's layout and parameter names, with either stem."""

    def __init__(self, stem, classes=7):
        super().__init__()
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
        else:
            self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
            self.maxpool = nn.Identity()
        self.bn1 = nn.BatchNorm2d(64)
        cin = 64
        for stage, width in enumerate([64, 128, 256, 512]):
            blocks = []
            for i in range(2):
                blocks.append(BasicBlock(cin, width, 2 if stage > 0 and i == 0 else 1))
                cin = width
            setattr(self, f"layer{stage + 1}", nn.Sequential(*blocks))
        self.fc = nn.Linear(512, classes)

    def forward(self, x):
        x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "I64": torch.int64}


def read_safetensors(path):
    """(tensors, metadata) of a safetensors file, without the safetensors package."""
    with open(path, "rb") as f:
        data = f.read()
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + header_len])
    metadata = header.pop("__metadata__", {})
    base = 8 + header_len
    tensors = {}
    for name, info in header.items():
        start, end = info["data_offsets"]
        raw = bytearray(data[base + start : base + end])
        t = torch.frombuffer(raw, dtype=DTYPES[info["dtype"]]).reshape(info["shape"])
        tensors[name] = t.float() if t.is_floating_point() else t
    return tensors, metadata


def load_face2exp(path):
    tensors, meta = read_safetensors(path)
    if meta.get("arch") != "resnet18":
        raise SystemExit(f"{path}: only resnet18 is written out here, not {meta.get('arch')}")
    model = ResNet18(meta["stem"], len(meta["classes"].split(",")))
    tensors = {k: v for k, v in tensors.items() if not k.endswith("num_batches_tracked")}
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise SystemExit(f"{path}: missing {missing}, unexpected {unexpected}")
    return model.eval(), int(meta["input_size"])


def median_ms(fn, iters):
    fn()
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    times.sort()
    return times[len(times) // 2]


def main_tsv(iters, files):
    for path in files:
        model, size = load_face2exp(path)
        x = torch.randn(1, 3, size, size)
        for threads in [1, 2]:
            torch.set_num_threads(threads)
            with torch.inference_mode():
                ms = median_ms(lambda: model(x), iters)
            print(f"{path}\t{threads}\t{ms:.3f}", flush=True)


def main():
    iters = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    if len(sys.argv) > 2 and sys.argv[2] == "--tsv":
        return main_tsv(iters, sys.argv[3:])
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
