"""The one data-source registry: a format registered in this file (nothing else touched) opens through
training, unlabeled-pool, classification and evaluation entry points; prefixes and bare-path detection."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from facekd.data.classification import DataSpecError, open_classification, open_classification_pool
from facekd.data.datasets import ImageDataset, open_dataset
from facekd.data.errors import DataFormatError
from facekd.data.pools import open_unlabeled
from facekd.data.sources import (DATA_SOURCES, DETECTION_ORDER, OpenRequest, detection_order, register_source,
                                 resolve_source, split_spec)
from facekd.eval.sources import load_embeddings, source_kind


class ToyImages:
    """``n`` 8x8 images of ``classes`` classes; image i is filled with the value 10 * i (split test: + 5)."""

    def __init__(self, n: int, classes: int, split: str = "train") -> None:
        self.n, self.classes_count, self.offset = n, classes, 5 if split == "test" else 0
        self.labels = np.arange(n, dtype=np.int64) % classes
        self.classes = [f"c{k}" for k in range(classes)]

    def __len__(self) -> int:
        return self.n

    @property
    def num_classes(self) -> int:
        return self.classes_count

    def read(self, i: int) -> tuple[np.ndarray, int]:
        return np.full((8, 8, 3), 10 * i + self.offset, np.uint8), int(self.labels[i])


def _toy_arguments(argument: str) -> tuple[int, int]:
    n, _, classes = argument.partition("x")
    return int(n), int(classes)


@register_source("toy", kinds=("face", "classify"), example="toy:NxC", detect=lambda p: p.suffix == ".toy")
def open_toy(argument: str, request: OpenRequest) -> ToyImages:
    """``toy:NxC`` (or a ``.toy`` file holding ``NxC``): N images of C classes."""
    if argument.endswith(".toy"):
        argument = Path(argument).read_text().strip()
    n, classes = _toy_arguments(argument)
    return ToyImages(n, classes, request.split)


class MeanColour(nn.Module):
    """A stand-in embedder: the mean of each channel (3-d embeddings)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3)) + torch.tensor([1.0, 0.0, 0.0])


def test_a_format_registered_here_opens_through_every_entry_point(tmp_path: Path) -> None:
    train = open_dataset("toy:6x3")  # training data
    assert isinstance(train, ImageDataset) and isinstance(train.source, ToyImages)
    assert len(train) == 6 and train.num_classes == 3 and train.read(4)[1] == 1
    assert int(train[4]["label"]) == 1 and train[4]["source"] == 0

    pool = open_unlabeled("toy:5x2")  # unlabeled pool: labels dropped, marked as pool rows
    assert len(pool) == 5 and pool.num_classes == 0 and pool[3]["label"] == -1 and pool[3]["source"] == 1

    test = open_classification("toy:4x2", "test")  # classification, with its split passed through
    assert test.read(1)[0][0, 0, 0] == 15 and test.read(1)[1] == 1
    assert len(open_classification_pool("toy:3x3")) == 3

    gallery = load_embeddings("toy:4x2", MeanColour(), batch_size=2)  # evaluation: embedded with the model
    assert gallery.embeddings.shape == (4, 3) and list(gallery.labels) == [0, 1, 0, 1]
    assert list(gallery.names) == ["c0", "c1"]

    spec_file = tmp_path / "set.toy"  # a bare path recognised by the toy detector
    spec_file.write_text("3x1")
    assert len(open_dataset(spec_file)) == 3 and source_kind(spec_file) == "toy"


def test_prefixes_and_bare_paths_resolve_in_the_documented_order(tmp_path: Path) -> None:
    assert split_spec("rec:/data/ms1m") == ("rec", "/data/ms1m")
    assert split_spec("synthetic") == ("synthetic", "")
    assert split_spec(str(tmp_path)) == ("", str(tmp_path))
    assert DETECTION_ORDER[-1] == "folder"
    order = [e.name for e in detection_order("face")]
    assert order.index("rec") < order.index("toy") < order.index("folder") == len(order) - 1

    folder = tmp_path / "faces"
    (folder / "alice").mkdir(parents=True)
    assert resolve_source(folder, ("face",))[0].name == "folder"
    (folder / "train.rec").write_bytes(b"")  # a folder with a .rec is RecordIO, not an image tree
    assert resolve_source(folder, ("face",))[0].name == "rec"
    npy = tmp_path / "gallery.npy"
    np.save(npy, np.eye(3, dtype=np.float32))
    np.save(tmp_path / "gallery_labels.npy", np.array([2, 0, 1]))
    assert source_kind(npy) == "npy"
    loaded = load_embeddings(f"npy:{npy}")  # the same file through its explicit prefix
    assert np.array_equal(loaded.embeddings, np.eye(3)) and list(loaded.labels) == [2, 0, 1]
    # one registry: the same prefix serves face and classification data with their own openers
    assert {e.kinds for e in DATA_SOURCES.entries() if e.name == "synthetic"} == {("face",), ("classify",)}


def test_unknown_specs_list_the_known_sources(tmp_path: Path) -> None:
    with pytest.raises(DataSpecError, match="expected one of: .*cifar100:ROOT.*digits.*toy:NxC"):
        open_classification("nosuch:thing")
    with pytest.raises(DataSpecError, match="unknown classification data 'rec:x'"):
        open_classification("rec:x")  # a face-only source is not classification data
    stray = tmp_path / "notes.txt"
    stray.write_text("x")
    with pytest.raises(DataFormatError, match="expected bin:PATH .*folder:ROOT .*rec:PATH.*synthetic"):
        open_dataset(stray)


def test_a_prefixed_spec_is_checked_by_its_source_in_one_line(tmp_path: Path) -> None:
    from facekd.config import ConfigError
    from facekd.pipelines.preflight import check_files, open_data

    missing = f"rec:{tmp_path / 'nowhere'}"
    check_files([("--data", missing), ("--unlabeled", "toy:3x1")])  # prefixed specs are not path-tested here
    with pytest.raises(ConfigError, match=r"--data rec:.*nowhere: no such file or directory"):
        open_data("--data", missing, open_dataset)
    with pytest.raises(ConfigError, match="--data .*nowhere: no such file"):
        check_files([("--data", str(tmp_path / "nowhere"))])


def test_a_verification_bin_is_an_unlabeled_pool_not_training_data(tmp_path: Path) -> None:
    from facekd.data.verification_bin import save_bin

    images = np.stack([np.full((16, 16, 3), 40 * k, np.uint8) for k in range(4)])
    path = save_bin(tmp_path / "pairs.bin", images, [True, False], fmt=".png")
    pool = open_unlabeled(path)  # detected by its suffix, and by its prefix below
    assert len(pool) == 4 and pool.num_classes == 0 and pool[2]["label"] == -1
    assert np.array_equal(pool.read(3)[0], images[3]) and pool.read(3)[1] == -1
    assert len(open_unlabeled(f"bin:{path}")) == 4
    with pytest.raises(DataFormatError, match="without identity labels.*--unlabeled"):
        open_dataset(path)
