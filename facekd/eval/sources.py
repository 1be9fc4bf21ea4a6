"""Embedding sources for identification: .npy embeddings with labels, .rec datasets, image folders.

``load_embeddings(path, model=...)`` returns an ``EmbeddingSet`` (embeddings, labels or None). Image
sources (a RecordIO dataset or a folder with one sub-folder per identity) are embedded with the
model; ``.npy`` arrays are read as they are, their labels from ``labels_path`` or a sibling file
``<stem>_labels.npy`` / ``<stem>.labels.npy``. Source kinds live in a small registry.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from facekd.eval.embed import DEFAULT_BATCH_SIZE, embed_dataset


class EmbeddingSourceError(ValueError):
    """A gallery/probe/distractor source that cannot be read; the message names the path."""


@dataclass
class EmbeddingSet:
    """Embeddings [N, D], their integer labels (or None) and, for image folders, the identity name
    of each label (``names[label]``) so that labels of different folders can be matched by name."""

    embeddings: np.ndarray
    labels: np.ndarray | None
    names: Sequence[str] | None = None


SourceLoader = Callable[..., EmbeddingSet]
_SOURCES: dict[str, SourceLoader] = {}


def register_source(kind: str) -> Callable[[SourceLoader], SourceLoader]:
    """Decorator registering a loader ``(path, model, labels_path, batch_size, desc) -> EmbeddingSet``."""
    def wrap(fn: SourceLoader) -> SourceLoader:
        _SOURCES[kind] = fn
        return fn
    return wrap


def source_kind(path: Path) -> str:
    """"npy" for a .npy file, "rec" for a .rec file or a folder holding one, else "folder"."""
    if path.suffix == ".npy":
        return "npy"
    if path.suffix == ".rec" or (path.is_dir() and any(path.glob("*.rec"))):
        return "rec"
    return "folder"


def sibling_labels(path: Path) -> Path | None:
    """The labels file stored next to an embeddings .npy, if any."""
    for candidate in (path.with_name(path.stem + "_labels.npy"), path.with_name(path.stem + ".labels.npy")):
        if candidate.is_file():
            return candidate
    return None


@register_source("npy")
def _load_npy(path: Path, model: Any, labels_path: Path | None, batch_size: int, desc: str) -> EmbeddingSet:
    try:
        emb = np.load(path, allow_pickle=False)
    except ValueError as err:
        raise EmbeddingSourceError(f"{path}: not a plain numeric .npy array ({err})") from err
    labels_file = labels_path or sibling_labels(path)
    labels = None
    if labels_file is not None:
        if not labels_file.is_file():
            raise EmbeddingSourceError(f"{labels_file}: labels file not found (for {path})")
        labels = np.load(labels_file, allow_pickle=False)
    return EmbeddingSet(emb, labels)


def _need_model(path: Path, model: Any) -> None:
    if model is None:
        raise EmbeddingSourceError(f"{path}: an image source needs a model to embed it (pass --model)")


@register_source("rec")
def _load_rec(path: Path, model: Any, labels_path: Path | None, batch_size: int, desc: str) -> EmbeddingSet:
    _need_model(path, model)
    from facekd.data.recordio import MXFaceRecord
    return EmbeddingSet(*embed_dataset(model, MXFaceRecord(path), batch_size=batch_size, desc=desc))


@register_source("folder")
def _load_folder(path: Path, model: Any, labels_path: Path | None, batch_size: int, desc: str) -> EmbeddingSet:
    _need_model(path, model)
    from facekd.data.folders import ImageFolderFaces
    dataset = ImageFolderFaces(path)
    emb, labels = embed_dataset(model, dataset, batch_size=batch_size, desc=desc)
    return EmbeddingSet(emb, labels, list(dataset.classes))


def load_embeddings(path: str | Path, model: Any = None, labels_path: str | Path | None = None,
                    batch_size: int = DEFAULT_BATCH_SIZE, desc: str = "embedding") -> EmbeddingSet:
    """Embeddings and labels (None when unknown) of a .npy file, a .rec dataset or an image folder."""
    src = Path(path)
    if not src.exists():
        raise EmbeddingSourceError(f"{src}: no such file or folder ({desc})")
    return _SOURCES[source_kind(src)](src, model, Path(labels_path) if labels_path else None, batch_size, desc)


def match_labels_by_name(reference: EmbeddingSet, other: EmbeddingSet) -> np.ndarray | None:
    """``other``'s labels re-expressed in ``reference``'s label space by identity name (-1: unknown name).

    Needed when gallery and probes are separate image folders: each numbers its own sub-folders.
    Returns ``other.labels`` unchanged when either side has no names.
    """
    if reference.names is None or other.names is None or other.labels is None:
        return other.labels
    index = {name: i for i, name in enumerate(reference.names)}
    mapping = np.array([index.get(name, -1) for name in other.names], dtype=np.int64)
    return mapping[np.asarray(other.labels, dtype=np.int64)]
