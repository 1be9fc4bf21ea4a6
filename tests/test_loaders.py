"""Batches and loaders: collation, determinism with and without workers, mixed batches, DDP."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler

from facekd.data.batch import Batch, collate_samples
from facekd.data.datasets import open_dataset
from facekd.data.loaders import build_loader, build_mixed_loader, derive_seed
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
    def run() -> list[list[Batch]]:
        return _epochs(build_mixed_loader(_labeled(), _pool(), batch_size=4, ratio=0.5, workers=2, seed=9))
    assert _same(run(), run())


def test_empty_unlabeled_stream_is_refused() -> None:
    with pytest.raises(ValueError, match="unlabeled loader yields no batch"):
        build_mixed_loader(_labeled(), _pool(1, 2), batch_size=8, ratio=1.0, workers=0)


def test_distributed_sampler_under_process_group(tmp_path: Path) -> None:
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        loader = build_loader(_labeled(), batch_size=8, workers=0, seed=2)
        assert loader.distributed and isinstance(loader.sampler, DistributedSampler)
        e0, e1 = _epochs(loader)
        assert loader.sampler.epoch == 1
        assert sorted(torch.cat([b.index for b in e0]).tolist()) == list(range(24))
        assert not torch.equal(torch.cat([b.index for b in e0]), torch.cat([b.index for b in e1]))
    finally:
        dist.destroy_process_group()
    assert not build_loader(_labeled(), batch_size=8, workers=0).distributed


def test_derive_seed_mixes_every_part() -> None:
    seeds = {derive_seed(0, e, r, w) for e in range(3) for r in range(2) for w in range(3)}
    assert len(seeds) == 18
    with pytest.raises(ValueError):
        derive_seed(-1, 0, 0, 0)
