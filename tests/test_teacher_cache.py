"""The teacher-feature cache: build, hit, miss, refusal of stale caches (the dataset fingerprint
covers every sample: changed, reordered or touched images), resume, flipped lookups, and a build
shared by two ranks."""
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
from facekd.data.fingerprint import PROBES
from facekd.distill.cache import (CacheError, CacheMissingError, StaleCacheError, TeacherCache, TeacherCacheSet,
                                  cache_key, deterministic_transform, open_or_build_cache, transform_signature)
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
    assert manifest["parts"] == [[0, 15]] and cache.nbytes == 15 * 2 * 16 * 2

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
    with pytest.raises(StaleCacheError, match="dataset.spec.seed"):
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
        self.source = dataset.source  # fingerprinted as the dataset it wraps
        self.num_classes = dataset.num_classes
        self.reads = 0

    def __len__(self) -> int:
        return len(self.dataset)

    def read(self, i: int):
        self.reads += 1
        if self.fail_at is not None and self.reads > PROBES and i >= self.fail_at:
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
    done_rows = 2 * int(np.fromfile(tmp_path / "c" / "part-000.done", dtype=np.uint8).sum())
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


# ----------------------------------------------------------------------------------------------
# the dataset fingerprint covers every sample

def _faces(n_ids: int = 3, per_id: int = 2) -> list[tuple[np.ndarray, int]]:
    from facekd.data.synthetic import SyntheticFaceDataset

    synth = SyntheticFaceDataset(n_ids, per_id, size=32, seed=4)
    return [synth.read(i) for i in range(len(synth))]


def _rec(path: Path, samples: list[tuple[np.ndarray, int]]) -> str:
    from facekd.data.recordio import write_face_record

    write_face_record(path, samples, num_classes=3, fmt=".png", overwrite=True)
    return str(path)


def _stale_message(root: Path, teacher, data) -> str:
    with pytest.raises(StaleCacheError) as info:
        TeacherCache.build(root, teacher, data, None, batch_size=4)
    text = str(info.value)
    assert str(root) in text and "--rebuild-cache" in text and "\n" not in text
    return text


def test_recordio_with_a_changed_or_reordered_image_is_refused(tmp_path: Path) -> None:
    teacher = make_teacher()
    samples = _faces()
    spec = _rec(tmp_path / "rec", samples)
    TeacherCache.build(tmp_path / "c", teacher, open_dataset(spec), None, batch_size=4)
    TeacherCache.build(tmp_path / "c", teacher, open_dataset(spec), None, batch_size=4)  # unchanged: reused

    changed = list(samples)
    changed[3] = (255 - samples[3][0], samples[3][1])  # another image, same count, same label
    text = _stale_message(tmp_path / "c", teacher, open_dataset(_rec(tmp_path / "rec", changed)))
    assert "dataset.index" in text or "dataset.rec_size" in text

    swapped = list(samples)
    swapped[0], swapped[1] = samples[1], samples[0]  # same identity: labels unchanged, order differs
    text = _stale_message(tmp_path / "c", teacher, open_dataset(_rec(tmp_path / "rec", swapped)))
    assert "dataset.index (the RecordIO index" in text

    rebuilt = TeacherCache.build(tmp_path / "c", teacher, open_dataset(spec := _rec(tmp_path / "rec", swapped)),
                                 None, batch_size=4, rebuild=True)
    first = teacher.embed_images(torch.stack([open_dataset(spec)[0]["image"]]))  # no transform: unflipped
    assert torch.allclose(rebuilt.lookup(torch.tensor([0]), torch.tensor([False])), first, atol=1e-2)


def test_image_folder_with_a_replaced_file_is_refused(tmp_path: Path) -> None:
    import os

    from facekd.data.image_codec import encode_image

    teacher = make_teacher()
    for i, (image, label) in enumerate(_faces()):
        folder = tmp_path / "faces" / f"id{label}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i}.png").write_bytes(encode_image(image, ".png"))
    data = open_dataset(tmp_path / "faces")
    TeacherCache.build(tmp_path / "c", teacher, data, None, batch_size=4)
    victim = tmp_path / "faces" / "id1" / "3.png"
    stat = victim.stat()
    os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # rewritten in place, same size
    text = _stale_message(tmp_path / "c", teacher, open_dataset(tmp_path / "faces"))
    assert "dataset.files (the image files" in text


def test_synthetic_spec_is_fingerprinted_whole(tmp_path: Path) -> None:
    teacher = make_teacher()
    TeacherCache.build(tmp_path / "c", teacher, open_dataset(SPEC), None, batch_size=8)
    text = _stale_message(tmp_path / "c", teacher, open_dataset(SPEC + ",occlusion=0.2"))
    assert "dataset.spec.occlusion (the synthetic data spec): cache has 0.5, now 0.2" in text


# ----------------------------------------------------------------------------------------------
# every rank builds its share

def _two_ranks(root: Path, teachers: list, datasets: list, transform, stall_timeout: float = 60.0):
    """Build ``root`` with two threads as ranks 0 and 1 (a real barrier, rank 0's plan shared)."""
    import threading

    from facekd.distill.cache import Collective

    barrier, box = threading.Barrier(2, timeout=60), {}

    def share(obj, rank):
        if rank == 0:
            box["plan"] = obj
        barrier.wait()
        out = box["plan"]
        barrier.wait()
        return out

    results: dict[int, TeacherCache] = {}
    errors: dict[int, BaseException] = {}

    def rank_main(rank: int) -> None:
        try:
            collective = Collective(rank, 2, share=lambda obj: share(obj, rank), barrier=lambda: barrier.wait())
            results[rank] = TeacherCache.build(root, teachers[rank], datasets[rank], transform, batch_size=4,
                                               commit_every=1, collective=collective, stall_timeout=stall_timeout)
        except BaseException as err:  # noqa: BLE001 -- returned to the test
            errors[rank] = err

    threads = [threading.Thread(target=rank_main, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, errors


def test_two_ranks_build_their_own_parts_and_read_the_whole_cache(tmp_path: Path, dataset) -> None:
    teachers = [make_teacher(), make_teacher()]
    results, errors = _two_ranks(tmp_path / "c", teachers, [dataset, dataset], dataset.transform)
    assert not errors, errors
    manifest = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert manifest["parts"] == [[0, 8], [8, 15]] and manifest["complete"]
    assert [t.calls for t in teachers] == [2 * 8, 2 * 7]  # each rank embedded only its part (image + flip)
    single = TeacherCache.build(tmp_path / "one", make_teacher(), dataset, dataset.transform, batch_size=5)
    for rank in range(2):
        assert np.array_equal(results[rank].rows(0, 15), single.rows(0, 15))
        idx, flip = torch.tensor([14, 0, 9, 7, 8]), torch.tensor([True, False, True, False, False])
        assert torch.equal(results[rank].lookup(idx, flip), single.lookup(idx, flip))
    # one process reopens (and would resume) the two-part cache
    again = TeacherCache.build(tmp_path / "c", make_teacher(), dataset, dataset.transform, batch_size=4)
    assert len(again.arrays) == 2 and np.array_equal(again.array, single.array)


def test_a_rank_lost_mid_build_stops_the_waiting_rank_and_its_part_resumes(tmp_path: Path, dataset) -> None:
    teachers = [make_teacher(), make_teacher()]
    broken = FailingRows(dataset, 12)  # rank 1 (rows 8..14) stops at row 12: its chunk 8..11 is on disk
    results, errors = _two_ranks(tmp_path / "c", teachers, [dataset, broken], dataset.transform, stall_timeout=1.0)
    assert isinstance(errors[1], KeyboardInterrupt)
    assert isinstance(errors[0], CacheError) and "parts [1]" in str(errors[0]) and "without progress" in str(errors[0])
    assert [int(np.fromfile(tmp_path / "c" / f"part-00{p}.done", dtype=np.uint8).sum()) for p in range(2)] == [2, 1]

    teachers = [make_teacher(), make_teacher()]
    results, errors = _two_ranks(tmp_path / "c", teachers, [dataset, dataset], dataset.transform)
    assert not errors, errors
    assert [t.calls for t in teachers] == [0, 2 * 3]  # only rank 1's missing rows 12..14, image + flip
    fresh = TeacherCache.build(tmp_path / "fresh", make_teacher(), dataset, dataset.transform, batch_size=5)
    assert np.array_equal(results[0].array, fresh.array) and np.array_equal(results[1].array, fresh.array)


def test_corrupt_image_in_the_cache_build_is_a_reported_zero_row(tmp_path: Path, caplog) -> None:
    """A corrupt file in the labeled set: the build goes on, says how many, stores zero rows for it
    (both views) and the teacher's embeddings for every other image; the fitted centres ignore it."""
    import logging

    import cv2

    from facekd.distill.teacher import class_centres

    rng = np.random.default_rng(0)
    root = tmp_path / "faces"
    for person in ("anna", "bob"):
        (root / person).mkdir(parents=True)
        for k in range(3):
            assert cv2.imwrite(str(root / person / f"{k}.png"), rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    (root / "bob" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n not really an image")
    data = open_dataset(f"folder:{root}")
    assert data.labels.tolist() == [0, 0, 0, 1, 1, 1]  # sorted: anna/0-2, bob/0-2
    bad = [4]  # bob/1.png
    teacher = make_teacher()
    logger = logging.getLogger("facekd")
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.WARNING, logger="facekd"):
            cache = TeacherCache.build(tmp_path / "c", teacher, data, None, batch_size=4)
    finally:
        logger.removeHandler(caplog.handler)
    assert "1 corrupt image(s) stored as zero rows" in caplog.text
    rows = np.asarray(cache.array, dtype=np.float32)
    zero = [i for i in range(len(data)) if not rows[i].any()]
    assert zero == bad
    good = [i for i in range(len(data)) if i not in bad]
    images = torch.stack([open_dataset(f"folder:{root}")[i]["image"] for i in good])
    with torch.no_grad():
        expected = teacher.embed_images(images).numpy()
    np.testing.assert_allclose(rows[good, 0], expected, rtol=2e-3, atol=2e-3 * float(np.abs(expected).max()))
    # the centres fitted from the cache are those of the readable images alone
    report = teacher.fit_classifier_from_cache(cache, data.labels, 2)
    want, _ = class_centres(torch.from_numpy(rows[good].reshape(-1, 16)),
                            torch.as_tensor(data.labels[good]).repeat_interleave(2), 2)
    assert torch.allclose(teacher.classifier_weight(), want, atol=1e-5) and report["num_samples"] == 12
