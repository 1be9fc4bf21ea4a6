"""The one model factory: ``build_backbone(name, **options)`` over the ``BACKBONES`` registry.

Model modules register builders with ``@register_backbone("r50")``; the first lookup imports every
module of ``facekd.models`` (none of them imports anything heavy at module level), so a new
backbone is one new module.
The contract a builder meets is written in ``facekd.models.interface``.
"""
from __future__ import annotations

from typing import Any, Callable

from torch import nn

from facekd.registry import Registry

BACKBONE_KINDS = ("face", "classifier")
"""A face backbone returns an embedding; a classifier returns logits."""


class UnknownModelError(ValueError):
    """Raised for a model name that no module registered."""


BACKBONES: Registry[Callable[..., nn.Module]] = Registry(
    "model", kinds=BACKBONE_KINDS, error=UnknownModelError, package="facekd.models")
"""Every registered backbone builder by name, with its kind."""


def register_backbone(name: str, kind: str = "face") -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering a builder under ``name``; ``kind`` is "face" or "classifier"."""
    return BACKBONES.register(name, kinds=(kind,))


def list_backbones(kind: str | None = None) -> list[str]:
    """Registered model names, optionally only those of one kind ("face" or "classifier")."""
    return BACKBONES.names(kind)


def backbone_kind(name: str) -> str:
    """"face" or "classifier" for a registered name."""
    return BACKBONES.entry(name).kinds[0]


def build_backbone(name: str, **options: Any) -> nn.Module:
    """Build a registered model by name; options are the builder's keyword arguments."""
    return BACKBONES.get(name)(**options)
