"""The contract between a pipeline and the engine: a ``TrainTask`` says what to train and how to
score it; the engine (``facekd.engine.trainer.Trainer``) owns everything else.

A task supplies
- ``modules()``: every part, by name. Parameters with ``requires_grad`` are trained and their
  modules saved in checkpoints; modules without any (a frozen teacher) are kept in eval mode,
  never optimised, never saved.
- ``train_batches(epoch, start)``: the batches of ``epoch`` from batch ``start`` on. The order and
  augmentation must depend only on (seed, epoch, position), so that resuming mid-epoch replays
  exactly what an uninterrupted run would have seen.
- ``compute_losses(batch, modules)``: named, already weighted scalar loss terms; the engine sums
  and logs each by name. Use the ``modules`` argument (possibly DDP-wrapped), not stored references.
- ``evaluate(modules)`` (optional, rank 0 only, no collectives): flat ``{"set/metric": value}``.
"""
from __future__ import annotations

import itertools
from typing import Any, Iterable, Iterator, Mapping

from torch import Tensor, nn

__all__ = ["TrainTask", "epoch_batches"]


def epoch_batches(loader: Any, epoch: int, start: int = 0) -> Iterator[Any]:
    """Batches ``start``.. of ``epoch`` from an epoch-aware loader (``set_epoch``).

    Loaders with ``set_start(k)`` skip the first k batches without reading them; with any other
    loader the skipped batches are read and dropped, which replays the same random streams and so
    is exact too, only slower.
    """
    loader.set_epoch(epoch)
    if start and hasattr(loader, "set_start"):
        loader.set_start(start)
        return iter(loader)
    return itertools.islice(iter(loader), start, None)


class TrainTask:
    """Base class of what a pipeline hands the engine (override the methods marked so)."""

    backbone_key: str = "backbone"
    """Module written as ``backbone.pth`` and exported to ONNX."""
    head_key: str | None = "head"
    """Module written as ``head.pth`` (the full classifier), or None."""
    sharded: frozenset[str] = frozenset()
    """Modules whose parameters are row-sharded over ranks (Partial FC): not wrapped in DDP, their
    rows gathered for checkpoints and re-sliced on resume, whatever the new world size."""
    global_terms: frozenset[str] = frozenset()
    """Loss terms already averaged over the global batch and identical on every rank (Partial FC's
    sharded softmax). The engine scales their backward so that DDP's gradient averaging gives the
    single-process gradient. Sharded modules must get gradients from global terms only."""
    arch: str = ""
    """Registered backbone name (``facekd.models.registry``) stored in checkpoints."""
    arch_options: Mapping[str, Any] = {}
    """Builder options of the backbone (embedding_size, input_size, width...) stored in checkpoints."""
    head_name: str | None = None
    """Registered head name stored in checkpoints."""

    def modules(self) -> dict[str, nn.Module]:
        """All parts by name (must include ``backbone_key``). Override."""
        raise NotImplementedError

    loader: Any = None
    """An epoch-aware loader (``facekd.data.loaders``); when set, the two methods below use it."""

    def batches_per_epoch(self) -> int:
        """Number of batches ``train_batches`` yields for a full epoch on this rank (``len(loader)``)."""
        if self.loader is None:
            raise NotImplementedError("set self.loader or override batches_per_epoch")
        return len(self.loader)

    def train_batches(self, epoch: int, start: int) -> Iterable[Any]:
        """The batches of ``epoch`` from index ``start`` on, without reading the skipped ones."""
        if self.loader is None:
            raise NotImplementedError("set self.loader or override train_batches")
        return epoch_batches(self.loader, epoch, start)

    def compute_losses(self, batch: Any, modules: Mapping[str, nn.Module]) -> dict[str, Tensor]:
        """Named, already weighted scalar loss terms for one batch (already on the device). Override."""
        raise NotImplementedError

    def evaluate(self, modules: Mapping[str, nn.Module]) -> dict[str, float]:
        """Metrics ``{"set/metric": value}`` of the current model; called on rank 0 only."""
        return {}

    def batch_size_of(self, batch: Any) -> int:
        """Number of images in a batch, for throughput (``batch.images`` or the first tensor)."""
        images = getattr(batch, "images", None)
        if images is None and isinstance(batch, (tuple, list)) and batch:
            images = batch[0]
        if images is None and isinstance(batch, Mapping):
            images = batch.get("images")
        return int(images.shape[0]) if isinstance(images, Tensor) else 0
