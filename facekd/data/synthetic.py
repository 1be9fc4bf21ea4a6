"""Synthetic face datasets: facekd's built-in data for the demo, the tests and the benchmarks.

The pictures come from the procedural renderer ``facekd.data.synthetic_render`` (``SyntheticFaces``:
a pure function of ``(seed, identity, sample)``, with difficulty knobs ``Difficulty``); this module
turns them into a training dataset (``SyntheticFaceDataset``), verification pairs
(``make_pairs``), disjoint splits (``synthetic_splits``) and held-out evaluation files
(``export_eval_sets``). The renderer's names are re-exported here.

Identity namespaces: ``synthetic_splits`` (and the ``synthetic`` specs of ``open_dataset`` and
``open_unlabeled``) put each role in its own range of identity ids so that the training set,
the verification pairs, the identification gallery and the unlabeled pool never share an
identity, whatever their sizes: training ids start at 0, unlabeled ids at ``UNLABELED_BASE``,
verification ids at ``VERIFICATION_BASE`` and gallery/probe ids at ``GALLERY_BASE``.

Run ``python -m facekd.data.synthetic --grid docs/synthetic_samples.png`` for a picture.
"""
from __future__ import annotations

from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from facekd.data.synthetic_render import MAX_SIZE, MIN_SIZE, Difficulty, SyntheticFaces, render_grid, write_grid

__all__ = [
    "Difficulty", "SyntheticFaces", "SyntheticFaceDataset", "SyntheticSplits", "synthetic_splits",
    "make_pairs", "write_grid", "render_grid", "export_eval_sets", "main", "MIN_SIZE", "MAX_SIZE",
    "NAMESPACE_SIZE", "TRAIN_BASE", "UNLABELED_BASE", "VERIFICATION_BASE", "GALLERY_BASE",
]

NAMESPACE_SIZE = 1 << 20
TRAIN_BASE = 0
UNLABELED_BASE = 1 * NAMESPACE_SIZE
VERIFICATION_BASE = 2 * NAMESPACE_SIZE
GALLERY_BASE = 3 * NAMESPACE_SIZE


# ----------------------------------------------------------------------------- datasets
class SyntheticFaceDataset:
    """``num_identities`` x ``images_per_identity`` synthetic photos rendered on demand.

    Same interface as ``MXFaceRecord``: ``len()``, ``num_classes``, ``labels`` and
    ``read(i) -> (RGB uint8, label)``; image i shows identity ``first_identity + i // per_id``
    (label ``i // per_id``, 0..K-1) in sample ``first_sample + i % per_id``.
    """

    def __init__(self, num_identities: int, images_per_identity: int, size: int = 112, seed: int = 0,
                 first_identity: int = TRAIN_BASE, first_sample: int = 0, **difficulty: float) -> None:
        if num_identities < 1 or images_per_identity < 1:
            raise ValueError(f"need at least 1 identity and 1 image per identity, got "
                             f"{num_identities} x {images_per_identity}")
        if first_identity < 0 or first_sample < 0:
            raise ValueError("first_identity and first_sample must be >= 0")
        self.faces = SyntheticFaces(seed=seed, size=size, **difficulty)
        self.num_identities = int(num_identities)
        self.images_per_identity = int(images_per_identity)
        self.first_identity = int(first_identity)
        self.first_sample = int(first_sample)
        self.image_shape = (self.faces.size, self.faces.size)

    def __repr__(self) -> str:
        return (f"SyntheticFaceDataset({self.num_identities} ids x {self.images_per_identity}, "
                f"ids {self.first_identity}.., size {self.faces.size}, seed {self.faces.seed})")

    def __len__(self) -> int:
        return self.num_identities * self.images_per_identity

    @property
    def num_classes(self) -> int:
        """Number of identities (labels are 0..num_classes-1)."""
        return self.num_identities

    @property
    def labels(self) -> np.ndarray:
        """int64 label of every image."""
        return np.repeat(np.arange(self.num_identities, dtype=np.int64), self.images_per_identity)

    @property
    def identities(self) -> range:
        """The generator identity ids this dataset draws."""
        return range(self.first_identity, self.first_identity + self.num_identities)

    def identity_of(self, i: int) -> int:
        """Generator identity id of image ``i``."""
        return self.first_identity + self._check(i) // self.images_per_identity

    def _check(self, i: int) -> int:
        n = len(self)
        i = int(i)
        if not -n <= i < n:
            raise IndexError(f"synthetic image index {i} out of range for {n} images")
        return i % n

    def read(self, i: int) -> tuple[np.ndarray, int]:
        """(RGB uint8 HxWx3, label) of image ``i``."""
        i = self._check(i)
        label, sample = divmod(i, self.images_per_identity)
        return self.faces.render(self.first_identity + label, self.first_sample + sample), label


def make_pairs(faces: SyntheticFaces, identities: Sequence[int], num_pairs: int, seed: int = 0,
               folds: int = 10) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Verification pairs in the layout of ``load_bin``: (images 2N x H x W x 3, issame N,
    identity ids 2N). ``identities`` are split into ``folds`` disjoint groups; fold k holds
    ``num_pairs / folds`` consecutive pairs, half genuine then half impostor, of its group only."""
    ids = np.asarray(list(identities), dtype=np.int64)
    if num_pairs % (2 * folds):
        raise ValueError(f"num_pairs must be a multiple of {2 * folds} (balanced pairs in {folds} "
                         f"folds), got {num_pairs}")
    if len(ids) < 2 * folds:
        raise ValueError(f"need at least {2 * folds} identities for {folds} folds of disjoint "
                         f"identities, got {len(ids)}")
    rng = np.random.default_rng([int(seed), 77])
    per_fold = num_pairs // folds
    half = per_fold // 2
    used: dict[int, int] = {}

    def next_sample(identity: int) -> int:
        used[identity] = used.get(identity, 0) + 1
        return used[identity] - 1

    pair_ids: list[tuple[int, int]] = []
    issame: list[bool] = []
    for group in np.array_split(ids, folds):
        for j in range(half):
            a = int(group[j % len(group)])
            pair_ids.append((a, a))
            issame.append(True)
        for _ in range(half):
            a, b = rng.choice(group, size=2, replace=False)
            pair_ids.append((int(a), int(b)))
            issame.append(False)
    flat = [x for pair in pair_ids for x in pair]
    images = np.empty((len(flat), faces.size, faces.size, 3), np.uint8)
    for k, identity in enumerate(flat):
        images[k] = faces.render(identity, next_sample(identity))
    return images, np.asarray(issame, dtype=bool), np.asarray(flat, dtype=np.int64)


@dataclass
class SyntheticSplits:
    """Disjoint synthetic splits: a labeled training set, verification pairs (``load_bin``
    layout: ``pair_images`` 2N x H x W x 3 and ``issame`` N, in 10 folds of disjoint identities),
    a gallery/probe split for identification (non-mated probes labelled -1) and an unlabeled
    pool. ``identities`` maps each role to the generator identity ids it uses."""

    train: SyntheticFaceDataset
    pair_images: np.ndarray
    issame: np.ndarray
    pair_identities: np.ndarray
    gallery_images: np.ndarray
    gallery_labels: np.ndarray
    probe_images: np.ndarray
    probe_labels: np.ndarray
    unlabeled: SyntheticFaceDataset | None
    identities: dict[str, range]

    def save_pairs(self, path: str | PathLike[str]) -> Path:
        """Write the verification pairs as an insightface-style .bin (PNG, lossless)."""
        from facekd.data.verification_bin import save_bin
        return save_bin(path, self.pair_images, self.issame, fmt=".png")


def synthetic_splits(num_train_ids: int = 400, images_per_id: int = 24, num_val_ids: int = 150,
                     num_pairs: int = 3000, num_gallery_ids: int = 100, num_unlabeled_ids: int = 400,
                     size: int = 32, seed: int = 0, *, gallery_per_id: int = 1, probes_per_id: int = 2,
                     num_nonmated_ids: int | None = None, unlabeled_per_id: int | None = None,
                     **difficulty: float) -> SyntheticSplits:
    """Build ``SyntheticSplits`` whose roles use disjoint identity ranges (see the module's
    "identity namespaces"); non-mated probes default to half as many ids as the gallery."""
    for name, value, base in (("num_train_ids", num_train_ids, TRAIN_BASE),
                              ("num_unlabeled_ids", num_unlabeled_ids, UNLABELED_BASE),
                              ("num_val_ids", num_val_ids, VERIFICATION_BASE)):
        if not 0 <= value <= NAMESPACE_SIZE:
            raise ValueError(f"{name} must be in 0..{NAMESPACE_SIZE}, got {value}")
    nonmated = num_gallery_ids // 2 if num_nonmated_ids is None else int(num_nonmated_ids)
    if num_gallery_ids + nonmated > NAMESPACE_SIZE:
        raise ValueError("too many gallery + non-mated identities")
    faces = SyntheticFaces(seed=seed, size=size, **difficulty)
    train = SyntheticFaceDataset(num_train_ids, images_per_id, size, seed, first_identity=TRAIN_BASE,
                                 **difficulty)
    val_ids = range(VERIFICATION_BASE, VERIFICATION_BASE + num_val_ids)
    if num_pairs:
        pair_images, issame, pair_ids = make_pairs(faces, val_ids, num_pairs, seed)
    else:
        pair_images = np.empty((0, size, size, 3), np.uint8)
        issame, pair_ids = np.empty(0, bool), np.empty(0, np.int64)
    gallery_ids = range(GALLERY_BASE, GALLERY_BASE + num_gallery_ids)
    nonmated_ids = range(gallery_ids.stop, gallery_ids.stop + nonmated)
    g_imgs, g_labels, p_imgs, p_labels = [], [], [], []
    for label, identity in enumerate(gallery_ids):
        for k in range(gallery_per_id):
            g_imgs.append(faces.render(identity, k))
            g_labels.append(label)
        for k in range(probes_per_id):
            p_imgs.append(faces.render(identity, gallery_per_id + k))
            p_labels.append(label)
    for identity in nonmated_ids:
        p_imgs.append(faces.render(identity, 0))
        p_labels.append(-1)

    def stack(images: list[np.ndarray]) -> np.ndarray:
        return np.stack(images) if images else np.empty((0, size, size, 3), np.uint8)

    unlabeled = None
    if num_unlabeled_ids:
        unlabeled = SyntheticFaceDataset(num_unlabeled_ids, unlabeled_per_id or images_per_id, size, seed,
                                         first_identity=UNLABELED_BASE, **difficulty)
    return SyntheticSplits(
        train=train, pair_images=pair_images, issame=issame, pair_identities=pair_ids,
        gallery_images=stack(g_imgs), gallery_labels=np.asarray(g_labels, np.int64),
        probe_images=stack(p_imgs), probe_labels=np.asarray(p_labels, np.int64), unlabeled=unlabeled,
        identities={"train": train.identities, "verification": val_ids, "gallery": gallery_ids,
                    "nonmated": nonmated_ids,
                    "unlabeled": unlabeled.identities if unlabeled is not None else range(UNLABELED_BASE, UNLABELED_BASE)})


def export_eval_sets(out_dir: str | PathLike[str], size: int = 32, seed: int = 0, num_val_ids: int = 150,
                     num_pairs: int = 3000, num_gallery_ids: int = 100, probes_per_id: int = 2,
                     **difficulty: float) -> dict[str, Path]:
    """Write held-out evaluation data of identities never used for training, as a user's real data
    would look: ``synthetic_val.bin`` (insightface verification .bin, 10 folds of disjoint
    identities) and ``gallery/`` + ``probes/`` image folders (one sub-folder per identity, PNG;
    probes of identities without a gallery folder are non-mated) for ``facekd.eval.identify``."""
    splits = synthetic_splits(num_train_ids=1, images_per_id=1, num_val_ids=num_val_ids, num_pairs=num_pairs,
                              num_gallery_ids=num_gallery_ids, num_unlabeled_ids=0, size=size, seed=seed,
                              probes_per_id=probes_per_id, **difficulty)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"bin": splits.save_pairs(out / "synthetic_val.bin"), "gallery": out / "gallery", "probes": out / "probes"}
    gallery_names = [f"id{identity}" for identity in splits.identities["gallery"]]
    nonmated = iter(f"id{identity}" for identity in splits.identities["nonmated"])
    counts: dict[str, int] = {}

    def write(folder: Path, name: str, image: np.ndarray) -> None:
        target = folder / name
        target.mkdir(parents=True, exist_ok=True)
        k = counts.setdefault(f"{folder.name}/{name}", 0)
        counts[f"{folder.name}/{name}"] = k + 1
        if not cv2.imwrite(str(target / f"{k}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
            raise OSError(f"{target / f'{k}.png'}: OpenCV could not write the PNG")

    for image, label in zip(splits.gallery_images, splits.gallery_labels):
        write(paths["gallery"], gallery_names[label], image)
    for image, label in zip(splits.probe_images, splits.probe_labels):
        write(paths["probes"], gallery_names[label] if label >= 0 else next(nonmated), image)
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    """Command line of ``facekd.data.synthetic_cli``: a PNG grid and/or held-out evaluation sets."""
    from facekd.data.synthetic_cli import main as cli_main
    return cli_main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
