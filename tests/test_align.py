"""facekd.data_prep.align: exact norm_crop alignment, detectors (MTCNN on real photos, SCRFD through
insightface's model_zoo), face selection, resumable parallel batches and every kind of bad input."""
from __future__ import annotations

import io
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from insightface.utils.face_align import arcface_dst, norm_crop
from PIL import Image

from facekd.data.synthetic import SyntheticFaces
from facekd.data_prep.align import AlignOptions, align_face, check_crop_size, main, run_align
from facekd.data_prep.detectors import DetectorSpec, Face, build_detector, rank_faces, select_face
from facekd.data_prep.errors import DataPrepError, DetectorModelError
from facekd.data_prep.landmarks_io import read_landmarks
from facekd.data_prep.manifest import load_manifest
from facekd.data_prep.photos import read_photo
from facekd.data.errors import DataFormatError
from _face_fixtures import fake_scrfd

pytestmark = pytest.mark.filterwarnings("ignore:`estimate` is deprecated:FutureWarning")

T1 = Path(__import__("insightface").__file__).parent / "data" / "images" / "t1.jpg"  # 6 people


def _photo(identity: int, shape=(320, 280), angle=20.0, scale=1.6) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(canvas RGB, its 5 landmarks, the upright 112 face): a synthetic face warped by a known
    similarity transform, so the true landmarks are the transformed ArcFace template."""
    face = SyntheticFaces(seed=3, size=112, pose=0, occlusion=0, noise=0, blur=0).render(identity, 0)
    h, w = shape
    m = cv2.getRotationMatrix2D((56.0, 56.0), angle, scale)
    m[:, 2] += (w / 2 - 56.0, h / 2 - 56.0)
    canvas = cv2.warpAffine(face, m, (w, h), borderValue=(90, 120, 150))
    lmk = np.c_[arcface_dst, np.ones(5)] @ m.T
    return canvas, lmk, face


def _write_rgb(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def _csv(path: Path, table: dict[str, np.ndarray]) -> Path:
    rows = ["path,lex,ley,rex,rey,nx,ny,lmx,lmy,rmx,rmy"]
    rows += [k + "," + ",".join(f"{v:.17g}" for v in lmk.ravel()) for k, lmk in table.items()]
    path.write_text("\n".join(rows) + "\n")
    return path


# ----------------------------------------------------------------------------- the warp
def test_align_face_is_norm_crop_and_recovers_the_face() -> None:
    canvas, lmk, face = _photo(7)
    crop = align_face(canvas, lmk, 112)
    assert crop.shape == (112, 112, 3) and crop.dtype == np.uint8
    np.testing.assert_array_equal(crop, norm_crop(canvas, lmk, image_size=112))
    # the inverse of the known transform: the upright face comes back (up to interpolation)
    assert np.abs(crop.astype(int) - face.astype(int))[8:-8, 8:-8].mean() < 6
    for size in (224, 128, 256):
        np.testing.assert_array_equal(align_face(canvas, lmk, size), norm_crop(canvas, lmk, image_size=size))
    with pytest.raises(DataPrepError, match="multiples of 112"):
        check_crop_size(100)
    with pytest.raises(ValueError, match="NaN"):
        align_face(canvas, np.full((5, 2), np.nan))


def test_selection_policies_rank_faces() -> None:
    def face(x0, y0, side, score):
        box = np.array([x0, y0, x0 + side, y0 + side], float)
        return Face(box, np.zeros((5, 2)), score)
    faces = [face(0, 0, 60, 0.99), face(170, 120, 40, 0.95), face(300, 0, 90, 0.91)]
    shape = (300, 400)
    assert rank_faces(faces, shape, "largest") == [2, 0, 1]
    assert select_face(faces, shape, "central") == 1
    assert select_face(faces, shape, "score") == 0
    assert select_face([], shape, "largest") is None
    with pytest.raises(DataPrepError, match="unknown face selection"):
        rank_faces(faces, shape, "prettiest")


# ----------------------------------------------------------------------------- real photos, MTCNN
def test_mtcnn_aligns_real_photos(tmp_path: Path) -> None:
    from matplotlib.cbook import get_sample_data
    from skimage.data import astronaut

    src = tmp_path / "photos"
    (src / "group").mkdir(parents=True)
    (src / "group" / "t1.jpg").write_bytes(T1.read_bytes())
    _write_rgb(src / "solo" / "astronaut.png", astronaut())
    grace = Path(get_sample_data("grace_hopper.jpg", asfileobj=False))
    (src / "solo" / "grace.jpg").write_bytes(grace.read_bytes())
    _write_rgb(src / "solo" / "wall.png", np.full((200, 240, 3), 128, np.uint8))  # no face
    out = tmp_path / "crops"
    opts = AlignOptions(str(src), str(out), detector=DetectorSpec("mtcnn"), ext=".png")
    report = run_align(opts, workers=1)
    assert report.crops == 3 and report.counts["ok"] == 3
    assert [(f["source"], f["status"]) for f in report.failures] == [("solo/wall.png", "no_face")]
    assert [(m["source"], m["faces"]) for m in report.multiple_faces] == [("group/t1.jpg", 6)]
    latest = load_manifest(report.manifest)
    for source in ("group/t1.jpg", "solo/astronaut.png", "solo/grace.jpg"):
        (rec,) = latest[source]
        crop = read_photo(out / rec["crop"])
        assert crop.shape == (112, 112, 3)
        # a crop is exactly norm_crop of its photo with the landmarks in the manifest
        np.testing.assert_array_equal(crop, norm_crop(read_photo(src / source), np.array(rec["landmarks"])))
    # largest face of the group photo kept; the summary on disk says the same
    summary = json.loads(report.summary.read_text())
    assert summary["counts"]["no_face"] == 1 and summary["multiple_faces"][0]["kept"] == latest["group/t1.jpg"][0]["kept"]

    # every face of the group photo: the expected 6 crops of 112x112
    only = tmp_path / "group_only"
    only.mkdir()
    (only / "t1.jpg").write_bytes(T1.read_bytes())
    rep = run_align(AlignOptions(str(only), str(tmp_path / "all"), all_faces=True), workers=1)
    crops = sorted((tmp_path / "all").glob("t1_*.jpg"))
    assert rep.crops == 6 and len(crops) == 6
    assert all(read_photo(c).shape == (112, 112, 3) for c in crops)


# ----------------------------------------------------------------------------- SCRFD via model_zoo
def test_scrfd_through_insightface_model_zoo(tmp_path: Path) -> None:
    lmk64 = arcface_dst * (32.0 / 112.0) + 16.0  # the template inside the 16..48 box
    model = fake_scrfd(tmp_path / "det.onnx", lmk64)
    det = build_detector(DetectorSpec("scrfd", str(model), min_score=0.5, input_size=64))
    canvas, _, _ = _photo(1, shape=(128, 128), scale=1.0, angle=0.0)
    (face,) = det.detect(canvas)  # 128 px image -> detector input scale 0.5
    assert face.score == pytest.approx(0.95)
    np.testing.assert_allclose(face.box, [32, 32, 96, 96], atol=1e-3)
    np.testing.assert_allclose(face.landmarks, lmk64 * 2, atol=1e-3)
    retina = build_detector(DetectorSpec("retinaface", str(model), min_score=0.5, input_size=64))
    np.testing.assert_allclose(retina.detect(canvas)[0].landmarks, lmk64 * 2, atol=1e-3)
    assert build_detector(DetectorSpec("scrfd", str(model), min_score=0.99, input_size=64)).detect(canvas) == []

    src = tmp_path / "in"
    _write_rgb(src / "p.png", canvas)
    rep = run_align(AlignOptions(str(src), str(tmp_path / "out"), ext=".png",
                                 detector=DetectorSpec("scrfd", str(model), 0.5, 64)), workers=1)
    assert rep.crops == 1
    np.testing.assert_array_equal(read_photo(tmp_path / "out" / "p.png"), norm_crop(canvas, lmk64 * 2))


def test_detector_model_errors(tmp_path: Path) -> None:
    from onnx import TensorProto, helper, save

    with pytest.raises(DetectorModelError, match="--detector-model"):
        build_detector(DetectorSpec("scrfd"))
    with pytest.raises(DetectorModelError, match="not found"):
        build_detector(DetectorSpec("scrfd", str(tmp_path / "det_10g.onnx")))
    (tmp_path / "weights.pth").write_bytes(b"x")
    with pytest.raises(DetectorModelError, match=".onnx"):
        build_detector(DetectorSpec("retinaface", str(tmp_path / "weights.pth")))
    (tmp_path / "junk.onnx").write_bytes(b"not a protobuf")
    with pytest.raises(DetectorModelError, match="cannot load"):
        build_detector(DetectorSpec("scrfd", str(tmp_path / "junk.onnx")))
    io_ = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 3, 112, 112]) for n in ("x", "y")]
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", io_[:1], io_[1:])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    save(model, str(tmp_path / "rec.onnx"))
    with pytest.raises(DetectorModelError, match="not a face detector"):
        build_detector(DetectorSpec("scrfd", str(tmp_path / "rec.onnx")))
    # the batch refuses up front, before writing anything
    src = tmp_path / "in"
    _write_rgb(src / "a.png", np.zeros((64, 64, 3), np.uint8))
    assert main([str(src), str(tmp_path / "out"), "--detector", "scrfd"]) == 2
    assert not (tmp_path / "out" / "a.png").exists()


# ----------------------------------------------------------------------------- landmarks files
def test_landmarks_files(tmp_path: Path) -> None:
    lmk = np.arange(10, dtype=float).reshape(5, 2) + 0.25
    table = read_landmarks(_csv(tmp_path / "l.csv", {"a/x.jpg": lmk, "./b.png": lmk + 1}))
    assert sorted(table) == ["a/x.jpg", "b.png"]
    np.testing.assert_array_equal(table["a/x.jpg"], lmk)
    (tmp_path / "l.json").write_text(json.dumps({"a\\x.jpg": lmk.ravel().tolist()}))
    np.testing.assert_array_equal(read_landmarks(tmp_path / "l.json")["a/x.jpg"], lmk)
    (tmp_path / "list.json").write_text(json.dumps([{"path": "c.jpg", "landmarks": lmk.tolist()}]))
    assert list(read_landmarks(tmp_path / "list.json")) == ["c.jpg"]
    (tmp_path / "bad.csv").write_text("a.jpg,1,2,3\n")
    with pytest.raises(DataFormatError, match=r"bad.csv \[line 1\].*11 columns"):
        read_landmarks(tmp_path / "bad.csv")
    (tmp_path / "dup.csv").write_text("a.jpg" + ",1" * 10 + "\na.jpg" + ",2" * 10 + "\n")
    with pytest.raises(DataFormatError, match="listed twice"):
        read_landmarks(tmp_path / "dup.csv")
    (tmp_path / "nan.json").write_text('{"a.jpg": [1, 2, 3, 4, 5, 6, 7, 8, 9, NaN]}')
    with pytest.raises(DataFormatError, match="NaN"):
        read_landmarks(tmp_path / "nan.json")


# ----------------------------------------------------------------------------- batches and bad input
def _bad_input_folder(tmp_path: Path) -> tuple[Path, Path, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Photos with known landmarks (good, grey, RGBA, 16-bit, EXIF-rotated) and bad files."""
    src = tmp_path / "photos"
    table: dict[str, np.ndarray] = {}
    upright: dict[str, np.ndarray] = {}
    for i in range(3):
        img, lmk, _ = _photo(i, angle=10.0 * i)
        _write_rgb(src / f"id{i}" / "p.png", img)
        table[f"id{i}/p.png"], upright[f"id{i}/p.png"] = lmk, img
    img, lmk, _ = _photo(5)
    grey = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    (src / "odd").mkdir()
    cv2.imwrite(str(src / "odd" / "grey.png"), grey)
    table["odd/grey.png"], upright["odd/grey.png"] = lmk, np.repeat(grey[:, :, None], 3, 2)
    rgba = np.dstack([img, np.full(img.shape[:2], 77, np.uint8)])
    cv2.imwrite(str(src / "odd" / "rgba.png"), cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA))
    table["odd/rgba.png"], upright["odd/rgba.png"] = lmk, img
    deep = (img.astype(np.uint16) * 257)
    cv2.imwrite(str(src / "odd" / "deep16.png"), cv2.cvtColor(deep, cv2.COLOR_RGB2BGR))
    table["odd/deep16.png"], upright["odd/deep16.png"] = lmk, img
    # stored rotated 90 degrees counter-clockwise with EXIF orientation 6 (display: rotate CW)
    pil = Image.fromarray(np.ascontiguousarray(np.rot90(img, 1)))
    exif = pil.getexif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    pil.save(buf, "JPEG", quality=98, exif=exif)
    (src / "odd" / "exif.jpg").write_bytes(buf.getvalue())
    table["odd/exif.jpg"], upright["odd/exif.jpg"] = lmk, img
    # failures
    _write_rgb(src / "bad" / "tiny.png", np.zeros((20, 24, 3), np.uint8))
    table["bad/tiny.png"] = np.full((5, 2), 5.0)
    (src / "bad" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    (src / "bad" / "empty.png").write_bytes(b"")
    _write_rgb(src / "bad" / "outside.png", img)
    table["bad/outside.png"] = lmk + 1000
    _write_rgb(src / "bad" / "unlisted.png", img)  # no landmarks and --detector none
    (src / "bad" / "notes.txt").write_text("not an image: never listed")
    return src, _csv(tmp_path / "landmarks.csv", table), table, upright


def test_bad_inputs_resume_and_workers(tmp_path: Path) -> None:
    src, csv_path, table, upright = _bad_input_folder(tmp_path)
    out = tmp_path / "crops"
    opts = AlignOptions(str(src), str(out), detector=None, ext=".png")
    report = run_align(opts, landmarks_file=csv_path, workers=2)
    status = {f["source"]: f["status"] for f in report.failures}
    assert status == {"bad/tiny.png": "too_small", "bad/corrupt.jpg": "unreadable",
                      "bad/empty.png": "unreadable", "bad/outside.png": "bad_landmarks",
                      "bad/unlisted.png": "no_landmarks"}
    assert report.total_images == 12 and report.crops == 7 and report.processed == 12
    latest = load_manifest(report.manifest)
    for source, img in upright.items():
        crop = read_photo(out / latest[source][0]["crop"])
        expected = norm_crop(img, table[source])
        if source.endswith(".jpg"):  # EXIF photo: lossy JPEG, but rotated exactly once
            assert np.abs(crop.astype(int) - expected.astype(int)).mean() < 3
        else:
            np.testing.assert_array_equal(crop, expected, err_msg=source)
    assert read_photo(src / "odd" / "exif.jpg").shape == upright["odd/exif.jpg"].shape

    again = run_align(opts, landmarks_file=csv_path, workers=2)  # resumable: nothing left to do
    assert again.processed == 0 and again.skipped == 12 and again.crops == 7
    (out / "id0" / "p.png").unlink()  # a lost crop is redone
    assert run_align(opts, landmarks_file=csv_path, workers=1).processed == 1
    retry = run_align(opts, landmarks_file=csv_path, workers=1, retry_failed=True)
    assert retry.processed == 5 and retry.failed == 5
    redo = run_align(opts, landmarks_file=csv_path, workers=2, overwrite=True)
    assert redo.processed == 12 and redo.crops == 7
    assert sum(1 for _ in open(redo.manifest)) == 12  # overwrite restarted the manifest


def test_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for option in ("--detector", "--select", "--workers", "--overwrite", "--landmarks", "--size"):
        assert option in text
    img, lmk, _ = _photo(2)
    _write_rgb(tmp_path / "in" / "a.png", img)
    csv_path = _csv(tmp_path / "l.csv", {"a.png": lmk})
    assert main([str(tmp_path / "in"), str(tmp_path / "out"), "--size", "100", "--detector", "none"]) == 2
    assert main([str(tmp_path / "in"), str(tmp_path / "out"), "--size", "224", "--detector", "none",
                 "--landmarks", str(csv_path), "--workers", "1"]) == 0
    assert read_photo(tmp_path / "out" / "a.jpg").shape == (224, 224, 3)


def test_empty_input_folder_exits_nonzero_with_one_line(tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "photos" / "someone").mkdir(parents=True)
    (tmp_path / "photos" / "notes.txt").write_text("not a photo")
    with caplog.at_level("ERROR"):
        assert main([str(tmp_path / "photos"), str(tmp_path / "out"), "--detector", "none"]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "no image files found" in errors[0] and "\n" not in errors[0]
    assert not (tmp_path / "out" / "manifest.jsonl").exists()


@pytest.mark.slow  # two interpreters import torch: about 6 s on an idle 2-core machine
def test_module_run_with_workers_prints_no_runpy_warning(tmp_path: Path) -> None:
    """``python -m facekd.data_prep.align ... --workers 2`` (forkserver by default): the workers
    re-run the module as __mp_main__; it must not also be preloaded (runpy's RuntimeWarning)."""
    import subprocess
    import sys

    from facekd.data_prep.align import _forkserver_preload

    assert "facekd.data_prep.align" not in _forkserver_preload("__main__")
    assert "facekd.data_prep.align" in _forkserver_preload("facekd.data_prep.align")
    table = {}
    for i in range(2):
        img, lmk, _ = _photo(i)
        _write_rgb(tmp_path / "in" / f"id{i}" / "a.png", img)
        table[f"id{i}/a.png"] = lmk
    csv_path = _csv(tmp_path / "l.csv", table)
    proc = subprocess.run([sys.executable, "-m", "facekd.data_prep.align", str(tmp_path / "in"),
                           str(tmp_path / "out"), "--detector", "none", "--landmarks", str(csv_path),
                           "--workers", "2"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "found in sys.modules" not in proc.stderr and "RuntimeWarning" not in proc.stderr, proc.stderr
    assert (tmp_path / "out" / "id0" / "a.jpg").is_file() and (tmp_path / "out" / "id1" / "a.jpg").is_file()
