"""Cheap fingerprints that cover every sample of a training source (for the teacher-feature cache).

A cache of teacher embeddings is only valid for the exact images it was computed on. Reading
millions of images to check that would cost as much as rebuilding, so each kind of source is
fingerprinted by what it already holds in memory or can stat cheaply:

* RecordIO: SHA-256 of the index (every key and offset, in key order), the ``.rec`` size, and
  SHA-256 of the labels of every image; a replaced, added, removed or reordered record moves
  offsets or the size;
* image folders: SHA-256 of the sorted (relative path, size, mtime_ns) of every file, and of
  the labels; an edited, renamed or added file changes it;
* synthetic identities: the full generator spec (counts, size, seed, offsets, difficulty knobs);
* anything else: SHA-256 of every sample's pixels and label (slow, exact).

Every kind also hashes the pixels and labels of a few evenly spaced samples (``PROBES``), which
catches a generator or decoder change. ``dataset_fingerprint`` returns a flat dict whose fields
are compared one by one, so a refusal can say *what* changed.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from facekd.data.errors import DataFormatError

__all__ = ["PROBES", "dataset_fingerprint", "describe_change"]

PROBES = 4
"""Samples whose pixels every fingerprint hashes (evenly spaced, first and last included)."""

_MEANINGS = {
    "kind": "the kind of source",
    "length": "the number of images",
    "num_classes": "the number of classes",
    "unlabeled": "labeled set vs unlabeled pool",
    "index": "the RecordIO index (keys/offsets: records replaced, reordered, added or removed)",
    "rec_size": "the size of the .rec file",
    "files": "the image files (relative path, size or modification time)",
    "labels": "the labels",
    "spec": "the synthetic data spec",
    "pixels": "the pixels of the images",
    "probe": "the pixels of sampled images",
}


def _sha(*parts: bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part)
    return digest.hexdigest()


def _labels_hash(labels: Any) -> str:
    return _sha(np.ascontiguousarray(np.asarray(labels, dtype=np.int64)).tobytes())


def _pixels(digest: Any, dataset: Any, i: int) -> None:
    try:
        image, label = dataset.read(i)
    except DataFormatError:
        digest.update(f"{i}:corrupt".encode())
        return
    arr = np.ascontiguousarray(image)
    digest.update(f"{i}:{arr.shape}:{arr.dtype}:{int(label)}".encode())
    digest.update(arr.tobytes())


def _probe(dataset: Any, n: int) -> str:
    digest = hashlib.sha256()
    for i in sorted({int(k) for k in np.linspace(0, n - 1, num=min(PROBES, n))}) if n else []:
        _pixels(digest, dataset, i)
    return digest.hexdigest()


def _recordio(source: Any) -> dict[str, Any]:
    reader = source.reader
    return {"kind": "recordio",
            "index": _sha(np.ascontiguousarray(reader.keys, dtype=np.int64).tobytes(),
                          np.ascontiguousarray(reader._offsets, dtype=np.int64).tobytes()),
            "rec_size": int(reader.size), "labels": _labels_hash(source.labels)}


def _files(root: Path, paths: list[Path], labels: Any, kind: str) -> dict[str, Any]:
    digest = hashlib.sha256()
    for path in sorted(paths):
        st = os.stat(path)
        digest.update(f"{path.relative_to(root).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return {"kind": kind, "files": digest.hexdigest(), "labels": _labels_hash(labels)}


def _synthetic(source: Any) -> dict[str, Any]:
    spec = {"num_identities": source.num_identities, "images_per_identity": source.images_per_identity,
            "size": source.faces.size, "seed": source.faces.seed, "first_identity": source.first_identity,
            "first_sample": source.first_sample, **dataclasses.asdict(source.faces.difficulty)}
    return {"kind": "synthetic", **{f"spec.{k}": v for k, v in spec.items()}}


def _every_sample(dataset: Any) -> dict[str, Any]:
    digest = hashlib.sha256()
    for i in range(len(dataset)):
        _pixels(digest, dataset, i)
    return {"kind": type(getattr(dataset, "source", dataset)).__name__, "pixels": digest.hexdigest()}


def dataset_fingerprint(dataset: Any) -> dict[str, Any]:
    """Flat dict (kind, length, classes, hashes: see the module docstring) identifying every sample of
    ``dataset`` (an ``ImageDataset`` or a bare source with ``len``, ``num_classes`` and ``read``)."""
    from facekd.data.folders import ImageFiles, ImageFolderFaces
    from facekd.data.recordio import MXFaceRecord
    from facekd.data.synthetic import SyntheticFaceDataset

    source = getattr(dataset, "source", dataset)
    n = len(dataset)
    if isinstance(source, MXFaceRecord):
        body = _recordio(source)
    elif isinstance(source, ImageFolderFaces):
        body = _files(source.root, source.paths, source.labels, "image_folder")
    elif isinstance(source, ImageFiles):
        body = _files(source.root, source.paths, source.labels, "image_files")
    elif isinstance(source, SyntheticFaceDataset):
        body = _synthetic(source)
    else:
        body = _every_sample(dataset)
    return {**body, "length": n, "num_classes": int(getattr(dataset, "num_classes", 0)),
            "unlabeled": bool(getattr(dataset, "unlabeled", False)), "probe": _probe(dataset, n)}


def describe_change(field: str) -> str:
    """What a changed fingerprint field means, in words (for error messages)."""
    return _MEANINGS.get(field.partition(".")[0], field)
