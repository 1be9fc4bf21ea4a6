"""The teacher-feature cache: build, hit, miss, refusal of stale caches, resume, flipped lookups."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from facekd.data.batch import Batch, collate_samples
from facekd.data.datasets import open_dataset
from facekd.data.pools import open_unlabeled
from facekd.data.transforms import face_train_transform
from facekd.distill.cache import (FINGERPRINT_SAMPLES, CacheError, CacheMissingError, StaleCacheError, TeacherCache,
                                  TeacherCacheSet, cache_key, deterministic_transform, open_or_build_cache,
                                  transform_signature)
from facekd.distill.teacher import Teacher
from facekd.models.registry import build_backbone

SPEC = "synthetic:ids=5,per_id=3,size=32"


class CountingTeacher(Teacher):
    """A real Teacher that counts the images it runs through its backbone."""

    calls = 0

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        self.calls += int(images.shape[0])
        return super().embed_images(images)


def make_teacher(seed: int = 0) -> CountingTeacher:
    torch.manual_seed(seed)
    return CountingTeacher(build_backbone("r18", input_size=32, width=0.125, embedding_size=16))


@pytest.fixture(scope="module")
def dataset():
    return open_dataset(SPEC, transform=face_train_transform(seed=3))


def test_build_then_hit_and_lookup_matches_online_teacher(tmp_path: Path, dataset) -> None:
    teacher = make_teacher()
    cache = TeacherCache.build(tmp_path / "c", teacher, dataset, dataset.transform, batch_size=4)
    assert teacher.calls == 2 * len(dataset) and len(cache) == len(dataset) and cache.embedding_size == 16
    manifest = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert manifest["complete"] and manifest["dtype"] == "float16" and manifest["dataset"]["length"] == 15
    assert cache.array.dtype == np.float16 and cache.array.shape == (15, 2, 16)

    # a real training batch (random flips) looked up == the online teacher on the same images
    batch = collate_samples([dataset[i] for i in range(len(dataset))])
    assert 0 < int(batch.flipped.sum()) < len(batch)
    online = teacher.embed(batch.images)
    teacher.attach_cache(TeacherCacheSet({0: cache}), dataset.transform)
    cached = teacher.embed(batch.images, batch)
    assert cached.dtype == torch.float32
    assert torch.allclose(cached, online, atol=2e-2 * online.abs().max().item())
    unflipped = cache.lookup(batch.index, torch.zeros_like(batch.flipped))
    flipped = cache.lookup(batch.index, torch.ones_like(batch.flipped))
    assert not torch.allclose(unflipped, flipped)

    # the classifier is fitted from the cache: both views of every labeled image
    report = teacher.fit_classifier_from_cache(cache, dataset.labels, dataset.num_classes)
    assert report["num_samples"] == 2 * len(dataset) and teacher.num_classes == 5

    calls = teacher.calls
    again = TeacherCache.build(tmp_path / "c", teacher, dataset, dataset.transform, batch_size=4)
    assert teacher.calls == calls  # hit: nothing recomputed
    assert np.array_equal(np.asarray(again.array), np.asarray(cache.array))


def test_miss_and_stale_caches_are_refused(tmp_path: Path, dataset) -> None:
    teacher = make_teacher()
    with pytest.raises(CacheMissingError, match="no teacher-feature cache"):
        TeacherCache.open(tmp_path / "c", cache_key(teacher, dataset, dataset.transform))
    TeacherCache.build(tmp_path / "c", teacher, dataset, dataset.transform, batch_size=8)

    other = make_teacher(seed=1)  # different weights
    with pytest.raises(StaleCacheError, match="teacher.fingerprint"):
        TeacherCache.open(tmp_path / "c", cache_key(other, dataset, dataset.transform))
    with pytest.raises(StaleCacheError, match="rebuild"):
        TeacherCache.build(tmp_path / "c", other, dataset, dataset.transform)

    other_data = open_dataset("synthetic:ids=5,per_id=3,size=32,seed=7", transform=dataset.transform)
    with pytest.raises(StaleCacheError, match="dataset.fingerprint"):
        TeacherCache.open(tmp_path / "c", cache_key(teacher, other_data, dataset.transform))
    bigger = face_train_transform(size=28)
    with pytest.raises(StaleCacheError, match="transform"):
        TeacherCache.open(tmp_path / "c", cache_key(teacher, dataset, bigger))

    rebuilt = TeacherCache.build(tmp_path / "c", other, dataset, dataset.transform, rebuild=True)
    assert rebuilt.manifest["teacher"]["fingerprint"] == other.fingerprint()
    TeacherCache.open(tmp_path / "c", cache_key(other, dataset, dataset.transform))

    (tmp_path / "c" / "manifest.json").write_text("{broken")
    with pytest.raises(StaleCacheError, match="unreadable"):
        TeacherCache.open(tmp_path / "c", cache_key(other, dataset, dataset.transform))


class FailingRows:
    """A dataset interrupted at the builder's read of row ``fail_at`` (after the fingerprint's reads)."""

    def __init__(self, dataset, fail_at: int | None) -> None:
        self.dataset, self.fail_at = dataset, fail_at
        self.num_classes = dataset.num_classes
        self.reads = 0

    def __len__(self) -> int:
        return len(self.dataset)

    def read(self, i: int):
        self.reads += 1
        if self.fail_at is not None and self.reads > FINGERPRINT_SAMPLES and i >= self.fail_at:
            raise KeyboardInterrupt("interrupted")
        return self.dataset.read(i)


def test_interrupted_build_resumes_where_it_stopped(tmp_path: Path, dataset) -> None:
    teacher = make_teacher()
    with pytest.raises(KeyboardInterrupt):
        TeacherCache.build(tmp_path / "c", teacher, FailingRows(dataset, 9), dataset.transform,
                           batch_size=2, commit_every=1)
    manifest = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert manifest["complete"] is False
    with pytest.raises(CacheMissingError, match="did not finish"):
        TeacherCache.open(tmp_path / "c", cache_key(teacher, dataset, dataset.transform))
    done_rows = 2 * int(np.fromfile(tmp_path / "c" / "progress.u8", dtype=np.uint8).sum())
    assert done_rows == 8  # chunks 0..3 made it to disk

    teacher.calls = 0
    resumed = TeacherCache.build(tmp_path / "c", teacher, FailingRows(dataset, None), dataset.transform, batch_size=2)
    assert teacher.calls == 2 * (len(dataset) - done_rows)
    fresh = TeacherCache.build(tmp_path / "fresh", make_teacher(), dataset, dataset.transform, batch_size=5)
    assert np.array_equal(np.asarray(resumed.array), np.asarray(fresh.array))


def test_cache_set_mixes_sources_and_teacher_fills_uncached_rows(tmp_path: Path, dataset) -> None:
    teacher = make_teacher()
    labeled = open_or_build_cache(tmp_path, teacher, dataset, dataset.transform, batch_size=8)
    assert labeled.root == tmp_path / "labeled"
    pool = open_unlabeled("synthetic:ids=3,per_id=2,size=32", transform=dataset.transform)
    batch = Batch.cat([collate_samples([dataset[i] for i in range(4)]),
                       collate_samples([pool[i] for i in range(4)])])
    assert batch.source.tolist() == [0] * 4 + [1] * 4
    caches = TeacherCacheSet({0: labeled})
    emb, found = caches.lookup(batch)
    assert found.tolist() == [True] * 4 + [False] * 4
    teacher.attach_cache(caches, dataset.transform)
    teacher.calls = 0
    mixed = teacher.embed(batch.images, batch)
    assert teacher.calls == 4  # only the unlabeled rows ran through the teacher
    assert torch.allclose(mixed[4:], teacher.embed_images(batch.images[4:]))
    assert torch.equal(mixed[:4], emb[:4])

    unlabeled = open_or_build_cache(tmp_path, teacher, pool, pool.transform, source=1, batch_size=8)
    both = TeacherCacheSet({0: labeled, 1: unlabeled})
    assert both.lookup(batch)[1].all()
    # the other ranks only open: a complete cache works, a missing one is refused
    open_or_build_cache(tmp_path, teacher, pool, pool.transform, source=1, build=False)
    with pytest.raises(CacheMissingError):
        open_or_build_cache(tmp_path / "none", teacher, pool, pool.transform, source=1, build=False)
    with pytest.raises(CacheError, match="out of range"):
        labeled.lookup(torch.tensor([15]), torch.tensor([False]))


def test_only_flip_transforms_can_be_cached() -> None:
    with pytest.raises(CacheError, match="beyond horizontal flips"):
        deterministic_transform(face_train_transform(affine=0.3))
    det = deterministic_transform(face_train_transform(size=32))
    assert "HorizontalFlip" not in repr(det)
    names = [step["__class_fullname__"] for step in transform_signature(face_train_transform(size=32))]
    assert names == ["Resize", "Normalize", "ToTensorV2"]
    assert transform_signature(None) == transform_signature(face_train_transform())


def test_embeddings_beyond_float16_are_refused(tmp_path: Path, dataset) -> None:
    teacher = make_teacher()
    with torch.no_grad():  # an untrained-looking teacher: its last BatchNorm multiplies by 1e6
        teacher.backbone.features.weight.fill_(1e6)
    with pytest.raises(CacheError, match="float16.*--online-teacher"):
        TeacherCache.build(tmp_path / "c", teacher, dataset, dataset.transform, batch_size=8)
