"""Augmentation pipelines: output types, normalisation values, flip reporting, seeding, only_flips."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from facekd.data.transforms import (CIFAR_MEAN, CIFAR_STD, apply_transform, build_transform,
                                    face_eval_transform, face_train_transform, only_flips)


def _asymmetric(h: int = 16, w: int = 16) -> np.ndarray:
    img = np.zeros((h, w, 3), np.uint8)
    img[:, : w // 4] = 255          # bright left band
    img[2, 3] = (10, 20, 30)
    return img


def test_face_eval_normalises_to_minus_one_one() -> None:
    img = np.zeros((4, 4, 3), np.uint8)
    img[0, 0] = 255
    img[1, 1] = 128
    out = face_eval_transform()(img)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32 and out.shape == (3, 4, 4)
    assert torch.allclose(out[:, 0, 0], torch.ones(3))
    assert torch.allclose(out[:, 1, 1], torch.full((3,), (128 / 255 - 0.5) / 0.5))
    assert torch.allclose(out[:, 2, 2], -torch.ones(3))


def test_cifar_eval_uses_dataset_mean_std() -> None:
    img = np.full((32, 32, 3), 100, np.uint8)
    out = build_transform("cifar_eval")(img)
    expected = (100 / 255 - torch.tensor(CIFAR_MEAN)) / torch.tensor(CIFAR_STD)
    assert out.shape == (3, 32, 32)
    assert torch.allclose(out[:, 5, 5], expected, atol=1e-5)


def test_flip_is_reported_and_matches_the_mirrored_image() -> None:
    img = _asymmetric()
    plain = face_eval_transform()(img)
    aug = face_train_transform(seed=3)
    flags = []
    for _ in range(40):
        out, flipped = aug.apply(img)
        flags.append(flipped)
        assert torch.equal(out, plain.flip(-1) if flipped else plain)
    assert 5 < sum(flags) < 35


@pytest.mark.parametrize("p,expected", [(0.0, False), (1.0, True)])
def test_flip_probability_extremes(p: float, expected: bool) -> None:
    aug = face_train_transform(flip=p)
    assert all(aug.apply(_asymmetric())[1] is expected for _ in range(10))


def test_same_seed_same_augmentations_and_reseed_restarts() -> None:
    img = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    knobs = dict(color_jitter=1.0, blur=0.5, affine=1.0, erasing=0.5)
    a, b = face_train_transform(seed=7, **knobs), face_train_transform(seed=7, **knobs)
    outs_a = [a(img) for _ in range(5)]
    outs_b = [b(img) for _ in range(5)]
    assert all(torch.equal(x, y) for x, y in zip(outs_a, outs_b))
    assert not torch.equal(outs_a[0], outs_a[1])
    a.reseed(7)
    assert torch.equal(a(img), outs_a[0])


def test_cifar_train_crop_pads_and_shifts() -> None:
    img = np.full((32, 32, 3), 200, np.uint8)
    aug = build_transform("cifar", seed=1)
    outs = [aug(img) for _ in range(20)]
    assert all(o.shape == (3, 32, 32) for o in outs)
    pad_value = ((0 - torch.tensor(CIFAR_MEAN)) / torch.tensor(CIFAR_STD))[0]
    # some crops reach into the zero padding, so a border row/column holds the padding value
    assert any(torch.isclose(o[0], pad_value, atol=1e-4).any() for o in outs)


def test_resize_knob() -> None:
    out = face_train_transform(size=24)(np.zeros((48, 40, 3), np.uint8))
    assert out.shape == (3, 24, 24)


def test_only_flips() -> None:
    assert only_flips(face_train_transform())
    assert only_flips(face_eval_transform(size=32))
    assert only_flips(None)
    assert not only_flips(face_train_transform(color_jitter=0.5))
    assert not only_flips(face_train_transform(erasing=0.1))
    assert not only_flips(build_transform("cifar"))
    assert not only_flips(lambda image: torch.zeros(3))


def test_bad_names_and_knobs() -> None:
    with pytest.raises(ValueError, match="unknown transform 'nope'"):
        build_transform("nope")
    with pytest.raises(ValueError, match="probability"):
        face_train_transform(flip=1.5)


def test_apply_transform_accepts_plain_callables() -> None:
    img = _asymmetric()
    out, flipped = apply_transform(lambda x: torch.from_numpy(x).permute(2, 0, 1).float(), img)
    assert out.shape == (3, 16, 16) and flipped is False
    out, flipped = apply_transform(None, img)
    assert torch.equal(out, face_eval_transform()(img)) and flipped is False


def test_only_flips_understands_containers() -> None:
    import albumentations as A

    from albumentations.pytorch import ToTensorV2

    from facekd.data.transforms import ImageTransform, deterministic_steps

    def tf(*steps):
        return ImageTransform(A.Compose([*steps, A.Normalize(), ToTensorV2()]))

    crop = A.RandomCrop(24, 24)
    assert not only_flips(tf(A.OneOf([A.HorizontalFlip(), crop], p=1.0)))   # random choice of a crop
    assert not only_flips(tf(A.SomeOf([A.HorizontalFlip(), crop], n=1, p=1.0)))
    assert not only_flips(tf(A.Sequential([crop], p=1.0)))                     # random leaf in a sequence
    assert not only_flips(tf(A.Sequential([A.Resize(24, 24)], p=0.5)))         # deterministic, applied at random
    assert not only_flips(tf(A.OneOf([A.Resize(24, 24), A.Resize(28, 28)], p=1.0)))
    assert not only_flips(tf(A.Sequential([A.OneOf([A.HorizontalFlip(), A.Resize(24, 24)])], p=1.0)))
    assert only_flips(tf(A.OneOf([A.HorizontalFlip()], p=0.5)))               # only flips below a choice
    assert only_flips(tf(A.Sequential([A.Resize(24, 24), A.HorizontalFlip(p=0.5)], p=1.0)))
    assert only_flips(tf(A.OneOf([crop], p=0.0), A.HorizontalFlip()))         # never applied
    steps = deterministic_steps(tf(A.Sequential([A.Resize(24, 24), A.HorizontalFlip()], p=1.0),
                                   A.Resize(20, 20, p=0.0)))
    assert [type(s).__name__ for s in steps] == ["Resize", "Normalize", "ToTensorV2"]
    with pytest.raises(ValueError, match="beyond horizontal flips"):
        deterministic_steps(tf(A.OneOf([crop], p=1.0)))
