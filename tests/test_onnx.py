"""ONNX export and OnnxBackbone: torch parity, insightface compatibility, clear errors."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from facekd.models.onnx_backbone import OnnxBackbone, OnnxExportError, OnnxModelError, export_onnx
from facekd.models.registry import build_backbone
from facekd.models.weights import load_backbone


@pytest.fixture(scope="module")
def small_r18() -> nn.Module:
    return build_backbone("r18", input_size=32, width=0.125, embedding_size=64).eval()


@pytest.fixture(scope="module")
def mbf_112_onnx(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, Path]:
    model = build_backbone("mbf", input_size=112, width=0.125).eval()
    path = export_onnx(model, tmp_path_factory.mktemp("onnx") / "mbf.onnx")
    return model, path


def test_exported_model_gives_the_torch_embeddings(tmp_path: Path, small_r18: nn.Module) -> None:
    path = export_onnx(small_r18, tmp_path / "r18.onnx")
    assert path == tmp_path / "r18.onnx" and [p.name for p in tmp_path.iterdir()] == ["r18.onnx"]
    onnx_model = OnnxBackbone(path)
    assert (onnx_model.input_size, onnx_model.embedding_size, onnx_model.arch) == (32, 64, "onnx")
    assert onnx_model.fixed_batch is None
    assert onnx_model.eval() is onnx_model and onnx_model.to("cpu") is onnx_model
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        expected = small_r18(x)
    got = onnx_model(x)
    assert got.dtype == torch.float32 and got.shape == (5, 64)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    assert small_r18.training is False and next(small_r18.parameters()).requires_grad  # model untouched
    assert isinstance(load_backbone(None, path), OnnxBackbone)


def test_fixed_batch_export_runs_any_batch_size(tmp_path: Path, small_r18: nn.Module) -> None:
    path = export_onnx(small_r18, tmp_path / "fixed.onnx", dynamic_batch=False)
    onnx_model = OnnxBackbone(path)
    assert onnx_model.fixed_batch == 1
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(onnx_model(x), small_r18(x), atol=1e-4, rtol=1e-4)


def test_insightface_recognises_the_export_and_matches_torch(mbf_112_onnx: tuple[nn.Module, Path]) -> None:
    from insightface.model_zoo import get_model
    from insightface.model_zoo.arcface_onnx import ArcFaceONNX

    model, path = mbf_112_onnx
    recogniser = get_model(str(path), providers=["CPUExecutionProvider"])
    assert isinstance(recogniser, ArcFaceONNX)
    assert recogniser.input_size == (112, 112) and (recogniser.input_mean, recogniser.input_std) == (127.5, 127.5)
    bgr = np.random.default_rng(0).integers(0, 256, (112, 112, 3), dtype=np.uint8)
    feat = recogniser.get_feat(bgr)
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    x = (torch.from_numpy(rgb).permute(2, 0, 1).float()[None] / 255.0 - 0.5) / 0.5
    with torch.no_grad():
        expected = model(x)
    np.testing.assert_allclose(feat, expected.numpy(), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(OnnxBackbone(path)(x), expected, atol=1e-4, rtol=1e-4)


def test_export_that_fails_its_check_leaves_no_file(tmp_path: Path, small_r18: nn.Module) -> None:
    with pytest.raises(OnnxExportError, match="differ from torch"):
        export_onnx(small_r18, tmp_path / "bad.onnx", tolerance=-1.0)  # no difference can pass this
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(OnnxExportError, match="needs the input size"):
        export_onnx(nn.Linear(4, 4), tmp_path / "linear.onnx")


def test_missing_corrupt_and_non_recognition_onnx_files_raise_errors_naming_them(tmp_path: Path) -> None:
    with pytest.raises(OnnxModelError, match=r"absent\.onnx: ONNX model file not found"):
        OnnxBackbone(tmp_path / "absent.onnx")
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07garbage bytes that are not a protobuf model")
    with pytest.raises(OnnxModelError, match=r"corrupt\.onnx: is not a readable ONNX model"):
        OnnxBackbone(corrupt)
    with pytest.raises(OnnxModelError, match=r"corrupt\.onnx: is not a readable ONNX model"):
        load_backbone(None, corrupt)

    vector_model = tmp_path / "vector.onnx"
    torch.onnx.export(nn.Linear(16, 4), (torch.randn(2, 16),), str(vector_model), dynamo=False,
                      input_names=["x"], output_names=["y"])
    with pytest.raises(OnnxModelError, match=r"vector\.onnx: is not a face recognition model.*N x 3 x S x S"):
        OnnxBackbone(vector_model)


def test_wrong_input_shape_is_reported(tmp_path: Path, small_r18: nn.Module) -> None:
    onnx_model = OnnxBackbone(export_onnx(small_r18, tmp_path / "r18.onnx"))
    with pytest.raises(ValueError, match=r"takes images \[N, 3, 32, 32\].*got \[2, 3, 64, 64\]"):
        onnx_model(torch.zeros(2, 3, 64, 64))


def _tiny_graph(path: Path, weight: np.ndarray, normalise_inside: bool) -> Path:
    """An 8 px ONNX 'recognition model' (flatten -> MatMul); with ``normalise_inside`` it starts as
    MXNet-converted insightface models do: Sub 127.5 then Mul 1/127.5 on raw 0..255 pixels."""
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits, src = [], [numpy_helper.from_array(weight, "W")], "input"
    if normalise_inside:
        inits += [numpy_helper.from_array(np.array(127.5, np.float32), "mean"),
                  numpy_helper.from_array(np.array(1 / 127.5, np.float32), "scale")]
        nodes += [helper.make_node("Sub", ["input", "mean"], ["centred"], name="Sub_0"),
                  helper.make_node("Mul", ["centred", "scale"], ["scaled"], name="Mul_1")]
        src = "scaled"
    nodes += [helper.make_node("Flatten", [src], ["flat"], axis=1, name="flatten"),
              helper.make_node("MatMul", ["flat", "W"], ["embedding"], name="fc")]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())
    return path


def test_onnx_with_normalisation_inside_the_graph_gets_raw_pixels(tmp_path: Path) -> None:
    """facekd feeds normalised images; a graph that normalises itself must receive 0..255 pixels."""
    from facekd.distill.teacher import load_teacher

    weight = np.random.default_rng(0).standard_normal((192, 4)).astype(np.float32)
    x = torch.rand(2, 3, 8, 8) * 2 - 1  # normalised as (p/255 - 0.5)/0.5
    expected = x.reshape(2, -1) @ torch.from_numpy(weight)  # what the model computes on the raw pixels
    raw = OnnxBackbone(_tiny_graph(tmp_path / "raw.onnx", weight, True))
    plain = OnnxBackbone(_tiny_graph(tmp_path / "plain.onnx", weight, False))
    assert raw.raw_pixels and not plain.raw_pixels
    torch.testing.assert_close(raw(x), expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(plain(x), expected, rtol=1e-4, atol=1e-4)
    teacher = load_teacher(tmp_path / "raw.onnx")  # the distillation teacher takes the same path
    torch.testing.assert_close(teacher.embed(x), expected, rtol=1e-4, atol=1e-4)


def test_export_check_logs_its_relative_figure_and_tolerance(tmp_path: Path, small_r18: nn.Module,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    """Huge (untrained-looking) embeddings: the absolute difference is large, the logged relative
    figure is what the tolerance judges, and it says so."""
    import copy
    import re

    big = copy.deepcopy(small_r18)
    with torch.no_grad():
        big.fc.weight.mul_(1e7)
        big.fc.bias.mul_(1e7)
    with caplog.at_level("INFO", logger="facekd"):
        export_onnx(big, tmp_path / "big.onnx", tolerance=1e-3)
    line = next(r.getMessage() for r in caplog.records if "onnxruntime check passed" in r.getMessage())
    m = re.search(r"max \|torch - onnxruntime\| = (\S+), relative to max\(1, max \|embedding\| = (\S+)\): "
                  r"(\S+) <= tolerance (\S+)$", line)
    assert m, line
    diff, scale, relative, tol = (float(v) for v in m.groups())
    assert scale > 1e5 and tol == 1e-3
    assert relative == pytest.approx(diff / scale, rel=0.01) and relative <= tol
    with pytest.raises(OnnxExportError, match=r"relative to max\(1, max \|embedding\| = .*above the tolerance 1e-12"):
        export_onnx(big, tmp_path / "strict.onnx", tolerance=1e-12)
