"""facekd.export: fp32 / fp16 / int8 variants checked against torch, report.md/json with latency and
accuracy, the insightface model pack (loaded by insightface itself), and every kind of bad input."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import torch

from facekd.data.verification_bin import save_bin
from facekd.eval.embed import FaceEmbedder
from facekd.export.calibration import read_calibration_images
from facekd.export.command import main
from facekd.export.errors import ExportInputError
from facekd.export.latency import measure_latency
from facekd.export.variants import float16_weights_for_float_convs, grouped_conv_nodes

from _face_fixtures import (LANDMARKS64, SMALL_OPTIONS, STUDENT_OPTIONS, face_photo, fake_scrfd, recognition_onnx,
                            tiny_student)

pytestmark = pytest.mark.filterwarnings("ignore:`estimate` is deprecated:FutureWarning",
                                        "ignore::UserWarning")
MODEL_ARGS = ["--arch", "mbf"] + [a for k, v in STUDENT_OPTIONS.items() for a in ("--model-option", f"{k}={v}")]
SMALL_ARGS = ["--arch", "mbf"] + [a for k, v in SMALL_OPTIONS.items() for a in ("--model-option", f"{k}={v}")]
FAST = ["--latency-runs", "3", "--latency-seconds", "0.2", "--batch-size", "32", "--check-images", "24"]
FASTEST = ["--latency-runs", "2", "--latency-seconds", "0.1", "--batch-size", "32", "--check-images", "16"]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("export")
    model = tiny_student(root / "backbone.pth")
    from facekd.data.synthetic import SyntheticFaces
    faces = SyntheticFaces(seed=5, size=112)
    images = np.stack([faces.render(i // 2 if i % 4 < 2 else i, i) for i in range(40)])
    save_bin(root / "val.bin", images, [i % 2 == 0 for i in range(20)], fmt=".png")
    calib = root / "calib"
    calib.mkdir()
    for i in range(24):
        cv2.imwrite(str(calib / f"{i}.png"), cv2.cvtColor(faces.render(1000 + i, 0), cv2.COLOR_RGB2BGR))
    small = tiny_student(root / "small.pth", options=SMALL_OPTIONS)
    return {"root": root, "model": root / "backbone.pth", "bin": root / "val.bin", "calib": calib,
            "torch": model, "small": root / "small.pth", "small_torch": small}


def test_export_writes_checked_variants_and_the_report(files, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    # --allow-drift: untrained weights amplify int8 rounding (cosine ~0.98 with torch, measured on
    # several seeds and widths); trained students pass the 0.99 gate (bench/bench_export.py)
    code = main(["--model", str(files["small"]), *SMALL_ARGS, "--out", str(out), "--precision", "fp32,fp16,int8",
                 "--calib", str(files["calib"]), "--calib-images", "24", "--bins", str(files["bin"]), *FAST,
                 "--allow-drift"])
    assert code == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    rows = {v["name"]: v for v in report["variants"]}
    assert list(rows) == ["torch", "fp32", "fp16", "int8"]
    for name in ("fp32", "fp16", "int8"):
        path = out / f"model_{name}.onnx"
        assert rows[name]["file_bytes"] == path.stat().st_size
        assert rows[name]["parameters"] == sum(p.numel() for p in files["small_torch"].parameters())
        assert rows[name]["macs"] > 0
        (b1, b32) = rows[name]["latency"]
        assert (b1["batch"], b1["threads"], b32["batch"]) == (1, 1, 32) and b1["runs"] == 3 and b32["runs"] == 1
        assert 0 < b1["median_ms"] <= b1["p90_ms"]
        assert b32["images_per_s"] == pytest.approx(32 / (b32["median_ms"] / 1000))
        assert rows[name]["agreement_with_torch"]["cos_min"] >= (0.95 if name == "int8" else 0.9999)
        drifted = rows[name]["agreement_with_torch"]["cos_min"] < 0.99
        assert drifted == any("--allow-drift" in n for n in rows[name]["notes"])
        val = rows[name]["sets"]["val"]
        assert val["n_pairs"] == 20 and val["accuracy"] == pytest.approx(
            rows["torch"]["sets"]["val"]["accuracy"] + val["accuracy_diff_to_torch"])
    assert rows["fp32"]["agreement_with_torch"]["max_abs_diff"] < 1e-4
    assert rows["fp32"]["sets"]["val"]["accuracy_diff_to_torch"] == 0.0
    assert abs(rows["fp16"]["sets"]["val"]["accuracy_diff_to_torch"]) <= 0.05
    assert rows["fp16"]["file_bytes"] < 0.8 * rows["fp32"]["file_bytes"]  # a tiny graph: names weigh too
    assert rows["int8"]["file_bytes"] < 0.6 * rows["fp32"]["file_bytes"]
    # fp16 keeps float32 inputs and outputs; int8 holds quantised convolutions
    half = onnx.load(str(out / "model_fp16.onnx"))
    assert half.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert half.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    ops = {n.op_type for n in onnx.load(str(out / "model_int8.onnx")).graph.node}
    assert "QLinearConv" in ops and "Conv" in ops  # grouped convs stay float
    md = (out / "report.md").read_text()
    assert "| int8 |" in md and "## Verification" in md and (out / "accuracy_latency.png").stat().st_size > 1000
    assert report["meta"]["calibration"].endswith("(24 images)")
    # the variant embeds through FaceEmbedder like any model file
    crops = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    cos = np.sum(FaceEmbedder(out / "model_int8.onnx").embed(crops) * FaceEmbedder(files["small_torch"]).embed(crops), 1)
    assert cos.min() > 0.95


def test_qdq_recipe_and_teacher_row(files, tmp_path) -> None:
    teacher = tmp_path / "teacher.pth"
    tiny_student(teacher, seed=1, options=SMALL_OPTIONS)
    out = tmp_path / "out"
    assert main(["--model", str(files["small"]), *SMALL_ARGS, "--out", str(out), "--precision", "int8_qdq",
                 "--calib", "synthetic:ids=4,per_id=4,size=64", "--calib-images", "16", "--teacher", str(teacher),
                 "--teacher-arch", "mbf", *[a for k, v in SMALL_OPTIONS.items()
                                            for a in ("--teacher-option", f"{k}={v}")], *FASTEST,
                 "--allow-drift"]) == 0  # QDQ on untrained weights drifts a little more (cos ~0.98)
    rows = {v["name"]: v for v in json.loads((out / "report.json").read_text())["variants"]}
    assert rows["int8_qdq"]["agreement_with_torch"]["cos_min"] > 0.95
    assert list(rows) == ["torch", "fp32", "int8_qdq", "teacher fp32"]  # fp32 is always the reference
    ops = {n.op_type for n in onnx.load(str(out / "model_int8_qdq.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert (out / "teacher" / "model_fp32.onnx").is_file() and rows["teacher fp32"]["latency"]


def test_pack_loads_in_insightface_and_embeds_with_the_student(files, tmp_path) -> None:
    from insightface.app import FaceAnalysis

    det = fake_scrfd(tmp_path / "det_fake.onnx")
    out = tmp_path / "out"
    assert main(["--model", str(files["model"]), *MODEL_ARGS, "--out", str(out), "--precision", "fp32",
                 "--pack", "mypack", "--detector", str(det), "--no-latency", "--check-images", "8"]) == 0
    folder = out / "models" / "mypack"
    assert sorted(p.name for p in folder.glob("*.onnx")) == ["det_fake.onnx", "rec_model_fp32.onnx"]
    app = FaceAnalysis(name="mypack", root=str(out), providers=["CPUExecutionProvider"])
    assert set(app.models) == {"detection", "recognition"}
    app.prepare(ctx_id=-1, det_size=(64, 64), det_thresh=0.5)
    photo = face_photo()
    (face,) = app.get(cv2.cvtColor(photo, cv2.COLOR_RGB2BGR))
    np.testing.assert_allclose(face.kps, LANDMARKS64 * 2, atol=1e-3)
    # insightface embeds the same aligned crop as facekd: no flip there, so compare without it
    ours = FaceEmbedder(files["torch"], flip=False).embed_photos(photo, detector=str(det), min_score=0.5,
                                                                  det_size=64)[0][0]
    assert float(np.dot(face.normed_embedding, ours.embedding)) > 0.9999
    assert not list(out.glob("**/*.zip"))  # nothing was downloaded


def test_int8_without_calibration_stops_before_any_work(files, tmp_path, capsys) -> None:
    assert main(["--model", str(files["model"]), *MODEL_ARGS, "--out", str(tmp_path / "o"),
                 "--precision", "fp32,int8"]) == 2
    err = capsys.readouterr().err
    assert "needs --calib" in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_bad_inputs_are_named(files, tmp_path, capsys) -> None:
    base = ["--model", str(files["small"]), *SMALL_ARGS, "--out", str(tmp_path / "o"), "--no-latency",
            "--precision", "fp32"]
    cases = [
        (["--precision", "int4"], "unknown int4"),
        (["--detector", str(recognition_onnx(tmp_path / "rec.onnx")), "--pack", "p"], "not a face detector"),
        (["--pack", "p"], "go together"),
        (["--pack", "p", "--detector", str(fake_scrfd(tmp_path / "det.onnx"))], "only loads recognition models"),
        (["--bins", str(tmp_path / "lfw.bin")], "lfw.bin: verification .bin not found"),
        (["--precision", "int8", "--calib", str(files["bin"]), "--bins", str(files["bin"])], "also a --bins file"),
    ]
    for extra, message in cases:
        assert main(base + extra) == 2
        assert message in capsys.readouterr().err
    assert main(["--model", str(tmp_path / "none.pth"), "--out", str(tmp_path / "o"), "--precision", "fp32"]) == 2
    assert "none.pth: model file not found" in capsys.readouterr().err


def test_too_few_calibration_images_warn(caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="facekd"):
        images = read_calibration_images("synthetic:ids=2,per_id=3,size=64", 16, (112, 112))
    assert images.shape == (6, 112, 112, 3) and images.dtype == np.uint8
    assert "only 6 image(s), fewer than the 16" in caplog.text
    with pytest.raises(ExportInputError, match="--calib-images"):
        read_calibration_images("synthetic", 0, (112, 112))


def test_drift_fails_with_the_figures_unless_allowed(files, tmp_path, capsys) -> None:
    black = tmp_path / "black"
    black.mkdir()
    for i in range(8):  # calibrating on blank frames leaves real faces outside the int8 ranges
        cv2.imwrite(str(black / f"{i}.png"), np.zeros((112, 112, 3), np.uint8))
    args = ["--model", str(files["small"]), *SMALL_ARGS, "--out", str(tmp_path / "o"), "--precision", "int8",
            "--calib", str(black), "--calib-images", "8", "--no-latency", "--check-images", "16"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "int8 drifts from the torch model: cosine with torch min" in err and "--allow-drift" in err
    assert not (tmp_path / "o" / "model_int8.onnx").exists()
    assert main(args + ["--allow-drift"]) == 0
    rows = {v["name"]: v for v in json.loads((tmp_path / "o" / "report.json").read_text())["variants"]}
    assert rows["int8"]["agreement_with_torch"]["cos_min"] < 0.99
    assert any("--allow-drift" in n for n in rows["int8"]["notes"])


def test_float_conv_weights_are_stored_half_and_cast_at_load(files, tmp_path) -> None:
    from facekd.models.onnx_backbone import export_onnx
    import onnxruntime as ort

    path = export_onnx(files["torch"], tmp_path / "m.onnx", input_size=112)
    model = onnx.load(str(path))
    n_grouped = len(grouped_conv_nodes(model))
    assert float16_weights_for_float_convs(model) == sum(1 for n in model.graph.node if n.op_type == "Conv") > n_grouped
    onnx.save(model, str(tmp_path / "h.onnx"))
    x = np.random.default_rng(0).uniform(-1, 1, (2, 3, 112, 112)).astype(np.float32)
    a = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    b = ort.InferenceSession(str(tmp_path / "h.onnx"), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    assert np.min(np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)) > 0.9999
    lat = measure_latency(str(tmp_path / "h.onnx"), batch=2, threads=1, min_runs=3, max_runs=3)
    assert lat.runs == 3 and lat.batch == 2 and lat.median_ms > 0
