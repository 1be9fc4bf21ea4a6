"""Batches and loaders: collation, determinism whatever the worker count, exact mid-epoch resume
without reading skipped samples (single and mixed streams), per-sample augmentation seeds, DDP shares."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch.utils.data import Dataset

from facekd.data.batch import Batch, collate_samples
from facekd.data.datasets import open_dataset
from facekd.data.loaders import (
    EpochLoader,
    EpochSampler,
    build_loader,
    build_mixed_loader,
    derive_seed,
    sample_seed,
)
from facekd.data.pools import open_unlabeled
from facekd.data.transforms import face_train_transform


def _labeled(n_ids: int = 6, per_id: int = 4):
    return open_dataset(f"synthetic:ids={n_ids},per_id={per_id},size=32",
                        transform=face_train_transform(color_jitter=1.0, erasing=0.5))


def _pool(n_ids: int = 3, per_id: int = 2):
    return open_unlabeled(f"synthetic:ids={n_ids},per_id={per_id},size=32", transform=face_train_transform())


def _epochs(loader, n: int = 2) -> list[list[Batch]]:
    return [list(loader) for _ in range(n)]


def _same(a: list[list[Batch]], b: list[list[Batch]]) -> bool:
    if [len(e) for e in a] != [len(e) for e in b]:
        return False
    return all(torch.equal(x.images, y.images) and torch.equal(x.index, y.index) and torch.equal(x.flipped, y.flipped)
               for ea, eb in zip(a, b) for x, y in zip(ea, eb))


def test_collate_and_batch_methods() -> None:
    ds = _labeled()
    batch = collate_samples([ds[i] for i in range(5)])
    assert len(batch) == 5 and batch.images.shape == (5, 3, 32, 32)
    assert batch.labels.dtype == torch.long and batch.labeled.all() and batch.num_labeled == 5
    assert batch.index.tolist() == [0, 1, 2, 3, 4] and batch.source.tolist() == [0] * 5
    moved = batch.to("cpu", non_blocking=True)
    assert torch.equal(moved.images, batch.images)
    both = Batch.cat([batch, batch.as_unlabeled()])
    assert len(both) == 10 and both.num_labeled == 5 and both.labels[5:].tolist() == [-1] * 5
    assert both.source.tolist() == [0] * 5 + [1] * 5
    with pytest.raises(ValueError, match="different image shapes"):
        collate_samples([ds[0], {**ds[1], "image": torch.zeros(3, 16, 16)}])


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_is_deterministic(workers: int) -> None:
    runs = [_epochs(build_loader(_labeled(), batch_size=8, workers=workers, seed=5)) for _ in range(2)]
    assert _same(runs[0], runs[1])
    first, second = runs[0]
    assert len(first) == 3  # 24 images, drop_last
    assert sorted(torch.cat([b.index for b in first]).tolist()) == list(range(24))
    # epochs differ in order and augmentation
    assert not torch.equal(torch.cat([b.index for b in first]), torch.cat([b.index for b in second]))
    other = _epochs(build_loader(_labeled(), batch_size=8, workers=workers, seed=6), 1)
    assert not _same(runs[0][:1], other)


def test_set_epoch_replays_an_epoch() -> None:
    loader = build_loader(_labeled(), batch_size=8, workers=0, seed=1)
    e0, e1 = _epochs(loader)
    assert loader.epoch == 2
    loader.set_epoch(1)
    assert _same([e1], [list(loader)])
    loader.set_epoch(0)
    assert _same([e0], [list(loader)])


def test_no_shuffle_keeps_order() -> None:
    loader = build_loader(_labeled(), batch_size=5, shuffle=False, workers=0, drop_last=False)
    assert len(loader) == 5
    assert torch.cat([b.index for b in loader]).tolist() == list(range(24))


@pytest.mark.parametrize("ratio,expected", [(0.5, 2), (1.0, 4), (2.0, 8)])
def test_mixed_batches_follow_ratio(ratio: float, expected: int) -> None:
    mixed = build_mixed_loader(_labeled(), _pool(4, 4), batch_size=4, ratio=ratio, workers=0)
    assert len(mixed) == 6
    for batch in mixed:
        assert len(batch) == 4 + expected
        assert batch.labeled.tolist() == [True] * 4 + [False] * expected
        assert batch.source.tolist() == [0] * 4 + [1] * expected
        assert (batch.labels[4:] == -1).all() and (batch.labels[:4] >= 0).all()


def test_unlabeled_stream_cycles_past_its_length() -> None:
    pool = _pool(3, 2)  # 6 images -> 3 batches of 2 per pool epoch
    mixed = build_mixed_loader(_labeled(), pool, batch_size=2, ratio=1.0, workers=0, seed=3)
    assert len(mixed) == 12
    seen = [b.index[2:].tolist() for b in mixed]
    assert len(seen) == 12
    for k in range(4):  # every block of 3 unlabeled batches is one full pass over the pool
        assert sorted(sum(seen[3 * k:3 * k + 3], [])) == list(range(6))
    # the 4th pool pass ended with the labeled epoch; the pool's next epoch starts on demand
    assert mixed.unlabeled.epoch == 3 and mixed.labeled.epoch == 1
    seen = [b.index[2:].tolist() for b in mixed]
    assert mixed.unlabeled.epoch == 7 and mixed.labeled.epoch == 2
    for k in range(4):
        assert sorted(sum(seen[3 * k:3 * k + 3], [])) == list(range(6))


def test_mixed_loader_with_workers_is_deterministic() -> None:
    def run(workers: int) -> list[list[Batch]]:
        return _epochs(build_mixed_loader(_labeled(), _pool(), batch_size=4, ratio=0.5, workers=workers, seed=9))
    serial = run(0)
    assert _same(serial, run(0)) and _same(serial, run(2))  # and the worker count changes nothing


def test_empty_unlabeled_stream_is_refused() -> None:
    with pytest.raises(ValueError, match="unlabeled loader yields no batch"):
        build_mixed_loader(_labeled(), _pool(1, 2), batch_size=8, ratio=1.0, workers=0)


def test_distributed_sampler_under_process_group(tmp_path: Path) -> None:
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        loader = build_loader(_labeled(), batch_size=8, workers=0, seed=2)
        assert loader.distributed and isinstance(loader.sampler, EpochSampler)
        assert (loader.rank, loader.world_size) == (0, 1)
        e0, e1 = _epochs(loader)
        assert loader.sampler.epoch == 1
        assert sorted(torch.cat([b.index for b in e0]).tolist()) == list(range(24))
        assert not torch.equal(torch.cat([b.index for b in e0]), torch.cat([b.index for b in e1]))
    finally:
        dist.destroy_process_group()
    plain = build_loader(_labeled(), batch_size=8, workers=0, seed=2)
    assert not plain.distributed
    assert _same([e0, e1], _epochs(plain))  # one rank of one is the plain loader


def test_derive_seed_mixes_every_part() -> None:
    seeds = {derive_seed(0, e, r, w) for e in range(3) for r in range(2) for w in range(3)}
    assert len(seeds) == 18
    assert derive_seed(4, 1, 2) == derive_seed(4, 1, 2) != derive_seed(4, 2, 1)
    with pytest.raises(ValueError):
        derive_seed(-1, 0, 0, 0)
    per_sample = {sample_seed(0, e, i, s) for e in range(3) for i in range(5) for s in range(2)}
    assert len(per_sample) == 30
    with pytest.raises(ValueError):
        sample_seed(0, 0, -1)


# ----------------------------------------------------------------------------------------------
# worker independence, per-sample seeds, exact resume

class CountingReads(Dataset):
    """A dataset wrapper that counts its reads (in this process) and forwards ``reseed``."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset
        self.reads: list[int] = []

    def __len__(self) -> int:
        return len(self.dataset)

    def reseed(self, seed: int) -> None:
        self.dataset.reseed(seed)

    def __getitem__(self, i: int) -> Any:
        self.reads.append(int(i))
        return self.dataset[i]


def test_worker_count_changes_nothing() -> None:
    serial = _epochs(build_loader(_labeled(), batch_size=8, workers=0, seed=5), 2)
    parallel = build_loader(_labeled(), batch_size=8, workers=2, seed=5)
    assert _same(serial, _epochs(parallel, 2))
    parallel.set_epoch(1)
    parallel.set_start(1)  # a resume on persistent workers that already served other epochs
    assert _same([serial[1][1:]], [list(parallel)])


def test_every_row_is_augmented_from_its_own_sample_seed() -> None:
    loader = build_loader(_labeled(), batch_size=8, workers=2, seed=7)
    loader.set_epoch(3)
    batches = list(loader)
    reference = _labeled()
    flips = []
    for batch in batches:
        for row, i in enumerate(batch.index.tolist()):
            reference.reseed(sample_seed(7, 3, i))
            sample = reference[i]
            assert torch.equal(sample["image"], batch.images[row]) and sample["flipped"] == bool(batch.flipped[row])
            flips.append(sample["flipped"])
    assert 0 < sum(flips) < len(flips)  # the seeds really vary the augmentation


@pytest.mark.parametrize("start", [1, 2, 3])
def test_set_start_replays_the_rest_of_an_epoch(start: int) -> None:
    full = _epochs(build_loader(_labeled(), batch_size=8, workers=0, seed=4), 3)
    counted = CountingReads(_labeled())
    resumed = build_loader(counted, batch_size=8, workers=0, seed=4)  # a fresh process resuming
    resumed.set_epoch(1)
    resumed.set_start(start)
    assert len(resumed) == 3
    assert _same([full[1][start:]], [list(resumed)])
    assert len(counted.reads) == 8 * (3 - start)  # the skipped samples were never read
    assert sorted(counted.reads) == sorted(torch.cat([b.index for b in full[1][start:]] or
                                                     [torch.zeros(0, dtype=torch.long)]).tolist())
    assert resumed.epoch == 2
    assert _same([full[2]], [list(resumed)])  # set_start held for one iteration only


def test_set_start_bounds() -> None:
    loader = build_loader(_labeled(), batch_size=8, workers=0)
    for bad in (-1, 4):
        with pytest.raises(ValueError, match="start batch"):
            loader.set_start(bad)
    with pytest.raises(ValueError, match="epoch"):
        loader.set_epoch(-1)
    with pytest.raises(ValueError, match="start batch"):
        build_mixed_loader(_labeled(), _pool(), batch_size=4, workers=0).set_start(7)


def _unlabeled_rows(batches: list[Batch], labeled: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    return [(b.images[labeled:], b.index[labeled:], b.flipped[labeled:]) for b in batches]


def test_mixed_loader_pairs_each_step_with_its_global_unlabeled_batch() -> None:
    # 24 labeled / 2 = 12 steps per epoch; pool of 10 / 2 = 5 unlabeled batches per pool epoch
    mixed = build_mixed_loader(_labeled(), _pool(5, 2), batch_size=2, ratio=1.0, workers=0, seed=8)
    run = _epochs(mixed, 2)
    steps = _unlabeled_rows(run[0] + run[1], 2)
    assert mixed.unlabeled.epoch == 4  # steps 0..23 used pool epochs 0..4
    pool_epochs = []
    for epoch in range(5):  # the unlabeled stream on its own
        mixed.unlabeled.set_epoch(epoch)
        pool_epochs.append(list(mixed.unlabeled))
    for g, (images, index, flipped) in enumerate(steps):
        alone = pool_epochs[g // 5][g % 5]
        assert torch.equal(images, alone.images) and torch.equal(index, alone.index)
        assert torch.equal(flipped, alone.flipped)


@pytest.mark.parametrize("start", [2, 3, 7, 12])
def test_mixed_set_start_resumes_both_streams(start: int) -> None:
    # epoch 1 = global steps 12..23: pool epoch 2 ends at step 14, epoch 3 spans 15..19, epoch 4 starts at 20
    full = _epochs(build_mixed_loader(_labeled(), _pool(5, 2), batch_size=2, ratio=1.0, workers=0, seed=8), 3)
    lab, pool = CountingReads(_labeled()), CountingReads(_pool(5, 2))
    resumed = build_mixed_loader(lab, pool, batch_size=2, ratio=1.0, workers=0, seed=8)
    resumed.set_epoch(1)
    resumed.set_start(start)
    assert len(resumed) == 12
    assert _same([full[1][start:]], [list(resumed)])
    assert len(lab.reads) == len(pool.reads) == 2 * (12 - start)  # nothing skipped was read
    assert resumed.epoch == 2
    assert _same([full[2]], [list(resumed)])


def test_mixed_loader_with_workers_resumes_exactly() -> None:
    full = _epochs(build_mixed_loader(_labeled(), _pool(5, 2), batch_size=4, ratio=0.5, workers=0, seed=3), 2)
    resumed = build_mixed_loader(_labeled(), _pool(5, 2), batch_size=4, ratio=0.5, workers=2, seed=3)
    resumed.set_epoch(1)
    resumed.set_start(4)
    assert _same([full[1][4:]], [list(resumed)])


@pytest.mark.parametrize("drop_last", [True, False])
def test_ranks_share_one_global_permutation(drop_last: bool) -> None:
    n, batch, world = 25, 4, 2
    samplers = [EpochSampler(n, batch, shuffle=True, seed=6, rank=r, world_size=world, drop_last=drop_last)
                for r in range(world)]
    for s in samplers:
        s.set_epoch(2)
    order = samplers[0].order(2)
    assert sorted(order.tolist()) == list(range(n)) and np.array_equal(order, samplers[1].order(2))
    shares = [list(s) for s in samplers]
    per_rank = 12 if drop_last else 13
    assert [len(x) for x in shares] == [per_rank] * world
    assert [s.batches_per_epoch for s in samplers] == [3 if drop_last else 4] * world
    interleaved = [shares[i % world][i // world] for i in range(per_rank * world)]
    if drop_last:  # the ranks partition the permutation (minus its tail)
        assert interleaved == order[:24].tolist()
    else:  # padded with the permutation's head, as DistributedSampler does
        assert interleaved == order.tolist() + order[:1].tolist()
    samplers[1].set_start(2)
    assert list(samplers[1]) == shares[1][2 * batch:] and list(samplers[1]) == shares[1]
    assert samplers[0].order(3).tolist() != order.tolist()
    plain = EpochSampler(n, batch, shuffle=False, rank=1, world_size=world)
    assert list(plain) == list(range(1, 24, 2))


def test_rank_loaders_see_the_same_augmentation_per_sample() -> None:
    single = build_loader(_labeled(), batch_size=4, workers=0, seed=2)
    ranks = [EpochLoader(_labeled(), 4, workers=0, seed=2, rank=r, world_size=2) for r in range(2)]
    assert all(r.distributed and len(r) == 3 for r in ranks)
    seen: dict[int, torch.Tensor] = {b_i: b.images[j] for b in single for j, b_i in enumerate(b.index.tolist())}
    per_rank = [[b for b in r] for r in ranks]
    for k in range(3):  # global step k: the ranks' batches together are one contiguous chunk of the order
        rows = torch.cat([per_rank[r][k].index for r in range(2)])
        assert sorted(rows.tolist()) == sorted(ranks[0].sampler.order(0)[8 * k:8 * k + 8].tolist())
    for batches in per_rank:
        for b in batches:
            for j, i in enumerate(b.index.tolist()):
                assert torch.equal(b.images[j], seen[i])
    with pytest.raises(ValueError, match="rank"):
        EpochLoader(_labeled(), 4, workers=0, rank=2, world_size=2)
