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

import torch

sys.path.insert(0, os.path.dirname(__file__))
from torch_eval import class_folder_batches  # noqa: E402

TEMPERATURES = (0.5, 1.0, 1.5, 2.0, 3.0, 5.0)


def logits_and_labels(weights, root, limit=None):
    batches = class_folder_batches(weights, root, limit)
    model, _ = next(batches)
    outputs, labels = [], []
    for label, x in batches:
        with torch.inference_mode():
            outputs.append(model(x))
        labels += [label] * len(x)
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
