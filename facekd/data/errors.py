"""Exceptions shared by facekd's data readers and writers.

Every error about a data file names the file and, where there is one, the record, key or index
inside it, so a user can find the bad spot without a debugger.
"""
from __future__ import annotations

from os import PathLike
from pathlib import Path

from facekd.errors import FileProblemError

__all__ = ["DataFormatError", "DataFileNotFoundError"]


class DataFormatError(FileProblemError):
    """A data file (or an entry inside it) is malformed, truncated or not what facekd expects.

    ``path`` is the offending file; ``key`` is the record key, index or offset inside it
    (``None`` when the problem concerns the file as a whole).
    """

    def __init__(self, path: str | PathLike[str], problem: str, key: object | None = None) -> None:
        super().__init__(path, problem)
        self.key = key
        if key is not None:
            self.args = (f"{self.path} [{key}]: {problem}",)

    def __reduce__(self):  # keep the three arguments when sent across DataLoader workers
        return (type(self), (self.path, self.problem, self.key))


class DataFileNotFoundError(FileNotFoundError):
    """A data file facekd needs is missing; the message says which file and what it is for."""

    def __init__(self, path: str | PathLike[str], what: str) -> None:
        self.path = Path(path)
        self.what = what
        super().__init__(f"{self.path}: {what} not found")

    def __reduce__(self):
        return (type(self), (self.path, self.what))
