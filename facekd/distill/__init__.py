"""Distillation: the frozen teacher and its critic, the teacher-feature cache, connectors and the
registry of distillation losses (SRD and baselines).

The names below are imported lazily from their submodules on first use.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    "Teacher": "facekd.distill.teacher",
    "load_teacher": "facekd.distill.teacher",
    "TeacherError": "facekd.distill.teacher",
    "TeacherWeightsMissingError": "facekd.distill.teacher",
    "TEACHER_WEIGHTS_HELP": "facekd.distill.teacher",
    "prepare_teacher": "facekd.distill.setup",
    "TeacherSetup": "facekd.distill.setup",
    "TeacherCache": "facekd.distill.cache",
    "TeacherCacheSet": "facekd.distill.cache",
    "open_or_build_cache": "facekd.distill.cache",
    "CacheError": "facekd.distill.cache",
    "StaleCacheError": "facekd.distill.cache",
    "CosineCritic": "facekd.distill.critic",
    "LinearCritic": "facekd.distill.critic",
    "EmbeddingConnector": "facekd.distill.connectors",
    "MapConnector": "facekd.distill.connectors",
    "StudentOutput": "facekd.distill.outputs",
    "TeacherOutput": "facekd.distill.outputs",
    "DistillInputError": "facekd.distill.outputs",
    "DistillLoss": "facekd.distill.losses.registry",
    "register_loss": "facekd.distill.losses.registry",
    "build_loss": "facekd.distill.losses.registry",
    "build_losses": "facekd.distill.losses.registry",
    "list_losses": "facekd.distill.losses.registry",
    "loss_options": "facekd.distill.losses.registry",
    "LossSet": "facekd.distill.losses.registry",
    "LossError": "facekd.distill.losses.registry",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Import the defining submodule on first use (keeps ``import facekd.distill`` light)."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
