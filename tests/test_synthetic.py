"""Procedural identities: determinism, identity structure, disjoint splits, pairs, grid."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from facekd.data.synthetic import (GALLERY_BASE, UNLABELED_BASE, VERIFICATION_BASE, SyntheticFaceDataset,
                                   SyntheticFaces, main, make_pairs, synthetic_splits, write_grid)
from facekd.data.verification_bin import load_bin

QUIET = dict(pose=0, expression=0, light=0, noise=0, blur=0, occlusion=0, background=0)


def test_same_seed_same_pixels_across_instances() -> None:
    a, b = SyntheticFaces(seed=3, size=48), SyntheticFaces(seed=3, size=48)
    b.render(9, 9)  # a different call history must not matter
    img = a.render(5, 2)
    assert img.dtype == np.uint8 and img.shape == (48, 48, 3)
    assert np.array_equal(img, b.render(5, 2))


def test_identities_samples_and_seeds_differ() -> None:
    faces = SyntheticFaces(seed=0, size=32)
    base = faces.render(0, 0).astype(int)
    assert np.abs(base - faces.render(1, 0)).mean() > 5
    assert np.abs(base - faces.render(0, 1)).mean() > 1
    assert np.abs(base - SyntheticFaces(seed=1, size=32).render(0, 0)).mean() > 5


@pytest.mark.parametrize("size", [32, 64, 112])
def test_sizes(size: int) -> None:
    img = SyntheticFaces(size=size).render(3, 4)
    assert img.shape == (size, size, 3)
    assert img.std() > 10  # a picture, not a flat field


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="32..112"):
        SyntheticFaces(size=16)
    with pytest.raises(TypeError, match="unknown difficulty knob.*valid knobs"):
        SyntheticFaces(posee=1.0)
    with pytest.raises(ValueError, match="occlusion"):
        SyntheticFaces(occlusion=2.0)


def test_nuisance_off_keeps_identity_nearly_fixed() -> None:
    faces = SyntheticFaces(seed=0, size=32, **QUIET)
    imgs = {(i, s): faces.render(i, s).astype(float) for i in range(8) for s in range(2)}
    for i in range(8):
        same = np.abs(imgs[i, 0] - imgs[i, 1]).mean()
        other = min(np.abs(imgs[i, 0] - imgs[j, 0]).mean() for j in range(8) if j != i)
        assert same < other


def test_dataset_interface() -> None:
    ds = SyntheticFaceDataset(5, 3, size=32, seed=2, first_identity=10)
    assert len(ds) == 15 and ds.num_classes == 5
    assert ds.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4]
    img, label = ds.read(7)
    assert label == 2 and ds.identity_of(7) == 12
    assert np.array_equal(img, SyntheticFaces(seed=2, size=32).render(12, 1))
    with pytest.raises(IndexError):
        ds.read(15)


def test_splits_use_disjoint_identities_and_balanced_pairs(tmp_path: Path) -> None:
    sp = synthetic_splits(num_train_ids=20, images_per_id=2, num_val_ids=20, num_pairs=40,
                          num_gallery_ids=6, num_unlabeled_ids=10, size=32, seed=1)
    roles = {k: set(v) for k, v in sp.identities.items()}
    names = list(roles)
    for a in names:
        for b in names:
            if a < b:
                assert not roles[a] & roles[b], (a, b)
    assert set(sp.pair_identities.tolist()) <= roles["verification"]
    assert not set(sp.pair_identities.tolist()) & roles["train"]
    assert set(sp.train.identities) == set(range(20))
    assert sp.unlabeled is not None and sp.unlabeled.first_identity == UNLABELED_BASE

    # pairs: load_bin layout, balanced, genuine = same id, folds of disjoint identities
    assert sp.pair_images.shape == (80, 32, 32, 3) and sp.issame.shape == (40,)
    assert sp.issame.sum() == 20
    ids = sp.pair_identities.reshape(-1, 2)
    assert np.array_equal(ids[:, 0] == ids[:, 1], sp.issame)
    fold_ids = [set(ids[k * 4:(k + 1) * 4].ravel().tolist()) for k in range(10)]
    for a in range(10):
        for b in range(a + 1, 10):
            assert not fold_ids[a] & fold_ids[b]
    # genuine pairs show two different photos
    genuine = np.flatnonzero(sp.issame)[0]
    assert not np.array_equal(sp.pair_images[2 * genuine], sp.pair_images[2 * genuine + 1])

    # gallery / probes: mated probes reference gallery labels, non-mated probes are -1 and new ids
    assert sp.gallery_images.shape == (6, 32, 32, 3) and sp.gallery_labels.tolist() == list(range(6))
    assert (sp.probe_labels == -1).sum() == 3 and sorted(set(sp.probe_labels[sp.probe_labels >= 0])) == list(range(6))
    assert min(roles["gallery"]) == GALLERY_BASE and min(roles["verification"]) == VERIFICATION_BASE

    # pairs round-trip through the .bin writer
    images, issame = load_bin(sp.save_pairs(tmp_path / "synthetic.bin"))
    assert np.array_equal(images, sp.pair_images) and np.array_equal(issame, sp.issame)


def test_make_pairs_validates() -> None:
    faces = SyntheticFaces(size=32)
    with pytest.raises(ValueError, match="multiple of 20"):
        make_pairs(faces, range(40), 30)
    with pytest.raises(ValueError, match="at least 20 identities"):
        make_pairs(faces, range(10), 20)


def test_grid_and_main(tmp_path: Path) -> None:
    out = write_grid(tmp_path / "g.png", identities=2, samples=3, size=32)
    img = cv2.imread(str(out))
    assert img.shape == (2 * 34 + 2, 3 * 34 + 2, 3)
    assert main(["--grid", str(tmp_path / "m.png"), "--size", "40", "--ids", "1", "--samples", "2"]) == 0
    assert cv2.imread(str(tmp_path / "m.png")).shape == (44, 86, 3)
