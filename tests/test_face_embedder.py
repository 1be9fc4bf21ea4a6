"""facekd.FaceEmbedder: one embedding API for aligned crops (arrays or paths) and for photos (detected
and aligned by facekd.data_prep), shared by verify, identify and the export report."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from insightface.utils.face_align import norm_crop

import facekd
from facekd.data.errors import DataFileNotFoundError
from facekd.eval.embed import EmbeddingError, FaceEmbedder, embed_images, to_model_input
from facekd.eval.verify import VerificationSet, verify_model
from facekd.models.onnx_backbone import export_onnx

from _face_fixtures import LANDMARKS64, STUDENT_OPTIONS, face_photo, fake_scrfd, tiny_student

pytestmark = pytest.mark.filterwarnings("ignore:`estimate` is deprecated:FutureWarning")


@pytest.fixture(scope="module")
def student(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, Path]:
    path = tmp_path_factory.mktemp("student") / "backbone.pth"
    return tiny_student(path), path


def _crops(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 112, 112, 3), dtype=np.uint8)


def test_package_exports_the_embedder() -> None:
    assert facekd.FaceEmbedder is FaceEmbedder


def test_embed_arrays_and_paths_give_the_flip_summed_normalised_torch_embedding(student, tmp_path) -> None:
    model, path = student
    crops = _crops(3)
    emb = FaceEmbedder(str(path), arch="mbf", **STUDENT_OPTIONS).embed(crops)
    x = to_model_input(crops)
    with torch.no_grad():
        raw = (model(x) + model(torch.flip(x, dims=[3]))).numpy()
    assert emb.dtype == np.float32 and emb.shape == (3, 32)
    np.testing.assert_allclose(emb, raw / np.linalg.norm(raw, axis=1, keepdims=True), atol=1e-5)
    files = []
    for i, c in enumerate(crops):
        files.append(tmp_path / f"{i}.png")
        cv2.imwrite(str(files[-1]), cv2.cvtColor(c, cv2.COLOR_RGB2BGR))
    embedder = FaceEmbedder(model)
    np.testing.assert_allclose(embedder.embed(files), emb, atol=1e-5)
    np.testing.assert_allclose(embedder.embed(crops[1]), emb[1:2], atol=1e-5)  # one HxWx3 crop
    np.testing.assert_allclose(FaceEmbedder(model, flip=False).embed(crops[:1]),
                               embed_images(model, crops[:1], flip=False, show_progress=False), atol=1e-6)


def test_onnx_file_gives_the_same_embeddings(student, tmp_path) -> None:
    model, _ = student
    onnx_path = export_onnx(model, tmp_path / "m.onnx", input_size=112)
    crops = _crops(4, seed=1)
    a, b = FaceEmbedder(model).embed(crops), FaceEmbedder(onnx_path).embed(crops)
    assert np.min(np.sum(a * b, axis=1)) > 0.99999


def test_verify_model_embeds_through_the_embedder(student) -> None:
    model, _ = student
    images = _crops(8, seed=2)
    vs = VerificationSet("s", images, np.array([True, False, True, False]))
    by_model = verify_model(model, [vs], nfolds=2, show_progress=False)[0]
    by_embedder = verify_model(FaceEmbedder(model, batch_size=3), [vs], nfolds=2, show_progress=False)[0]
    np.testing.assert_allclose(by_model.distances, by_embedder.distances, atol=1e-6)
    emb = FaceEmbedder(model).embed(images)
    np.testing.assert_allclose(by_model.distances, np.sum((emb[0::2] - emb[1::2]) ** 2, axis=1), atol=1e-5)


def test_embed_photos_detects_aligns_and_embeds(student, tmp_path) -> None:
    model, _ = student
    det = fake_scrfd(tmp_path / "det.onnx")
    photo = face_photo()
    path = tmp_path / "photo.png"
    cv2.imwrite(str(path), cv2.cvtColor(photo, cv2.COLOR_RGB2BGR))
    embedder = FaceEmbedder(model)
    (faces,) = embedder.embed_photos([path], detector=str(det), min_score=0.5, det_size=64)
    (face,) = faces
    assert face.photo == str(path) and face.score == pytest.approx(0.95)
    np.testing.assert_allclose(face.box, [32, 32, 96, 96], atol=1e-3)
    np.testing.assert_allclose(face.landmarks, LANDMARKS64 * 2, atol=1e-3)
    crop = norm_crop(photo, LANDMARKS64 * 2, image_size=112)  # facekd.data_prep.align's warp
    np.testing.assert_array_equal(face.crop, crop)
    np.testing.assert_allclose(face.embedding, embedder.embed(crop)[0], atol=1e-5)
    assert face.embedding.shape == (32,) and np.linalg.norm(face.embedding) == pytest.approx(1.0, abs=1e-5)
    # arrays work as photos too; a photo without a face gives an empty list
    (again,) = embedder.embed_photos(photo, detector=str(det), min_score=0.5, det_size=64)
    np.testing.assert_allclose(again[0].embedding, face.embedding, atol=1e-5)
    assert embedder.embed_photos([photo], detector=str(det), min_score=0.99, det_size=64) == [[]]


def test_bad_input_is_named(student, tmp_path) -> None:
    model, _ = student
    embedder = FaceEmbedder(model)
    with pytest.raises(EmbeddingError, match="uint8"):
        embedder.embed(np.zeros((1, 112, 112, 3), np.float32))
    with pytest.raises(DataFileNotFoundError, match="missing.png"):
        embedder.embed([tmp_path / "missing.png"])
    with pytest.raises(EmbeddingError, match="model file"):
        FaceEmbedder(model, arch="mbf")


@pytest.mark.slow
def test_embed_photos_with_mtcnn_finds_every_face_of_a_real_photo(student) -> None:
    from facekd.data_prep.align import align_face
    from facekd.data_prep.photos import read_photo

    t1 = Path(__import__("insightface").__file__).parent / "data" / "images" / "t1.jpg"  # 6 people
    model, _ = student
    embedder = FaceEmbedder(model)
    (faces,) = embedder.embed_photos([t1])  # detector="mtcnn", weights inside facenet-pytorch
    assert len(faces) == 6 and all(f.score >= 0.9 and f.landmarks.shape == (5, 2) for f in faces)
    photo = read_photo(t1)
    for f in faces:  # the crop is align's crop of the photo at the detected landmarks
        np.testing.assert_array_equal(f.crop, align_face(photo, f.landmarks, 112))
    emb = np.stack([f.embedding for f in faces])
    np.testing.assert_allclose(emb, embedder.embed(np.stack([f.crop for f in faces])), atol=1e-5)
    assert np.max(np.abs(emb @ emb.T - np.eye(6))) < 1.0  # six different faces, unit vectors
