"""Training datasets: open any supported source by name and turn its images into samples.

``open_dataset(spec)`` accepts any ``face`` source of the data-source registry
(``facekd.data.sources``): ``rec:PATH`` (a RecordIO folder or ``.rec`` file), ``folder:ROOT``
(``root/<identity>/<image>``), ``synthetic[:key=value,...]`` (keys in
``facekd.data.formats.synthetic``; e.g. ``synthetic:ids=400,per_id=24,size=32,seed=0``), or a bare
path recognised by detection. A new format is one module calling ``register_source``.

``ImageDataset[i]`` (alias ``FaceDataset``: it serves faces and classification alike) returns a
sample dict ``{"image": float CxHxW, "label": int, "index": int, "flipped": bool, "skipped": int,
"source": int}``. Corrupt images follow ``on_corrupt``:
``"skip"`` substitutes the next readable image, counts the replaced ones in ``skipped`` (which
``collate_samples`` sums into ``Batch.num_skipped``, so counts survive worker processes) and
logs once per process; ``"fail"`` raises the ``DataFormatError`` naming file and key.
"""
from __future__ import annotations

from os import PathLike
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from facekd.data.batch import LABELED_SOURCE, UNLABELED_SOURCE
from facekd.data.errors import DataFileNotFoundError, DataFormatError
from facekd.data.formats.synthetic import parse_synthetic_spec
from facekd.data.sources import (ImageSource, OpenRequest, SourceOpener, open_data_source, register_source,
                                 source_examples)
from facekd.data.transforms import apply_transform
from facekd.log import get_logger

__all__ = [
    "ImageSource", "ImageDataset", "FaceSource", "FaceDataset", "SourceOpener", "register_source", "open_source",
    "open_dataset", "parse_synthetic_spec", "ON_CORRUPT",
]

log = get_logger(__name__)

ON_CORRUPT = ("skip", "fail")
FaceSource = ImageSource
"""The former name of ``ImageSource`` (it also serves CIFAR and other classification data)."""


def open_source(spec: str | PathLike[str], unlabeled: bool = False) -> ImageSource:
    """The reader of the ``face`` source for ``spec`` (see the module docstring)."""
    text = str(spec)
    source = open_data_source(text, ("face",), OpenRequest(unlabeled=unlabeled))
    if source is not None:
        return source
    kinds = source_examples("face") + ", or such a path"
    if not Path(text).exists():
        raise DataFileNotFoundError(text, f"dataset ({kinds})")
    raise DataFormatError(text, f"not a dataset facekd can read; expected {kinds}")


# ----------------------------------------------------------------------------- samples
class ImageDataset(torch.utils.data.Dataset):
    """Samples (dicts, see the module docstring) from an ``ImageSource`` through ``transform``.

    ``unlabeled=True`` turns every label into -1 and marks samples with source 1 (the pool);
    ``transform`` is an ``ImageTransform``, any callable returning a tensor, or None
    (normalisation only). ``max_substitutes`` bounds how many neighbours "skip" tries.
    """

    def __init__(self, source: ImageSource, transform: Callable[[np.ndarray], Any] | None = None,
                 on_corrupt: str = "skip", unlabeled: bool = False, max_substitutes: int = 32) -> None:
        if on_corrupt not in ON_CORRUPT:
            raise ValueError(f"on_corrupt must be one of {ON_CORRUPT}, got {on_corrupt!r}")
        self.source = source
        self.transform = transform
        self.on_corrupt = on_corrupt
        self.unlabeled = unlabeled
        self.source_id = UNLABELED_SOURCE if unlabeled else LABELED_SOURCE
        self.max_substitutes = max_substitutes
        self._warned = False

    def __repr__(self) -> str:
        role = "unlabeled" if self.unlabeled else "labeled"
        return f"{type(self).__name__}({self.source!r}, {role}, transform={self.transform!r}, on_corrupt={self.on_corrupt})"

    def __len__(self) -> int:
        return len(self.source)

    @property
    def num_classes(self) -> int:
        """Number of classes of the source (0 for an unlabeled pool)."""
        return 0 if self.unlabeled else int(self.source.num_classes)

    @property
    def labels(self) -> np.ndarray:
        """int64 label of every sample (-1 throughout for an unlabeled pool)."""
        if self.unlabeled:
            return np.full(len(self), -1, dtype=np.int64)
        return np.asarray(self.source.labels, dtype=np.int64)  # type: ignore[attr-defined]

    def read(self, i: int) -> tuple[np.ndarray, int]:
        """(RGB uint8 HxWx3, label) of sample ``i`` without transform (label -1 when unlabeled)."""
        image, label = self.source.read(i)
        return image, (-1 if self.unlabeled else int(label))

    def reseed(self, seed: int) -> None:
        """Restart the transform's random stream (the loaders call this before every sample with
        that sample's seed, so its augmentation does not depend on worker or order)."""
        reseed = getattr(self.transform, "reseed", None)
        if reseed is not None:
            reseed(seed)

    def __getitem__(self, i: int) -> dict[str, Any]:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"sample index {i} out of range for {n} samples")
        i = int(i) % n
        skipped = 0
        while True:
            j = (i + skipped) % n
            try:
                image, label = self.read(j)
                break
            except DataFormatError as err:
                if self.on_corrupt == "fail":
                    raise
                skipped += 1
                self._note_skip(err)
                if skipped > min(self.max_substitutes, n - 1):
                    raise DataFormatError(err.path, f"{skipped} consecutive samples from index {i} are "
                                                    f"corrupt (last: {err.problem}); giving up", err.key) from err
        tensor, flipped = apply_transform(self.transform, image)
        return {"image": tensor, "label": label, "index": j, "flipped": flipped, "skipped": skipped,
                "source": self.source_id}

    def _note_skip(self, err: DataFormatError) -> None:
        if not self._warned:
            self._warned = True
            log.warning("skipping corrupt sample (%s); it is replaced by the next readable one and further "
                        "skips are only counted (Batch.num_skipped)", err)


FaceDataset = ImageDataset
"""The former name of ``ImageDataset`` (it also serves CIFAR and other classification data)."""


def open_dataset(path: str | PathLike[str], transform: Callable[[np.ndarray], Any] | None = None,
                 on_corrupt: str = "skip") -> ImageDataset:
    """A labeled ``ImageDataset`` over any ``face`` source (a RecordIO folder/.rec, an image folder
    tree, a ``synthetic[:...]`` spec...); ``transform`` None means normalisation only."""
    return ImageDataset(open_source(path, unlabeled=False), transform, on_corrupt)
