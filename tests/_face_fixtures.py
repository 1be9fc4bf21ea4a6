"""Shared helpers of the export and FaceEmbedder tests: a tiny real student saved as backbone.pth,
a SCRFD-layout detector ONNX that always reports one known face, and a photo of that face."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
from insightface.utils.face_align import arcface_dst

from facekd.data.synthetic import SyntheticFaces
from facekd.models.registry import build_backbone

STUDENT_OPTIONS = {"width": 0.25, "embedding_size": 32, "input_size": 112}
SMALL_OPTIONS = {"width": 0.25, "embedding_size": 32, "input_size": 64}
"""The same student at 64 px: three times cheaper, for tests that need no 112-px crop."""
LANDMARKS64 = arcface_dst * (32.0 / 112.0) + 16.0
"""The ArcFace template inside the box (16, 16, 48, 48) of a 64 px detector input."""


def tiny_student(path: Path, seed: int = 0, options: dict | None = None) -> torch.nn.Module:
    """A freshly initialised width-0.25 MobileFaceNet at 112 px (eval mode), saved as backbone.pth.

    Untrained weights amplify quantisation noise more than trained ones do; at this size the int8
    embeddings still agree with torch above the 0.99 cosine gate (measured 0.993 at seed 0)."""
    torch.manual_seed(seed)
    model = build_backbone("mbf", **(options or STUDENT_OPTIONS)).eval()
    torch.save(model.state_dict(), path)
    return model


def fake_scrfd(path: Path, landmarks64: np.ndarray = LANDMARKS64) -> Path:
    """A 9-output SCRFD-layout ONNX (64x64 input) that always reports one face: anchor (4, 4) of
    stride 8, box (16, 16, 48, 48), the given landmarks, score 0.95."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    outs = {}
    for stride in (8, 16, 32):
        n = (64 // stride) ** 2 * 2
        outs[f"score{stride}"] = np.zeros((n, 1), np.float32)
        outs[f"bbox{stride}"] = np.zeros((n, 4), np.float32)
        outs[f"kps{stride}"] = np.zeros((n, 10), np.float32)
    row = (4 * 8 + 4) * 2
    outs["score8"][row] = 0.95
    outs["bbox8"][row] = 2.0
    outs["kps8"][row] = ((landmarks64 - 32.0) / 8.0).ravel()
    order = [f"{k}{s}" for k in ("score", "bbox", "kps") for s in (8, 16, 32)]
    nodes = [helper.make_node("ReduceMean", ["input"], ["mean"], keepdims=0),
             helper.make_node("Mul", ["mean", "zero"], ["nil"])]
    inits = [numpy_helper.from_array(np.zeros((), np.float32), "zero")]
    outputs = []
    for name in order:
        inits.append(numpy_helper.from_array(outs[name], name + "_c"))
        nodes.append(helper.make_node("Add", ["nil", name + "_c"], [name]))
        outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(outs[name].shape)))
    graph = helper.make_graph(nodes, "fake_scrfd",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 64, 64])],
                              outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def face_photo(identity: int = 1) -> np.ndarray:
    """A 128x128 RGB photo whose face sits where the fake detector reports it (box 32..96)."""
    face = SyntheticFaces(seed=3, size=112, pose=0, occlusion=0, noise=0, blur=0).render(identity, 0)
    m = cv2.getRotationMatrix2D((56.0, 56.0), 0.0, 64.0 / 112.0)
    m[:, 2] += (64 - 56.0, 64 - 56.0)
    return cv2.warpAffine(face, m, (128, 128), borderValue=(90, 120, 150))


def recognition_onnx(path: Path) -> Path:
    """An ONNX with one image input and one image output: not a detector."""
    import onnx
    from onnx import TensorProto, helper

    io_ = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 3, 112, 112]) for n in ("x", "y")]
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", io_[:1], io_[1:])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path
