"""Read user-supplied 5-point landmarks (CSV or JSON) so ``align`` can skip detection.

Keys are image paths relative to the input folder, with ``/`` separators. Points are in the
pixels of the image as stored on disk *after* EXIF rotation, in the ArcFace order: left eye,
right eye, nose tip, left mouth corner, right mouth corner (left/right as seen in the image).

* CSV: ``path,x1,y1,x2,y2,x3,y3,x4,y4,x5,y5`` per line; a first line whose coordinates are not
  numbers is taken as a header; blank lines and lines starting with ``#`` are ignored.
* JSON: either an object ``{"path": [[x, y], ... 5 points]}`` (a flat list of 10 numbers is also
  accepted) or a list of objects ``{"path": ..., "landmarks": [...]}``.
"""
from __future__ import annotations

import csv
import json
from os import PathLike
from pathlib import Path, PurePosixPath
from typing import Any, Callable

import numpy as np

from facekd.data.errors import DataFileNotFoundError, DataFormatError

__all__ = ["LANDMARK_READERS", "read_landmarks", "normalise_key", "as_landmarks"]

_Reader = Callable[[Path], dict[str, np.ndarray]]
LANDMARK_READERS: dict[str, _Reader] = {}


def _reader(*suffixes: str) -> Callable[[_Reader], _Reader]:
    def deco(fn: _Reader) -> _Reader:
        for s in suffixes:
            LANDMARK_READERS[s] = fn
        return fn
    return deco


def normalise_key(path: str) -> str:
    """Relative path with ``/`` separators and no leading ``./`` (the manifest's spelling)."""
    text = path.strip().replace("\\", "/")
    return str(PurePosixPath(text))


def as_landmarks(values: Any, source: str | PathLike[str], key: object) -> np.ndarray:
    """``values`` (5 pairs or 10 numbers) as a finite float64 5x2 array; DataFormatError otherwise."""
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise DataFormatError(source, f"landmarks are not numbers: {err}", key) from None
    if arr.size != 10:
        raise DataFormatError(source, f"expected 5 (x, y) points = 10 numbers, got {arr.size}", key)
    arr = arr.reshape(5, 2)
    if not np.all(np.isfinite(arr)):
        raise DataFormatError(source, "landmarks contain NaN or infinity", key)
    return arr


def _add(table: dict[str, np.ndarray], path: Path, name: Any, values: Any, where: object) -> None:
    if not isinstance(name, str) or not name.strip():
        raise DataFormatError(path, f"missing image path (got {name!r})", where)
    key = normalise_key(name)
    if key in table:
        raise DataFormatError(path, f"image {key!r} is listed twice", where)
    table[key] = as_landmarks(values, path, where)


@_reader(".csv", ".txt")
def _read_csv(path: Path) -> dict[str, np.ndarray]:
    table: dict[str, np.ndarray] = {}
    with open(path, newline="", encoding="utf-8") as f:
        rows = [(n, r) for n, r in enumerate(csv.reader(f), 1)
                if r and any(c.strip() for c in r) and not r[0].lstrip().startswith("#")]
    for k, (line, row) in enumerate(rows):
        if len(row) != 11:
            raise DataFormatError(path, f"expected 11 columns (path + 10 coordinates), got {len(row)}",
                                  f"line {line}")
        if k == 0:
            try:
                [float(c) for c in row[1:]]
            except ValueError:
                continue  # header line
        _add(table, path, row[0], [c.strip() for c in row[1:]], f"line {line}")
    return table


@_reader(".json")
def _read_json(path: Path) -> dict[str, np.ndarray]:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataFormatError(path, f"not valid JSON: {err}") from None
    table: dict[str, np.ndarray] = {}
    if isinstance(obj, dict):
        for name, values in obj.items():
            _add(table, path, name, values, name)
    elif isinstance(obj, list):
        for i, entry in enumerate(obj):
            if not isinstance(entry, dict) or "path" not in entry or "landmarks" not in entry:
                raise DataFormatError(path, "list entries must be objects with 'path' and 'landmarks'",
                                      f"entry {i}")
            _add(table, path, entry["path"], entry["landmarks"], f"entry {i}")
    else:
        raise DataFormatError(path, f"expected a JSON object or list, got {type(obj).__name__}")
    return table


def read_landmarks(path: str | PathLike[str]) -> dict[str, np.ndarray]:
    """{relative image path: 5x2 float64 landmarks} from a CSV (.csv/.txt) or JSON (.json) file."""
    path = Path(path)
    if not path.is_file():
        raise DataFileNotFoundError(path, "landmarks file (--landmarks)")
    reader = LANDMARK_READERS.get(path.suffix.lower())
    if reader is None:
        raise DataFormatError(path, f"unknown landmarks file type {path.suffix!r}; use one of "
                                    f"{sorted(LANDMARK_READERS)}")
    return reader(path)
