"""How confident a face2exp network is against how often it is right: its cross-entropy on an
image-folder dataset with the logits divided by each temperature T. A network whose loss falls
for T > 1 is overconfident: flattening its outputs lowers its loss without changing a single
prediction (docs/RESULTS_FEEDBACK.md uses this on Meta-Face2Exp's adaptation network A).

    python tools/temperature_nll.py WEIGHTS DIR [--limit N]

Evaluation mode (BatchNorm running statistics), images in sorted order; `--limit N` takes the
first N of every class folder. Needs torch, numpy and pillow, as tools/torch_eval.py.
"""

import argparse
import os
import sys

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(__file__))
from torch_eval import ALIASES, classes_and_stats, preprocess  # noqa: E402
from bench_infer_torch import load_face2exp, read_safetensors  # noqa: E402

TEMPERATURES = (0.5, 1.0, 1.5, 2.0, 3.0, 5.0)


def logits_and_labels(weights, root, limit=None):
    model, size = load_face2exp(weights)
    _, meta = read_safetensors(weights)
    classes, mean, std = classes_and_stats(meta)
    outputs, labels = [], []
    for folder in sorted(os.listdir(root)):
        label = classes.index(ALIASES.get(folder, folder))
        names = sorted(os.listdir(os.path.join(root, folder)))[:limit]
        batch = [preprocess(Image.open(os.path.join(root, folder, n)).convert("RGB"), size, mean,
                            std) for n in names]
        with torch.inference_mode():
            outputs.append(model(torch.from_numpy(np.stack(batch))))
        labels += [label] * len(batch)
    return torch.cat(outputs), torch.tensor(labels)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("weights")
    parser.add_argument("root")
    parser.add_argument("--limit", type=int, default=None)
    args = parser.parse_args()
    logits, labels = logits_and_labels(args.weights, args.root, args.limit)
    accuracy = (logits.argmax(1) == labels).float().mean().item()
    confidence = logits.softmax(1).max(1).values.mean().item()
    print(f"{len(labels)} images: accuracy {100 * accuracy:.2f} %, "
          f"mean top probability {100 * confidence:.2f} %")
    print("T     cross-entropy")
    for t in TEMPERATURES:
        loss = torch.nn.functional.cross_entropy(logits / t, labels).item()
        print(f"{t:<5} {loss:.4f}")


if __name__ == "__main__":
    main()
