"""Distillation: the frozen teacher and its critic, the teacher-feature cache, connectors and the
registry of distillation losses (SRD and baselines).

The names below are imported lazily from their submodules on first use.
"""
from __future__ import annotations

from facekd._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
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
})
