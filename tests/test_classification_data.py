"""Classification data: CIFAR pickles (safe unpickling), folders, Tiny-ImageNet, digits, synthetic,
pools, per-class subsets, transforms and the loaders on top."""
from __future__ import annotations

import io
import os
import pickle
import struct
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from facekd.data.batch import collate_samples
from facekd.data.cifar import CifarImages, CifarNotFoundError, CifarUnpickler, load_cifar_pickle, save_cifar_split
from facekd.data.classification import (classification_transform, limit_per_class, open_classification,
                                        open_classification_pool, open_classification_source,
                                        open_evaluation_data,
                                        parse_classification_spec)
from facekd.data.digits import DigitsImages
from facekd.data.errors import DataFileNotFoundError, DataFormatError
from facekd.data.loaders import build_loader, build_mixed_loader
from facekd.data.synthetic import UNLABELED_BASE
from facekd.data.transforms import CIFAR_MEAN, CIFAR_STD, only_flips

_RECONSTRUCT = np.zeros(1, np.uint8).__reduce__()[0]


def _cifar_rows(images: np.ndarray) -> np.ndarray:
    """[N, 32, 32, 3] -> the on-disk [N, 3072] (all red, then green, then blue)."""
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(len(images), -1))


def _write_fake_cifar100(root: Path, n_train: int = 7, n_test: int = 3) -> dict[str, np.ndarray]:
    """A cifar-100-python folder written by hand (protocol-2 pickles, as the official files)."""
    rng = np.random.default_rng(5)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        labels = rng.integers(0, 100, n).tolist()
        entry = {"filenames": [f"img_{i}.png" for i in range(n)], "batch_label": f"{split} batch",
                 "fine_labels": labels, "coarse_labels": [c // 5 for c in labels], "data": _cifar_rows(images)}
        (folder / split).write_bytes(pickle.dumps(entry, protocol=2))
        out[split + "_images"], out[split + "_labels"] = images, np.asarray(labels)
    names = [f"name{i}" for i in range(100)]
    (folder / "meta").write_bytes(pickle.dumps({"fine_label_names": names,
                                                "coarse_label_names": [f"c{i}" for i in range(20)]}, protocol=2))
    return out


def test_fake_cifar100_reads_back_exactly(tmp_path: Path) -> None:
    truth = _write_fake_cifar100(tmp_path)
    for split in ("train", "test"):
        ds = CifarImages(tmp_path, "cifar100", split)
        assert len(ds) == len(truth[split + "_labels"]) and ds.num_classes == 100
        assert np.array_equal(ds.images, truth[split + "_images"])
        assert np.array_equal(ds.labels, truth[split + "_labels"])
        image, label = ds.read(1)
        assert image.shape == (32, 32, 3) and image.dtype == np.uint8 and label == truth[split + "_labels"][1]
    assert ds.classes[:2] == ["name0", "name1"]
    # the inner folder works as ROOT too, and the spec gives normalised tensors of the same pixels
    assert len(CifarImages(tmp_path / "cifar-100-python", "cifar100", "test")) == 3
    sample = open_classification(f"cifar100:{tmp_path}", "test")[2]
    expected = (truth["test_images"][2] / 255.0 - np.array(CIFAR_MEAN)) / np.array(CIFAR_STD)
    assert torch.allclose(sample["image"], torch.from_numpy(expected.transpose(2, 0, 1)).float(), atol=1e-5)
    assert sample["label"] == truth["test_labels"][2] and sample["source"] == 0 and sample["index"] == 2


class _Python2Pickler(pickle._Pickler):
    """Writes bytes and str as Python 2 ``str`` opcodes and numpy's reconstructor under its old
    module name: the form of the official CIFAR files."""

    def save_bytes(self, obj: bytes) -> None:
        head = b"U" + bytes([len(obj)]) if len(obj) < 256 else b"T" + struct.pack("<i", len(obj))
        self.write(head + obj)
        self.memoize(obj)

    def save_str(self, obj: str) -> None:
        self.save_bytes(obj.encode("latin1"))

    def save_global(self, obj: object, name: str | None = None) -> None:
        if obj is _RECONSTRUCT:
            self.write(b"cnumpy.core.multiarray\n_reconstruct\n")
            self.memoize(obj)
            return
        super().save_global(obj, name)

    dispatch = dict(pickle._Pickler.dispatch)
    dispatch[bytes] = save_bytes
    dispatch[str] = save_str


def test_python2_cifar10_pickles_load(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8)
    labels = list(range(10))
    for k in range(1, 6):
        part = slice(2 * (k - 1), 2 * k)
        buf = io.BytesIO()
        _Python2Pickler(buf, protocol=2).dump({"data": _cifar_rows(images[part]), "labels": labels[part],
                                               "batch_label": f"training batch {k} of 5"})
        (folder / f"data_batch_{k}").write_bytes(buf.getvalue())
    buf = io.BytesIO()
    _Python2Pickler(buf, protocol=2).dump({"label_names": [f"n{i}" for i in range(10)], "num_vis": 3072})
    (folder / "batches.meta").write_bytes(buf.getvalue())
    ds = CifarImages(tmp_path, "cifar10", "train")
    assert np.array_equal(ds.images, images) and ds.labels.tolist() == labels and ds.classes[9] == "n9"
    with pytest.raises(CifarNotFoundError, match="test_batch.*cs.toronto.edu/~kriz/cifar.html"):
        CifarImages(tmp_path, "cifar10", "test")


def test_save_cifar_split_round_trip(tmp_path: Path) -> None:
    images = np.random.default_rng(2).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    save_cifar_split(tmp_path, images, [0, 1, 2, 9], "cifar10", "train", class_names="abcdefghij")
    assert len(load_cifar_pickle(tmp_path / "cifar-10-batches-py" / "data_batch_5")["labels"]) == 0
    ds = open_classification_source(f"cifar10:{tmp_path}", "train")
    assert np.array_equal(ds.images, images) and ds.labels.tolist() == [0, 1, 2, 9]
    assert ds.classes == list("abcdefghij")


class _Payload:
    def __reduce__(self):
        return (os.mkdir, (self.target,))

    def __init__(self, target: str) -> None:
        self.target = target


class _BigBytes:
    def __reduce__(self):
        return (bytes, (10 ** 12,))


def test_restricted_unpickler_refuses_code_and_object_arrays(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    marker = tmp_path / "pwned"
    (folder / "train").write_bytes(pickle.dumps({"data": _Payload(str(marker)), "fine_labels": []}, protocol=2))
    with pytest.raises(DataFormatError, match=r"refused: the pickle references (posix|nt|os)\.mkdir") as err:
        CifarImages(tmp_path, "cifar100", "train")
    assert err.value.path == folder / "train"
    assert not marker.exists()
    objects = np.array([1, "x"], dtype=object)
    (folder / "train").write_bytes(pickle.dumps({"data": objects, "fine_labels": [0, 1]}, protocol=2))
    with pytest.raises(DataFormatError, match="only numeric arrays"):
        load_cifar_pickle(folder / "train")
    with pytest.raises(pickle.UnpicklingError):
        CifarUnpickler(io.BytesIO(pickle.dumps(np.ma.masked_array([1, 2]), protocol=2))).load()
    with pytest.raises(pickle.UnpicklingError, match=r"bytes\(\) with 1 argument"):
        CifarUnpickler(io.BytesIO(pickle.dumps(_BigBytes(), protocol=2))).load()


def test_cifar_bad_contents_name_the_file(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    train = folder / "train"
    train.write_bytes(pickle.dumps({"data": np.zeros((2, 100), np.uint8), "fine_labels": [0, 1]}, protocol=2))
    with pytest.raises(DataFormatError, match=r"uint8 array of shape \[N, 3072\]"):
        CifarImages(tmp_path)
    train.write_bytes(pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "fine_labels": [0, 100]}, protocol=2))
    with pytest.raises(DataFormatError, match=r"label 100 outside 0\.\.99") as err:
        CifarImages(tmp_path)
    assert err.value.key == "image 1"
    train.write_bytes(pickle.dumps({"data": np.zeros((2, 3072), np.uint8)}, protocol=2))
    with pytest.raises(DataFormatError, match="no 'fine_labels' entry"):
        CifarImages(tmp_path)
    train.write_bytes(b"definitely not a pickle")
    with pytest.raises(DataFormatError, match="not a CIFAR pickle") as err:
        CifarImages(tmp_path)
    assert err.value.path == train
    with pytest.raises(CifarNotFoundError, match="never downloads data: get cifar-100-python.tar.gz") as err2:
        open_classification(f"cifar100:{tmp_path / 'elsewhere'}")
    assert isinstance(err2.value, DataFileNotFoundError) and err2.value.path == tmp_path / "elsewhere" / "cifar-100-python"


def test_digits_upscaled_and_split_deterministically() -> None:
    from sklearn.datasets import load_digits

    train, test = DigitsImages(16, "train"), DigitsImages(16, "test")
    assert len(train) + len(test) == 1797 and len(test) == 450
    assert not set(train.source_rows) & set(test.source_rows)
    per_class = np.bincount(train.labels) + np.bincount(test.labels)
    assert np.abs(np.bincount(test.labels) - 0.25 * per_class).max() <= 1  # stratified: a quarter of each class
    assert train.images.shape[1:] == (16, 16, 3)
    raw = load_digits()
    row = int(test.source_rows[0])
    image, label = test.read(0)
    assert label == raw.target[row]
    assert np.array_equal(image[..., 0], image[..., 2])
    small = cv2.resize(image[..., 0].astype(np.float32), (8, 8), interpolation=cv2.INTER_AREA)
    assert np.corrcoef(small.ravel(), raw.images[row].ravel())[0, 1] > 0.9
    again = open_classification_source("digits:size=16", "test")
    assert np.array_equal(again.images, test.images)
    other = open_classification_source("digits:size=16,seed=3", "test")
    assert not np.array_equal(other.source_rows, test.source_rows)
    with pytest.raises(ValueError, match="unknown key 'sise'; valid keys: seed, size, test"):
        open_classification("digits:sise=16")


def _png(path: Path, value: int, size: int = 20) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.full((size, size, 3), value, np.uint8))


def test_folder_splits_align_classes(tmp_path: Path) -> None:
    for name, n in (("cat", 2), ("dog", 3), ("eel", 1)):
        for k in range(n):
            _png(tmp_path / "train" / name / f"{k}.png", 10 * k)
    _png(tmp_path / "val" / "eel" / "0.png", 200)
    _png(tmp_path / "val" / "dog" / "0.png", 100)
    train = open_classification(f"folder:{tmp_path}", "train", classification_transform("train", seed=1))
    assert train.num_classes == 3 and train.labels.tolist() == [0, 0, 1, 1, 1, 2]
    assert train[0]["image"].shape == (3, 32, 32)
    test = open_classification(f"folder:{tmp_path}", "test")
    assert test.num_classes == 3 and test.labels.tolist() == [1, 2]  # dog, eel in the training numbering
    assert test.source.classes == ["cat", "dog", "eel"]
    _png(tmp_path / "val" / "fox" / "0.png", 50)
    with pytest.raises(DataFormatError, match=r"class\(es\) \[.fox.\] of the evaluation data are not among "
                                              r"the 3 training classes"):
        open_classification(f"folder:{tmp_path}", "test")
    pool = open_classification_pool(f"folder:{tmp_path}")
    assert len(pool) == 9 and set(pool.labels.tolist()) == {-1}
    flat = tmp_path / "flat"
    _png(flat / "a" / "0.png", 1)
    assert parse_classification_spec(flat) == ("folder", str(flat))
    assert len(open_classification(flat)) == 1
    with pytest.raises(DataFormatError, match="no 'test' split"):
        open_classification(f"folder:{flat}", "test")
    # given on its own, a flat tree is read whole and numbered like the training classes
    _png(flat / "eel" / "0.png", 3)
    held_out = open_evaluation_data(f"folder:{flat}", classes=["cat", "dog", "eel", "a"])
    assert held_out.labels.tolist() == [3, 2] and held_out.num_classes == 4
    assert open_evaluation_data("digits:size=8").labels.shape == (450,)
    with pytest.raises(DataFileNotFoundError):
        open_classification(f"folder:{tmp_path / 'missing'}")


def test_tiny_imagenet_layout(tmp_path: Path) -> None:
    root = tmp_path / "tiny-imagenet-200"
    for wnid in ("n02", "n01"):
        for k in range(2):
            _png(root / "train" / wnid / "images" / f"{wnid}_{k}.JPEG", 30 * k, size=64)
        (root / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
    _png(root / "val" / "images" / "val_0.JPEG", 7, size=64)
    (root / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn02\t0\t0\t10\t10\n")
    train = open_classification_source(f"tinyimagenet:{tmp_path}", "train")
    assert train.classes == ["n01", "n02"] and train.labels.tolist() == [0, 0, 1, 1]
    test = open_classification(f"tinyimagenet:{root}", "test")
    assert test.labels.tolist() == [1] and test[0]["image"].shape == (3, 32, 32)
    pool = open_classification_pool(f"tinyimagenet:{tmp_path}")
    sample = pool[3]
    assert len(pool) == 4 and sample["label"] == -1 and sample["source"] == 1
    assert sample["image"].shape == (3, 32, 32)  # 64 px resized to 32 for the pool
    (root / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn09\t0\t0\t10\t10\n")
    with pytest.raises(DataFormatError, match="wnid 'n09' has no train/ folder") as err:
        open_classification_source(f"tinyimagenet:{tmp_path}", "test")
    assert err.value.key == "line 1"


def test_synthetic_classes_and_pool() -> None:
    train = open_classification_source("synthetic:ids=3,per_id=4,seed=2", "train")
    test = open_classification_source("synthetic:ids=3,per_id=4,seed=2,test_per_id=2", "test")
    assert train.num_classes == test.num_classes == 3 and len(test) == 6
    assert train.faces.size == 32 and test.first_sample == 4  # held-out photos of the same identities
    assert not any(np.array_equal(test.read(0)[0], train.read(i)[0]) for i in range(4))
    pool = open_classification_pool("synthetic:ids=2,per_id=2")
    assert pool.source.first_identity == UNLABELED_BASE and pool.num_classes == 0


def test_per_class_limit_and_transforms() -> None:
    source = open_classification_source("digits:size=8", "train")
    subset = limit_per_class(source, 5, seed=1)
    assert len(subset) == 50 and np.bincount(subset.labels).tolist() == [5] * 10
    assert np.array_equal(subset.read(0)[0], source.read(int(subset.rows[0]))[0])
    ds = open_classification("digits:size=8", per_class=3, subset_seed=1)
    assert len(ds) == 30 and ds.num_classes == 10
    pool_t = classification_transform("unlabeled", seed=0)
    assert only_flips(pool_t) and not only_flips(classification_transform("train"))
    image = np.random.default_rng(0).integers(0, 256, (64, 48, 3), dtype=np.uint8)
    flips = set()
    for _ in range(12):
        tensor, flipped = pool_t.apply(image)
        assert tensor.shape == (3, 32, 32)
        flips.add(flipped)
    assert flips == {True, False}
    with pytest.raises(ValueError, match="transform role"):
        classification_transform("test")


def test_mixed_loader_over_digits_and_pool() -> None:
    labeled = open_classification("digits:size=16", transform=classification_transform("train", size=16))
    pool = open_classification_pool("synthetic:ids=4,per_id=4", classification_transform("unlabeled", size=16))
    batch = next(iter(build_mixed_loader(labeled, pool, batch_size=8, workers=0, seed=0)))
    assert batch.images.shape == (16, 3, 16, 16)
    assert batch.labeled.tolist() == [True] * 8 + [False] * 8
    assert (batch.labels[8:] == -1).all() and (batch.labels[:8] >= 0).all()
    assert batch.source.tolist() == [0] * 8 + [1] * 8
    plain = next(iter(build_loader(open_classification("digits:size=16", "test"), 5, shuffle=False, workers=0)))
    assert plain.index.tolist() == [0, 1, 2, 3, 4]
    assert collate_samples([labeled[0]]).labels.item() == labeled.labels[0]


def test_unknown_specs_are_explained() -> None:
    with pytest.raises(ValueError, match="unknown classification data 'imagenet:/x'.*cifar100:ROOT"):
        open_classification("imagenet:/x")
    with pytest.raises(ValueError, match="cifar100 needs a folder"):
        open_classification("cifar100")
    with pytest.raises(ValueError, match="split must be one of"):
        open_classification("digits", "val")
