"""The one base of facekd's file errors: a path and a problem, shown as ``PATH: problem``.

Each area keeps its own subclass (``WeightsFileError``, ``OnnxModelError``, ``CacheError``,
``DataFormatError``...) so ``except`` sites stay specific; ``except FileProblemError`` catches
them all. Instances pickle with their arguments, so they cross DataLoader/DDP worker boundaries.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

__all__ = ["FileProblemError"]


class FileProblemError(ValueError):
    """A file (or directory) facekd cannot use; ``path`` is the file, ``problem`` says what is wrong."""

    def __init__(self, path: str | os.PathLike[str], problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.path, self.problem))
