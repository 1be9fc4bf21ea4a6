"""Image augmentation and normalisation through albumentations, one registry of named pipelines.

A transform takes an RGB uint8 HxWx3 array and returns a float tensor CxHxW; ``apply`` also says
whether the image was flipped horizontally (a teacher-feature cache stores embeddings of each
image and of its flip and needs to know which one a sample is).

Pipelines (``build_transform(name, **knobs)``):

* ``face``: horizontal flip (p = ``flip``, default 0.5), then optional colour jitter, Gaussian
  blur, small affine and random erasing (CoarseDropout), each off by default and switched on by
  giving its probability; normalised with (x/255 - 0.5)/0.5 as arcface_torch does;
* ``face_eval``: normalisation only (optionally resized): no randomness;
* ``cifar``: random crop 32 with 4-px zero padding + flip, normalised with the CIFAR-100
  mean/std of the RepDistiller recipe; ``cifar_eval``: normalisation only.

albumentations keeps its own random state (global seeds do not reach it). ``ImageTransform``
gives the whole pipeline one shared pair of generators (``random.Random`` and a numpy Philox
``Generator``) that ``reseed`` restarts in place in a few microseconds, so the loaders reseed it
before every sample and a sample's augmentation depends only on its seed (see
``facekd.data.loaders``).
"""
from __future__ import annotations

import random
from typing import Any, Callable

import albumentations as A
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2

from facekd.registry import Registry

__all__ = [
    "FACE_MEAN", "FACE_STD", "CIFAR_MEAN", "CIFAR_STD", "ImageTransform", "TRANSFORMS",
    "register_transform", "build_transform", "face_train_transform", "face_eval_transform",
    "cifar_train_transform", "cifar_eval_transform", "only_flips", "deterministic_steps", "apply_transform",
]

FACE_MEAN = (0.5, 0.5, 0.5)
FACE_STD = (0.5, 0.5, 0.5)
CIFAR_MEAN = (0.5071, 0.4867, 0.4408)
CIFAR_STD = (0.2675, 0.2565, 0.2761)

# albumentations transforms that never draw random numbers when they are always applied
_DETERMINISTIC = frozenset({"Normalize", "ToTensorV2", "Resize", "PadIfNeeded", "CenterCrop",
                            "LongestMaxSize", "SmallestMaxSize", "ToFloat", "FromFloat", "NoOp"})
_FLIP = "HorizontalFlip"
_SEED_RANGE = 2 ** 128
_WORD = 2 ** 64 - 1
_ZEROS4 = np.zeros(4, np.uint64)  # Philox counter and buffer at the start of a stream (the setter copies)
_ZEROS4.flags.writeable = False


class ImageTransform:
    """An albumentations pipeline ending in a CxHxW float tensor, with flip reporting and reseeding."""

    def __init__(self, compose: A.Compose, name: str = "custom") -> None:
        self.compose = compose
        self.name = name
        self._generator: np.random.Generator | None = None
        self._py_random: random.Random | None = None
        if getattr(compose, "seed", None) is not None:  # a seeded pipeline starts where reseed(seed) would
            self.reseed(compose.seed)

    def __repr__(self) -> str:
        steps = ", ".join(type(t).__name__ for t in _leaves(self.compose))
        return f"ImageTransform({self.name}: {steps})"

    def apply(self, image: np.ndarray) -> tuple[torch.Tensor, bool]:
        """(tensor CxHxW float32, whether a horizontal flip was applied)."""
        out = self.compose(image=image)
        flipped = any(name == _FLIP for name, _ in out.get("applied_transforms", ()))
        return out["image"], flipped

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        return self.apply(image)[0]

    def reseed(self, seed: int) -> None:
        """Restart the pipeline's random stream from ``seed`` (any int, used modulo 2**128).

        Cheap enough to call before every sample (the loaders do): the first call hands every
        step one shared ``random.Random`` and numpy ``Generator(Philox)``; later calls restart
        both in place (Philox key = the seed), instead of albumentations' ``set_random_seed``,
        which builds two new generators per step."""
        seed = int(seed) % _SEED_RANGE
        generator, py_random = self._generator, self._py_random
        if generator is None or py_random is None or self.compose.random_generator is not generator:
            generator, py_random = np.random.Generator(np.random.Philox(key=0)), random.Random()
            self.compose.set_random_state(generator, py_random)
            self._generator, self._py_random = generator, py_random
        py_random.seed(seed)
        generator.bit_generator.state = {
            "bit_generator": "Philox",
            "state": {"counter": _ZEROS4, "key": np.array([seed & _WORD, seed >> 64], dtype=np.uint64)},
            "buffer": _ZEROS4, "buffer_pos": 4, "has_uint32": 0, "uinteger": 0}


TRANSFORMS: Registry[Callable[..., ImageTransform]] = Registry("transform")
"""Image pipeline builders ``builder(**knobs) -> ImageTransform`` by name."""


def register_transform(name: str) -> Callable[[Callable[..., ImageTransform]], Callable[..., ImageTransform]]:
    """Decorator adding a pipeline builder to ``TRANSFORMS`` under ``name``."""
    return TRANSFORMS.register(name)


def build_transform(name: str, **knobs: Any) -> ImageTransform:
    """The pipeline registered as ``name`` (``face``, ``face_eval``, ``cifar``, ``cifar_eval``)."""
    return TRANSFORMS.get(name)(**knobs)


def _compose(steps: list[A.BasicTransform], seed: int | None) -> A.Compose:
    return A.Compose(steps, seed=seed, save_applied_params=True)


def _resize(size: int | None) -> list[A.BasicTransform]:
    return [] if size is None else [A.Resize(int(size), int(size), area_for_downscale="image")]


def _finish(mean: tuple[float, ...], std: tuple[float, ...]) -> list[A.BasicTransform]:
    return [A.Normalize(mean=mean, std=std, max_pixel_value=255.0), ToTensorV2()]


def _probability(name: str, p: float) -> float:
    if not 0.0 <= float(p) <= 1.0:
        raise ValueError(f"{name} is a probability in [0, 1], got {p}")
    return float(p)


@register_transform("face")
def face_train_transform(size: int | None = None, flip: float = 0.5, color_jitter: float = 0.0,
                         blur: float = 0.0, affine: float = 0.0, erasing: float = 0.0,
                         seed: int | None = 0) -> ImageTransform:
    """Training pipeline for aligned faces; every knob is the probability of its augmentation
    (``flip`` 0.5 by default, the others off): colour jitter (brightness/contrast/saturation 0.2,
    hue 0.02), Gaussian blur (sigma 0.1-1.5 px), affine (scale 0.95-1.05, shift 4 %, rotation
    8 deg), random erasing (one hole of 10-30 % of each side, filled black)."""
    steps: list[A.BasicTransform] = _resize(size)
    steps.append(A.HorizontalFlip(p=_probability("flip", flip)))
    if color_jitter:
        steps.append(A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02,
                                   p=_probability("color_jitter", color_jitter)))
    if blur:
        steps.append(A.GaussianBlur(sigma_limit=(0.1, 1.5), blur_limit=0, p=_probability("blur", blur)))
    if affine:
        steps.append(A.Affine(scale=(0.95, 1.05), translate_percent=(-0.04, 0.04), rotate=(-8, 8),
                              border_mode=0, fill=0, p=_probability("affine", affine)))
    if erasing:
        steps.append(A.CoarseDropout(num_holes_range=(1, 1), hole_height_range=(0.1, 0.3),
                                     hole_width_range=(0.1, 0.3), fill=0, p=_probability("erasing", erasing)))
    return ImageTransform(_compose(steps + _finish(FACE_MEAN, FACE_STD), seed), "face")


@register_transform("face_eval")
def face_eval_transform(size: int | None = None, seed: int | None = 0) -> ImageTransform:
    """Evaluation pipeline for faces: (optional resize and) normalisation, no randomness."""
    return ImageTransform(_compose(_resize(size) + _finish(FACE_MEAN, FACE_STD), seed), "face_eval")


@register_transform("cifar")
def cifar_train_transform(size: int = 32, padding: int = 4, flip: float = 0.5,
                          seed: int | None = 0) -> ImageTransform:
    """CIFAR training pipeline: zero-pad by ``padding``, random crop ``size``, flip, CIFAR-100 mean/std."""
    steps = [A.PadIfNeeded(size + 2 * padding, size + 2 * padding, border_mode=0, fill=0),
             A.RandomCrop(size, size), A.HorizontalFlip(p=_probability("flip", flip))]
    return ImageTransform(_compose(steps + _finish(CIFAR_MEAN, CIFAR_STD), seed), "cifar")


@register_transform("cifar_eval")
def cifar_eval_transform(seed: int | None = 0) -> ImageTransform:
    """CIFAR evaluation pipeline: normalisation with the CIFAR-100 mean/std only."""
    return ImageTransform(_compose(_finish(CIFAR_MEAN, CIFAR_STD), seed), "cifar_eval")


def _leaves(t: Any) -> list[Any]:
    inner = getattr(t, "transforms", None)
    if inner is None:
        return [t]
    return [leaf for child in inner for leaf in _leaves(child)]


# containers that apply every child in order (when they are applied at all); any other container
# (OneOf, SomeOf, OneOrOther, RandomOrder, SelectiveChannelTransform...) chooses at random
_SEQUENCES = frozenset({"Compose", "Sequential", "ReplayCompose"})


def _prob(node: Any) -> float:
    return float(getattr(node, "p", 1.0))


def _flips_only_subtree(node: Any) -> bool:
    """Whether every step under ``node`` that can ever run is a horizontal flip."""
    if _prob(node) == 0.0:
        return True
    inner = getattr(node, "transforms", None)
    if inner is None:
        return type(node).__name__ == _FLIP
    return all(_flips_only_subtree(child) for child in inner)


def _only_flips_node(node: Any) -> bool:
    p, inner = _prob(node), getattr(node, "transforms", None)
    if p == 0.0:
        return True  # never applied
    if inner is None:
        name = type(node).__name__
        return name == _FLIP or (name in _DETERMINISTIC and p == 1.0)
    if p != 1.0 or type(node).__name__ not in _SEQUENCES:
        # applied at random, or a random choice/order among its children: only flips may sit below it
        return _flips_only_subtree(node)
    return all(_only_flips_node(child) for child in inner)


def only_flips(transform: Any) -> bool:
    """True when ``transform``'s only randomness is the horizontal flip (or it has none), so a
    cache of teacher embeddings of each image and its flip stays valid; False when unsure.

    Containers are understood: under ``Compose``/``Sequential`` applied with p = 1 every step must
    be a flip or an always-applied deterministic step (resize, normalise...); under a container
    that chooses (``OneOf``, ``SomeOf``, ``OneOrOther``, ``RandomOrder``...) or is applied with
    p < 1, only flips may appear (anything else would be applied at random)."""
    if transform is None:
        return True
    compose = transform.compose if isinstance(transform, ImageTransform) else transform
    if not isinstance(compose, A.BaseCompose):
        return False
    return _only_flips_node(compose)


def deterministic_steps(transform: Any) -> list[Any]:
    """The steps of a flips-only ``transform`` that always run, in order, without its flips
    (never-applied p = 0 steps dropped); ValueError when ``only_flips`` is False."""
    if not only_flips(transform):
        raise ValueError(f"{transform!r} has randomness beyond horizontal flips")
    if transform is None:
        return []
    compose = transform.compose if isinstance(transform, ImageTransform) else transform

    def walk(node: Any) -> list[Any]:
        if _prob(node) == 0.0:
            return []
        inner = getattr(node, "transforms", None)
        if inner is None:
            return [] if type(node).__name__ == _FLIP else [node]
        return [leaf for child in inner for leaf in walk(child)]

    return walk(compose)


def apply_transform(transform: Callable[[np.ndarray], Any] | None, image: np.ndarray) -> tuple[torch.Tensor, bool]:
    """(tensor, flipped) from an ``ImageTransform``, any callable returning a tensor (flipped is
    then False), or ``None`` (face normalisation)."""
    if transform is None:
        transform = _default_eval()
    if isinstance(transform, ImageTransform):
        return transform.apply(image)
    out = transform(image)
    if isinstance(out, tuple):
        return out[0], bool(out[1])
    return (out if isinstance(out, torch.Tensor) else torch.as_tensor(out)), False


_DEFAULT: list[ImageTransform] = []


def _default_eval() -> ImageTransform:
    if not _DEFAULT:
        _DEFAULT.append(face_eval_transform())
    return _DEFAULT[0]
