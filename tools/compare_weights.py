"""Compare two face2exp weights files image by image on an image-folder dataset: how many
predictions change, how many go from wrong to right and from right to wrong, and how many
standard deviations the net change is under a paired sign test (McNemar's, normal
approximation). Val accuracy differences of a few images between two shipped candidates are
only evidence when this number is well above 2.

    python tools/compare_weights.py OLD.safetensors NEW.safetensors ../shared/data/fer2013/val [--hflip]

Needs torch, numpy and pillow; the preprocessing is tools/torch_eval.py's. `--hflip` averages
each image's softmax with its mirror image's, as `face2exp eval --tta hflip`.
"""

import math
import os
import sys

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "scripts"))
from torch_eval import ALIASES, classes_and_stats, preprocess  # noqa: E402
from bench_infer_torch import load_face2exp, read_safetensors  # noqa: E402


def predictions(weights, root, hflip):
    """Each image's predicted class and true class, in a fixed (sorted) order."""
    model, size = load_face2exp(weights)
    _, meta = read_safetensors(weights)
    classes, mean, std = classes_and_stats(meta)
    predicted, labels = [], []
    for folder in sorted(os.listdir(root)):
        label = classes.index(ALIASES.get(folder, folder))
        names = sorted(os.listdir(os.path.join(root, folder)))
        batch = [preprocess(Image.open(os.path.join(root, folder, n)).convert("RGB"), size,
                            mean, std) for n in names]
        x = torch.from_numpy(np.stack(batch))
        with torch.inference_mode():
            scores = model(x).softmax(1)
            if hflip:
                scores = scores + model(torch.flip(x, dims=[3])).softmax(1)
        predicted += scores.argmax(1).tolist()
        labels += [label] * len(names)
    return np.array(predicted), np.array(labels)


def main():
    args = [a for a in sys.argv[1:] if a != "--hflip"]
    hflip = len(args) < len(sys.argv) - 1
    if len(args) != 3:
        sys.exit(__doc__)
    old, new, root = args
    old_pred, labels = predictions(old, root, hflip)
    new_pred, _ = predictions(new, root, hflip)
    old_right, new_right = old_pred == labels, new_pred == labels
    gained = int((new_right & ~old_right).sum())
    lost = int((old_right & ~new_right).sum())
    z = (gained - lost) / math.sqrt(gained + lost) if gained + lost else 0.0
    print(f"images {len(labels)}")
    print(f"changed {int((old_pred != new_pred).sum())}")
    print(f"wrong_to_right {gained} right_to_wrong {lost} net {gained - lost:+d}")
    print(f"sign_test_z {z:+.2f}")


if __name__ == "__main__":
    main()
