"""Optimizers and per-step learning-rate schedules, each a small entry in a registry.

A schedule is a multiplier of the peak lr as a function of the optimizer step: a linear
warm-up, then polynomial or cosine decay to ``min_lr`` over the remaining steps, or step decay
(x gamma at given epochs, the CIFAR protocol), or constant. It drives ``LambdaLR`` so the
scheduler state in checkpoints stays plain numbers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from facekd.registry import Registry

__all__ = ["OptimError", "OPTIMIZERS", "SCHEDULES", "register_optimizer", "build_optimizer", "list_optimizers",
           "register_schedule", "list_schedules", "OptimSettings", "ScheduleSpec", "build_scheduler", "lr_factor",
           "milestones_tuple"]


class OptimError(ValueError):
    """An optimizer or schedule setting that cannot be used; the message says which."""


OptimizerBuilder = Callable[[list[dict], "OptimSettings"], Optimizer]
OPTIMIZERS: Registry[OptimizerBuilder] = Registry("optimizer", error=OptimError)
"""Optimizer builders ``builder(param_groups, settings)`` by name."""


@dataclass(frozen=True)
class OptimSettings:
    """What an optimizer builder needs (a view of the training config)."""

    lr: float
    momentum: float = 0.9
    nesterov: bool = False
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 5e-4


def register_optimizer(name: str) -> Callable[[OptimizerBuilder], OptimizerBuilder]:
    """Decorator registering ``builder(param_groups, settings) -> Optimizer`` under ``name``."""
    return OPTIMIZERS.register(name)


def list_optimizers() -> list[str]:
    """Registered optimizer names."""
    return OPTIMIZERS.names()


@register_optimizer("sgd")
def _sgd(groups: list[dict], s: OptimSettings) -> Optimizer:
    return torch.optim.SGD(groups, lr=s.lr, momentum=s.momentum, nesterov=s.nesterov and s.momentum > 0,
                           weight_decay=s.weight_decay)


@register_optimizer("adamw")
def _adamw(groups: list[dict], s: OptimSettings) -> Optimizer:
    return torch.optim.AdamW(groups, lr=s.lr, betas=tuple(s.betas), weight_decay=s.weight_decay)


def build_optimizer(name: str, named_params: Iterable[tuple[str, nn.Parameter]], settings: OptimSettings) -> Optimizer:
    """An optimizer over the given (name, parameter) pairs, one group, in the given order."""
    builder = OPTIMIZERS.get(name)
    if not settings.lr > 0:
        raise OptimError(f"learning rate must be positive, got {settings.lr}")
    pairs = list(named_params)
    if not pairs:
        raise OptimError("nothing to optimise: no module has a parameter with requires_grad=True")
    return builder([{"params": [p for _, p in pairs], "names": [n for n, _ in pairs]}], settings)


# ----------------------------------------------------------------------------------------------
# schedules

@dataclass(frozen=True)
class ScheduleSpec:
    """Shape of the lr curve in optimizer steps; ``min_factor`` = min_lr / lr."""

    total_steps: int
    steps_per_epoch: int
    warmup_steps: int = 0
    power: float = 2.0
    min_factor: float = 0.0
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1


DecayFn = Callable[[int, ScheduleSpec], float]
SCHEDULES: Registry[DecayFn] = Registry("schedule", error=OptimError)
"""Decay functions ``decay(step, spec) -> lr multiplier`` by name."""


def register_schedule(name: str) -> Callable[[DecayFn], DecayFn]:
    """Decorator registering ``decay(step, spec) -> lr multiplier`` (applied after the warm-up)."""
    return SCHEDULES.register(name)


def list_schedules() -> list[str]:
    """Registered schedule names."""
    return SCHEDULES.names()


def _progress(step: int, spec: ScheduleSpec) -> float:
    """Fraction of the decay phase done at ``step`` (0 at the end of warm-up, 1 at the last step)."""
    span = max(1, spec.total_steps - spec.warmup_steps)
    return min(1.0, max(0.0, (step - spec.warmup_steps) / span))


@register_schedule("poly")
def _poly(step: int, spec: ScheduleSpec) -> float:
    return spec.min_factor + (1.0 - spec.min_factor) * (1.0 - _progress(step, spec)) ** spec.power


@register_schedule("cosine")
def _cosine(step: int, spec: ScheduleSpec) -> float:
    return spec.min_factor + (1.0 - spec.min_factor) * 0.5 * (1.0 + math.cos(math.pi * _progress(step, spec)))


@register_schedule("step")
def _step(step: int, spec: ScheduleSpec) -> float:
    epoch = step // max(1, spec.steps_per_epoch)
    return spec.gamma ** sum(1 for m in spec.milestones if epoch >= m)


@register_schedule("constant")
def _constant(step: int, spec: ScheduleSpec) -> float:
    return 1.0


class _Factor:
    """The lr multiplier LambdaLR calls; rebuilt from the config on resume, never saved in checkpoints."""

    def __init__(self, name: str, spec: ScheduleSpec) -> None:
        self._decay = SCHEDULES.get(name)
        self._spec = spec

    def __call__(self, step: int) -> float:
        return lr_factor(step, self._spec, self._decay)


def lr_factor(step: int, spec: ScheduleSpec, decay: DecayFn) -> float:
    """Multiplier of the peak lr at optimizer ``step``: linear warm-up ((step+1)/warmup), then ``decay``."""
    if step < spec.warmup_steps:
        return (step + 1) / spec.warmup_steps
    return decay(step, spec)


def build_scheduler(name: str, optimizer: Optimizer, spec: ScheduleSpec) -> LambdaLR:
    """A per-step ``LambdaLR`` following the named schedule; call ``.step()`` after every optimizer step."""
    SCHEDULES.get(name)  # an unknown name raises OptimError listing the known ones
    if spec.total_steps < 1:
        raise OptimError(f"a schedule needs at least one step, got total_steps={spec.total_steps}")
    if spec.warmup_steps < 0 or spec.warmup_steps > spec.total_steps:
        raise OptimError(f"warm-up of {spec.warmup_steps} steps does not fit in {spec.total_steps} steps")
    return LambdaLR(optimizer, _Factor(name, spec))


def milestones_tuple(values: Sequence[int]) -> tuple[int, ...]:
    """Sorted milestone epochs as a tuple (config lists may come unsorted)."""
    return tuple(sorted(int(v) for v in values))
