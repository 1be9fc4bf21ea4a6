"""Reproducible data loaders: single-stream, distributed-aware, and mixed labeled + unlabeled.

``build_loader`` returns an ``EpochLoader``: a DataLoader whose shuffling and augmentation are
a function of ``(seed, epoch, rank, worker id)`` only, so two runs with the same seed and
worker count yield identical batches. The epoch advances by one after each complete pass;
call ``set_epoch(e)`` to choose it (the engine does, e.g. when resuming). Under
``torch.distributed`` it uses a ``DistributedSampler`` whose ``set_epoch`` is called for you.

Seeding: at the start of every epoch each worker process seeds ``random``, ``numpy`` and
``torch`` and reseeds the dataset's transform (``dataset.reseed(seed)``, see
``FaceDataset.reseed``) from ``SeedSequence([seed, epoch, rank, worker_id])``. The epoch
reaches persistent workers through a shared-memory integer. With ``workers=0`` only the
dataset's transform is reseeded (the global generators of the main process are left alone).
Breaking out of an epoch early and starting the next one may let a few leftover samples of the
old epoch use the new seed; complete epochs are exact.

``MixedLoader`` concatenates each labeled batch with an unlabeled batch (``ratio`` x batch
size rows) into one ``Batch``; an epoch is one pass over the labeled set, and the unlabeled
stream cycles on its own, starting a new epoch of its own whenever it runs out.
"""
from __future__ import annotations

import multiprocessing
import random
from typing import Any, Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, SequentialSampler

from facekd.data.batch import Batch, collate_samples

__all__ = ["EpochLoader", "MixedLoader", "build_loader", "build_mixed_loader", "derive_seed"]


_WORKER_STREAM, _SHUFFLE_STREAM = 0, 1


def derive_seed(seed: int, epoch: int, rank: int, worker: int, stream: int = _WORKER_STREAM) -> int:
    """A 32-bit seed mixed from (base seed, epoch, rank, worker id, stream) by numpy's SeedSequence."""
    parts = [int(seed), int(epoch), int(rank), int(worker), int(stream)]
    if min(parts) < 0:
        raise ValueError(f"seed parts must be >= 0, got {parts}")
    return int(np.random.SeedSequence(parts).generate_state(1)[0])


class _EpochSeeding:
    """Shared epoch counter plus the per-process reseeding it triggers (picklable for workers)."""

    def __init__(self, seed: int, rank: int) -> None:
        self.seed = int(seed)
        self.rank = int(rank)
        self._shared = multiprocessing.get_context().RawArray("q", 2)  # [epoch, pass number]
        self._seen: int | None = None

    def start_pass(self, epoch: int) -> None:
        """Called in the main process before each pass: workers reseed for ``epoch`` on their next read."""
        self._shared[0] = int(epoch)
        self._shared[1] += 1

    def sync(self, dataset: Dataset) -> None:
        generation = int(self._shared[1])
        if generation == self._seen:
            return
        self._seen = generation
        epoch = int(self._shared[0])
        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else 0
        seed = derive_seed(self.seed, epoch, self.rank, worker)
        if info is not None:  # a worker process owns its global generators
            random.seed(seed)
            np.random.seed(seed)
            torch.manual_seed(seed)
        reseed = getattr(dataset, "reseed", None)
        if reseed is not None:
            reseed(seed)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_seen"] = None
        return state


class _Synced(Dataset):
    """Wraps a dataset so that every read first applies the current epoch's seeding."""

    def __init__(self, dataset: Dataset, seeding: _EpochSeeding) -> None:
        self.dataset = dataset
        self.seeding = seeding

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> Any:
        self.seeding.sync(self.dataset)
        return self.dataset[i]


def _dist_info(distributed: bool | None) -> tuple[bool, int, int]:
    if distributed is None:
        distributed = dist.is_available() and dist.is_initialized()
    if not distributed:
        return False, 1, 0
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("distributed=True needs torch.distributed.init_process_group() first")
    return True, dist.get_world_size(), dist.get_rank()


class EpochLoader:
    """A DataLoader with epoch-aware, reproducible shuffling and augmentation (see module doc).

    Iterate it like a DataLoader; ``len()`` is the number of batches per epoch; ``epoch`` is
    the epoch the next iteration will use.
    """

    def __init__(self, dataset: Dataset, batch_size: int, shuffle: bool = True, workers: int = 2,
                 seed: int = 0, drop_last: bool = True, distributed: bool | None = None,
                 pin_memory: bool | None = None, collate_fn: Any = collate_samples,
                 prefetch_factor: int | None = None) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if workers < 0:
            raise ValueError(f"workers must be >= 0, got {workers}")
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.epoch = 0
        self.distributed, world, rank = _dist_info(distributed)
        if pin_memory is None:
            pin_memory = torch.cuda.is_available()
        self._generator = torch.Generator()
        if self.distributed:
            self.sampler: Any = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=shuffle,
                                                   seed=self.seed, drop_last=drop_last)
        elif shuffle:
            self.sampler = RandomSampler(dataset, generator=self._generator)
        else:
            self.sampler = SequentialSampler(dataset)
        self._seeding = _EpochSeeding(self.seed, rank)
        extra: dict[str, Any] = {}
        if workers > 0:
            extra["persistent_workers"] = True
            if prefetch_factor is not None:
                extra["prefetch_factor"] = prefetch_factor
        self.loader = DataLoader(_Synced(dataset, self._seeding), batch_size=self.batch_size,
                                 sampler=self.sampler, num_workers=workers, collate_fn=collate_fn,
                                 pin_memory=bool(pin_memory), drop_last=drop_last,
                                 generator=self._generator, **extra)

    def __repr__(self) -> str:
        return (f"EpochLoader({len(self)} batches of {self.batch_size}, workers={self.loader.num_workers}, "
                f"seed={self.seed}, epoch={self.epoch}, distributed={self.distributed})")

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch (shuffle order and augmentation seeds) of the next iteration."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Any]:
        epoch = self.epoch
        self._seeding.start_pass(epoch)
        if isinstance(self.sampler, DistributedSampler):
            self.sampler.set_epoch(epoch)
        self._generator.manual_seed(derive_seed(self.seed, epoch, self._seeding.rank, 0, _SHUFFLE_STREAM))
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
    first); ``len()`` is the labeled loader's; the unlabeled loader cycles independently."""

    def __init__(self, labeled: EpochLoader, unlabeled: EpochLoader, pin_memory: bool = False) -> None:
        if len(unlabeled) == 0:
            raise ValueError(f"the unlabeled loader yields no batch (pool of {len(unlabeled.dataset)} "  # type: ignore[arg-type]
                             f"samples, batch {unlabeled.batch_size}); use a smaller ratio or a larger pool")
        self.labeled = labeled
        self.unlabeled = unlabeled
        self.pin_memory = pin_memory
        self._unlabeled_iter: Iterator[Batch] | None = None

    def __repr__(self) -> str:
        return f"MixedLoader(labeled={self.labeled!r}, unlabeled={self.unlabeled!r})"

    @property
    def epoch(self) -> int:
        """Epoch of the labeled stream."""
        return self.labeled.epoch

    def set_epoch(self, epoch: int) -> None:
        """Choose the labeled epoch; the unlabeled stream keeps its own count."""
        self.labeled.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.labeled)

    def _next_unlabeled(self) -> Batch:
        for _ in range(2):
            if self._unlabeled_iter is None:
                self._unlabeled_iter = iter(self.unlabeled)
            try:
                return next(self._unlabeled_iter)
            except StopIteration:
                self._unlabeled_iter = None  # the loader moved to its next epoch
        raise RuntimeError("the unlabeled loader yielded no batch")

    def __iter__(self) -> Iterator[Batch]:
        for batch in self.labeled:
            mixed = Batch.cat([batch, self._next_unlabeled().as_unlabeled()])
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
    lab = EpochLoader(labeled, batch_size, True, workers, seed, drop_last, distributed, False)
    unl = EpochLoader(unlabeled, n_unlabeled, True, workers, seed + 1, True, distributed, False)
    return MixedLoader(lab, unl, pin_memory=bool(pin_memory))
