"""Entry points (``python -m facekd.pipelines.NAME``): train, distill, classify, demo.

The names below are imported lazily from their submodules on first use.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    "FaceTrainConfig": "facekd.pipelines.train",
    "FaceTrainTask": "facekd.pipelines.train",
    "DistillConfig": "facekd.pipelines.distill",
    "DistillTask": "facekd.pipelines.distill",
    "ClassifyConfig": "facekd.pipelines.classify",
    "ClassifyTask": "facekd.pipelines.classify",
    "DemoConfig": "facekd.pipelines.demo",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Import the defining submodule on first use (keeps ``import facekd.pipelines`` light)."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
