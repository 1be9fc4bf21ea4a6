"""The alignment manifest: one JSON object per line, appended and flushed as each image is done,
so an interrupted run loses nothing and the next run skips what is recorded.

A record holds ``source`` (image path relative to the input folder), ``status`` ("ok" or a
failure reason code), ``reason`` (human text), ``crop`` (relative to the output folder),
``box``, ``landmarks`` (5 [x, y] in source pixels), ``score``, ``faces`` (how many faces were
found), ``kept`` (which one, in detector order), ``face`` (rank of this crop with
``--all-faces``), ``image_size`` [h, w] and ``run`` (a stamp shared by every record of one run).
A source may have several records (several faces, or re-runs); the records of its latest run
are the ones that count.
"""
from __future__ import annotations

import json
from os import PathLike
from pathlib import Path
from typing import Any, Iterable

from facekd.data.errors import DataFormatError
from facekd.log import get_logger

__all__ = ["ManifestWriter", "load_manifest", "STATUS_OK"]

log = get_logger(__name__)

STATUS_OK = "ok"


class ManifestWriter:
    """Appends records to a JSONL manifest, flushing after each batch (``truncate`` starts afresh).

    Flushed lines survive the process being killed; they are not fsynced (a power cut may lose
    the last few, which the next run then simply redoes).
    """

    def __init__(self, path: str | PathLike[str], *, truncate: bool = False) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "w" if truncate else "a", encoding="utf-8")

    def write(self, records: Iterable[dict[str, Any]]) -> None:
        """Append ``records`` and flush them to disk."""
        for rec in records:
            self._file.write(json.dumps(rec, separators=(",", ":")) + "\n")
        self._file.flush()

    def close(self) -> None:
        """Close the file (idempotent)."""
        if not self._file.closed:
            self._file.close()

    def __enter__(self) -> "ManifestWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def load_manifest(path: str | PathLike[str]) -> dict[str, list[dict[str, Any]]]:
    """{source: records of its latest run}; {} when the file does not exist.

    A truncated last line (a run killed mid-write) is ignored with a warning; a malformed line
    elsewhere raises ``DataFormatError`` naming it.
    """
    path = Path(path)
    if not path.is_file():
        return {}
    lines = path.read_text(encoding="utf-8").splitlines()
    latest: dict[str, list[dict[str, Any]]] = {}
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            source, run = rec["source"], rec.get("run")
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            if n == len(lines):
                log.warning("%s: ignoring an incomplete last line (interrupted run?)", path)
                break
            raise DataFormatError(path, f"not a manifest record: {err}", f"line {n}") from None
        group = latest.get(source)
        if group is None or group[0].get("run") != run:
            latest[source] = [rec]
        else:
            group.append(rec)
    return latest
