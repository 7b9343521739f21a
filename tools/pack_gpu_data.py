#!/usr/bin/env python3
"""Packs the data of the FER2013 10 % + LFW experiment small enough to travel to a GPU machine.

The GPU machine used for docs/RESULTS_META.md receives the repository plus at most 64 MiB,
which the raw data (FER2013 train 49 MB, LFW 134 MB) does not fit. This writes, under OUT:

  fer10/<class>/*.png   the labeled subset named by a face2exp subset list (copied as is)
  val/<class>/*.png     FER2013 val (copied as is)
  lfw48/*.jpg           every LFW face cropped to its centred FRACTION and shrunk to SIZE px,
                        i.e. what `face2exp train --unlabeled-center-crop FRACTION --input-size
                        SIZE` keeps in memory after preloading, stored as JPEG quality 95
                        (the only lossy step: PNG would be 59 MB)

Train on it with `--labeled imagefolder:OUT/fer10 --unlabeled folder:OUT/lfw48
--unlabeled-center-crop 1.0 --input-size SIZE --val imagefolder:OUT/val`.

Usage: pack_gpu_data.py DATA_DIR SUBSET_LIST OUT [--size 48] [--fraction 0.46]
Needs Pillow.
"""
import argparse
import os
import shutil
import sys

from PIL import Image


def centre_crop_box(width, height, fraction):
    """The same box as face2exp's `center_crop_box` (trainer/src/data/decode.rs)."""
    w = min(max(int(round(width * fraction)), 1), width)
    h = min(max(int(round(height * fraction)), 1), height)
    return (width - w) // 2, (height - h) // 2, w, h


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data_dir", help="folder holding fer2013/{train,val} and lfw/")
    parser.add_argument("subset_list", help="subset.txt written by `face2exp train`")
    parser.add_argument("out", help="output folder (created)")
    parser.add_argument("--size", type=int, default=48, help="training input size in px")
    parser.add_argument("--fraction", type=float, default=0.46, help="centred crop of LFW")
    args = parser.parse_args()

    fer10 = os.path.join(args.out, "fer10")
    copied = 0
    with open(args.subset_list) as listing:
        for line in listing:
            if line.startswith("#") or not line.strip():
                continue
            path = line.split("\t")[0]
            class_dir = os.path.basename(os.path.dirname(path))
            os.makedirs(os.path.join(fer10, class_dir), exist_ok=True)
            shutil.copy2(path, os.path.join(fer10, class_dir, os.path.basename(path)))
            copied += 1
    shutil.copytree(os.path.join(args.data_dir, "fer2013", "val"), os.path.join(args.out, "val"),
                    dirs_exist_ok=True)

    lfw_in = os.path.join(args.data_dir, "lfw")
    lfw_out = os.path.join(args.out, "lfw48")
    os.makedirs(lfw_out, exist_ok=True)
    faces = 0
    for root, _, files in sorted(os.walk(lfw_in)):
        for name in sorted(files):
            if not name.lower().endswith((".jpg", ".jpeg", ".png")):
                continue
            try:
                image = Image.open(os.path.join(root, name)).convert("RGB")
            except OSError as error:
                print(f"skipped {os.path.join(root, name)}: {error}", file=sys.stderr)
                continue
            x, y, w, h = centre_crop_box(image.width, image.height, args.fraction)
            image = image.crop((x, y, x + w, y + h))
            if min(w, h) > args.size:
                scale = args.size / min(w, h)
                image = image.resize((max(round(w * scale), 1), max(round(h * scale), 1)),
                                     Image.BILINEAR)
            image.save(os.path.join(lfw_out, os.path.splitext(name)[0] + ".jpg"), quality=95)
            faces += 1
    print(f"{copied} labeled images, {faces} LFW faces -> {args.out}")


if __name__ == "__main__":
    main()
