"""Recompute a face2exp network's BatchNorm running statistics on its training images and
evaluate it before and after, in PyTorch: the `update_bn` step of stochastic weight averaging,
asked of a model soup (`face2exp average` averages the running statistics of its members
instead of recomputing them).

    python tools/torch_bn_recompute.py weights/face2exp-base.safetensors \
        ../shared/data/fer2013/train ../shared/data/fer2013/val

Each statistic is the exact mean over the whole training set (momentum None) of train-mode
batches of 64 images in a fixed shuffled order, unaugmented, then once more with half the
images mirrored. Prints overall / mean / std of per-class val accuracy and the per-class
accuracies for the file as it is and after each recomputation; writes nothing. Needs torch,
numpy and pillow; images must already have the network's input size (FER2013's 48 px).
"""

import os
import sys

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "scripts"))
sys.path.insert(0, os.path.dirname(__file__))
from bench_infer_torch import load_face2exp, read_safetensors  # noqa: E402
from torch_eval import ALIASES, classes_and_stats, preprocess  # noqa: E402


def load_folder(root, classes, size, mean, std):
    images, labels = [], []
    for folder in sorted(os.listdir(root)):
        label = classes.index(ALIASES.get(folder, folder))
        for name in sorted(os.listdir(os.path.join(root, folder))):
            path = os.path.join(root, folder, name)
            img = Image.open(path).convert("RGB")
            if img.size != (size, size):
                sys.exit(f"{path}: {img.size[0]}x{img.size[1]}, the network takes {size}x{size}")
            images.append(preprocess(img, size, mean, std))
            labels.append(label)
    return torch.from_numpy(np.stack(images)), np.array(labels)


def evaluate(model, x, y, classes):
    model.eval()
    confusion = np.zeros((len(classes), len(classes)), dtype=np.int64)
    with torch.inference_mode():
        for i in range(0, len(x), 512):
            for a, b in zip(y[i:i + 512], model(x[i:i + 512]).argmax(1).tolist()):
                confusion[a, b] += 1
    per_class = confusion.diagonal() / confusion.sum(1)
    overall = confusion.diagonal().sum() / confusion.sum()
    return (f"overall {overall:.2%} mean {per_class.mean():.2%} std {per_class.std():.2%} | "
            + " ".join(f"{c} {a:.1%}" for c, a in zip(classes, per_class)))


def recompute(model, x, mirror_half):
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over all batches
    model.train()
    generator = torch.Generator().manual_seed(0)
    order = torch.randperm(len(x), generator=generator)
    with torch.no_grad():
        for i in range(0, len(x), 64):
            batch = x[order[i:i + 64]]
            if mirror_half:
                flip = torch.rand(len(batch), 1, 1, 1, generator=generator) < 0.5
                batch = torch.where(flip, batch.flip(3), batch)
            model(batch)


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    weights, train_dir, val_dir = sys.argv[1:]
    torch.set_num_threads(int(os.environ.get("THREADS", "2")))
    model, size = load_face2exp(weights)
    _, meta = read_safetensors(weights)
    classes, mean, std = classes_and_stats(meta)
    x_val, y_val = load_folder(val_dir, classes, size, mean, std)
    print("as stored:", evaluate(model, x_val, y_val, classes), flush=True)
    x_train, _ = load_folder(train_dir, classes, size, mean, std)
    for mirror_half in (False, True):
        recompute(model, x_train, mirror_half)
        print(f"recomputed on {len(x_train)} training images (half mirrored: {mirror_half}):",
              evaluate(model, x_val, y_val, classes), flush=True)


if __name__ == "__main__":
    main()
