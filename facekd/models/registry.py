"""The one model factory: ``build_backbone(name, **options)`` over a decorator registry.

Model modules register builders with ``@register_backbone("r50")``; the factory imports every
model module once so that the registry is complete before a lookup.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable

from torch import nn

_BUILDERS: dict[str, Callable[..., nn.Module]] = {}
_KINDS: dict[str, str] = {}

# Modules whose import registers models; extend when adding a model family.
MODEL_MODULES = (
    "facekd.models.iresnet",
    "facekd.models.mobilefacenet",
    "facekd.models.cifar_resnet",
    "facekd.models.wide_resnet",
    "facekd.models.torchvision_models",
    "facekd.models.binary_nets",
)


class UnknownModelError(ValueError):
    """Raised for a model name that no module registered."""


def register_backbone(name: str, kind: str = "face") -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering a builder under ``name``; ``kind`` is "face" or "classifier"."""
    def wrap(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _BUILDERS and _BUILDERS[name] is not builder:
            raise ValueError(f"model name '{name}' registered twice")
        _BUILDERS[name] = builder
        _KINDS[name] = kind
        return builder
    return wrap


def _load_all() -> None:
    for mod in MODEL_MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as err:
            if err.name != mod:  # a real missing dependency inside the module
                raise


def list_backbones(kind: str | None = None) -> list[str]:
    """Registered model names, optionally only those of one kind ("face" or "classifier")."""
    _load_all()
    return sorted(n for n in _BUILDERS if kind is None or _KINDS[n] == kind)


def backbone_kind(name: str) -> str:
    """"face" or "classifier" for a registered name."""
    _load_all()
    if name not in _KINDS:
        raise UnknownModelError(f"unknown model '{name}'; known: {', '.join(list_backbones())}")
    return _KINDS[name]


def build_backbone(name: str, **options: Any) -> nn.Module:
    """Build a registered model by name; options are the builder's keyword arguments."""
    _load_all()
    if name not in _BUILDERS:
        raise UnknownModelError(f"unknown model '{name}'; known: {', '.join(list_backbones())}")
    return _BUILDERS[name](**options)
