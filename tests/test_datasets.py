"""Dataset opening: image folders, RecordIO, synthetic specs, unlabeled pools, corrupt samples."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from facekd.data.batch import collate_samples
from facekd.data.datasets import FaceDataset, open_dataset, parse_synthetic_spec
from facekd.data.errors import DataFileNotFoundError, DataFormatError
from facekd.data.folders import ImageFiles, ImageFolderFaces
from facekd.data.loaders import build_loader
from facekd.data.pools import open_unlabeled
from facekd.data.recordio import write_face_record
from facekd.data.synthetic import UNLABELED_BASE, SyntheticFaceDataset, SyntheticFaces


def _png(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def _tree(root: Path, classes: dict[str, int], size: int = 32) -> dict[tuple[str, int], np.ndarray]:
    faces = SyntheticFaces(size=size)
    images = {}
    for c, (name, n) in enumerate(classes.items()):
        for k in range(n):
            img = faces.render(c, k)
            _png(root / name / f"{k:03d}.png", img)
            images[name, k] = img
    return images


def test_image_folder_labels_sorted_and_non_images_skipped(tmp_path: Path) -> None:
    images = _tree(tmp_path, {"carol": 2, "alice": 3, "bob": 1})
    (tmp_path / "alice" / "notes.txt").write_text("not an image")
    (tmp_path / "README").write_text("top-level file")
    (tmp_path / ".cache").mkdir()
    ds = ImageFolderFaces(tmp_path)
    assert ds.classes == ["alice", "bob", "carol"] and ds.num_classes == 3
    assert ds.labels.tolist() == [0, 0, 0, 1, 2, 2]
    assert ds.skipped_files == 2
    img, label = ds.read(4)
    assert label == 2 and np.array_equal(img, images["carol", 0])


def test_image_folder_bad_layouts(tmp_path: Path) -> None:
    _tree(tmp_path / "ok", {"a": 1})
    (tmp_path / "ok" / "empty_person").mkdir()
    (tmp_path / "ok" / "empty_person" / "desktop.ini").write_text("x")
    with pytest.raises(DataFormatError, match="identity folder has no images") as err:
        ImageFolderFaces(tmp_path / "ok")
    assert err.value.path == tmp_path / "ok" / "empty_person"
    _png(tmp_path / "flat" / "x.png", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(DataFormatError, match="no identity sub-folders") as err:
        ImageFolderFaces(tmp_path / "flat")
    assert err.value.path == tmp_path / "flat"
    with pytest.raises(DataFileNotFoundError):
        ImageFolderFaces(tmp_path / "missing")
    with pytest.raises(DataFormatError, match="no image files"):
        ImageFiles(tmp_path / "ok" / "empty_person")


def _corrupt_tree(root: Path) -> Path:
    _tree(root, {"a": 3, "b": 3})
    bad = root / "a" / "001.png"
    bad.write_bytes(b"\x89PNG but truncated")
    return bad


def test_corrupt_image_skip_and_fail(tmp_path: Path) -> None:
    bad = _corrupt_tree(tmp_path)
    skip = open_dataset(tmp_path, on_corrupt="skip")
    sample = skip[1]
    assert sample["skipped"] == 1 and sample["index"] == 2 and sample["label"] == 0
    batch = collate_samples([skip[i] for i in range(len(skip))])
    assert batch.num_skipped == 1
    fail = open_dataset(tmp_path, on_corrupt="fail")
    with pytest.raises(DataFormatError) as err:
        fail[1]
    assert err.value.path == bad and str(bad) in str(err.value)
    with pytest.raises(ValueError, match="on_corrupt"):
        open_dataset(tmp_path, on_corrupt="ignore")


def test_skip_count_survives_worker_processes(tmp_path: Path) -> None:
    _corrupt_tree(tmp_path)
    loader = build_loader(open_dataset(tmp_path), batch_size=2, shuffle=True, workers=2, drop_last=False)
    assert sum(b.num_skipped for b in loader) == 1


def test_open_synthetic_spec() -> None:
    ds = open_dataset("synthetic:ids=5,per_id=3,size=32,seed=1,pose=0.5")
    assert len(ds) == 15 and ds.num_classes == 5
    sample = ds[4]
    assert set(sample) == {"image", "label", "index", "flipped", "skipped", "source"}
    assert sample["image"].shape == (3, 32, 32) and sample["image"].dtype == torch.float32
    assert sample["label"] == 1 and sample["index"] == 4 and sample["source"] == 0
    expected = SyntheticFaceDataset(5, 3, 32, 1, pose=0.5).read(4)[0]
    assert torch.allclose(sample["image"], torch.from_numpy(expected).permute(2, 0, 1).float() / 127.5 - 1, atol=1e-6)
    assert len(open_dataset("synthetic")) == 400 * 24


def test_synthetic_spec_errors() -> None:
    assert parse_synthetic_spec("synthetic:ids=7,noise=0")["num_identities"] == 7
    with pytest.raises(ValueError, match="unknown synthetic key 'colour'"):
        parse_synthetic_spec("synthetic:colour=1")
    with pytest.raises(ValueError, match="ids must be int"):
        parse_synthetic_spec("synthetic:ids=many")
    with pytest.raises(DataFileNotFoundError):
        open_dataset("/nonexistent/dataset/dir")


def test_open_recordio_folder_and_rec(tmp_path: Path) -> None:
    src = SyntheticFaceDataset(3, 2, size=32, seed=4)
    out = write_face_record(tmp_path / "rec", (src.read(i) for i in range(len(src))), fmt=".png")
    for spec in (out, out / "train.rec"):
        ds = open_dataset(spec)
        assert len(ds) == 6 and ds.num_classes == 3
        for i in range(6):
            img, label = ds.read(i)
            ref, ref_label = src.read(i)
            assert label == ref_label and np.array_equal(img, ref)
    pool = open_unlabeled(out)
    assert pool.read(3)[1] == -1 and pool[3]["label"] == -1 and pool[3]["source"] == 1


def test_unlabeled_pools(tmp_path: Path) -> None:
    _tree(tmp_path / "x", {"p": 2})
    _png(tmp_path / "x" / "deep" / "er" / "img.png", np.zeros((32, 32, 3), np.uint8))
    pool = open_unlabeled(tmp_path / "x")
    assert len(pool) == 3 and pool.num_classes == 0
    assert {pool[i]["label"] for i in range(3)} == {-1}
    assert pool.labels.tolist() == [-1, -1, -1]
    syn = open_unlabeled("synthetic:ids=4,per_id=2,size=32")
    assert isinstance(syn, FaceDataset) and isinstance(syn.source, SyntheticFaceDataset)
    assert syn.source.first_identity == UNLABELED_BASE
    assert not set(syn.source.identities) & set(open_dataset("synthetic:ids=4,per_id=2,size=32").source.identities)
    assert syn[0]["label"] == -1


def test_align_records_in_a_crop_folder_are_not_warned_about(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """align's own manifest.jsonl / align_summary.json sit in every crop folder: a pool or a training
    folder made by align must not warn about them; other stray files still are."""
    _tree(tmp_path / "crops", {"a": 2, "b": 2})
    (tmp_path / "crops" / "manifest.jsonl").write_text("{}\n")
    (tmp_path / "crops" / "align_summary.json").write_text("{}")
    with caplog.at_level("WARNING"):
        assert len(ImageFiles(tmp_path / "crops")) == 4 and len(ImageFolderFaces(tmp_path / "crops")) == 4
    assert "non-image" not in caplog.text
    (tmp_path / "crops" / "a" / "notes.txt").write_text("x")
    with caplog.at_level("WARNING"):
        ImageFiles(tmp_path / "crops")
    assert "skipped 1 non-image file(s) (e.g. a/notes.txt)" in caplog.text
