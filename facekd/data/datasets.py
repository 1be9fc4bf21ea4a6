"""Training datasets: open any supported source by name and turn its images into samples.

``open_dataset(spec)`` accepts a RecordIO folder or ``.rec`` file, an image folder tree
(``root/<identity>/<image>``), the word ``synthetic`` or ``synthetic:key=value,...``
(keys: ``ids``, ``per_id``, ``size``, ``seed``, ``first``, ``first_sample`` and the difficulty
knobs of ``facekd.data.synthetic``; e.g. ``synthetic:ids=400,per_id=24,size=32,seed=0``).
Sources are found through a registry (``register_source``), so a new format is one function.

``FaceDataset[i]`` returns a sample dict ``{"image": float CxHxW, "label": int, "index": int,
"flipped": bool, "skipped": int, "source": int}``. Corrupt images follow ``on_corrupt``:
``"skip"`` substitutes the next readable image, counts the replaced ones in ``skipped`` (which
``collate_samples`` sums into ``Batch.num_skipped``, so counts survive worker processes) and
logs once per process; ``"fail"`` raises the ``DataFormatError`` naming file and key.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np
import torch

from facekd.data.batch import LABELED_SOURCE, UNLABELED_SOURCE
from facekd.data.errors import DataFileNotFoundError, DataFormatError
from facekd.data.transforms import apply_transform
from facekd.log import get_logger

__all__ = [
    "FaceSource", "FaceDataset", "SourceOpener", "SOURCES", "register_source", "open_source",
    "open_dataset", "parse_synthetic_spec", "ON_CORRUPT",
]

log = get_logger(__name__)

ON_CORRUPT = ("skip", "fail")


class FaceSource(Protocol):
    """What every reader offers: ``len()``, ``num_classes`` and ``read(i) -> (RGB uint8, label)``."""

    def __len__(self) -> int: ...

    @property
    def num_classes(self) -> int: ...

    def read(self, i: int) -> tuple[np.ndarray, int]: ...


# ----------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class SourceOpener:
    """A registered kind of source: ``matches(spec)`` says whether it handles ``spec``;
    ``open(spec, unlabeled)`` returns the reader (``unlabeled``: for an unlabeled pool)."""

    name: str
    matches: Callable[[str], bool]
    open: Callable[[str, bool], FaceSource]


SOURCES: list[SourceOpener] = []


def register_source(name: str, matches: Callable[[str], bool]
                    ) -> Callable[[Callable[[str, bool], FaceSource]], Callable[[str, bool], FaceSource]]:
    """Decorator registering an opener; the first registered source whose ``matches`` accepts
    a spec opens it."""
    def deco(fn: Callable[[str, bool], FaceSource]) -> Callable[[str, bool], FaceSource]:
        if any(s.name == name for s in SOURCES):
            raise ValueError(f"source {name!r} registered twice")
        SOURCES.append(SourceOpener(name, matches, fn))
        return fn
    return deco


def _is_synthetic(spec: str) -> bool:
    return spec == "synthetic" or spec.startswith("synthetic:")


def _is_recordio(spec: str) -> bool:
    path = Path(spec)
    return (path.is_file() and path.suffix == ".rec") or (path.is_dir() and (path / "train.rec").is_file())


_SYNTHETIC_KEYS: dict[str, tuple[str, type]] = {
    "ids": ("num_identities", int), "num_identities": ("num_identities", int),
    "per_id": ("images_per_identity", int), "images_per_identity": ("images_per_identity", int),
    "size": ("size", int), "seed": ("seed", int),
    "first": ("first_identity", int), "first_identity": ("first_identity", int),
    "first_sample": ("first_sample", int),
}


def parse_synthetic_spec(spec: str) -> dict[str, Any]:
    """Keyword arguments of ``SyntheticFaceDataset`` from ``synthetic[:key=value,...]``
    (defaults: 400 ids x 24 images, 112 px, seed 0)."""
    from facekd.data.synthetic import Difficulty

    knobs = {f.name for f in dataclasses.fields(Difficulty)}
    out: dict[str, Any] = {"num_identities": 400, "images_per_identity": 24, "size": 112, "seed": 0}
    _, _, rest = spec.partition(":")
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep:
            raise ValueError(f"{spec!r}: expected key=value, got {item!r}")
        if key in _SYNTHETIC_KEYS:
            name, cast = _SYNTHETIC_KEYS[key]
        elif key in knobs:
            name, cast = key, float
        else:
            valid = sorted(set(_SYNTHETIC_KEYS) | knobs)
            raise ValueError(f"{spec!r}: unknown synthetic key {key!r}; valid keys: {', '.join(valid)}")
        try:
            out[name] = cast(value.strip())
        except ValueError:
            raise ValueError(f"{spec!r}: {key} must be {cast.__name__}, got {value!r}") from None
    return out


@register_source("synthetic", _is_synthetic)
def _open_synthetic(spec: str, unlabeled: bool) -> FaceSource:
    from facekd.data.synthetic import TRAIN_BASE, UNLABELED_BASE, SyntheticFaceDataset

    kwargs = parse_synthetic_spec(spec)
    kwargs.setdefault("first_identity", UNLABELED_BASE if unlabeled else TRAIN_BASE)
    return SyntheticFaceDataset(**kwargs)


@register_source("recordio", _is_recordio)
def _open_recordio(spec: str, unlabeled: bool) -> FaceSource:
    from facekd.data.recordio import MXFaceRecord

    return MXFaceRecord(spec)


@register_source("folder", lambda spec: Path(spec).is_dir())
def _open_folder(spec: str, unlabeled: bool) -> FaceSource:
    from facekd.data.folders import ImageFiles, ImageFolderFaces

    return ImageFiles(spec) if unlabeled else ImageFolderFaces(spec)


def open_source(spec: str | PathLike[str], unlabeled: bool = False) -> FaceSource:
    """The reader for ``spec`` (see the module docstring), chosen by the source registry."""
    text = str(spec)
    for source in SOURCES:
        if source.matches(text):
            return source.open(text, unlabeled)
    kinds = "a RecordIO folder or .rec file, an image folder, or 'synthetic[:key=value,...]'"
    if not Path(text).exists():
        raise DataFileNotFoundError(text, f"dataset ({kinds})")
    raise DataFormatError(text, f"not a dataset facekd can read; expected {kinds}")


# ----------------------------------------------------------------------------- samples
class FaceDataset(torch.utils.data.Dataset):
    """Samples (dicts, see the module docstring) from a ``FaceSource`` through ``transform``.

    ``unlabeled=True`` turns every label into -1 and marks samples with source 1 (the pool);
    ``transform`` is an ``ImageTransform``, any callable returning a tensor, or None
    (normalisation only). ``max_substitutes`` bounds how many neighbours "skip" tries.
    """

    def __init__(self, source: FaceSource, transform: Callable[[np.ndarray], Any] | None = None,
                 on_corrupt: str = "skip", unlabeled: bool = False, max_substitutes: int = 32) -> None:
        if on_corrupt not in ON_CORRUPT:
            raise ValueError(f"on_corrupt must be one of {ON_CORRUPT}, got {on_corrupt!r}")
        self.source = source
        self.transform = transform
        self.on_corrupt = on_corrupt
        self.unlabeled = unlabeled
        self.source_id = UNLABELED_SOURCE if unlabeled else LABELED_SOURCE
        self.max_substitutes = max_substitutes
        self._warned = False

    def __repr__(self) -> str:
        role = "unlabeled" if self.unlabeled else "labeled"
        return f"FaceDataset({self.source!r}, {role}, transform={self.transform!r}, on_corrupt={self.on_corrupt})"

    def __len__(self) -> int:
        return len(self.source)

    @property
    def num_classes(self) -> int:
        """Number of classes of the source (0 for an unlabeled pool)."""
        return 0 if self.unlabeled else int(self.source.num_classes)

    @property
    def labels(self) -> np.ndarray:
        """int64 label of every sample (-1 throughout for an unlabeled pool)."""
        if self.unlabeled:
            return np.full(len(self), -1, dtype=np.int64)
        return np.asarray(self.source.labels, dtype=np.int64)  # type: ignore[attr-defined]

    def read(self, i: int) -> tuple[np.ndarray, int]:
        """(RGB uint8 HxWx3, label) of sample ``i`` without transform (label -1 when unlabeled)."""
        image, label = self.source.read(i)
        return image, (-1 if self.unlabeled else int(label))

    def reseed(self, seed: int) -> None:
        """Restart the transform's random stream (the loaders call this before every sample with
        that sample's seed, so its augmentation does not depend on worker or order)."""
        reseed = getattr(self.transform, "reseed", None)
        if reseed is not None:
            reseed(seed)

    def __getitem__(self, i: int) -> dict[str, Any]:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"sample index {i} out of range for {n} samples")
        i = int(i) % n
        skipped = 0
        while True:
            j = (i + skipped) % n
            try:
                image, label = self.read(j)
                break
            except DataFormatError as err:
                if self.on_corrupt == "fail":
                    raise
                skipped += 1
                self._note_skip(err)
                if skipped > min(self.max_substitutes, n - 1):
                    raise DataFormatError(err.path, f"{skipped} consecutive samples from index {i} are "
                                                    f"corrupt (last: {err.problem}); giving up", err.key) from err
        tensor, flipped = apply_transform(self.transform, image)
        return {"image": tensor, "label": label, "index": j, "flipped": flipped, "skipped": skipped,
                "source": self.source_id}

    def _note_skip(self, err: DataFormatError) -> None:
        if not self._warned:
            self._warned = True
            log.warning("skipping corrupt sample (%s); it is replaced by the next readable one and further "
                        "skips are only counted (Batch.num_skipped)", err)


def open_dataset(path: str | PathLike[str], transform: Callable[[np.ndarray], Any] | None = None,
                 on_corrupt: str = "skip") -> FaceDataset:
    """A labeled ``FaceDataset`` over a RecordIO folder/.rec, an image folder tree or a
    ``synthetic[:...]`` spec; ``transform`` None means normalisation only."""
    return FaceDataset(open_source(path, unlabeled=False), transform, on_corrupt)
