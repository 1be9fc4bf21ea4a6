"""Image classification data by spec: CIFAR, image folders, Tiny-ImageNet, digits and synthetic.

Specs (``kind:argument``; the ``classify`` sources of the data-source registry ``facekd.data.sources``,
each a module of ``facekd.data.formats`` registered with ``register_source``):

* ``cifar100:ROOT``, ``cifar10:ROOT``: a local copy in torchvision's layout (see
  ``facekd.data.cifar``; never downloaded);
* ``folder:ROOT``: an ImageFolder tree ``ROOT/<class>/<image>``; when ``ROOT/train/`` exists the
  splits are ``ROOT/train`` and ``ROOT/test`` (or ``ROOT/val``), test classes matched to the
  training classes by name. As an unlabeled pool every image under ``ROOT`` counts (any tree,
  e.g. Places365);
* ``tinyimagenet:ROOT``: Tiny-ImageNet-200 (train, and its labeled val set as ``test``);
* ``digits[:size=32,test=0.25,seed=0]``: scikit-learn's 8x8 digits upscaled to RGB, a seeded
  stratified hold-out as ``test``;
* ``synthetic[:ids=..,per_id=..,size=32,seed=..,test_per_id=..]``: synthetic identities as
  classes (``facekd.data.synthetic``); ``test`` holds further photos (``test_per_id``, default
  per_id // 4) of the same identities; as a pool, identities of the unlabeled namespace.

``open_classification(spec, split)`` gives a labeled ``ImageDataset`` (samples are the dicts
``collate_samples`` and the loaders expect); ``open_classification_pool(spec)`` an unlabeled
one (label -1, source 1). ``classification_transform(role)`` builds the matching augmentation:
``train`` (resize, pad-4 random crop, flip), ``eval`` (resize) and ``unlabeled`` (resize +
flip, as the SRD paper treats its Tiny-ImageNet / Places365 pools), all CIFAR-normalised.
"""
from __future__ import annotations

from os import PathLike
from pathlib import Path
from typing import Any, Callable, Sequence

import albumentations as A
import numpy as np
from albumentations.pytorch import ToTensorV2

from facekd.data.datasets import ImageDataset
from facekd.data.errors import DataFormatError
from facekd.data.sources import (DATA_SOURCES, SPLITS, ImageSource, OpenRequest, register_source, resolve_source,
                                 source_examples)
from facekd.data.transforms import CIFAR_MEAN, CIFAR_STD, ImageTransform, build_transform, register_transform

__all__ = [
    "SPLITS", "DataSpecError", "register_source",
    "parse_classification_spec", "parse_options", "need_root", "open_classification_source", "open_classification",
    "open_classification_pool", "open_evaluation_data", "align_classes", "ClassSubset", "Relabeled",
    "limit_per_class", "classification_transform", "TRANSFORM_ROLES", "class_names",
]


class DataSpecError(ValueError):
    """A data spec that cannot be understood (unknown kind, bad option, missing folder argument);
    the message shows the accepted forms."""


# ----------------------------------------------------------------------------- source wrappers
class ClassSubset:
    """The rows ``rows`` of a labeled source (same classes), e.g. a few labeled images per class."""

    def __init__(self, source: ImageSource, rows: Sequence[int] | np.ndarray) -> None:
        self.source = source
        self.rows = np.asarray(rows, dtype=np.int64)
        self.labels = np.asarray(source.labels, dtype=np.int64)[self.rows]  # type: ignore[attr-defined]
        self.classes = class_names(source)

    def __repr__(self) -> str:
        return f"ClassSubset({len(self)} of {self.source!r})"

    def __len__(self) -> int:
        return int(self.rows.size)

    @property
    def num_classes(self) -> int:
        """Classes of the underlying source (all of them, even those left without a sample)."""
        return int(self.source.num_classes)

    def read(self, i: int) -> tuple[np.ndarray, int]:
        """(RGB uint8, label) of subset row ``i``."""
        return self.source.read(int(self.rows[i]))


class Relabeled:
    """A labeled source whose labels are mapped through ``mapping`` (its label -> new label)
    into ``classes``: aligns a test folder's classes with the training folder's."""

    def __init__(self, source: ImageSource, mapping: np.ndarray, classes: Sequence[str]) -> None:
        self.source = source
        self.mapping = np.asarray(mapping, dtype=np.int64)
        self.classes = list(classes)
        self.labels = self.mapping[np.asarray(source.labels, dtype=np.int64)]  # type: ignore[attr-defined]

    def __repr__(self) -> str:
        return f"Relabeled({self.source!r} onto {len(self.classes)} classes)"

    def __len__(self) -> int:
        return len(self.source)

    @property
    def num_classes(self) -> int:
        """Number of target classes."""
        return len(self.classes)

    def read(self, i: int) -> tuple[np.ndarray, int]:
        """(RGB uint8, mapped label) of image ``i``."""
        image, label = self.source.read(i)
        return image, int(self.mapping[label])


def class_names(source: object) -> list[str]:
    """The class names of a source (its ``classes``), or "0".."K-1" when it has none."""
    names = getattr(source, "classes", None)
    if names is None:
        return [str(k) for k in range(int(getattr(source, "num_classes", 0)))]
    return [str(n) for n in names]


def align_classes(source: ImageSource, classes: Sequence[str], where: object = "") -> ImageSource:
    """``source`` with its labels renumbered to index ``classes`` by class name (unchanged when its
    names already are ``classes``); a class of ``source`` missing from ``classes`` is an error."""
    own = class_names(source)
    wanted = [str(c) for c in classes]
    if own == wanted:
        return source
    index = {name: k for k, name in enumerate(wanted)}
    missing = [name for name in own if name not in index]
    if missing:
        raise DataFormatError(str(where or getattr(source, "root", "<data>")),
                              f"class(es) {missing[:5]} of the evaluation data are not among the "
                              f"{len(wanted)} training classes")
    return Relabeled(source, np.array([index[name] for name in own], np.int64), wanted)


def limit_per_class(source: ImageSource, per_class: int, seed: int = 0) -> ClassSubset:
    """At most ``per_class`` images of every class, chosen by ``seed`` (a semi-supervised setting
    with few labels); rows keep their order in the source."""
    if per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}")
    labels = np.asarray(source.labels, dtype=np.int64)  # type: ignore[attr-defined]
    rng = np.random.default_rng([int(seed), 17])
    keep = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in np.unique(labels)]
    return ClassSubset(source, np.sort(np.concatenate(keep)) if keep else np.empty(0, np.int64))


# ----------------------------------------------------------------------------- specs
def parse_classification_spec(spec: str | PathLike[str]) -> tuple[str, str]:
    """(kind, argument) of ``kind[:argument]`` among the ``classify`` sources of the data-source
    registry; a bare existing folder is ``folder:<it>``."""
    found = resolve_source(spec, ("classify",))
    if found is None:
        raise DataSpecError(f"unknown classification data {str(spec).strip()!r}; expected one of: "
                            f"{source_examples('classify')}")
    entry, argument = found
    return entry.name, argument


def parse_options(spec: str, argument: str, casts: dict[str, type]) -> dict[str, Any]:
    """``key=value,...`` of a spec's argument, cast by ``casts`` (unknown keys name the valid ones)."""
    out: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in argument.split(","))):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep:
            raise DataSpecError(f"{spec!r}: expected key=value, got {item!r}")
        if key not in casts:
            raise DataSpecError(f"{spec!r}: unknown key {key!r}; valid keys: {', '.join(sorted(casts))}")
        try:
            out[key] = casts[key](value.strip())
        except ValueError:
            raise DataSpecError(f"{spec!r}: {key} must be {casts[key].__name__}, got {value!r}") from None
    return out


def need_root(kind: str, argument: str) -> Path:
    """The folder argument of a ``kind:ROOT`` spec; a DataSpecError showing the form when it is missing."""
    if not argument:
        example = DATA_SOURCES.entry(kind, "classify").meta["example"]
        raise DataSpecError(f"{kind} needs a folder: {example}")
    return Path(argument).expanduser()


def open_classification_source(spec: str | PathLike[str], split: str = "train",
                               unlabeled: bool = False) -> ImageSource:
    """The reader (``len``, ``num_classes``, ``labels``, ``read``) for one split of ``spec``;
    ``unlabeled`` asks for the images meant as an unlabeled pool (training images, or every
    image of a folder tree)."""
    if split not in SPLITS:
        raise DataSpecError(f"split must be one of {SPLITS}, got {split!r}")
    kind, argument = parse_classification_spec(spec)
    return DATA_SOURCES.get(kind, "classify")(argument, OpenRequest(split=split, unlabeled=unlabeled))


def open_classification(spec: str | PathLike[str], split: str = "train",
                        transform: Callable[[np.ndarray], Any] | None = None, *, per_class: int | None = None,
                        subset_seed: int = 0, on_corrupt: str = "skip") -> ImageDataset:
    """A labeled ``ImageDataset`` of one split of ``spec`` (see the module docstring); with
    ``per_class``, at most that many images of each class (chosen by ``subset_seed``).
    ``transform`` None means the ``eval`` pipeline."""
    source = open_classification_source(spec, split)
    if per_class is not None:
        source = limit_per_class(source, per_class, subset_seed)
    if transform is None:
        transform = classification_transform("eval")
    return ImageDataset(source, transform, on_corrupt)


def open_evaluation_data(spec: str | PathLike[str], transform: Callable[[np.ndarray], Any] | None = None, *,
                         classes: Sequence[str] | None = None, on_corrupt: str = "skip") -> ImageDataset:
    """Evaluation data given on its own: the ``test`` split of ``spec``, except that a folder spec
    without ``train/`` is read whole. ``classes`` (the training class names) renumbers its labels
    by name, so a test tree missing some classes still scores against the right ones."""
    kind, argument = parse_classification_spec(spec)
    whole = kind == "folder" and not (Path(argument).expanduser() / "train").is_dir()
    source = open_classification_source(spec, "train" if whole else "test")
    if classes is not None:
        source = align_classes(source, classes, argument or spec)
    if transform is None:
        transform = classification_transform("eval")
    return ImageDataset(source, transform, on_corrupt)


def open_classification_pool(spec: str | PathLike[str], transform: Callable[[np.ndarray], Any] | None = None,
                             on_corrupt: str = "skip") -> ImageDataset:
    """An unlabeled ``ImageDataset`` (labels -1, source 1) over the pool images of ``spec``;
    ``transform`` None means the ``unlabeled`` pipeline (resize to 32 + flip)."""
    source = open_classification_source(spec, "train", unlabeled=True)
    if transform is None:
        transform = classification_transform("unlabeled")
    return ImageDataset(source, transform, on_corrupt, unlabeled=True)


# ----------------------------------------------------------------------------- transforms
def _steps_tail() -> list[A.BasicTransform]:
    return [A.Normalize(mean=CIFAR_MEAN, std=CIFAR_STD, max_pixel_value=255.0), ToTensorV2()]


def _resize(size: int) -> A.BasicTransform:
    if int(size) < 8:
        raise ValueError(f"image size must be >= 8 px, got {size}")
    return A.Resize(int(size), int(size), area_for_downscale="image")


def _compose(steps: list[A.BasicTransform], seed: int | None) -> A.Compose:
    return A.Compose(steps, seed=seed, save_applied_params=True)


@register_transform("classify")
def classify_train_transform(size: int = 32, padding: int = 4, flip: float = 0.5,
                             seed: int | None = 0) -> ImageTransform:
    """Training pipeline for any image size: resize to ``size`` (a no-op at that size), then the
    CIFAR recipe: zero-pad ``padding``, random crop, flip, CIFAR-100 mean/std."""
    steps = [_resize(size), A.PadIfNeeded(size + 2 * padding, size + 2 * padding, border_mode=0, fill=0),
             A.RandomCrop(size, size), A.HorizontalFlip(p=flip)]
    return ImageTransform(_compose(steps + _steps_tail(), seed), "classify")


@register_transform("classify_eval")
def classify_eval_transform(size: int = 32, seed: int | None = 0) -> ImageTransform:
    """Evaluation pipeline for any image size: resize to ``size``, CIFAR-100 mean/std."""
    return ImageTransform(_compose([_resize(size)] + _steps_tail(), seed), "classify_eval")


@register_transform("classify_unlabeled")
def classify_unlabeled_transform(size: int = 32, flip: float = 0.5, seed: int | None = 0) -> ImageTransform:
    """Unlabeled-pool pipeline of the SRD paper: resize to ``size`` + flip, CIFAR-100 mean/std
    (only flips are random, so a teacher-feature cache stays valid)."""
    steps = [_resize(size), A.HorizontalFlip(p=flip)]
    return ImageTransform(_compose(steps + _steps_tail(), seed), "classify_unlabeled")


TRANSFORM_ROLES = {"train": "classify", "eval": "classify_eval", "unlabeled": "classify_unlabeled"}


def classification_transform(role: str, size: int = 32, seed: int | None = 0, **knobs: Any) -> ImageTransform:
    """The pipeline for ``role`` (``train``, ``eval`` or ``unlabeled``) at ``size`` px; ``knobs``
    go to the builder (``flip``, ``padding``)."""
    try:
        name = TRANSFORM_ROLES[role]
    except KeyError:
        raise ValueError(f"transform role must be one of {sorted(TRANSFORM_ROLES)}, got {role!r}") from None
    return build_transform(name, size=size, seed=seed, **knobs)
