"""One registry of data sources for every entry point: training data, unlabeled pools,
classification data and evaluation sources.

A spec is ``prefix:argument``: ``rec:/data/ms1m``, ``folder:photos``, ``synthetic:ids=400,size=32``,
``cifar100:ROOT``, ``cifar10:ROOT``, ``tinyimagenet:ROOT``, ``digits:size=32``, ``npy:gallery.npy``, ``bin:lfw.bin``;
a bare word that is a prefix (``synthetic``, ``digits``) is that source with no argument, and a
bare path is recognised by ``detect`` in ``detection_order()`` (the one place that orders them).

Each source serves one or more *kinds*:

- ``face``: face images with identity labels (``open_dataset``, ``open_unlabeled``, and the image
  sources of ``facekd.eval.identify``); the opener returns a reader (``ImageSource``);
- ``classify``: classification data with ``train``/``test`` splits (``open_classification*``);
- ``embeddings``: precomputed embeddings for evaluation (``npy``); the opener returns an object
  with ``embeddings`` and ``labels`` (or None).

A source with the same prefix may register one opener per kind (``synthetic`` and ``folder`` do).
Openers take ``(argument, OpenRequest)``: the split and whether the images are an unlabeled pool.
The built-in formats are the modules of ``facekd.data.formats`` (imported on first use); adding a
format is one new module there (or anywhere) calling ``register_source``.
"""
from __future__ import annotations

from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np

from facekd.registry import Entry, Registry, UnknownNameError

__all__ = ["KINDS", "SPLITS", "ImageSource", "OpenRequest", "SourceOpener", "DATA_SOURCES", "DETECTION_ORDER",
           "UnknownSourceError", "register_source", "split_spec", "detection_order", "resolve_source",
           "open_data_source", "source_examples"]

KINDS = ("face", "classify", "embeddings")
"""What a source serves: face images, classification data (with splits), precomputed embeddings."""
SPLITS = ("train", "test")

DETECTION_ORDER: tuple[str, ...] = ("synthetic", "npy", "rec", "bin", "folder")
"""The order in which a bare path (no ``prefix:``) is tried against each source's ``detect``.
Sources registered with a detector but not listed here are tried after the listed ones except the
last (``folder``, which accepts any directory), in the order they registered."""


class ImageSource(Protocol):
    """What every image reader offers: ``len()``, ``num_classes`` and ``read(i) -> (RGB uint8, label)``."""

    def __len__(self) -> int: ...

    @property
    def num_classes(self) -> int: ...

    def read(self, i: int) -> tuple[np.ndarray, int]: ...


@dataclass(frozen=True)
class OpenRequest:
    """What the caller wants from a source: a ``split`` (``train``/``test``) and whether the images
    serve as an unlabeled pool (labels dropped; synthetic sources use the pool's identities)."""

    split: str = "train"
    unlabeled: bool = False


SourceOpener = Callable[[str, OpenRequest], Any]


class UnknownSourceError(UnknownNameError):
    """A ``prefix:`` that no source registered for the requested kind."""


DATA_SOURCES: Registry[SourceOpener] = Registry("data source", kinds=KINDS, error=UnknownSourceError,
                                                package="facekd.data.formats")
"""prefix -> opener, per kind; entries carry ``example`` (for help and errors) and ``detect``."""


def register_source(name: str, *, kinds: tuple[str, ...], example: str | None = None,
                    detect: Callable[[Path], bool] | None = None) -> Callable[[SourceOpener], SourceOpener]:
    """Decorator registering ``opener(argument, request)`` for specs ``name:argument`` of ``kinds``;
    ``detect(path)`` lets a bare path be recognised, ``example`` shows the spec in errors and help."""
    return DATA_SOURCES.register(name, kinds=kinds, example=example or f"{name}:PATH", detect=detect)


def split_spec(spec: str | PathLike[str]) -> tuple[str, str]:
    """(prefix, argument) of ``prefix:argument``; ("", spec) when the text has no registered prefix."""
    text = str(spec).strip()
    prefix, sep, argument = text.partition(":")
    if prefix in DATA_SOURCES:
        return prefix, argument if sep else ""
    return "", text


def detection_order(kind: str) -> list[Entry[SourceOpener]]:
    """The entries serving ``kind`` that can recognise a bare path, in the order they are tried."""
    with_detector = [e for e in DATA_SOURCES.entries(kind, ordered=True) if e.meta.get("detect") is not None]
    listed = {name: i for i, name in enumerate(DETECTION_ORDER)}
    head = sorted((e for e in with_detector if e.name in listed and e.name != DETECTION_ORDER[-1]),
                  key=lambda e: listed[e.name])
    extra = [e for e in with_detector if e.name not in listed]
    tail = [e for e in with_detector if e.name == DETECTION_ORDER[-1]]
    return head + extra + tail


def resolve_source(spec: str | PathLike[str], kinds: tuple[str, ...]) -> tuple[Entry[SourceOpener], str] | None:
    """(entry, argument) for ``spec`` among sources of ``kinds`` (first kind first), by prefix or, for a
    bare path, by detection; None when no source takes it."""
    prefix, argument = split_spec(spec)
    for kind in kinds:
        if prefix:
            for entry in DATA_SOURCES.entries(kind):
                if entry.name == prefix:
                    return entry, argument
            continue
        if not argument:
            continue
        path = Path(argument).expanduser()
        for entry in detection_order(kind):
            if entry.meta["detect"](path):
                return entry, argument
    return None


def open_data_source(spec: str | PathLike[str], kinds: tuple[str, ...],
                     request: OpenRequest = OpenRequest()) -> Any | None:
    """What the source of ``spec`` opens for ``request`` (None when no source of ``kinds`` takes it)."""
    found = resolve_source(spec, kinds)
    if found is None:
        return None
    entry, argument = found
    return entry.value(argument, request)


def source_examples(kind: str) -> str:
    """The spec forms of ``kind``, comma-separated, for help strings and errors."""
    return ", ".join(e.meta["example"] for e in DATA_SOURCES.entries(kind))
