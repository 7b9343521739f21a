"""Compare two face2exp weights files image by image on an image-folder dataset: how many
predictions change, how many go from wrong to right and from right to wrong, how many of
OLD's errors NEW repeats exactly (the same wrong class), and how many
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

sys.path.insert(0, os.path.dirname(__file__))
from torch_eval import predict_folder  # noqa: E402


def main():
    args = [a for a in sys.argv[1:] if a != "--hflip"]
    hflip = len(args) < len(sys.argv) - 1
    if len(args) != 3:
        sys.exit(__doc__)
    old, new, root = args
    old_pred, labels, _ = predict_folder(old, root, hflip)
    new_pred, _, _ = predict_folder(new, root, hflip)
    old_right, new_right = old_pred == labels, new_pred == labels
    gained = int((new_right & ~old_right).sum())
    lost = int((old_right & ~new_right).sum())
    z = (gained - lost) / math.sqrt(gained + lost) if gained + lost else 0.0
    print(f"images {len(labels)}")
    print(f"changed {int((old_pred != new_pred).sum())}")
    print(f"wrong_to_right {gained} right_to_wrong {lost} net {gained - lost:+d}")
    print(f"sign_test_z {z:+.2f}")
    old_wrong = ~old_right
    repeated = int((old_wrong & (new_pred == old_pred)).sum())
    print(f"old_errors {int(old_wrong.sum())} repeated_by_new {repeated}")


if __name__ == "__main__":
    main()
