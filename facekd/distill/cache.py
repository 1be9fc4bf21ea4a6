"""The teacher-feature cache: the frozen teacher's embedding of every training image and of its
horizontal flip, computed once and memory-mapped from disk.

Face training augments only by flipping, so a teacher's embedding of a training sample is one of
two fixed vectors; looking them up instead of running a large teacher makes a distillation step
cost about what a plain student step costs. One directory per source (``labeled`` set,
``unlabeled`` pool) holds:

* ``part-PPP.f16``: float16 arrays [n_p, 2, D] of contiguous row ranges (``[:, 0]`` the image,
  ``[:, 1]`` its flip); the ranges are listed in the manifest;
* ``part-PPP.done``: one byte per chunk of rows of that part, set once the chunk is on disk
  (resumable builds, per part);
* ``manifest.json`` (written atomically, by rank 0 only): what the numbers depend on -- the
  teacher weights (a hash), the dataset (a fingerprint covering every sample, see
  ``facekd.data.fingerprint``), the deterministic part of the transform (resize,
  normalisation), dtype and layout -- and the part ranges.

Building is shared by the ranks of a run (``build_cache``): rank 0 checks or creates the
manifest and shares the plan; every rank embeds its parts (part p belongs to rank p mod world
size, so a cache started with another world size still resumes) and writes only its own part
files; a rank that is done polls the others' progress files (so no rank sits in a collective
for the length of a build; a build whose progress stalls for ``stall_timeout`` seconds is an
error), then one barrier, then every rank opens the whole cache read-only.

A cache whose manifest differs from the current teacher/dataset/transform is refused with a
``StaleCacheError`` naming the directory, what changed and ``--rebuild-cache``.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence

import numpy as np
import torch
from torch import Tensor

from facekd.data.batch import LABELED_SOURCE, UNLABELED_SOURCE
from facekd.data.errors import DataFormatError
from facekd.data.fingerprint import dataset_fingerprint, describe_change
from facekd.errors import FileProblemError
from facekd.data.transforms import (ImageTransform, apply_transform, deterministic_steps, face_eval_transform,
                                    only_flips)
from facekd.log import get_logger, progress

log = get_logger(__name__)

__all__ = [
    "CACHE_VERSION", "SOURCE_NAMES", "CacheError", "CacheMissingError", "StaleCacheError",
    "TeacherCache", "CacheRows", "Collective", "SINGLE_PROCESS",
    "TeacherCacheSet", "EmbeddingTeacher", "DeterministicRows", "collate_rows", "deterministic_transform",
    "transform_signature", "dataset_fingerprint", "cache_key", "build_cache", "open_or_build_cache",
]

CACHE_VERSION = 2
SOURCE_NAMES = {LABELED_SOURCE: "labeled", UNLABELED_SOURCE: "unlabeled"}
"""Sub-directory of the cache root for each ``Batch.source`` value."""
MANIFEST = "manifest.json"
DTYPE = "float16"
LAYOUT = "parts [n_p, 2, D]: [:, 0] unflipped image, [:, 1] horizontally flipped image"
REBUILD_HINT = "rebuild it with --rebuild-cache (rebuild=True) or point --cache-dir to another directory"
STALL_TIMEOUT = 1800.0
"""Seconds a finished rank waits for the other ranks' parts to make progress before giving up."""


FLOAT16_MAX = 65504.0
"""Largest finite float16: cached embeddings beyond it would turn into inf."""


class CacheError(FileProblemError):
    """A cache that cannot be used; the message names the directory and the problem."""


class CacheMissingError(CacheError):
    """No complete cache in the directory (never built, or its build was interrupted)."""


class StaleCacheError(CacheError):
    """A cache built for another teacher, dataset or transform."""


class EmbeddingTeacher(Protocol):
    """What the builder needs of a teacher (``facekd.distill.teacher.Teacher`` is one)."""

    embedding_size: int

    def fingerprint(self) -> str: ...

    def embed_images(self, images: Tensor) -> Tensor: ...


@dataclass(frozen=True)
class Collective:
    """How the ranks of a run talk while building: ``share(obj)`` returns rank 0's ``obj`` on every
    rank, ``barrier()`` waits for all (one process: identity and no-op)."""

    rank: int = 0
    world_size: int = 1
    share: Callable[[Any], Any] = lambda obj: obj
    barrier: Callable[[], None] = lambda: None


SINGLE_PROCESS = Collective()


# ----------------------------------------------------------------------------------------------
# what a cache depends on

def deterministic_transform(transform: Any) -> ImageTransform | None:
    """``transform`` without its horizontal flips (None stays None: normalisation only).

    Refused (CacheError) unless flipping is the transform's only randomness (containers
    included, see ``only_flips``): otherwise a cached embedding would not be the embedding of
    what the student sees.
    """
    if transform is None:
        return None
    if not isinstance(transform, ImageTransform) or not only_flips(transform):
        raise CacheError(".", f"the training transform {transform!r} has randomness beyond horizontal flips; "
                              "teacher embeddings cannot be cached for it (run the teacher online instead)")
    import albumentations as A

    return ImageTransform(A.Compose(deterministic_steps(transform), seed=0), f"{transform.name}_deterministic")


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
    for leaf in det.compose.transforms:
        args = dict(leaf.to_dict()["transform"])
        args.pop("p", None)
        steps.append(_json_safe(args))
    return steps


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


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _differences(saved: Mapping[str, Any], key: Mapping[str, Any]) -> list[str]:
    diffs = []
    for field, want in key.items():
        have = saved.get(field)
        if isinstance(want, Mapping) and isinstance(have, Mapping):
            for k, v in want.items():
                if have.get(k) != v:
                    what = f" ({describe_change(k)})" if field == "dataset" else ""
                    diffs.append(f"{field}.{k}{what}: cache has {_short(have.get(k))}, now {_short(v)}")
        elif have != want:
            diffs.append(f"{field}: cache has {_short(have)}, now {_short(want)}")
    return diffs


def _stale(root: Path, diffs: list[str]) -> StaleCacheError:
    return StaleCacheError(root, "this teacher-feature cache was built for another teacher, dataset or transform, "
                                 "so its embeddings would be wrong: " + "; ".join(diffs) + f". {REBUILD_HINT}")


# ----------------------------------------------------------------------------------------------
# files

def _part_name(p: int) -> str:
    return f"part-{p:03d}"


def _read_manifest(root: Path) -> dict[str, Any] | None:
    path = root / MANIFEST
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise StaleCacheError(root, f"unreadable {MANIFEST} ({err}); {REBUILD_HINT}") from None
    if not isinstance(data, dict):
        raise StaleCacheError(root, f"{MANIFEST} is not a JSON object; {REBUILD_HINT}")
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
    for path in [root / MANIFEST, *root.glob("part-*"), root / "embeddings.f16", root / "progress.u8"]:
        path.unlink(missing_ok=True)


def _memmap(path: Path, dtype: str, shape: tuple[int, ...], writable: bool) -> np.memmap | np.ndarray:
    expected = int(np.prod(shape)) * np.dtype(dtype).itemsize
    exists = path.exists() and path.stat().st_size == expected
    if not writable:
        if not exists:
            raise CacheError(path, f"missing or of the wrong size (expected {expected} bytes for {dtype} "
                                   f"{list(shape)})")
        if expected == 0:
            return np.zeros(shape, dtype=dtype)
        return np.memmap(path, dtype=dtype, mode="r", shape=shape)
    if expected == 0:
        path.touch()
        return np.zeros(shape, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r+" if exists else "w+", shape=shape)


def _split(n: int, parts: int) -> list[list[int]]:
    """``parts`` contiguous [start, stop) ranges covering 0..n (sizes differ by at most one)."""
    base, extra = divmod(n, parts)
    out, start = [], 0
    for p in range(parts):
        stop = start + base + int(p < extra)
        out.append([start, stop])
        start = stop
    return out


def _chunks(manifest: Mapping[str, Any], p: int) -> int:
    start, stop = manifest["parts"][p]
    rows = int(manifest["chunk_rows"])
    return (stop - start + rows - 1) // rows


def _done_counts(root: Path, manifest: Mapping[str, Any]) -> list[int]:
    """Chunks on disk of each part (0 for a part whose progress file is missing or being created)."""
    counts = []
    for p in range(len(manifest["parts"])):
        path = root / f"{_part_name(p)}.done"
        try:
            data = np.fromfile(path, dtype=np.uint8)
        except (OSError, ValueError):
            data = np.zeros(0, np.uint8)
        counts.append(int(data.sum()) if data.size == _chunks(manifest, p) else 0)
    return counts


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


class CacheRows:
    """The cache's embeddings as one [2N, D] float32 row sequence (image, flip, image, flip...) that
    slices across parts: what ``Teacher.fit_classifier`` reads in blocks."""

    def __init__(self, cache: "TeacherCache") -> None:
        self.cache = cache

    def __len__(self) -> int:
        return 2 * len(self.cache)

    def __getitem__(self, rows: slice) -> np.ndarray:
        start, stop, _ = rows.indices(len(self))
        first, last = start // 2, (stop + 1) // 2
        block = self.cache.rows(first, last).reshape(-1, self.cache.embedding_size)
        return block[start - 2 * first:stop - 2 * first]


@dataclass
class TeacherCache:
    """A complete cache of one source: ``lookup(index, flipped)`` -> float32 embeddings."""

    root: Path
    manifest: dict[str, Any]
    arrays: list[np.ndarray]

    def __post_init__(self) -> None:
        self.starts = np.asarray([int(a) for a, _ in self.manifest["parts"]], dtype=np.int64)
        self._length = int(self.manifest["parts"][-1][1]) if self.manifest["parts"] else 0

    def __len__(self) -> int:
        return self._length

    @property
    def embedding_size(self) -> int:
        """D."""
        return int(self.manifest["teacher"]["embedding_size"])

    @property
    def nbytes(self) -> int:
        """Bytes of the embedding arrays on disk."""
        return sum(int(a.nbytes) for a in self.arrays)

    @property
    def array(self) -> np.ndarray:
        """All rows [N, 2, D] float16 (the part itself when there is one; a copy in memory otherwise)."""
        if len(self.arrays) == 1:
            return self.arrays[0]
        return np.concatenate([np.asarray(a) for a in self.arrays])

    def flat_rows(self) -> CacheRows:
        """The embeddings as [2N, D] rows (image and flip of each sample in turn)."""
        return CacheRows(self)

    def rows(self, start: int, stop: int) -> np.ndarray:
        """float32 [stop - start, 2, D] of rows start..stop (across parts)."""
        stop = min(stop, len(self))
        out = np.empty((max(stop - start, 0), 2, self.embedding_size), dtype=np.float32)
        for (a, b), arr in zip(self.manifest["parts"], self.arrays):
            lo, hi = max(a, start), min(b, stop)
            if lo < hi:
                out[lo - start:hi - start] = arr[lo - a:hi - a]
        return out

    @classmethod
    def open(cls, root: str | os.PathLike[str], key: Mapping[str, Any]) -> "TeacherCache":
        """Open a complete cache built for ``key`` (see ``cache_key``); refuses a missing, partial or stale one."""
        root = Path(root)
        manifest = _read_manifest(root)
        if manifest is None:
            raise CacheMissingError(root, "no teacher-feature cache here (build it first)")
        diffs = _differences(manifest, key)
        if diffs:
            raise _stale(root, diffs)
        parts = manifest.get("parts")
        if not isinstance(parts, list) or "chunk_rows" not in manifest:
            raise StaleCacheError(root, f"{MANIFEST} lists no parts; {REBUILD_HINT}")
        done = _done_counts(root, manifest)
        missing = [p for p in range(len(parts)) if done[p] < _chunks(manifest, p)]
        if missing:
            raise CacheMissingError(root, f"the cache build did not finish (parts {missing} incomplete); build again "
                                          "to resume it")
        d = key["teacher"]["embedding_size"]
        arrays = [_memmap(root / f"{_part_name(p)}.f16", DTYPE, (b - a, 2, d), writable=False)
                  for p, (a, b) in enumerate(parts)]
        return cls(root, manifest, arrays)

    @classmethod
    def build(cls, root: str | os.PathLike[str], teacher: EmbeddingTeacher, dataset: Any, transform: Any = None,
              *, batch_size: int = 128, workers: int = 0, rebuild: bool = False, commit_every: int = 16,
              desc: str = "teacher cache", collective: Collective = SINGLE_PROCESS,
              stall_timeout: float = STALL_TIMEOUT) -> "TeacherCache":
        """Build (or resume, or reuse) the cache of ``teacher`` on ``dataset`` seen through ``transform``.

        ``dataset`` offers ``len()`` and ``read(i) -> (RGB uint8, label)`` (an ``ImageDataset``);
        ``transform`` is its training transform (flips only; None = normalisation only). Call on
        every rank with the run's ``collective``: each rank embeds its parts in chunks of
        ``batch_size`` rows; every ``commit_every`` chunks they are flushed and marked done, so an
        interrupted build resumes where it stopped. Corrupt images get zero rows (the loaders never
        yield them). Returns the opened cache on every rank.
        """
        root = Path(root)
        det = deterministic_transform(transform)
        manifest = _plan(root, teacher, dataset, transform, batch_size, rebuild, collective)
        key = {k: manifest[k] for k in ("version", "teacher", "dataset", "transform", "dtype", "layout")}
        parts = manifest["parts"]
        mine = [p for p in range(len(parts)) if p % collective.world_size == collective.rank]
        done = _done_counts(root, manifest)
        todo_rows = sum(parts[p][1] - parts[p][0] for p in mine if done[p] < _chunks(manifest, p))
        if any(done) and collective.rank == 0:
            log.info("resuming teacher cache %s: %d of %d chunks already done", root, sum(done),
                     sum(_chunks(manifest, p) for p in range(len(parts))))
        of = f", rank 0 of {collective.world_size}" if collective.world_size > 1 else ""
        with progress(total=todo_rows, desc=f"{desc}{of}", unit="img") as bar:
            for p in mine:
                _build_part(root, manifest, p, teacher, dataset, det, workers, commit_every, bar)
        _wait_for_parts(root, manifest, collective.rank, stall_timeout)
        collective.barrier()
        cache = cls.open(root, key)
        if collective.rank == 0 and not manifest.get("complete"):
            _write_manifest(root, {**manifest, "complete": True, "finished": time.time()})
        return cache

    def lookup(self, index: Tensor, flipped: Tensor) -> Tensor:
        """float32 embeddings [n, D] (CPU) of rows ``index``, flipped where ``flipped``."""
        idx = index.detach().cpu().numpy().astype(np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise CacheError(self.root, f"row index {int(idx.max() if idx.max() >= len(self) else idx.min())} out of "
                                        f"range for a cache of {len(self)} rows")
        flip = flipped.detach().cpu().numpy().astype(np.int64)
        if len(self.arrays) == 1:
            return torch.from_numpy(np.asarray(self.arrays[0][idx, flip], dtype=np.float32))
        out = np.empty((idx.size, self.embedding_size), dtype=np.float32)
        part = np.searchsorted(self.starts, idx, side="right") - 1
        for p in np.unique(part).tolist():
            sel = np.flatnonzero(part == p)
            out[sel] = self.arrays[p][idx[sel] - self.starts[p], flip[sel]]
        return torch.from_numpy(out)


def _plan(root: Path, teacher: EmbeddingTeacher, dataset: Any, transform: Any, batch_size: int, rebuild: bool,
          collective: Collective) -> dict[str, Any]:
    """Rank 0 checks (or wipes, or creates) the manifest and every rank gets it; a refusal is raised on
    every rank alike."""
    plan: dict[str, Any]
    if collective.rank == 0:
        try:
            key = cache_key(teacher, dataset, transform)
            root.mkdir(parents=True, exist_ok=True)
            if rebuild:
                _wipe(root)
            manifest = _read_manifest(root)
            if manifest is not None:
                diffs = _differences(manifest, key)
                if diffs or not isinstance(manifest.get("parts"), list):
                    raise _stale(root, diffs or [f"{MANIFEST} of an older cache format"])
            else:
                n = int(key["dataset"]["length"])
                manifest = {**key, "chunk_rows": int(batch_size), "created": time.time(), "complete": False,
                            "parts": _split(n, max(1, min(collective.world_size, n)))}
                _write_manifest(root, manifest)
            plan = {"manifest": manifest}
        except CacheError as err:
            plan = {"error": (type(err).__name__, str(err.path), err.problem)}
        except Exception as err:  # noqa: BLE001 -- tell the other ranks, then raise it here
            collective.share({"error": ("CacheError", str(root), f"rank 0 failed: {err}")})
            raise
    else:
        plan = {}
    plan = collective.share(plan)
    if "error" in plan:
        kind, path, problem = plan["error"]
        raise {"StaleCacheError": StaleCacheError, "CacheMissingError": CacheMissingError}.get(kind, CacheError)(
            path, problem)
    return plan["manifest"]


def _build_part(root: Path, manifest: Mapping[str, Any], p: int, teacher: EmbeddingTeacher, dataset: Any,
                det: ImageTransform | None, workers: int, commit_every: int, bar: Any) -> None:
    """Embed the missing chunks of part ``p`` into ``part-PPP.f16`` (resumable through ``part-PPP.done``)."""
    start, stop = manifest["parts"][p]
    rows, d = int(manifest["chunk_rows"]), int(manifest["teacher"]["embedding_size"])
    chunks = _chunks(manifest, p)
    root.mkdir(parents=True, exist_ok=True)  # another node's rank sees rank 0's folder only on a shared filesystem
    array_path, done_path = root / f"{_part_name(p)}.f16", root / f"{_part_name(p)}.done"
    expected = (stop - start) * 2 * d * np.dtype(DTYPE).itemsize
    if not array_path.exists() or array_path.stat().st_size != expected:
        done_path.unlink(missing_ok=True)  # no rows on disk: no chunk can be done
    done = _memmap(done_path, "uint8", (chunks,), writable=True)
    todo = [int(c) for c in np.flatnonzero(np.asarray(done) == 0)]
    if not todo:
        return
    array = _memmap(array_path, DTYPE, (stop - start, 2, d), writable=True)
    pin = getattr(getattr(teacher, "device", None), "type", "cpu") == "cuda"
    loader = torch.utils.data.DataLoader(
        DeterministicRows(dataset, det), num_workers=workers, collate_fn=collate_rows, pin_memory=pin,
        batch_sampler=[range(start + c * rows, min(stop, start + (c + 1) * rows)) for c in todo])
    pending: list[int] = []
    corrupt = 0

    def commit() -> None:
        if isinstance(array, np.memmap):
            array.flush()
        done[pending] = 1
        if isinstance(done, np.memmap):
            done.flush()
        pending.clear()

    for chunk, (images, ok) in zip(todo, loader):
        first = chunk * rows
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
        array[first:first + len(ok)] = out.astype(np.float16)
        pending.append(chunk)
        if len(pending) >= commit_every:
            commit()
        bar.update(len(ok))
    commit()
    if corrupt:
        log.warning("teacher cache %s part %d: %d corrupt image(s) stored as zero rows", root, p, corrupt)


def _wait_for_parts(root: Path, manifest: Mapping[str, Any], rank: int, stall_timeout: float) -> None:
    """Poll the progress files until every part is complete; CacheError when none moves for ``stall_timeout`` s."""
    total = sum(_chunks(manifest, p) for p in range(len(manifest["parts"])))
    last, moved, delay = -1, time.monotonic(), 0.05
    while True:
        done = _done_counts(root, manifest)
        count = sum(done)
        if count >= total:
            return
        now = time.monotonic()
        if count != last:
            last, moved = count, now
        elif now - moved > stall_timeout:
            pending = [p for p in range(len(done)) if done[p] < _chunks(manifest, p)]
            raise CacheError(root, f"rank {rank} waited {stall_timeout:.0f} s for parts {pending} of the teacher "
                                   "cache without progress: did another rank fail, or is the cache directory "
                                   "not on a filesystem every rank sees? (raise --dist-timeout for slow builds)")
        time.sleep(delay)
        delay = min(delay * 2, 2.0)


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


def build_cache(root: str | os.PathLike[str], teacher: EmbeddingTeacher, dataset: Any, transform: Any = None,
                *, source: int = LABELED_SOURCE, rebuild: bool = False, batch_size: int = 128, workers: int = 0,
                collective: Collective = SINGLE_PROCESS, stall_timeout: float = STALL_TIMEOUT) -> TeacherCache:
    """The cache of one source under ``root/<labeled|unlabeled>``, reused when complete and current,
    else built by all ranks together (call on every rank)."""
    return TeacherCache.build(Path(root) / SOURCE_NAMES[source], teacher, dataset, transform,
                              batch_size=batch_size, workers=workers, rebuild=rebuild,
                              desc=f"teacher cache ({SOURCE_NAMES[source]})", collective=collective,
                              stall_timeout=stall_timeout)


def open_or_build_cache(root: str | os.PathLike[str], teacher: EmbeddingTeacher, dataset: Any, transform: Any = None,
                        *, source: int = LABELED_SOURCE, build: bool = True, rebuild: bool = False,
                        batch_size: int = 128, workers: int = 0) -> TeacherCache:
    """One process: the cache of one source under ``root/<labeled|unlabeled>``, built when needed
    (``build=True``) or only opened (``build=False``: refused when missing, partial or stale)."""
    if build:
        return build_cache(root, teacher, dataset, transform, source=source, rebuild=rebuild,
                           batch_size=batch_size, workers=workers)
    path = Path(root) / SOURCE_NAMES[source]
    return TeacherCache.open(path, cache_key(teacher, dataset, transform))
