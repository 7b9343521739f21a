"""Evaluate a face2exp weights file in PyTorch: proof that the exported names and layout are
torchvision's (loaded with strict names) and that the preprocessing in docs/FORMAT.md is
complete, by reproducing `face2exp eval` on an image-folder dataset.

    python tools/torch_eval.py weights/face2exp-base.safetensors ../shared/data/fer2013/val [--hflip]

Needs torch, numpy and pillow. Prints overall, mean and std of per-class accuracy, which
should equal `face2exp eval --weights FILE --data imagefolder:DIR` up to float rounding.
`--hflip` averages each image's softmax with its mirror image's, as `face2exp eval --tta hflip`.
ResNet-18 only (scripts/bench_infer_torch.py writes the network out).
"""

import os
import sys

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "scripts"))
from bench_infer_torch import load_face2exp, read_safetensors  # noqa: E402

ALIASES = {"angry": "anger", "happiness": "happy", "sadness": "sad", "surprised": "surprise",
           "fearful": "fear", "disgusted": "disgust"}


def classes_and_stats(meta):
    """The class names and the per-channel input mean and std a face2exp file's header names."""
    stats = [np.array([float(v) for v in meta[key].split(",")], dtype=np.float32)
             for key in ("mean", "std")]
    return meta["classes"].split(","), *stats


def preprocess(img, size, mean, std):
    """An RGB image as the network's (3, size, size) input: resized if needed, scaled to [0, 1]
    and normalised with the file's mean and std (docs/FORMAT.md)."""
    if img.size != (size, size):
        # The trainer's triangle filter; identical only when no resize is needed.
        img = img.resize((size, size), Image.BILINEAR, reducing_gap=None)
    x = (np.asarray(img, dtype=np.float32) / 255.0 - mean) / std
    return x.transpose(2, 0, 1)


def class_folder_batches(weights, root, limit=None):
    """The network of `weights` and its class names, then one (class index, input tensor) per
    class folder of `root`, folders and files in sorted order (the order is fixed so two
    files' predictions can be compared image by image); `limit` takes the first images of
    each folder."""
    model, size = load_face2exp(weights)
    _, meta = read_safetensors(weights)
    classes, mean, std = classes_and_stats(meta)
    yield model, classes
    for folder in sorted(os.listdir(root)):
        label = classes.index(ALIASES.get(folder, folder))
        names = sorted(os.listdir(os.path.join(root, folder)))[:limit]
        batch = [preprocess(Image.open(os.path.join(root, folder, name)).convert("RGB"), size,
                            mean, std) for name in names]
        yield label, torch.from_numpy(np.stack(batch))


def predict_folder(weights, root, hflip=False):
    """Each image's predicted and true class index, in class_folder_batches' order."""
    batches = class_folder_batches(weights, root)
    model, classes = next(batches)
    predicted, labels = [], []
    for label, x in batches:
        with torch.inference_mode():
            scores = model(x).softmax(1)
            if hflip:
                scores = scores + model(torch.flip(x, dims=[3])).softmax(1)
        predicted += scores.argmax(1).tolist()
        labels += [label] * len(x)
    return np.array(predicted), np.array(labels), classes


def main():
    args = [a for a in sys.argv[1:] if a != "--hflip"]
    hflip = len(args) < len(sys.argv) - 1
    weights, root = args[0], args[1]
    predicted, labels, classes = predict_folder(weights, root, hflip)
    confusion = np.zeros((len(classes), len(classes)), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    per_class = confusion.diagonal() / confusion.sum(1)
    print(f"images {confusion.sum()}")
    print(f"overall {confusion.diagonal().sum() / confusion.sum():.4f}")
    print(f"mean_class {per_class.mean():.4f} std_class {per_class.std():.4f}")
    print("per_class " + " ".join(f"{c}={a:.4f}" for c, a in zip(classes, per_class)))


if __name__ == "__main__":
    main()
