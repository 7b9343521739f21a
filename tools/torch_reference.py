#!/usr/bin/env python3
"""PyTorch reference outputs for the Rust ResNet (trainer/src/model/torch_parity.rs).

Builds torchvision's resnet18 / resnet50 (the `small` stem is torchvision's network with a
3x3 stride-1 conv1 and no max pool, see docs/FORMAT.md), fills every tensor with values from a
counter-based hash that trainer/src/model/torch_parity.rs reproduces bit for bit, and saves
only what the Rust test compares, computed in float64: input, eval and train logits, running statistics after one
train-mode forward, and gradients of a cross-entropy loss. The weights themselves are not stored,
which keeps the committed fixtures small.

Usage (torch 2.15 and torchvision 0.29 were used for the committed fixtures):
    pip install torch torchvision safetensors numpy pillow
    python tools/torch_reference.py trainer/tests/fixtures/model
"""

import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from safetensors.torch import save_file

MASK = (1 << 64) - 1
GOLDEN = np.uint64(0x9E3779B97F4A7C15)
BATCH = 4
LABELS = torch.tensor([3, 5, 1, 0])


def fnv1a64(name: str) -> int:
    h = 0xCBF29CE484222325
    for b in name.encode():
        h = ((h ^ b) * 0x100000001B3) & MASK
    return h


def hash_uniform(name: str, n: int) -> np.ndarray:
    """n values in [-1, 1): splitmix64 of (fnv1a64(name) + (i + 1) * golden), top 24 bits."""
    with np.errstate(over="ignore"):
        z = np.uint64(fnv1a64(name)) + np.arange(1, n + 1, dtype=np.uint64) * GOLDEN
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(40)).astype(np.float64) / float(1 << 23) - 1.0


def deterministic_value(name: str, shape, last_bn: str = "") -> torch.Tensor:
    """The fixture's value of tensor `name`. For resnet50 `last_bn` is `bn3`, the last
    BatchNorm of each Bottleneck, whose weight is scaled by 0.2 (in the spirit of torchvision's
    zero_init_residual) so the residual stream of 16 blocks does not blow up: that keeps
    float32 gradients within ~1e-5 of float64 ones, a well-conditioned test. resnet18 is well
    conditioned without it."""
    n = int(np.prod(shape))
    u = hash_uniform(name, n)
    if last_bn and name.startswith("layer") and name.endswith(f".{last_bn}.weight"):
        v = 1.0 + 0.2 * u
        v = v * 0.2
    elif name.endswith("running_var"):
        v = 1.0 + 0.5 * u
    elif name.endswith("running_mean") or name.endswith("bias"):
        v = 0.1 * u
    elif len(shape) == 1:  # BatchNorm weight
        v = 1.0 + 0.2 * u
    else:  # conv / fc weight: uniform with variance 2 / fan_in (conv) or 1 / (3 fan_in) (fc)
        fan_in = int(np.prod(shape[1:]))
        scale = np.sqrt(6.0 / fan_in) if len(shape) == 4 else 1.0 / np.sqrt(fan_in)
        v = u * scale
    return torch.from_numpy(v.astype(np.float32).reshape(shape))


def build(arch: str, stem: str, num_classes: int) -> nn.Module:
    model = getattr(torchvision.models, arch)(num_classes=num_classes)
    if stem == "small":
        model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if not name.endswith("num_batches_tracked"):
                last_bn = "bn3" if arch == "resnet50" else ""
                tensor.copy_(deterministic_value(name, tuple(tensor.shape), last_bn))
    return model


def run(arch, stem, size, dtype):
    model = build(arch, stem, 7).to(dtype)
    x = (deterministic_value("input", (BATCH, 3, size, size)) * 2.0).to(dtype)
    model.eval()
    with torch.no_grad():
        logits_eval = model(x)
    model.train()
    logits_train = model(x)
    loss = F.cross_entropy(logits_train, LABELS)
    loss.backward()
    tensors = {
        "input": x,
        "labels": LABELS.float(),
        "logits_eval": logits_eval,
        "logits_train": logits_train,
        "loss": loss.reshape(1),
    }
    for name, param in model.named_parameters():
        tensors["grad." + name] = param.grad
    for name, buffer in model.named_buffers():
        if not name.endswith("num_batches_tracked"):
            tensors["stat." + name] = buffer
    return {k: v.detach().double() for k, v in tensors.items()}


def reference(arch, stem, size, grads, stats, out: Path):
    """Saves the float64 reference (the truth the Rust float32 network is held to) and notes in
    the metadata how far PyTorch's own float32 result is from it."""
    truth = run(arch, stem, size, torch.float64)
    torch32 = run(arch, stem, size, torch.float32)
    keep = ["input", "labels", "logits_eval", "logits_train", "loss"]
    keep += ["grad." + g for g in grads] + ["stat." + s for s in stats]
    worst = max(
        ((torch32[k] - truth[k]).abs().max() / truth[k].abs().max().clamp(min=1e-3)).item()
        for k in keep
    )
    tensors = {k: truth[k].float().contiguous() for k in keep}
    path = out / f"{arch}_{stem}{size}.safetensors"
    metadata = {
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "torch_float32_max_relative_error": f"{worst:.3e}",
    }
    save_file(tensors, str(path), metadata=metadata)
    print(f"{path}: loss {truth['loss'].item():.6f}, torch float32 vs float64 max relative "
          f"error {worst:.2e}, {path.stat().st_size} bytes")


def main():
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "trainer/tests/fixtures/model")
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(2)
    reference(
        "resnet18",
        "small",
        48,
        grads=["conv1.weight", "bn1.weight", "bn1.bias", "layer1.0.conv1.weight",
               "layer3.0.downsample.0.weight", "layer4.1.bn2.weight", "fc.weight", "fc.bias"],
        stats=["bn1.running_mean", "bn1.running_var", "layer2.0.downsample.1.running_var",
               "layer4.1.bn2.running_mean", "layer4.1.bn2.running_var"],
        out=out,
    )
    reference(
        "resnet50",
        "imagenet",
        64,
        grads=["conv1.weight", "layer1.0.downsample.0.weight", "layer4.2.bn3.weight", "fc.weight"],
        stats=["layer1.0.downsample.1.running_mean", "layer4.2.bn3.running_var"],
        out=out,
    )


if __name__ == "__main__":
    main()
