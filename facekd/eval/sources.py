"""Embedding sources for identification: .npy embeddings with labels, .rec datasets, image folders.

``load_embeddings(path, model=...)`` returns an ``EmbeddingSet`` (embeddings, labels or None). Image
sources (a RecordIO dataset or a folder with one sub-folder per identity) are embedded with the
model; ``.npy`` arrays are read as they are, their labels from ``labels_path`` or a sibling file
``<stem>_labels.npy`` / ``<stem>.labels.npy``. Sources are those of the data-source registry
(``facekd.data.sources``): ``embeddings`` sources (``npy:``) and ``face`` image sources (``rec:``,
``folder:``...), by prefix or, for a bare path, by detection.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from facekd.data.formats.npy import sibling_labels
from facekd.data.sources import OpenRequest, resolve_source, source_examples, split_spec
from facekd.eval.embed import DEFAULT_BATCH_SIZE, embed_dataset

__all__ = ["EVAL_KINDS", "EmbeddingSourceError", "EmbeddingSet", "source_kind", "sibling_labels", "load_embeddings",
           "match_labels_by_name"]

EVAL_KINDS = ("embeddings", "face")
"""The data-source kinds an evaluation source may be: precomputed embeddings first, then face images."""


class EmbeddingSourceError(ValueError):
    """A gallery/probe/distractor source that cannot be read; the message names the path."""


@dataclass
class EmbeddingSet:
    """Embeddings [N, D], their integer labels (or None) and, for image folders, the identity name
    of each label (``names[label]``) so that labels of different folders can be matched by name."""

    embeddings: np.ndarray
    labels: np.ndarray | None
    names: Sequence[str] | None = None


def source_kind(path: Path) -> str:
    """The data source a bare evaluation path resolves to (``npy``, ``rec``, ``folder``...; "" for none)."""
    found = resolve_source(path, EVAL_KINDS)
    return found[0].name if found is not None else ""


def load_embeddings(path: str | Path, model: Any = None, labels_path: str | Path | None = None,
                    batch_size: int = DEFAULT_BATCH_SIZE, desc: str = "embedding") -> EmbeddingSet:
    """Embeddings and labels (None when unknown) of an ``embeddings`` source (``npy``: read as it is)
    or a ``face`` image source (``rec``, ``folder``...: embedded with ``model``), by prefix or detection."""
    prefix, argument = split_spec(path)
    src = Path(argument)
    if not prefix and not src.exists():
        raise EmbeddingSourceError(f"{src}: no such file or folder ({desc})")
    found = resolve_source(path, EVAL_KINDS)
    if found is None:
        raise EmbeddingSourceError(f"{path}: not an evaluation source ({desc}); expected "
                                   f"{source_examples('embeddings')}, {source_examples('face')}")
    entry, argument = found
    opened = entry.value(argument, OpenRequest())
    if "embeddings" in entry.kinds:
        try:
            emb, labels = opened.load(Path(labels_path) if labels_path else None)
        except ValueError as err:
            raise EmbeddingSourceError(str(err)) from err
        return EmbeddingSet(emb, labels)
    if model is None:
        raise EmbeddingSourceError(f"{src}: an image source needs a model to embed it (pass --model)")
    emb, labels = embed_dataset(model, opened, batch_size=batch_size, desc=desc)
    names = getattr(opened, "classes", None)
    return EmbeddingSet(emb, labels, list(names) if names is not None else None)


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
