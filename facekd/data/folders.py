"""Face images stored as plain files: one sub-folder per identity, or any tree of images.

``ImageFolderFaces(root)`` reads ``root/<identity>/<image>`` (identities sorted by name get
labels 0..K-1); ``ImageFiles(root)`` lists every image under a tree, labels ignored (for
unlabeled pools). Files whose extension is not an image are skipped and counted (one warning);
hidden files and folders are ignored. Reading goes through the shared codec, so a corrupt
file raises ``DataFormatError`` naming it.
"""
from __future__ import annotations

from os import PathLike
from pathlib import Path

import numpy as np

from facekd.data.errors import DataFileNotFoundError, DataFormatError
from facekd.data.image_codec import decode_image
from facekd.log import get_logger

__all__ = ["IMAGE_EXTENSIONS", "ImageFolderFaces", "ImageFiles", "is_image_file", "read_image_file"]

log = get_logger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})


def is_image_file(path: Path) -> bool:
    """Whether ``path`` has an image extension (case-insensitive)."""
    return path.suffix.lower() in IMAGE_EXTENSIONS


def read_image_file(path: Path) -> np.ndarray:
    """Decode one image file to RGB uint8; unreadable or corrupt -> DataFormatError naming it."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise DataFormatError(path, f"cannot read image file: {err.strerror or err}") from err
    return decode_image(data, path)


def _visible(path: Path) -> bool:
    return not path.name.startswith(".")


ALIGN_RECORDS = frozenset({"manifest.jsonl", "align_summary.json"})
"""What ``facekd.data_prep.align`` writes at the top of its output folder: expected, not warned about."""


def _warn_skipped(root: Path, skipped: list[Path]) -> None:
    skipped = [p for p in skipped if not (p.parent == root and p.name in ALIGN_RECORDS)]
    if skipped:
        examples = ", ".join(str(p.relative_to(root)) for p in skipped[:3])
        log.warning("%s: skipped %d non-image file(s) (e.g. %s)", root, len(skipped), examples)


def _require_dir(root: Path, what: str) -> None:
    if not root.exists():
        raise DataFileNotFoundError(root, what)
    if not root.is_dir():
        raise DataFormatError(root, f"expected a folder ({what}), found a file")


class ImageFolderFaces:
    """Labeled faces in ``root/<identity>/<image>``: ``read(i) -> (RGB uint8, label)``.

    ``classes`` are the sorted identity folder names, ``labels`` an int64 array, ``paths`` the
    image files; ``skipped_files`` counts non-image files left out. An identity folder with no
    image, or a root without identity folders, raises ``DataFormatError``.
    """

    def __init__(self, root: str | PathLike[str]) -> None:
        self.root = Path(root)
        _require_dir(self.root, "image folder dataset (one sub-folder per identity)")
        entries = sorted(p for p in self.root.iterdir() if _visible(p))
        class_dirs = [p for p in entries if p.is_dir()]
        skipped = [p for p in entries if not p.is_dir()]
        if not class_dirs:
            loose = sum(1 for p in skipped if is_image_file(p))
            hint = f" ({loose} images lie directly in it)" if loose else ""
            raise DataFormatError(self.root, f"no identity sub-folders{hint}; expected "
                                             f"root/<identity>/<image> with one folder per identity")
        self.classes: list[str] = []
        paths: list[Path] = []
        labels: list[int] = []
        for label, folder in enumerate(class_dirs):
            files = sorted(p for p in folder.iterdir() if _visible(p))
            images = [p for p in files if p.is_file() and is_image_file(p)]
            skipped += [p for p in files if p not in images]
            if not images:
                raise DataFormatError(folder, f"identity folder has no images ({len(files)} other entries); "
                                              f"remove it or add images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
            self.classes.append(folder.name)
            paths += images
            labels += [label] * len(images)
        self.paths = paths
        self.labels = np.asarray(labels, dtype=np.int64)
        self.skipped_files = len(skipped)
        _warn_skipped(self.root, skipped)

    def __repr__(self) -> str:
        return f"ImageFolderFaces({self.root}: {len(self)} images, {self.num_classes} identities)"

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def num_classes(self) -> int:
        """Number of identity folders."""
        return len(self.classes)

    def read(self, i: int) -> tuple[np.ndarray, int]:
        """(RGB uint8 HxWx3, label) of image ``i``."""
        return read_image_file(self.paths[i]), int(self.labels[i])


class ImageFiles:
    """Every image file under ``root`` (recursively, sorted): ``read(i) -> (RGB uint8, -1)``.

    For unlabeled pools: folder structure and names carry no label. An empty tree raises
    ``DataFormatError``.
    """

    def __init__(self, root: str | PathLike[str]) -> None:
        self.root = Path(root)
        _require_dir(self.root, "folder of images")
        paths: list[Path] = []
        skipped: list[Path] = []
        for path in sorted(self.root.rglob("*")):
            rel = path.relative_to(self.root)
            if any(part.startswith(".") for part in rel.parts) or not path.is_file():
                continue
            (paths if is_image_file(path) else skipped).append(path)
        if not paths:
            raise DataFormatError(self.root, f"no image files found under this folder "
                                             f"({len(skipped)} other files)")
        self.paths = paths
        self.skipped_files = len(skipped)
        _warn_skipped(self.root, skipped)

    def __repr__(self) -> str:
        return f"ImageFiles({self.root}: {len(self)} images)"

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def num_classes(self) -> int:
        """Always 0: these images carry no labels."""
        return 0

    @property
    def labels(self) -> np.ndarray:
        """-1 for every image."""
        return np.full(len(self.paths), -1, dtype=np.int64)

    def read(self, i: int) -> tuple[np.ndarray, int]:
        """(RGB uint8 HxWx3, -1) of image ``i``."""
        return read_image_file(self.paths[i]), -1
