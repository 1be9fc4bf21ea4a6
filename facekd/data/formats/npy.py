"""``npy:PATH``: precomputed embeddings [N, D] for evaluation, with labels from a given file or a
sibling ``<stem>_labels.npy`` / ``<stem>.labels.npy`` (none: unlabeled)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facekd.data.sources import OpenRequest, register_source


class EmbeddingFileError(ValueError):
    """An embeddings or labels .npy that cannot be read; the message names the path."""


def sibling_labels(path: Path) -> Path | None:
    """The labels file stored next to an embeddings .npy, if any."""
    for candidate in (path.with_name(path.stem + "_labels.npy"), path.with_name(path.stem + ".labels.npy")):
        if candidate.is_file():
            return candidate
    return None


@dataclass(frozen=True)
class EmbeddingFile:
    """An embeddings .npy; ``load(labels_path)`` reads (embeddings, labels or None)."""

    path: Path

    def load(self, labels_path: Path | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """(embeddings, labels) with labels from ``labels_path``, else the sibling file, else None."""
        if not self.path.is_file():
            raise EmbeddingFileError(f"{self.path}: no such embeddings file")
        try:
            emb = np.load(self.path, allow_pickle=False)
        except ValueError as err:
            raise EmbeddingFileError(f"{self.path}: not a plain numeric .npy array ({err})") from err
        labels_file = labels_path or sibling_labels(self.path)
        if labels_file is None:
            return emb, None
        if not labels_file.is_file():
            raise EmbeddingFileError(f"{labels_file}: labels file not found (for {self.path})")
        return emb, np.load(labels_file, allow_pickle=False)


@register_source("npy", kinds=("embeddings",), example="npy:EMBEDDINGS.npy", detect=lambda p: p.suffix == ".npy")
def open_npy(argument: str, request: OpenRequest) -> EmbeddingFile:
    """The embeddings file (read by ``EmbeddingFile.load``)."""
    return EmbeddingFile(Path(argument))
