"""The teacher-feature cache: the frozen teacher's embedding of every training image and of its
horizontal flip, computed once and memory-mapped from disk.

Face training augments only by flipping, so a teacher's embedding of a training sample is one of
two fixed vectors; looking them up instead of running a large teacher makes a distillation step
cost about what a plain student step costs. One directory per source (``labeled`` set,
``unlabeled`` pool) holds:

* ``embeddings.f16``: float16 array [N, 2, D] (``[:, 0]`` the image, ``[:, 1]`` its flip);
* ``progress.u8``: one byte per chunk of rows, set once the chunk is on disk (resumable builds);
* ``manifest.json`` (written atomically): what the numbers depend on -- the teacher weights
  (a hash), the dataset (length, classes, a hash of a few samples), the deterministic part of
  the transform (resize, normalisation), dtype and layout -- and ``complete``, set only at the end.

A cache whose manifest differs from the current teacher/dataset/transform is refused with a
``StaleCacheError`` naming what differs (``rebuild=True`` rebuilds it). Build on one process
(rank 0) and let the others ``open`` it after a barrier: only rank 0 writes files.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence

import numpy as np
import torch
from torch import Tensor

from facekd.data.batch import LABELED_SOURCE, UNLABELED_SOURCE
from facekd.data.errors import DataFormatError
from facekd.data.transforms import ImageTransform, apply_transform, face_eval_transform, only_flips
from facekd.log import get_logger, progress

log = get_logger(__name__)

__all__ = [
    "CACHE_VERSION", "SOURCE_NAMES", "FINGERPRINT_SAMPLES", "CacheError", "CacheMissingError", "StaleCacheError",
    "TeacherCache",
    "TeacherCacheSet", "EmbeddingTeacher", "DeterministicRows", "collate_rows", "deterministic_transform",
    "transform_signature",
    "dataset_fingerprint", "cache_key", "open_or_build_cache",
]

CACHE_VERSION = 1
SOURCE_NAMES = {LABELED_SOURCE: "labeled", UNLABELED_SOURCE: "unlabeled"}
"""Sub-directory of the cache root for each ``Batch.source`` value."""
MANIFEST = "manifest.json"
ARRAY = "embeddings.f16"
PROGRESS = "progress.u8"
DTYPE = "float16"
LAYOUT = "[N, 2, D]: [:, 0] unflipped image, [:, 1] horizontally flipped image"
FINGERPRINT_SAMPLES = 8
_FLIP = "HorizontalFlip"


FLOAT16_MAX = 65504.0
"""Largest finite float16: cached embeddings beyond it would turn into inf."""


class CacheError(ValueError):
    """A cache that cannot be used; the message names the directory and the problem."""

    def __init__(self, path: str | os.PathLike[str], problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.path, self.problem))


class CacheMissingError(CacheError):
    """No complete cache in the directory (never built, or its build was interrupted)."""


class StaleCacheError(CacheError):
    """A cache built for another teacher, dataset or transform."""


class EmbeddingTeacher(Protocol):
    """What the builder needs of a teacher (``facekd.distill.teacher.Teacher`` is one)."""

    embedding_size: int

    def fingerprint(self) -> str: ...

    def embed_images(self, images: Tensor) -> Tensor: ...


# ----------------------------------------------------------------------------------------------
# what a cache depends on

def _steps(transform: Any) -> list[Any]:
    """The leaf transforms of an albumentations pipeline, in order."""
    inner = getattr(transform, "transforms", None)
    if inner is None:
        return [transform]
    return [leaf for child in inner for leaf in _steps(child)]


def deterministic_transform(transform: Any) -> ImageTransform | None:
    """``transform`` without its horizontal flip (None stays None: normalisation only).

    Refused (CacheError) unless flipping is the transform's only randomness: otherwise a cached
    embedding would not be the embedding of what the student sees.
    """
    if transform is None:
        return None
    if not isinstance(transform, ImageTransform) or not only_flips(transform):
        raise CacheError(".", f"the training transform {transform!r} has randomness beyond horizontal flips; "
                              "teacher embeddings cannot be cached for it (run the teacher online instead)")
    import albumentations as A

    steps = [leaf for leaf in _steps(transform.compose) if type(leaf).__name__ != _FLIP]
    return ImageTransform(A.Compose(steps, seed=0), f"{transform.name}_deterministic")


def _json_safe(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    return str(value)


def transform_signature(transform: Any) -> list[dict[str, Any]]:
    """The deterministic steps (resize, normalisation...) of a flips-only transform, as JSON data."""
    det = deterministic_transform(transform)
    if det is None:
        det = face_eval_transform()
    steps = []
    for leaf in _steps(det.compose):
        args = dict(leaf.to_dict()["transform"])
        args.pop("p", None)
        steps.append(_json_safe(args))
    return steps


def dataset_fingerprint(dataset: Any, samples: int = FINGERPRINT_SAMPLES) -> dict[str, Any]:
    """Length, classes and a SHA-256 of a few evenly spaced samples' pixels and labels."""
    n = len(dataset)
    digest = hashlib.sha256()
    for i in sorted({int(k) for k in np.linspace(0, max(n - 1, 0), num=min(samples, n))}) if n else []:
        try:
            image, label = dataset.read(i)
        except DataFormatError:
            digest.update(f"{i}:corrupt".encode())
            continue
        arr = np.ascontiguousarray(image)
        digest.update(f"{i}:{arr.shape}:{arr.dtype}:{int(label)}".encode())
        digest.update(arr.tobytes())
    return {"length": n, "num_classes": int(getattr(dataset, "num_classes", 0)), "fingerprint": digest.hexdigest()}


def cache_key(teacher: EmbeddingTeacher, dataset: Any, transform: Any) -> dict[str, Any]:
    """Everything a cache's numbers depend on (compared field by field when a cache is opened)."""
    return {
        "version": CACHE_VERSION,
        "teacher": {"fingerprint": teacher.fingerprint(), "embedding_size": int(teacher.embedding_size)},
        "dataset": dataset_fingerprint(dataset),
        "transform": transform_signature(transform),
        "dtype": DTYPE,
        "layout": LAYOUT,
    }


def _differences(saved: Mapping[str, Any], key: Mapping[str, Any]) -> list[str]:
    diffs = []
    for field, want in key.items():
        have = saved.get(field)
        if isinstance(want, Mapping) and isinstance(have, Mapping):
            diffs += [f"{field}.{k}: cache has {have.get(k)!r}, now {v!r}" for k, v in want.items() if have.get(k) != v]
        elif have != want:
            diffs.append(f"{field}: cache has {have!r}, now {want!r}")
    return diffs


# ----------------------------------------------------------------------------------------------
# files

def _read_manifest(root: Path) -> dict[str, Any] | None:
    path = root / MANIFEST
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise StaleCacheError(root, f"unreadable {MANIFEST} ({err}); rebuild the cache (rebuild=True)") from None
    if not isinstance(data, dict):
        raise StaleCacheError(root, f"{MANIFEST} is not a JSON object; rebuild the cache (rebuild=True)")
    return data


def _write_manifest(root: Path, manifest: Mapping[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{MANIFEST}.", suffix=".tmp", dir=root)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(manifest, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, root / MANIFEST)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _wipe(root: Path) -> None:
    for name in (MANIFEST, ARRAY, PROGRESS):
        (root / name).unlink(missing_ok=True)


def _memmap(path: Path, dtype: str, shape: tuple[int, ...], writable: bool) -> np.memmap:
    expected = int(np.prod(shape)) * np.dtype(dtype).itemsize
    exists = path.exists() and path.stat().st_size == expected
    if not writable:
        if not exists:
            raise CacheError(path, f"missing or of the wrong size (expected {expected} bytes for {dtype} "
                                   f"{list(shape)})")
        return np.memmap(path, dtype=dtype, mode="r", shape=shape)
    return np.memmap(path, dtype=dtype, mode="r+" if exists else "w+", shape=shape)


# ----------------------------------------------------------------------------------------------
# one source

class DeterministicRows(torch.utils.data.Dataset):
    """(image through the flip-free transform, readable?) of each row of a dataset, for DataLoaders."""

    def __init__(self, dataset: Any, transform: ImageTransform | None) -> None:
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[Tensor, bool]:
        try:
            image, _ = self.dataset.read(i)
        except DataFormatError:
            return torch.empty(0), False
        return apply_transform(self.transform, image)[0], True


def collate_rows(items: Sequence[tuple[Tensor, bool]]) -> tuple[list[Tensor], list[bool]]:
    """(images, readable flags) of a chunk; corrupt rows keep their place as empty tensors."""
    return [t for t, _ in items], [ok for _, ok in items]


@dataclass
class TeacherCache:
    """A complete cache of one source: ``lookup(index, flipped)`` -> float32 embeddings."""

    root: Path
    manifest: dict[str, Any]
    array: np.memmap

    def __len__(self) -> int:
        return int(self.array.shape[0])

    @property
    def embedding_size(self) -> int:
        """D."""
        return int(self.array.shape[2])

    @classmethod
    def open(cls, root: str | os.PathLike[str], key: Mapping[str, Any]) -> "TeacherCache":
        """Open a complete cache built for ``key`` (see ``cache_key``); refuses a missing, partial or stale one."""
        root = Path(root)
        manifest = _read_manifest(root)
        if manifest is None:
            raise CacheMissingError(root, "no teacher-feature cache here (build it first)")
        diffs = _differences(manifest, key)
        if diffs:
            raise StaleCacheError(root, "the cache was built for another teacher, dataset or transform: "
                                        + "; ".join(diffs) + ". Rebuild it (rebuild=True / --rebuild-cache) "
                                        "or point to another cache directory")
        if not manifest.get("complete"):
            raise CacheMissingError(root, "the cache build did not finish; build again to resume it")
        n, d = key["dataset"]["length"], key["teacher"]["embedding_size"]
        return cls(root, manifest, _memmap(root / ARRAY, DTYPE, (n, 2, d), writable=False))

    @classmethod
    def build(cls, root: str | os.PathLike[str], teacher: EmbeddingTeacher, dataset: Any, transform: Any = None,
              *, batch_size: int = 128, workers: int = 0, rebuild: bool = False, commit_every: int = 16,
              desc: str = "teacher cache") -> "TeacherCache":
        """Build (or resume, or reuse) the cache of ``teacher`` on ``dataset`` seen through ``transform``.

        ``dataset`` offers ``len()`` and ``read(i) -> (RGB uint8, label)`` (a ``FaceDataset``);
        ``transform`` is its training transform (flips only; None = normalisation only). Rows are
        written in chunks of ``batch_size``; every ``commit_every`` chunks they are flushed and marked
        done, so an interrupted build resumes where it stopped. Corrupt images get zero rows (the
        loaders never yield them).
        """
        root = Path(root)
        det = deterministic_transform(transform)
        key = cache_key(teacher, dataset, transform)
        root.mkdir(parents=True, exist_ok=True)
        manifest = _read_manifest(root) if not rebuild else None
        if rebuild:
            _wipe(root)
        if manifest is not None:
            diffs = _differences(manifest, key)
            if diffs:
                raise StaleCacheError(root, "a cache for another teacher, dataset or transform is here: "
                                            + "; ".join(diffs) + ". Rebuild it (rebuild=True / --rebuild-cache) "
                                            "or use another cache directory")
            if manifest.get("complete"):
                log.info("teacher cache %s is up to date (%d rows)", root, key["dataset"]["length"])
                return cls.open(root, key)
        if manifest is None:
            manifest = {**key, "chunk_rows": int(batch_size), "complete": False, "created": time.time()}
            _write_manifest(root, manifest)
        rows = int(manifest["chunk_rows"])
        n, d = key["dataset"]["length"], key["teacher"]["embedding_size"]
        chunks = (n + rows - 1) // rows
        expected = n * 2 * d * np.dtype(DTYPE).itemsize
        if not (root / ARRAY).exists() or (root / ARRAY).stat().st_size != expected:
            (root / PROGRESS).unlink(missing_ok=True)  # no rows on disk: no chunk can be done
        array = _memmap(root / ARRAY, DTYPE, (n, 2, d), writable=True)
        done = _memmap(root / PROGRESS, "uint8", (chunks,), writable=True)
        todo = [int(c) for c in np.flatnonzero(done == 0)]
        if len(todo) < chunks:
            log.info("resuming teacher cache %s: %d of %d chunks already done", root, chunks - len(todo), chunks)
        loader = torch.utils.data.DataLoader(
            DeterministicRows(dataset, det), batch_sampler=[range(c * rows, min(n, (c + 1) * rows)) for c in todo],
            num_workers=workers, collate_fn=collate_rows)
        pending: list[int] = []
        corrupt = 0

        def commit() -> None:
            array.flush()
            done[pending] = 1
            done.flush()
            pending.clear()

        for chunk, (images, ok) in progress(zip(todo, loader), total=len(todo), desc=desc, unit="chunk"):
            start = chunk * rows
            good = [i for i, flag in enumerate(ok) if flag]
            out = np.zeros((len(ok), 2, d), dtype=np.float32)
            if good:
                x = torch.stack([images[i] for i in good])
                emb = teacher.embed_images(torch.cat([x, x.flip(-1)])).float().cpu().numpy()
                out[good, 0], out[good, 1] = emb[:len(good)], emb[len(good):]
            corrupt += len(ok) - len(good)
            peak = float(np.abs(out).max()) if out.size else 0.0
            if not np.isfinite(peak) or peak > FLOAT16_MAX:
                raise CacheError(root, f"the teacher's embeddings reach {peak:.3g}, beyond float16's range "
                                       f"({FLOAT16_MAX:g}): is the teacher trained (BatchNorm statistics included) "
                                       "and are these its weights? Use --online-teacher to run it in float32 "
                                       "without a cache")
            array[start:start + len(ok)] = out.astype(np.float16)
            pending.append(chunk)
            if len(pending) >= commit_every:
                commit()
        commit()
        if corrupt:
            log.warning("teacher cache %s: %d corrupt image(s) stored as zero rows", root, corrupt)
        _write_manifest(root, {**manifest, "complete": True, "finished": time.time()})
        del array, done
        return cls.open(root, key)

    def lookup(self, index: Tensor, flipped: Tensor) -> Tensor:
        """float32 embeddings [n, D] (CPU) of rows ``index``, flipped where ``flipped``."""
        idx = index.detach().cpu().numpy().astype(np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise CacheError(self.root, f"row index {int(idx.max() if idx.max() >= len(self) else idx.min())} out of "
                                        f"range for a cache of {len(self)} rows")
        flip = flipped.detach().cpu().numpy().astype(np.int64)
        return torch.from_numpy(np.asarray(self.array[idx, flip], dtype=np.float32))


class TeacherCacheSet:
    """The caches of each ``Batch.source`` (0 labeled set, 1 unlabeled pool); rows of a source
    without a cache are reported as not found."""

    def __init__(self, caches: Mapping[int, TeacherCache]) -> None:
        self.caches = dict(caches)

    def __repr__(self) -> str:
        parts = ", ".join(f"{SOURCE_NAMES.get(s, s)}: {len(c)} rows" for s, c in sorted(self.caches.items()))
        return f"TeacherCacheSet({parts})"

    def lookup(self, batch: Any) -> tuple[Tensor, Tensor]:
        """(float32 embeddings [N, D] on the batch's device, bool [N] found) for a ``Batch``."""
        source, index, flipped = batch.source, batch.index, batch.flipped
        n = int(index.shape[0])
        size = next(iter(self.caches.values())).embedding_size if self.caches else 0
        out = torch.zeros(n, size)
        found = torch.zeros(n, dtype=torch.bool)
        src = source.detach().cpu()
        for s, cache in self.caches.items():
            rows = torch.nonzero(src == s).squeeze(1)
            if rows.numel():
                out[rows] = cache.lookup(index.detach().cpu()[rows], flipped.detach().cpu()[rows])
                found[rows] = True
        device = batch.images.device if hasattr(batch, "images") else index.device
        return out.to(device, non_blocking=True), found.to(device)


def open_or_build_cache(root: str | os.PathLike[str], teacher: EmbeddingTeacher, dataset: Any, transform: Any = None,
                        *, source: int = LABELED_SOURCE, build: bool = True, rebuild: bool = False,
                        batch_size: int = 128, workers: int = 0) -> TeacherCache:
    """The cache of one source under ``root/<labeled|unlabeled>``: opened when complete and current,
    else built (``build=True``, rank 0) or refused (``build=False``, the other ranks)."""
    path = Path(root) / SOURCE_NAMES[source]
    if build:
        return TeacherCache.build(path, teacher, dataset, transform, batch_size=batch_size, workers=workers,
                                  rebuild=rebuild, desc=f"teacher cache ({SOURCE_NAMES[source]})")
    return TeacherCache.open(path, cache_key(teacher, dataset, transform))
