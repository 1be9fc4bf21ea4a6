"""Unlabeled image pools for open-set distillation: any images, labels ignored.

``open_unlabeled(spec)`` accepts any ``face`` source of ``facekd.data.sources`` (as ``open_dataset``):
any folder tree of images (searched recursively; folder names
are not labels), any RecordIO folder or ``.rec`` (its labels are dropped), or
``synthetic[:key=value,...]``, whose identities start at ``UNLABELED_BASE`` unless ``first=`` says
otherwise, so they never overlap the labeled ``synthetic`` identities. Every sample has label -1
and source 1, so a ``Batch`` knows these rows are unlabeled.
"""
from __future__ import annotations

from os import PathLike
from typing import Any, Callable

import numpy as np

from facekd.data.datasets import ImageDataset, open_source

__all__ = ["open_unlabeled"]


def open_unlabeled(path: str | PathLike[str], transform: Callable[[np.ndarray], Any] | None = None,
                   on_corrupt: str = "skip") -> ImageDataset:
    """An unlabeled ``ImageDataset`` (labels -1, source 1) over any ``face`` source of the data-source
    registry (a folder tree, a .rec, a synthetic spec...)."""
    return ImageDataset(open_source(path, unlabeled=True), transform, on_corrupt, unlabeled=True)
