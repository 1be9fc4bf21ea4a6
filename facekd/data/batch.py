"""The training batch: images plus labels, a labeled mask, provenance and the skipped-sample count.

Labeled and unlabeled samples travel in one ``Batch`` and share one forward pass; losses that
need labels select rows with ``batch.labeled``. ``index``/``source``/``flipped`` say exactly
which stored image each row is (a teacher-feature cache looks embeddings up by them), and
``num_skipped`` carries the count of corrupt samples replaced while loading, so the count
survives DataLoader worker processes.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch

__all__ = ["Batch", "collate_samples", "LABELED_SOURCE", "UNLABELED_SOURCE"]

LABELED_SOURCE = 0
UNLABELED_SOURCE = 1

_TENSOR_FIELDS = ("images", "labels", "labeled", "index", "source", "flipped")


@dataclass
class Batch:
    """images [N,C,H,W] float; labels [N] long (-1 = unlabeled); labeled [N] bool; index [N] long
    (row in its source dataset); source [N] long (0 labeled set, 1 unlabeled pool); flipped [N]
    bool (horizontal flip applied); num_skipped: corrupt samples replaced while loading."""

    images: torch.Tensor
    labels: torch.Tensor
    labeled: torch.Tensor
    index: torch.Tensor
    source: torch.Tensor
    flipped: torch.Tensor
    num_skipped: int = 0

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def num_labeled(self) -> int:
        """How many rows carry a label."""
        return int(self.labeled.sum())

    def _map(self, fn) -> "Batch":
        return dataclasses.replace(self, **{f: fn(getattr(self, f)) for f in _TENSOR_FIELDS})

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Batch":
        """A copy with every tensor on ``device``."""
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> "Batch":
        """A copy in pinned host memory (the DataLoader calls this when ``pin_memory`` is on)."""
        return self._map(lambda t: t.pin_memory())

    @classmethod
    def cat(cls, batches: Sequence["Batch"]) -> "Batch":
        """Rows of all ``batches`` in order, skipped counts added."""
        if not batches:
            raise ValueError("Batch.cat needs at least one batch")
        return cls(**{f: torch.cat([getattr(b, f) for b in batches]) for f in _TENSOR_FIELDS},
                   num_skipped=sum(b.num_skipped for b in batches))

    def as_unlabeled(self) -> "Batch":
        """The same rows marked as unlabeled-pool samples (label -1, source 1)."""
        return dataclasses.replace(self, labels=torch.full_like(self.labels, -1),
                                   labeled=torch.zeros_like(self.labeled),
                                   source=torch.full_like(self.source, UNLABELED_SOURCE))


def collate_samples(samples: Sequence[Mapping[str, object]]) -> Batch:
    """Stack ``ImageDataset`` sample dicts (image, label, index, flipped, skipped, source) into a Batch."""
    if not samples:
        raise ValueError("cannot collate an empty list of samples")
    shapes = {tuple(s["image"].shape) for s in samples}  # type: ignore[union-attr]
    if len(shapes) > 1:
        raise ValueError(f"samples of different image shapes {sorted(shapes)} cannot share a batch; "
                         f"resize them in the transform (e.g. build_transform('face', size=112))")
    labels = torch.tensor([int(s["label"]) for s in samples], dtype=torch.long)  # type: ignore[arg-type]
    return Batch(
        images=torch.stack([s["image"] for s in samples]),  # type: ignore[misc]
        labels=labels,
        labeled=labels >= 0,
        index=torch.tensor([int(s["index"]) for s in samples], dtype=torch.long),  # type: ignore[arg-type]
        source=torch.tensor([int(s.get("source", LABELED_SOURCE)) for s in samples], dtype=torch.long),  # type: ignore[arg-type]
        flipped=torch.tensor([bool(s.get("flipped", False)) for s in samples], dtype=torch.bool),
        num_skipped=sum(int(s.get("skipped", 0)) for s in samples),  # type: ignore[arg-type]
    )
