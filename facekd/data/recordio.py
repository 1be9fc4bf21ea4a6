"""MXNet RecordIO (``train.rec`` + ``train.idx`` + ``property``) read and written without mxnet.

Three layers:

* records: ``pack_record``/``unpack_payload`` build and split a record payload (24-byte header
  ``<IfQQ`` = flag, label, id, id2; ``flag`` float32 labels when flag > 0; then image bytes);
  ``frame_record`` adds the on-disk framing (magic 0xced7230a, length word whose top 3 bits are
  the continuation flag, zero padding to 4 bytes);
* files: ``RecordIOWriter`` (atomic: temporary names, renamed on close) and ``RecordIOReader``
  (random access by key with ``os.pread`` on a descriptor opened lazily per process, so it is
  safe in forked DataLoader workers; the file is never read whole);
* faces: ``MXFaceRecord`` reads insightface's layout (record 0 header, images, identity
  records), ``FaceRecordWriter``/``write_face_record`` write it.

Conventions and choices (the docs of the individual functions refer here):

* **Continuation records.** As dmlc-core does, a payload that contains the magic word at a
  4-byte aligned position is split there into parts (cflag 1 = first, 2 = middle, 3 = last) and
  the magic word is dropped; the reader joins the parts and puts the magic word back. Each
  multi-part record has one key, at the offset of its first part.
* **Missing ``.idx``.** The reader scans the ``.rec`` once (progress bar), numbering records
  0, 1, 2... in file order (the keys every insightface/im2rec writer uses), logs that it did
  so and, when no file exists at the index path and its folder is writable, saves the rebuilt
  index there (created with a no-clobber link, never overwriting anything). Pass
  ``write_rebuilt_index=False`` to keep it in memory only.
* **Record 0.** It is the dataset header when its flag > 0 *and* it carries no image bytes
  (insightface writes it with an empty image); its labels (a, b) say images are keys 1..a-1 and
  identity records keys a..b-1, each with labels [start, end) of image keys. Otherwise every
  key is an image (``record 0 without header``). An image with array labels uses label[0].
* **Integers above 2**24.** float32 labels cannot hold every integer above 16,777,216, which
  affects class ids and the image keys in the header and identity records of very large sets.
  facekd stores the exact integer beside the float: an image record keeps
  ``id2 = EXACT_FLAG | label`` and header/identity records keep ``id = EXACT_FLAG | first``
  and ``id2 = EXACT_FLAG | second`` (``EXACT_FLAG = 1 << 63``). insightface's reader still
  reads such files (it only looks at the float labels, which are the nearest float32, so it
  sees rounded values above 2**24, as it would with any other writer); facekd prefers the
  exact value whenever the flag bit is set and the float label equals its float32 rounding
  (so a tool that relabels records without touching id/id2 still wins).
"""
from __future__ import annotations

import os
import struct
import threading
from os import PathLike
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple

import numpy as np

from facekd.data.errors import DataFileNotFoundError, DataFormatError
from facekd.data.image_codec import decode_image, encode_image, image_size_of
from facekd.log import get_logger, progress

__all__ = [
    "MAGIC", "EXACT_FLAG", "IRHeader", "pack_record", "unpack_payload", "frame_record",
    "exact_label", "exact_pair", "RecordIOWriter", "RecordIOReader", "MXFaceRecord",
    "FaceRecordWriter", "write_face_record", "read_property",
]

log = get_logger(__name__)

MAGIC = 0xCED7230A
EXACT_FLAG = 1 << 63
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_LEN_MASK = (1 << 29) - 1
_PREFIX = struct.Struct("<II")
_HEADER = struct.Struct("<IfQQ")
_MAX_LABELS = (_LEN_MASK - _HEADER.size) // 4
_MAX_GUESS = 1 << 20  # largest speculative read of a record whose size the index implies


class IRHeader(NamedTuple):
    """Header of one record: ``label`` is a float when ``flag`` == 0, else a float32 array."""

    flag: int
    label: float | np.ndarray
    id: int
    id2: int


# ----------------------------------------------------------------------------- records
def pack_record(header: IRHeader, image: bytes) -> bytes:
    """Record payload (header, labels, image bytes) as mxnet's ``recordio.pack`` builds it.

    A scalar ``header.label`` gives flag 0; a sequence/array gives flag = its length and the
    values follow the header as float32 (``header.flag`` is then ignored).
    """
    label = header.label
    if np.ndim(label) == 0:
        head = _HEADER.pack(0, float(label), int(header.id), int(header.id2))
        return head + bytes(image)
    arr = np.asarray(label, dtype="<f4").ravel()
    if arr.size > _MAX_LABELS:
        raise ValueError(f"too many labels for one record: {arr.size}")
    head = _HEADER.pack(int(arr.size), 0.0, int(header.id), int(header.id2))
    return head + arr.tobytes() + bytes(image)


def unpack_payload(payload: bytes, source: str | PathLike[str] = "<bytes>",
                   key: object | None = None) -> tuple[IRHeader, bytes]:
    """Split a record payload into its ``IRHeader`` and image bytes (inverse of ``pack_record``)."""
    if len(payload) < _HEADER.size:
        raise DataFormatError(source, f"record payload of {len(payload)} bytes is shorter than "
                                      f"the {_HEADER.size}-byte header", key)
    flag, label, rid, rid2 = _HEADER.unpack_from(payload)
    if flag == 0:
        return IRHeader(0, label, rid, rid2), payload[_HEADER.size:]
    end = _HEADER.size + 4 * flag
    if end > len(payload):
        raise DataFormatError(source, f"header says {flag} labels but the record has only "
                                      f"{len(payload)} bytes", key)
    labels = np.frombuffer(payload, dtype="<f4", count=flag, offset=_HEADER.size).astype(np.float32)
    return IRHeader(flag, labels, rid, rid2), payload[end:]


def frame_record(payload: bytes) -> bytes:
    """On-disk bytes of one record: magic, length word, data, padding; split on inner magic words."""
    size = len(payload)
    if size > _LEN_MASK:
        raise ValueError(f"RecordIO records must be below 2**29 bytes, got {size}")
    words = np.frombuffer(payload, dtype="<u4", count=size // 4)
    cuts = (np.flatnonzero(words == MAGIC) * 4).tolist()
    if not cuts:
        return _frame_part(payload, 0)
    parts, start = [], 0
    for n, cut in enumerate(cuts):
        parts.append(_frame_part(payload[start:cut], 1 if n == 0 else 2))
        start = cut + 4
    parts.append(_frame_part(payload[start:], 3))
    return b"".join(parts)


def _frame_part(data: bytes, cflag: int) -> bytes:
    pad = -len(data) % 4
    return _PREFIX.pack(MAGIC, (cflag << 29) | len(data)) + bytes(data) + b"\0" * pad


def exact_label(header: IRHeader) -> int:
    """Integer class of an image record: the exact id2 value when present, else label (or label[0])."""
    value = header.label if header.flag == 0 else (header.label[0] if len(header.label) else np.nan)
    return _exact(value, header.id2)


def exact_pair(header: IRHeader) -> tuple[int, int]:
    """The two integers of a header/identity record (labels[0:2], exact from id/id2 when present)."""
    labels = np.atleast_1d(header.label)
    if header.flag < 2 or len(labels) < 2:
        raise ValueError(f"expected a record with 2 labels, got flag {header.flag}")
    return _exact(labels[0], header.id), _exact(labels[1], header.id2)


def _exact(value: float, field: int) -> int:
    if field & EXACT_FLAG:
        exact = field & ~EXACT_FLAG
        if np.float32(exact) == np.float32(value):
            return exact
    if not np.isfinite(value):
        raise ValueError(f"label {value} is not a finite number")
    return int(value)


def _exact_fields(value: int) -> tuple[float, int]:
    """(float label, id field) storing ``value`` per the module's exact-integer convention."""
    if value < 0 or value >= EXACT_FLAG:
        raise ValueError(f"labels and keys must be integers in [0, 2**63), got {value}")
    return float(np.float32(value)), EXACT_FLAG | int(value)


# ----------------------------------------------------------------------------- files
class RecordIOWriter:
    """Writes a ``.rec`` and its ``.idx`` ("key\\toffset" lines) under temporary names, renamed
    into place on ``close()``; on an exception inside ``with`` nothing is left behind."""

    def __init__(self, rec_path: str | PathLike[str], idx_path: str | PathLike[str] | None = None,
                 *, overwrite: bool = False) -> None:
        self.rec_path = Path(rec_path)
        self.idx_path = Path(idx_path) if idx_path is not None else self.rec_path.with_suffix(".idx")
        for p in (self.rec_path, self.idx_path):
            if p.exists() and not overwrite:
                raise FileExistsError(f"{p} exists; pass overwrite=True to replace it")
        tag = f".tmp{os.getpid()}"
        self._rec_tmp = self.rec_path.with_name(self.rec_path.name + tag)
        self._idx_tmp = self.idx_path.with_name(self.idx_path.name + tag)
        self.rec_path.parent.mkdir(parents=True, exist_ok=True)
        self._rec = open(self._rec_tmp, "wb")
        self._idx = open(self._idx_tmp, "w", encoding="ascii")
        self._offsets: dict[int, tuple[int, int]] = {}
        self._pos = 0
        self.closed = False

    def write(self, key: int, payload: bytes) -> int:
        """Append one record under ``key`` (a non-negative int, once per file); returns its offset."""
        key = int(key)
        if key < 0:
            raise ValueError(f"record keys must be non-negative, got {key}")
        if key in self._offsets:
            raise ValueError(f"{self.rec_path}: key {key} written twice")
        data = frame_record(payload)
        offset = self._pos
        self._rec.write(data)
        self._idx.write(f"{key}\t{offset}\n")
        self._offsets[key] = (offset, len(data))
        self._pos += len(data)
        return offset

    def patch(self, key: int, payload: bytes) -> None:
        """Rewrite record ``key`` in place; the new framed record must have the same size."""
        offset, size = self._offsets[int(key)]
        data = frame_record(payload)
        if len(data) != size:
            raise ValueError(f"{self.rec_path}: patched record {key} is {len(data)} bytes, "
                             f"the original {size}")
        self._rec.seek(offset)
        self._rec.write(data)
        self._rec.seek(self._pos)

    def __len__(self) -> int:
        return len(self._offsets)

    def close(self) -> None:
        """Flush and move both files into place (idempotent)."""
        if self.closed:
            return
        self._rec.close()
        self._idx.close()
        os.replace(self._rec_tmp, self.rec_path)
        os.replace(self._idx_tmp, self.idx_path)
        self.closed = True

    def abort(self) -> None:
        """Discard everything written so far (idempotent)."""
        if self.closed:
            return
        self._rec.close()
        self._idx.close()
        for p in (self._rec_tmp, self._idx_tmp):
            p.unlink(missing_ok=True)
        self.closed = True

    def __enter__(self) -> "RecordIOWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class RecordIOReader:
    """Random access to a ``.rec`` by key through its ``.idx`` (rebuilt by a scan when missing).

    Reads use ``os.pread`` on a descriptor opened lazily in each process (safe after fork and
    across threads); the reader pickles without its descriptor (spawned workers reopen).
    """

    def __init__(self, rec_path: str | PathLike[str], idx_path: str | PathLike[str] | None = None,
                 *, write_rebuilt_index: bool = True) -> None:
        self.rec_path = Path(rec_path)
        self.idx_path = Path(idx_path) if idx_path is not None else self.rec_path.with_suffix(".idx")
        if not self.rec_path.is_file():
            raise DataFileNotFoundError(self.rec_path, "RecordIO file")
        self.size = self.rec_path.stat().st_size
        if self.idx_path.is_file():
            keys, offsets = self._load_index()
        else:
            keys, offsets = self._rebuild_index(write_rebuilt_index)
        order = np.argsort(keys, kind="stable")
        self.keys: np.ndarray = keys[order]
        self._offsets: np.ndarray = offsets[order]
        if len(self.keys) > 1 and (dup := np.flatnonzero(self.keys[1:] == self.keys[:-1])).size:
            raise DataFormatError(self.idx_path, "key appears more than once in the index",
                                  f"key {int(self.keys[dup[0]])}")
        # where the next record starts (by offset): lets read() fetch a record in one pread
        by_offset = np.argsort(self._offsets, kind="stable")
        ends = np.empty_like(self._offsets)
        ends[by_offset] = np.append(self._offsets[by_offset][1:], self.size)
        self._spans = np.minimum(ends - self._offsets, _MAX_GUESS)
        self._first = int(self.keys[0]) if len(self.keys) else 0
        self._dense = len(self.keys) > 0 and int(self.keys[-1]) - self._first + 1 == len(self.keys)
        self._fd: int | None = None
        self._pid = -1
        self._lock = threading.Lock()

    # -- index
    def _load_index(self) -> tuple[np.ndarray, np.ndarray]:
        try:
            if self.idx_path.stat().st_size == 0:
                table = np.zeros((0, 2), dtype=np.int64)
            else:
                table = np.loadtxt(self.idx_path, dtype=np.int64, delimiter="\t", ndmin=2,
                                   comments=None)
        except ValueError as err:
            raise DataFormatError(self.idx_path, f"not a RecordIO index of 'key<TAB>offset' "
                                                 f"lines ({err})") from err
        if table.shape[1] != 2:
            raise DataFormatError(self.idx_path, f"expected 2 columns (key, offset), found "
                                                 f"{table.shape[1]}")
        keys, offsets = table[:, 0].copy(), table[:, 1].copy()
        bad = np.flatnonzero((offsets < 0) | (offsets + _PREFIX.size > self.size) | (offsets % 4 != 0)
                             | (keys < 0))
        if bad.size:
            i = int(bad[0])
            raise DataFormatError(
                self.idx_path, f"line {i + 1} points to offset {int(offsets[i])}, which is not a "
                f"record start inside {self.rec_path.name} ({self.size} bytes); the index does "
                f"not belong to this .rec or the .rec is truncated", f"key {int(keys[i])}")
        return keys, offsets

    def _rebuild_index(self, write: bool) -> tuple[np.ndarray, np.ndarray]:
        log.info("%s: no index at %s; rebuilding it by scanning the .rec (keys = record order)",
                 self.rec_path, self.idx_path)
        offsets: list[int] = []
        with open(self.rec_path, "rb") as f, progress(total=self.size, desc="index " + self.rec_path.name,
                                                     unit="B") as bar:
            pos, expect_start = 0, True
            while pos < self.size:
                head = f.read(_PREFIX.size)
                magic, cflag, length = self._check_prefix(head, pos, f"record {len(offsets)}")
                starts = cflag in (0, 1)
                if starts != expect_start:
                    raise DataFormatError(self.rec_path, f"continuation flag {cflag} out of "
                                                         f"sequence at offset {pos}", f"record {len(offsets)}")
                if starts:
                    offsets.append(pos)
                expect_start = cflag in (0, 3)
                step = _PREFIX.size + length + (-length % 4)
                if pos + _PREFIX.size + length > self.size:
                    raise DataFormatError(self.rec_path, f"truncated record at offset {pos}: needs "
                                          f"{length} bytes, file ends at {self.size}",
                                          f"record {len(offsets) - 1}")
                f.seek(pos + step)
                pos += step
                bar.update(step)
            if not expect_start:
                raise DataFormatError(self.rec_path, "file ends inside a multi-part record",
                                      f"record {len(offsets) - 1}")
        offsets_arr = np.asarray(offsets, dtype=np.int64)
        keys = np.arange(len(offsets_arr), dtype=np.int64)
        if write:
            self._save_index(keys, offsets_arr)
        return keys, offsets_arr

    def _save_index(self, keys: np.ndarray, offsets: np.ndarray) -> None:
        tmp = self.idx_path.with_name(self.idx_path.name + f".tmp{os.getpid()}")
        try:
            with open(tmp, "w", encoding="ascii") as f:
                f.writelines(f"{k}\t{o}\n" for k, o in zip(keys.tolist(), offsets.tolist()))
            os.link(tmp, self.idx_path)  # fails instead of overwriting a file that appeared meanwhile
            log.info("%s: saved the rebuilt index", self.idx_path)
        except OSError as err:
            log.info("%s: rebuilt index kept in memory only (%s)", self.idx_path, err.strerror or err)
        finally:
            tmp.unlink(missing_ok=True)

    # -- reading
    def __len__(self) -> int:
        return len(self.keys)

    def __contains__(self, key: object) -> bool:
        try:
            self._index_of(int(key))  # type: ignore[arg-type]
        except (KeyError, TypeError, ValueError):
            return False
        return True

    def _index_of(self, key: int) -> int:
        if self._dense:
            i = key - self._first
            if 0 <= i < len(self.keys):
                return i
        else:
            i = int(np.searchsorted(self.keys, key))
            if i < len(self.keys) and int(self.keys[i]) == key:
                return i
        raise KeyError(f"{self.idx_path}: no record with key {key}")

    def offset(self, key: int) -> int:
        """Byte offset of record ``key`` in the .rec (KeyError if the index lacks it)."""
        return int(self._offsets[self._index_of(int(key))])

    def _descriptor(self) -> int:
        pid = os.getpid()
        if self._pid != pid:
            with self._lock:
                if self._pid != pid:
                    if self._fd is not None:  # inherited through fork: close our copy only
                        os.close(self._fd)
                    self._fd = os.open(self.rec_path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
                    self._pid = pid
        return self._fd  # type: ignore[return-value]

    def _pread(self, n: int, offset: int) -> bytes:
        fd = self._descriptor()
        if hasattr(os, "pread"):
            return os.pread(fd, n, offset)
        with self._lock:  # platforms without pread
            os.lseek(fd, offset, os.SEEK_SET)
            return os.read(fd, n)

    def _check_prefix(self, head: bytes, pos: int, where: str) -> tuple[int, int, int]:
        if len(head) < _PREFIX.size:
            raise DataFormatError(self.rec_path, f"truncated record header at offset {pos} "
                                                 f"(file has {self.size} bytes)", where)
        magic, lrec = _PREFIX.unpack(head)
        if magic != MAGIC:
            raise DataFormatError(self.rec_path, f"wrong magic 0x{magic:08x} at offset {pos} "
                                                 f"(expected 0x{MAGIC:08x}): not a RecordIO "
                                                 f"file or a stale index", where)
        cflag, length = lrec >> 29, lrec & _LEN_MASK
        if cflag > 3:
            raise DataFormatError(self.rec_path, f"invalid continuation flag {cflag} at offset {pos}", where)
        return magic, cflag, length

    def read(self, key: int) -> bytes:
        """The payload of record ``key`` (header + labels + image bytes), parts joined."""
        i = self._index_of(int(key))
        pos = int(self._offsets[i])
        where = f"key {key}"
        # fast path: one pread of the span up to the next record (its usual size)
        chunk = self._pread(int(self._spans[i]), pos)
        if len(chunk) >= _PREFIX.size:
            magic, lrec = _PREFIX.unpack_from(chunk)
            length = lrec & _LEN_MASK
            if magic == MAGIC and lrec >> 29 == 0 and _PREFIX.size + length <= len(chunk):
                return chunk[_PREFIX.size:_PREFIX.size + length]
        parts: list[bytes] = []
        while True:
            _, cflag, length = self._check_prefix(self._pread(_PREFIX.size, pos), pos, where)
            if (cflag in (0, 1)) != (not parts):
                raise DataFormatError(self.rec_path, f"continuation flag {cflag} out of sequence "
                                                     f"at offset {pos}", where)
            data = self._pread(length, pos + _PREFIX.size)
            if len(data) < length:
                raise DataFormatError(self.rec_path, f"truncated record at offset {pos}: needs "
                                      f"{length} bytes, file ends at {self.size}", where)
            parts.append(data)
            if cflag in (0, 3):
                return parts[0] if len(parts) == 1 else b"".join(parts)
            parts.append(_MAGIC_BYTES)
            pos += _PREFIX.size + length + (-length % 4)

    def read_header(self, key: int) -> tuple[IRHeader, int]:
        """(header, image byte count) of record ``key`` without reading the image when possible."""
        pos = self.offset(key)
        where = f"key {key}"
        head = self._pread(_PREFIX.size + _HEADER.size + 8, pos)
        _, cflag, length = self._check_prefix(head[:_PREFIX.size], pos, where)
        if cflag == 0 and length >= _HEADER.size and len(head) >= _PREFIX.size + _HEADER.size:
            flag = _HEADER.unpack_from(head, _PREFIX.size)[0]
            need = _HEADER.size + 4 * flag
            if need <= length:
                if _PREFIX.size + need > len(head):
                    head = self._pread(_PREFIX.size + need, pos)
                if len(head) >= _PREFIX.size + need:
                    header, _ = unpack_payload(head[_PREFIX.size:_PREFIX.size + need], self.rec_path, where)
                    return header, length - need
        header, image = unpack_payload(self.read(key), self.rec_path, where)
        return header, len(image)

    def __iter__(self) -> Iterator[int]:
        return iter(self.keys.tolist())

    def close(self) -> None:
        """Close this process's descriptor (reads reopen it)."""
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)
        self._fd, self._pid = None, -1

    def __enter__(self) -> "RecordIOReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except (OSError, AttributeError, TypeError):
            pass

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.update(_fd=None, _pid=-1, _lock=None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()


# ----------------------------------------------------------------------------- faces
def read_property(path: str | PathLike[str]) -> tuple[int, int, int]:
    """(num_classes, height, width) from an insightface ``property`` file (first line)."""
    path = Path(path)
    text = path.read_text(encoding="ascii", errors="replace").strip()
    first = text.splitlines()[0] if text else ""
    try:
        values = [int(v) for v in first.split(",")]
    except ValueError:
        values = []
    if len(values) != 3 or min(values) <= 0:
        raise DataFormatError(path, f"expected 'num_classes,height,width' on the first line, "
                                    f"found {first!r}")
    return values[0], values[1], values[2]


def _resolve_face_paths(path: Path) -> tuple[Path, Path, Path]:
    if path.is_dir():
        rec = path / "train.rec"
        if not rec.is_file():
            recs = sorted(path.glob("*.rec"))
            if len(recs) != 1:
                raise DataFileNotFoundError(rec, "train.rec (or a single .rec file) in the folder")
            rec = recs[0]
    else:
        rec = path
    return rec, rec.with_suffix(".idx"), rec.parent / "property"


class MXFaceRecord:
    """An insightface face dataset in RecordIO: ``read(i)`` gives (RGB uint8 HxWx3, class) of image i.

    ``path`` is a folder with train.rec/train.idx(/property) or a .rec file. Images are indexed
    0..len-1 in key order; see the module docstring for the header and label conventions.
    """

    def __init__(self, path: str | PathLike[str], *, write_rebuilt_index: bool = True) -> None:
        self.rec_path, idx_path, self.property_path = _resolve_face_paths(Path(path))
        self.reader = RecordIOReader(self.rec_path, idx_path, write_rebuilt_index=write_rebuilt_index)
        self._labels: np.ndarray | None = None
        self._ranges: np.ndarray | None = None
        self._num_classes: int | None = None
        self.image_shape: tuple[int, int] | None = None
        self._identity_keys: range | None = None
        self._image_keys: range | np.ndarray = self.reader.keys
        header = self._dataset_header()
        if header is not None:
            a, b = header
            self._image_keys, self._identity_keys = range(1, a), range(a, b)
        if self.property_path.is_file():
            self._num_classes, h, w = read_property(self.property_path)
            self.image_shape = (h, w)

    def _dataset_header(self) -> tuple[int, int] | None:
        if 0 not in self.reader:
            return None
        header, image_size = self.reader.read_header(0)
        if header.flag == 0:
            return None
        if image_size > 0:
            log.warning("%s: record 0 has %d labels and an image, so it is read as an image, not "
                        "as a dataset header", self.rec_path, header.flag)
            return None
        if header.flag < 2:
            raise DataFormatError(self.rec_path, f"dataset header has {header.flag} label(s); "
                                  f"expected 2 (first identity key, end key)", "key 0")
        a, b = exact_pair(header)
        if not 1 <= a <= b:
            raise DataFormatError(self.rec_path, f"dataset header range ({a}, {b}) is not "
                                  f"1 <= a <= b", "key 0")
        keys = self.reader.keys
        present = int(np.searchsorted(keys, b) - np.searchsorted(keys, 1))
        if present != b - 1:
            raise DataFormatError(self.reader.idx_path,
                                  f"dataset header (record 0 of {self.rec_path.name}) says keys "
                                  f"1..{b - 1} exist (images 1..{a - 1}, identities {a}..{b - 1}) "
                                  f"but the index holds {present} of them; header inconsistent "
                                  f"with the index", "key 0")
        return a, b

    # -- sizes
    def __len__(self) -> int:
        return len(self._image_keys)

    @property
    def has_header(self) -> bool:
        """Whether record 0 is a dataset header with identity records."""
        return self._identity_keys is not None

    @property
    def num_classes(self) -> int:
        """Number of classes: from ``property``, else identity records, else max label + 1 (warned)."""
        if self._num_classes is None:
            if self._identity_keys is not None:
                self._num_classes = len(self._identity_keys)
                source = "the identity records"
            else:
                self._num_classes = int(self.labels.max()) + 1 if len(self) else 0
                source = "the largest label"
            log.warning("%s: no property file; num_classes = %d taken from %s",
                        self.property_path, self._num_classes, source)
        return self._num_classes

    def key(self, i: int) -> int:
        """Record key of image ``i`` (0-based, negative indices count from the end)."""
        n = len(self._image_keys)
        if not -n <= i < n:
            raise IndexError(f"{self.rec_path}: image index {i} out of range for {n} images")
        return int(self._image_keys[i])

    # -- reading
    def read_bytes(self, i: int) -> bytes:
        """Encoded image bytes (JPEG/PNG as stored) of image ``i``."""
        key = self.key(i)
        return unpack_payload(self.reader.read(key), self.rec_path, f"key {key}")[1]

    def read(self, i: int) -> tuple[np.ndarray, int]:
        """(RGB uint8 HxWx3, class) of image ``i``; DataFormatError names the key if undecodable."""
        key = self.key(i)
        header, image = unpack_payload(self.reader.read(key), self.rec_path, f"key {key}")
        return decode_image(image, self.rec_path, f"key {key}"), self._label_of(header, key)

    def _label_of(self, header: IRHeader, key: int) -> int:
        try:
            return exact_label(header)
        except ValueError as err:
            raise DataFormatError(self.rec_path, str(err), f"key {key}") from err

    def label(self, i: int) -> int:
        """Class of image ``i`` (header only; no image decode)."""
        if self._labels is not None:
            return int(self._labels[i])
        key = self.key(i)
        return self._label_of(self.reader.read_header(key)[0], key)

    @property
    def identity_ranges(self) -> np.ndarray | None:
        """(num_identities, 2) int64 [start, end) image indices per identity record, or None
        when the file has no dataset header (validated against the image range)."""
        if self._identity_keys is None:
            return None
        if self._ranges is None:
            ranges = np.empty((len(self._identity_keys), 2), dtype=np.int64)
            n_keys = len(self._image_keys)
            for j, key in enumerate(progress(self._identity_keys, desc="identities", unit="id")):
                header, _ = self.reader.read_header(key)
                try:
                    start, end = exact_pair(header)
                except ValueError as err:
                    raise DataFormatError(self.rec_path, f"identity record: {err}", f"key {key}") from err
                if not 1 <= start <= end <= n_keys + 1:
                    raise DataFormatError(self.rec_path, f"identity range [{start}, {end}) is outside "
                                          f"the image keys 1..{n_keys}; header inconsistent with "
                                          f"the index", f"key {key}")
                ranges[j] = (start - 1, end - 1)
            self._ranges = ranges
        return self._ranges

    @property
    def labels(self) -> np.ndarray:
        """int64 class of every image, computed once: from identity records when they tile the
        images (one header read per identity), else by reading every image header."""
        if self._labels is None:
            labels = self._labels_from_identities()
            if labels is None:
                labels = np.empty(len(self), dtype=np.int64)
                for i in progress(range(len(self)), desc="labels", unit="img"):
                    key = int(self._image_keys[i])
                    labels[i] = self._label_of(self.reader.read_header(key)[0], key)
            self._labels = labels
        return self._labels

    def _labels_from_identities(self) -> np.ndarray | None:
        ranges = self.identity_ranges
        if ranges is None:
            return None
        order = np.argsort(ranges[:, 0], kind="stable")
        r = ranges[order]
        r = r[r[:, 1] > r[:, 0]]
        tiles = len(r) > 0 and r[0, 0] == 0 and r[-1, 1] == len(self) and bool(np.all(r[1:, 0] == r[:-1, 1]))
        if not tiles:
            log.warning("%s: identity records do not tile the images; reading every image header",
                        self.rec_path)
            return None
        labels = np.empty(len(self), dtype=np.int64)
        for start, end in r.tolist():
            labels[start:end] = self.label(start)
        return labels

    def __iter__(self) -> Iterator[tuple[np.ndarray, int]]:
        return (self.read(i) for i in range(len(self)))

    def close(self) -> None:
        """Close the underlying file descriptor."""
        self.reader.close()


# ----------------------------------------------------------------------------- writing faces
class FaceRecordWriter:
    """Writes insightface's face layout to ``out_dir``: train.rec/train.idx with record 0 header,
    image records 1..N, one identity record per label group, and ``property``.

    Add samples grouped by identity (all images of a class together). RGB arrays are encoded
    (JPEG at ``quality`` or PNG by ``fmt``); bytes are stored as given.
    """

    def __init__(self, out_dir: str | PathLike[str], *, num_classes: int | None = None,
                 image_size: tuple[int, int] | None = None, quality: int = 95, fmt: str = ".jpg",
                 overwrite: bool = False) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.property_path = self.out_dir / "property"
        if self.property_path.exists() and not overwrite:
            raise FileExistsError(f"{self.property_path} exists; pass overwrite=True to replace the dataset")
        self._writer = RecordIOWriter(self.out_dir / "train.rec", self.out_dir / "train.idx",
                                      overwrite=overwrite)
        self.num_classes = num_classes
        self.image_size = tuple(image_size) if image_size is not None else None
        self.quality, self.fmt = quality, fmt
        self._groups: list[tuple[int, int, int]] = []  # (label, first key, end key)
        self._seen: set[int] = set()
        self._next_key = 1
        self._writer.write(0, self._header_payload(0, 0))

    @staticmethod
    def _header_payload(a: int, b: int) -> bytes:
        fa, ia = _exact_fields(a)
        fb, ib = _exact_fields(b)
        return pack_record(IRHeader(2, [fa, fb], ia, ib), b"")

    def add(self, image: bytes | np.ndarray, label: int) -> int:
        """Append one image of class ``label``; returns its record key."""
        label = int(label)
        if label < 0 or (self.num_classes is not None and label >= self.num_classes):
            limit = f" (num_classes={self.num_classes})" if self.num_classes is not None else ""
            raise ValueError(f"label {label} must be a non-negative class id{limit}")
        if self._groups and self._groups[-1][0] == label:
            self._groups[-1] = (label, self._groups[-1][1], self._next_key + 1)
        else:
            if label in self._seen:
                raise ValueError(f"label {label} appears again after other labels: samples must be "
                                 f"grouped by identity")
            self._seen.add(label)
            self._groups.append((label, self._next_key, self._next_key + 1))
        if isinstance(image, np.ndarray):
            if self.image_size is None:
                self.image_size = (int(image.shape[0]), int(image.shape[1]))
            data = encode_image(image, self.fmt, self.quality)
        else:
            data = bytes(image)
            if self.image_size is None:
                self.image_size = image_size_of(data, "<sample>", f"key {self._next_key}")
        flabel, id2 = _exact_fields(label)
        key = self._next_key
        self._writer.write(key, pack_record(IRHeader(0, flabel, key, id2), data))
        self._next_key += 1
        return key

    def __len__(self) -> int:
        return self._next_key - 1

    def close(self) -> Path:
        """Write identity records, the header and ``property``; returns the output folder."""
        if self._writer.closed:
            return self.out_dir
        a = self._next_key
        for j, (_, start, end) in enumerate(self._groups):
            fs, i_s = _exact_fields(start)
            fe, i_e = _exact_fields(end)
            self._writer.write(a + j, pack_record(IRHeader(2, [fs, fe], i_s, i_e), b""))
        b = a + len(self._groups)
        self._writer.patch(0, self._header_payload(a, b))
        self._writer.close()
        num_classes = self.num_classes if self.num_classes is not None else (
            max(self._seen) + 1 if self._seen else 0)
        h, w = self.image_size or (0, 0)
        tmp = self.property_path.with_name(f"property.tmp{os.getpid()}")
        tmp.write_text(f"{num_classes},{h},{w}\n", encoding="ascii")
        os.replace(tmp, self.property_path)
        log.info("%s: wrote %d images of %d identities (%d classes)", self.out_dir, len(self),
                 len(self._groups), num_classes)
        return self.out_dir

    def abort(self) -> None:
        """Discard the partial dataset."""
        self._writer.abort()

    def __enter__(self) -> "FaceRecordWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_face_record(out_dir: str | PathLike[str], samples: Iterable[tuple[bytes | np.ndarray, int]],
                      num_classes: int | None = None, *, image_size: tuple[int, int] | None = None,
                      quality: int = 95, fmt: str = ".jpg", overwrite: bool = False) -> Path:
    """Write ``samples`` ((image bytes or RGB array, label), grouped by label) as an insightface
    train.rec/train.idx/property set in ``out_dir``; see ``FaceRecordWriter``."""
    with FaceRecordWriter(out_dir, num_classes=num_classes, image_size=image_size, quality=quality,
                          fmt=fmt, overwrite=overwrite) as writer:
        for image, label in samples:
            writer.add(image, label)
    return Path(out_dir)

