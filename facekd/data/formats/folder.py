"""``folder:ROOT``: an image folder tree, ``ROOT/<identity or class>/<image>``; as an unlabeled pool
every image under ``ROOT`` counts (any tree, folder names are not labels).

For classification, when ``ROOT/train/`` exists the splits are ``ROOT/train`` and ``ROOT/test``
(or ``ROOT/val``), test classes matched to the training classes by name.
"""
from __future__ import annotations

from pathlib import Path

from facekd.data.errors import DataFileNotFoundError, DataFormatError
from facekd.data.sources import ImageSource, OpenRequest, register_source


def _is_folder(path: Path) -> bool:
    """Any existing directory (tried last among bare paths)."""
    return path.is_dir()


@register_source("folder", kinds=("face",), example="folder:ROOT (ROOT/<identity>/<image>)", detect=_is_folder)
def open_face_folder(argument: str, request: OpenRequest) -> ImageSource:
    """``ImageFolderFaces`` (one sub-folder per identity), or ``ImageFiles`` for an unlabeled pool."""
    from facekd.data.folders import ImageFiles, ImageFolderFaces

    return ImageFiles(argument) if request.unlabeled else ImageFolderFaces(argument)


def folder_split(root: Path, split: str) -> Path:
    """The folder of ``split``: ``ROOT/train`` and ``ROOT/test`` (or ``val``) when ``ROOT/train`` exists,
    else ``ROOT`` itself for ``train`` (a ``test`` split is then an error)."""
    if not (root / "train").is_dir():
        if split == "train":
            return root
        raise DataFormatError(root, f"no '{split}' split: a folder spec has one when ROOT holds train/ and test/ "
                                    f"(or val/) sub-folders; otherwise give the evaluation data separately")
    if split == "train":
        return root / "train"
    for name in ("test", "val"):
        if (root / name).is_dir():
            return root / name
    raise DataFileNotFoundError(root / "test", "test (or val) split folder beside train/")


@register_source("folder", kinds=("classify",), example="folder:ROOT", detect=_is_folder)
def open_classification_folder(argument: str, request: OpenRequest) -> ImageSource:
    """One split of an ImageFolder tree (test classes aligned to the training classes by name)."""
    from facekd.data.classification import align_classes, need_root
    from facekd.data.folders import ImageFiles, ImageFolderFaces

    root = need_root("folder", argument)
    if request.unlabeled:
        return ImageFiles(root)
    if not root.exists():
        raise DataFileNotFoundError(root, "image folder dataset (ROOT/<class>/<image>)")
    source = ImageFolderFaces(folder_split(root, request.split))
    if request.split == "train" or not (root / "train").is_dir():
        return source
    train_classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir() and not p.name.startswith("."))
    return align_classes(source, train_classes, source.root)
