"""The recognised file layouts (``FORMATS``): each a small ``WeightsFormat`` class registered with
``@register_format``; the first whose ``matches`` accepts a loaded dict extracts its backbone state
dict and/or its classifier (class centres [C, D]).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar, Mapping

from torch import Tensor

from facekd.models.weights.checkpoint import (FACEKD_FORMAT, FACEKD_KEYS, FACEKD_VERSION, is_state_dict,
                                              strip_wrapper_prefixes)
from facekd.models.weights.files import WeightsFileError
from facekd.models.weights.shards import merged_or_single_shard, shard_weight
from facekd.registry import Registry

__all__ = [
    "WeightsFormat", "FORMATS", "register_format", "list_formats", "detect_format", "FacekdCheckpoint",
    "ArcfaceTorchCheckpoint", "NestedStateDict", "ClassifierFile", "PlainStateDict", "backbone_state_dict",
]


class WeightsFormat:
    """A recognised file layout: how to tell it apart and where its backbone and classifier are."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""

    @staticmethod
    def matches(obj: Mapping[str, Any]) -> bool:
        """Whether a loaded dict has this layout."""
        raise NotImplementedError

    @staticmethod
    def backbone(obj: Mapping[str, Any], path: Path) -> Mapping[str, Tensor] | None:
        """The backbone state dict, or None when this layout carries none."""
        return None

    @staticmethod
    def classifier(obj: Mapping[str, Any], path: Path) -> Tensor | None:
        """The class centres [C, D], or None when this layout carries none."""
        return None


FORMATS: Registry[type[WeightsFormat]] = Registry("weights format")
"""Recognised layouts by name; detection tries them in registration order."""


def register_format(cls: type[WeightsFormat]) -> type[WeightsFormat]:
    """Class decorator adding a layout under ``cls.name``; detection tries layouts in registration order."""
    FORMATS.add(cls.name, cls, description=cls.description)
    return cls


def list_formats() -> list[str]:
    """Names of the recognised layouts, in detection order."""
    return [e.name for e in FORMATS.entries(ordered=True)]


def detect_format(obj: Mapping[str, Any], path: str | os.PathLike[str]) -> type[WeightsFormat]:
    """The first registered layout that matches ``obj``; a WeightsFileError naming the keys otherwise."""
    for fmt in (e.value for e in FORMATS.entries(ordered=True)):
        if fmt.matches(obj):
            return fmt
    keys = ", ".join(repr(k) for k in list(obj)[:8]) or "none"
    raise WeightsFileError(path, f"unrecognised layout (top-level keys: {keys}); expected a state dict, an "
                                 "arcface_torch checkpoint, a facekd checkpoint or a dict with the state dict "
                                 "under 'model' or 'state_dict'")


@register_format
class FacekdCheckpoint(WeightsFormat):
    """facekd's own checkpoint (make_facekd_checkpoint)."""

    name = "facekd"
    description = "facekd checkpoint"

    @staticmethod
    def matches(obj: Mapping[str, Any]) -> bool:
        return obj.get("format") == FACEKD_FORMAT

    @staticmethod
    def validate(obj: Mapping[str, Any], path: Path) -> None:
        """Raise unless ``obj`` is a complete facekd checkpoint this version can read."""
        version = obj.get("version")
        if not isinstance(version, int) or version > FACEKD_VERSION:
            raise WeightsFileError(path, f"facekd checkpoint version {version!r} is not supported by this facekd "
                                         f"(reads up to {FACEKD_VERSION}); upgrade facekd")
        missing = [k for k in FACEKD_KEYS if k not in obj]
        if missing:
            raise WeightsFileError(path, f"facekd checkpoint lacks key(s) {', '.join(missing)}")
        if not is_state_dict(obj["backbone"]):
            raise WeightsFileError(path, "facekd checkpoint's 'backbone' is not a state dict of tensors")

    @staticmethod
    def backbone(obj: Mapping[str, Any], path: Path) -> Mapping[str, Tensor] | None:
        FacekdCheckpoint.validate(obj, path)
        return obj["backbone"]

    @staticmethod
    def classifier(obj: Mapping[str, Any], path: Path) -> Tensor | None:
        FacekdCheckpoint.validate(obj, path)
        return None if obj["head"] is None else shard_weight(obj["head"])


@register_format
class ArcfaceTorchCheckpoint(WeightsFormat):
    """arcface_torch training checkpoint ``checkpoint_gpu_{rank}.pt`` (backbone + this rank's centres)."""

    name = "arcface_torch_checkpoint"
    description = "arcface_torch training checkpoint"

    @staticmethod
    def matches(obj: Mapping[str, Any]) -> bool:
        return "state_dict_backbone" in obj

    @staticmethod
    def backbone(obj: Mapping[str, Any], path: Path) -> Mapping[str, Tensor] | None:
        return obj["state_dict_backbone"]

    @staticmethod
    def classifier(obj: Mapping[str, Any], path: Path) -> Tensor | None:
        if obj.get("state_dict_softmax_fc") is None:
            return None
        return merged_or_single_shard(obj["state_dict_softmax_fc"], path)


@register_format
class NestedStateDict(WeightsFormat):
    """A dict with the model's state dict under 'model' (RepDistiller), 'state_dict' or 'model_state_dict'."""

    name = "nested_state_dict"
    description = "training checkpoint with the state dict under 'model'/'state_dict'"
    KEYS: ClassVar[tuple[str, ...]] = ("model", "state_dict", "model_state_dict")

    @staticmethod
    def matches(obj: Mapping[str, Any]) -> bool:
        return any(is_state_dict(obj.get(k)) for k in NestedStateDict.KEYS)

    @staticmethod
    def backbone(obj: Mapping[str, Any], path: Path) -> Mapping[str, Tensor] | None:
        return next(obj[k] for k in NestedStateDict.KEYS if is_state_dict(obj.get(k)))


@register_format
class ClassifierFile(WeightsFormat):
    """A classifier alone: a head state dict whose only matrix is ``weight`` [C, D] (e.g. softmax_fc_gpu_0.pt)."""

    name = "classifier"
    description = "classifier (class centres) file"
    CLASSIFIER_KEYS: ClassVar[frozenset[str]] = frozenset(
        {"weight", "bias", "weight_mom", "weight_activated", "weight_activated_mom", "weight_index",
         "teacher_sha256"})

    @staticmethod
    def matches(obj: Mapping[str, Any]) -> bool:
        sd = strip_wrapper_prefixes(obj)
        return is_state_dict(sd) and set(sd) <= ClassifierFile.CLASSIFIER_KEYS and shard_weight(sd) is not None

    @staticmethod
    def classifier(obj: Mapping[str, Any], path: Path) -> Tensor | None:
        return merged_or_single_shard(obj, path)


@register_format
class PlainStateDict(WeightsFormat):
    """A plain backbone state dict (arcface_torch's released ``backbone.pth``)."""

    name = "state_dict"
    description = "plain backbone state dict"

    @staticmethod
    def matches(obj: Mapping[str, Any]) -> bool:
        return is_state_dict(obj)

    @staticmethod
    def backbone(obj: Mapping[str, Any], path: Path) -> Mapping[str, Tensor] | None:
        return obj


def backbone_state_dict(obj: Mapping[str, Any], path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """The backbone state dict of a loaded file of any recognised layout, wrapper prefixes stripped."""
    fmt = detect_format(obj, path)
    sd = fmt.backbone(obj, Path(path))
    if sd is None:
        raise WeightsFileError(path, f"holds no backbone weights (it is a {fmt.description})")
    if not is_state_dict(sd):
        raise WeightsFileError(path, f"the backbone entry of this {fmt.description} is not a state dict of tensors")
    return strip_wrapper_prefixes(sd)
