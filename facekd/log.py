"""Console logging and progress bars, one style for every facekd command.

Only rank 0 of a distributed run logs at INFO; other ranks log warnings and errors only, and
their progress bars are disabled.
"""
from __future__ import annotations

import logging
import os
import sys
from typing import Iterable, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")

_FORMAT = "%(asctime)s %(levelname).1s %(name)s: %(message)s"


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def setup_logging(level: int = logging.INFO) -> None:
    """Configure the ``facekd`` logger once (idempotent); quieter on ranks other than 0."""
    root = logging.getLogger("facekd")
    if getattr(root, "_facekd_configured", False):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(_FORMAT, datefmt="%H:%M:%S"))
    root.addHandler(handler)
    root.setLevel(level if _rank() == 0 else logging.WARNING)
    root.propagate = False
    root._facekd_configured = True  # type: ignore[attr-defined]


def get_logger(name: str) -> logging.Logger:
    """A child of the ``facekd`` logger (``get_logger(__name__)`` in every module)."""
    setup_logging()
    return logging.getLogger(name if name.startswith("facekd") else f"facekd.{name}")


def progress(iterable: Iterable[T] | None = None, *, total: int | None = None, desc: str = "",
             unit: str = "it", disable: bool | None = None, leave: bool = True) -> tqdm:
    """A tqdm progress bar on stderr, disabled off rank 0 and when FACEKD_NO_PROGRESS is set."""
    if disable is None:
        disable = _rank() != 0 or bool(os.environ.get("FACEKD_NO_PROGRESS"))
    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=disable, leave=leave,
                dynamic_ncols=True, file=sys.stderr)
