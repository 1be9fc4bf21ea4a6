"""Exactly resumable data loaders: single-stream, distributed-aware, and mixed labeled + unlabeled.

``build_loader`` returns an ``EpochLoader``, a DataLoader whose batches are a pure function of
``(seed, stream, epoch, rank, world size, batch position)``, whatever the number of workers:

* Order: ``EpochSampler`` draws ONE global permutation of the dataset from ``(seed, stream,
  epoch)`` (identity without shuffling); under ``torch.distributed`` rank r takes every
  world-size-th entry from r on, after padding (or, with ``drop_last``, trimming) the permutation
  to a multiple of the world size, as ``DistributedSampler`` does, so every rank has the same
  number of batches.
* Augmentation: before reading sample i of epoch e the loader reseeds the dataset's transform
  (``dataset.reseed(sample_seed(seed, e, i, stream))``, see ``ImageDataset.reseed`` and
  ``ImageTransform.reseed``), so a sample looks the same whichever worker, rank or position
  reads it. The sampler hands each index to the workers together with its epoch, so nothing
  (not even prefetched samples of an abandoned epoch) can pick up the wrong seed. The global
  ``random``/``numpy``/``torch`` generators of a worker are seeded per (seed, stream, epoch,
  rank, worker id); transforms must not use them.
* Resuming: ``set_epoch(e)`` chooses the epoch of the next iteration (it advances by one after
  each complete pass) and ``set_start(k)`` makes the next iteration begin at batch k of it: the
  DataLoader only ever sees the remaining indices, so skipped samples are never read, and the
  batches that follow are bit-identical to those of an uninterrupted pass. ``len()`` is always
  the full epoch's batch count.

``MixedLoader`` concatenates each labeled batch with an unlabeled batch (``ratio`` x batch size
rows) into one ``Batch``. An epoch is one pass over the labeled set; the unlabeled stream is
indexed by the global step: labeled batch k of epoch e (step g = e * len(labeled) + k) is paired
with batch g % len(unlabeled) of unlabeled epoch g // len(unlabeled). ``set_epoch``/``set_start``
position both streams, so a resumed run sees the same pairs.
"""
from __future__ import annotations

import random
from typing import Any, Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, Sampler

from facekd.data.batch import LABELED_SOURCE, UNLABELED_SOURCE, Batch, collate_samples

__all__ = ["EpochSampler", "EpochLoader", "MixedLoader", "build_loader", "build_mixed_loader", "derive_seed",
           "sample_seed"]

# tags that keep the random streams drawn from one base seed apart
_ORDER_TAG, _SAMPLE_TAG, _WORKER_TAG, _LOADER_TAG = 1, 2, 3, 4
_SEED_BITS = 32


def derive_seed(seed: int, *parts: int) -> int:
    """A 32-bit seed mixed from a base seed and any further non-negative integers (epoch, rank,
    worker id, stream...) by numpy's SeedSequence: different parts give unrelated seeds."""
    mixed = [int(seed), *(int(p) for p in parts)]
    if min(mixed) < 0:
        raise ValueError(f"seed parts must be >= 0, got {mixed}")
    return int(np.random.SeedSequence(mixed).generate_state(1)[0])


def _pack(epoch_seed: int, index: int) -> int:
    return (int(index) << _SEED_BITS) | epoch_seed


def sample_seed(seed: int, epoch: int, index: int, stream: int = 0) -> int:
    """The augmentation seed of sample ``index`` in ``epoch`` of a loader with base ``seed`` and
    ``stream`` (what the loaders pass to ``dataset.reseed`` before reading that sample)."""
    if index < 0:
        raise ValueError(f"sample index must be >= 0, got {index}")
    return _pack(derive_seed(seed, _SAMPLE_TAG, stream, epoch), index)


# ----------------------------------------------------------------------------------------------
# order

class EpochSampler(Sampler[int]):
    """Indices of one epoch for one rank: a global permutation from (seed, stream, epoch), this
    rank's strided share of it, starting at batch ``start`` (see the module docstring).

    ``len()`` is the number of indices the next iteration yields; ``batches_per_epoch`` the
    number of batches in a full epoch of this rank.
    """

    def __init__(self, num_samples: int, batch_size: int, shuffle: bool = True, seed: int = 0,
                 rank: int = 0, world_size: int = 1, drop_last: bool = True, stream: int = 0) -> None:
        if num_samples < 0:
            raise ValueError(f"num_samples must be >= 0, got {num_samples}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank {rank}, world_size {world_size}")
        self.num_samples = int(num_samples)
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.drop_last = bool(drop_last)
        self.stream = int(stream)
        self.epoch = 0
        self.start = 0
        if drop_last:
            self.per_rank = self.num_samples // self.world_size
        else:
            self.per_rank = -(-self.num_samples // self.world_size)

    def __repr__(self) -> str:
        return (f"EpochSampler({self.num_samples} samples, batch {self.batch_size}, shuffle={self.shuffle}, "
                f"rank {self.rank}/{self.world_size}, epoch={self.epoch}, start={self.start})")

    @property
    def batches_per_epoch(self) -> int:
        """Batches of a full epoch on this rank (the same on every rank)."""
        if self.drop_last:
            return self.per_rank // self.batch_size
        return -(-self.per_rank // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch (the permutation) of the next iteration."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self.epoch = int(epoch)

    def set_start(self, batch: int) -> None:
        """Make the next iteration (only) begin at batch ``batch`` of this rank's share."""
        if not 0 <= batch <= self.batches_per_epoch:
            raise ValueError(f"start batch must be in [0, {self.batches_per_epoch}], got {batch}")
        self.start = int(batch)

    def order(self, epoch: int) -> np.ndarray:
        """The global order of ``epoch`` (int64 permutation of all samples, the same on every rank)."""
        if not self.shuffle:
            return np.arange(self.num_samples, dtype=np.int64)
        rng = np.random.default_rng(derive_seed(self.seed, _ORDER_TAG, self.stream, epoch))
        return rng.permutation(self.num_samples).astype(np.int64, copy=False)

    def share(self, epoch: int) -> np.ndarray:
        """This rank's indices for the whole of ``epoch``: every world-size-th entry of the order
        padded by its own head (or trimmed, with ``drop_last``) to a multiple of the world size."""
        order = self.order(epoch)
        total = self.per_rank * self.world_size
        if total > len(order):
            order = np.resize(order, total)  # repeats the order from its start
        return order[self.rank:total:self.world_size]

    def __len__(self) -> int:
        return max(0, self.per_rank - self.start * self.batch_size)

    def __iter__(self) -> Iterator[int]:
        remaining = self.share(self.epoch)[self.start * self.batch_size:]
        self.start = 0
        return map(int, remaining)


class _WithEpoch(Sampler[tuple[int, int]]):
    """Yields ``(epoch, index)``: each index travels to the workers with the epoch it belongs to."""

    def __init__(self, sampler: EpochSampler) -> None:
        self.sampler = sampler

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.sampler.epoch
        return ((epoch, i) for i in self.sampler)


class _SeededReads(Dataset):
    """Reads ``dataset[i]`` for a key ``(epoch, i)`` after reseeding the dataset's transform with
    the sample's own seed; seeds a worker's global generators once per epoch."""

    def __init__(self, dataset: Dataset, seed: int, stream: int, rank: int) -> None:
        self.dataset = dataset
        self.seed = int(seed)
        self.stream = int(stream)
        self.rank = int(rank)
        self._epoch = -1
        self._epoch_seed = 0

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def _enter_epoch(self, epoch: int) -> None:
        self._epoch = epoch
        self._epoch_seed = derive_seed(self.seed, _SAMPLE_TAG, self.stream, epoch)
        info = torch.utils.data.get_worker_info()
        if info is not None:  # a worker process owns its global generators; the main process keeps its own
            worker_seed = derive_seed(self.seed, _WORKER_TAG, self.stream, epoch, self.rank, info.id)
            random.seed(worker_seed)
            np.random.seed(worker_seed)
            torch.manual_seed(worker_seed)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        epoch, index = key
        if epoch != self._epoch:
            self._enter_epoch(epoch)
        reseed = getattr(self.dataset, "reseed", None)
        if reseed is not None:
            reseed(_pack(self._epoch_seed, index))
        return self.dataset[index]


# ----------------------------------------------------------------------------------------------
# loaders

def _placement(distributed: bool | None, rank: int | None, world_size: int | None) -> tuple[bool, int, int]:
    """(distributed, rank, world size): explicit values win, else torch.distributed's."""
    if (rank is None) != (world_size is None):
        raise ValueError("give both rank and world_size, or neither")
    if rank is not None and world_size is not None:
        return world_size > 1 or bool(distributed), int(rank), int(world_size)
    if distributed is None:
        distributed = dist.is_available() and dist.is_initialized()
    if not distributed:
        return False, 0, 1
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("distributed=True needs torch.distributed.init_process_group() first")
    return True, dist.get_rank(), dist.get_world_size()


class EpochLoader:
    """A DataLoader with exactly reproducible, resumable epochs (see the module docstring).

    Iterate it like a DataLoader; ``len()`` is the number of batches of a full epoch; ``epoch`` is
    the epoch the next iteration will use. ``rank``/``world_size`` place it explicitly (both or
    neither; default: torch.distributed's when initialised and ``distributed`` is not False).
    ``stream`` separates loaders that share a seed (the labeled and unlabeled streams of a run).
    """

    def __init__(self, dataset: Dataset, batch_size: int, shuffle: bool = True, workers: int = 2,
                 seed: int = 0, drop_last: bool = True, distributed: bool | None = None,
                 pin_memory: bool | None = None, collate_fn: Any = collate_samples,
                 prefetch_factor: int | None = None, *, stream: int = 0, rank: int | None = None,
                 world_size: int | None = None) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if workers < 0:
            raise ValueError(f"workers must be >= 0, got {workers}")
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.stream = int(stream)
        self.epoch = 0
        self.distributed, self.rank, self.world_size = _placement(distributed, rank, world_size)
        if pin_memory is None:
            pin_memory = torch.cuda.is_available()
        self.sampler = EpochSampler(len(dataset), self.batch_size, shuffle, self.seed,  # type: ignore[arg-type]
                                    self.rank, self.world_size, drop_last, self.stream)
        self._generator = torch.Generator()  # DataLoader draws its worker base seed here, not from the global one
        extra: dict[str, Any] = {}
        if workers > 0:
            extra["persistent_workers"] = True
            if prefetch_factor is not None:
                extra["prefetch_factor"] = prefetch_factor
        self.loader = DataLoader(_SeededReads(dataset, self.seed, self.stream, self.rank), batch_size=self.batch_size,
                                 sampler=_WithEpoch(self.sampler), num_workers=workers, collate_fn=collate_fn,
                                 pin_memory=bool(pin_memory), drop_last=drop_last, generator=self._generator,
                                 **extra)

    def __repr__(self) -> str:
        return (f"EpochLoader({len(self)} batches of {self.batch_size}, workers={self.loader.num_workers}, "
                f"seed={self.seed}, stream={self.stream}, epoch={self.epoch}, "
                f"rank {self.rank}/{self.world_size})")

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch (order and augmentation) of the next iteration."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self.epoch = int(epoch)

    def set_start(self, batch: int) -> None:
        """Make the next iteration (only) begin at batch ``batch`` of its epoch; the skipped
        samples are never read. ``batch`` may be ``len(self)`` (an empty pass)."""
        self.sampler.set_start(batch)

    def __len__(self) -> int:
        return self.sampler.batches_per_epoch

    def __iter__(self) -> Iterator[Any]:
        epoch = self.epoch
        self.sampler.set_epoch(epoch)
        self._generator.manual_seed(derive_seed(self.seed, _LOADER_TAG, self.stream, epoch, self.rank))
        yield from self.loader
        if self.epoch == epoch:
            self.epoch = epoch + 1


def build_loader(dataset: Dataset, batch_size: int, shuffle: bool = True, workers: int = 2, seed: int = 0,
                 drop_last: bool = True, distributed: bool | None = None,
                 pin_memory: bool | None = None) -> EpochLoader:
    """An ``EpochLoader`` producing ``Batch`` objects; ``distributed`` None = on when
    torch.distributed is initialised, ``pin_memory`` None = on when CUDA is available;
    persistent workers when ``workers`` > 0."""
    return EpochLoader(dataset, batch_size, shuffle, workers, seed, drop_last, distributed, pin_memory)


class MixedLoader:
    """Each step: one labeled ``Batch`` + one unlabeled ``Batch`` concatenated (labeled rows
    first); ``len()`` is the labeled loader's; the unlabeled batch of a step is fixed by the
    global step (see the module docstring)."""

    def __init__(self, labeled: EpochLoader, unlabeled: EpochLoader, pin_memory: bool = False) -> None:
        if len(unlabeled) == 0:
            raise ValueError(f"the unlabeled loader yields no batch (pool of {len(unlabeled.dataset)} "  # type: ignore[arg-type]
                             f"samples, batch {unlabeled.batch_size}); use a smaller ratio or a larger pool")
        self.labeled = labeled
        self.unlabeled = unlabeled
        self.pin_memory = pin_memory
        self._start = 0
        self._unlabeled_iter: Iterator[Batch] | None = None
        self._unlabeled_next: tuple[int, int] | None = None  # (epoch, batch) the live iterator yields next

    def __repr__(self) -> str:
        return f"MixedLoader(labeled={self.labeled!r}, unlabeled={self.unlabeled!r})"

    @property
    def epoch(self) -> int:
        """Epoch of the labeled stream."""
        return self.labeled.epoch

    def set_epoch(self, epoch: int) -> None:
        """Choose the labeled epoch of the next iteration (the unlabeled position follows from it)."""
        self.labeled.set_epoch(epoch)

    def set_start(self, batch: int) -> None:
        """Make the next iteration (only) begin at labeled batch ``batch``, paired with the
        unlabeled batch of that global step; skipped batches of either stream are never read."""
        if not 0 <= batch <= len(self):
            raise ValueError(f"start batch must be in [0, {len(self)}], got {batch}")
        self._start = int(batch)

    def __len__(self) -> int:
        return len(self.labeled)

    def unlabeled_position(self, step: int) -> tuple[int, int]:
        """(unlabeled epoch, unlabeled batch) paired with global labeled step ``step``."""
        epoch, batch = divmod(int(step), len(self.unlabeled))
        return epoch, batch

    def _unlabeled_at(self, step: int) -> Batch:
        epoch, batch = self.unlabeled_position(step)
        if self._unlabeled_iter is None or self._unlabeled_next != (epoch, batch):
            self.unlabeled.set_epoch(epoch)
            self.unlabeled.set_start(batch)
            self._unlabeled_iter = iter(self.unlabeled)
        try:
            out = next(self._unlabeled_iter)
        except StopIteration:
            raise RuntimeError(f"the unlabeled loader ended before batch {batch} of epoch {epoch}") from None
        if batch + 1 < len(self.unlabeled):
            self._unlabeled_next = (epoch, batch + 1)
        else:  # this unlabeled epoch is used up; the next step opens the next one
            self._unlabeled_iter, self._unlabeled_next = None, None
        return out

    def __iter__(self) -> Iterator[Batch]:
        start, self._start = self._start, 0
        step = self.labeled.epoch * len(self.labeled) + start
        self.labeled.set_start(start)
        for batch in self.labeled:
            mixed = Batch.cat([batch, self._unlabeled_at(step).as_unlabeled()])
            step += 1
            yield mixed.pin_memory() if self.pin_memory else mixed


def build_mixed_loader(labeled: Dataset, unlabeled: Dataset, batch_size: int, ratio: float = 1.0,
                       workers: int = 2, seed: int = 0, drop_last: bool = True,
                       distributed: bool | None = None, pin_memory: bool | None = None) -> MixedLoader:
    """A ``MixedLoader`` with ``batch_size`` labeled + ``round(ratio * batch_size)`` unlabeled rows
    per step (1:1 by default, as in the SRD paper); ``workers`` each for both streams."""
    if ratio <= 0:
        raise ValueError(f"ratio must be > 0, got {ratio}")
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    n_unlabeled = max(1, int(round(ratio * batch_size)))
    lab = EpochLoader(labeled, batch_size, True, workers, seed, drop_last, distributed, False, stream=LABELED_SOURCE)
    unl = EpochLoader(unlabeled, n_unlabeled, True, workers, seed, True, distributed, False, stream=UNLABELED_SOURCE)
    return MixedLoader(lab, unl, pin_memory=bool(pin_memory))
