"""``synthetic[:key=value,...]``: procedural face identities rendered on demand (``facekd.data.synthetic``).

Keys: ``ids``, ``per_id``, ``size``, ``seed``, ``first``, ``first_sample`` and the difficulty knobs
of ``facekd.data.synthetic_render.Difficulty``, e.g. ``synthetic:ids=400,per_id=24,size=32,seed=0``.
As face data the identities start at ``TRAIN_BASE`` (a pool: ``UNLABELED_BASE``), 112 px by default.
As classification data the identities are the classes, 32 px by default, and ``test`` holds further
photos (``test_per_id``, default per_id // 4) of the same identities.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from facekd.data.sources import ImageSource, OpenRequest, register_source

__all__ = ["parse_synthetic_spec", "open_face_synthetic", "open_classification_synthetic"]

_SYNTHETIC_KEYS: dict[str, tuple[str, type]] = {
    "ids": ("num_identities", int), "num_identities": ("num_identities", int),
    "per_id": ("images_per_identity", int), "images_per_identity": ("images_per_identity", int),
    "size": ("size", int), "seed": ("seed", int),
    "first": ("first_identity", int), "first_identity": ("first_identity", int),
    "first_sample": ("first_sample", int),
}


def parse_synthetic_spec(spec: str) -> dict[str, Any]:
    """Keyword arguments of ``SyntheticFaceDataset`` from ``synthetic[:key=value,...]``
    (defaults: 400 ids x 24 images, 112 px, seed 0)."""
    from facekd.data.synthetic_render import Difficulty

    knobs = {f.name for f in dataclasses.fields(Difficulty)}
    out: dict[str, Any] = {"num_identities": 400, "images_per_identity": 24, "size": 112, "seed": 0}
    _, _, rest = spec.partition(":")
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep:
            raise ValueError(f"{spec!r}: expected key=value, got {item!r}")
        if key in _SYNTHETIC_KEYS:
            name, cast = _SYNTHETIC_KEYS[key]
        elif key in knobs:
            name, cast = key, float
        else:
            valid = sorted(set(_SYNTHETIC_KEYS) | knobs)
            raise ValueError(f"{spec!r}: unknown synthetic key {key!r}; valid keys: {', '.join(valid)}")
        try:
            out[name] = cast(value.strip())
        except ValueError:
            raise ValueError(f"{spec!r}: {key} must be {cast.__name__}, got {value!r}") from None
    return out


@register_source("synthetic", kinds=("face",), example="synthetic[:ids=..,per_id=..,size=..,seed=..]")
def open_face_synthetic(argument: str, request: OpenRequest) -> ImageSource:
    """A ``SyntheticFaceDataset`` in the training (or, for a pool, the unlabeled) identity namespace."""
    from facekd.data.synthetic import TRAIN_BASE, UNLABELED_BASE, SyntheticFaceDataset

    kwargs = parse_synthetic_spec(f"synthetic:{argument}")
    kwargs.setdefault("first_identity", UNLABELED_BASE if request.unlabeled else TRAIN_BASE)
    return SyntheticFaceDataset(**kwargs)


@register_source("synthetic", kinds=("classify",),
                 example="synthetic[:ids=..,per_id=..,size=32,seed=..,test_per_id=..]")
def open_classification_synthetic(argument: str, request: OpenRequest) -> ImageSource:
    """Identities as classes; ``test`` holds later photos of the same identities."""
    from facekd.data.classification import DataSpecError, parse_options
    from facekd.data.synthetic import UNLABELED_BASE, SyntheticFaceDataset

    items = [part.strip() for part in argument.split(",") if part.strip()]
    test_items = [i for i in items if i.partition("=")[0].strip() == "test_per_id"]
    rest = ",".join(i for i in items if i not in test_items)
    try:
        kwargs = parse_synthetic_spec(f"synthetic:{rest}")
    except ValueError as err:
        raise DataSpecError(f"{err} (or test_per_id for the held-out photos)") from None
    if not any(i.partition("=")[0].strip() == "size" for i in items):
        kwargs["size"] = 32
    if request.unlabeled:
        kwargs.setdefault("first_identity", UNLABELED_BASE)
    elif request.split == "test":
        per_id = kwargs["images_per_identity"]
        test_options = parse_options(f"synthetic:{argument}", ",".join(test_items), {"test_per_id": int})
        kwargs["first_sample"] = kwargs.get("first_sample", 0) + per_id
        kwargs["images_per_identity"] = test_options.get("test_per_id", max(1, per_id // 4))
    try:
        return SyntheticFaceDataset(**kwargs)
    except (ValueError, TypeError) as err:
        raise DataSpecError(f"'synthetic:{argument}': {err}") from None
