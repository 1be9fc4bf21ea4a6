"""Tiny-ImageNet-200 from its extracted archive: ``train/<wnid>/images/*.JPEG`` and
``val/images/*.JPEG`` with ``val/val_annotations.txt`` (``file<TAB>wnid<TAB>box...``).

The SRD paper uses the 100,000 training images as an open-set unlabeled pool for CIFAR-100;
the labeled ``train`` and ``test`` (= the official validation set, the test set has no labels)
splits are there too. ``root`` is the ``tiny-imagenet-200`` folder or the folder holding it.
Classes are the sorted wnid folder names. Images are 64x64 (some grey, decoded to RGB).
"""
from __future__ import annotations

from os import PathLike
from pathlib import Path

import numpy as np

from facekd.data.errors import DataFileNotFoundError, DataFormatError
from facekd.data.folders import is_image_file, read_image_file

__all__ = ["TinyImageNetImages", "TINY_IMAGENET_FOLDER"]

TINY_IMAGENET_FOLDER = "tiny-imagenet-200"


def _dataset_root(root: Path) -> Path:
    if (root / "train").is_dir():
        return root
    if (root / TINY_IMAGENET_FOLDER / "train").is_dir():
        return root / TINY_IMAGENET_FOLDER
    raise DataFileNotFoundError(root / "train", f"Tiny-ImageNet train folder (expected {root}/train/<wnid>/images/ "
                                                f"or {root}/{TINY_IMAGENET_FOLDER}/train/...)")


class TinyImageNetImages:
    """One split of Tiny-ImageNet: ``read(i) -> (RGB uint8, label)``; ``split`` is ``train`` or
    ``test`` (the labeled validation images). ``classes`` are wnids, ``paths`` the image files."""

    def __init__(self, root: str | PathLike[str], split: str = "train") -> None:
        if split not in ("train", "test"):
            raise ValueError(f"Tiny-ImageNet has splits ('train', 'test'), not {split!r}")
        self.root = _dataset_root(Path(root))
        self.split = split
        train = self.root / "train"
        self.classes = sorted(p.name for p in train.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not self.classes:
            raise DataFormatError(train, "no class (wnid) folders")
        index = {wnid: k for k, wnid in enumerate(self.classes)}
        paths, labels = self._train(train, index) if split == "train" else self._val(self.root / "val", index)
        self.paths = paths
        self.labels = np.asarray(labels, dtype=np.int64)

    @staticmethod
    def _train(train: Path, index: dict[str, int]) -> tuple[list[Path], list[int]]:
        paths: list[Path] = []
        labels: list[int] = []
        for wnid, label in index.items():
            folder = train / wnid / "images"
            files = sorted(p for p in folder.iterdir() if is_image_file(p)) if folder.is_dir() else []
            if not files:
                raise DataFormatError(train / wnid, "class folder has no images/ sub-folder with images")
            paths += files
            labels += [label] * len(files)
        return paths, labels

    @staticmethod
    def _val(val: Path, index: dict[str, int]) -> tuple[list[Path], list[int]]:
        notes = val / "val_annotations.txt"
        if not notes.is_file():
            raise DataFileNotFoundError(notes, "Tiny-ImageNet validation labels (val_annotations.txt)")
        paths: list[Path] = []
        labels: list[int] = []
        for number, line in enumerate(notes.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) < 2:
                raise DataFormatError(notes, "expected 'file<TAB>wnid<TAB>...'", f"line {number}")
            name, wnid = fields[0].strip(), fields[1].strip()
            if wnid not in index:
                raise DataFormatError(notes, f"wnid {wnid!r} has no train/ folder", f"line {number}")
            paths.append(val / "images" / name)
            labels.append(index[wnid])
        if not paths:
            raise DataFormatError(notes, "no validation images listed")
        return paths, labels

    def __repr__(self) -> str:
        return f"TinyImageNetImages({self.split} at {self.root}: {len(self)} images, {self.num_classes} classes)"

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def num_classes(self) -> int:
        """Number of wnid folders (200 for the real dataset)."""
        return len(self.classes)

    def read(self, i: int) -> tuple[np.ndarray, int]:
        """(RGB uint8 HxWx3, label) of image ``i``; a corrupt file raises ``DataFormatError``."""
        return read_image_file(self.paths[i]), int(self.labels[i])
