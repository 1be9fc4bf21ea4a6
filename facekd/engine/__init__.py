"""The one training engine every pipeline uses: a pipeline hands a ``TrainTask`` to the ``Trainer``,
which owns DDP, AMP, schedules, checkpoints, resume, logs and exports.

The names below are imported lazily from their submodules on first use.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    "TrainConfig": "facekd.engine.config",
    "parse_training_config": "facekd.engine.config",
    "TrainTask": "facekd.engine.task",
    "epoch_batches": "facekd.engine.task",
    "Trainer": "facekd.engine.trainer",
    "TrainResult": "facekd.engine.trainer",
    "setup_run": "facekd.engine.trainer",
    "EngineError": "facekd.engine.trainer",
    "NonFiniteLossError": "facekd.engine.trainer",
    "CheckpointError": "facekd.engine.checkpoint",
    "load_checkpoint": "facekd.engine.checkpoint",
    "latest_checkpoint": "facekd.engine.checkpoint",
    "resolve_resume": "facekd.engine.checkpoint",
    "MetricsLog": "facekd.engine.metrics_log",
    "read_metrics": "facekd.engine.metrics_log",
    "DistInfo": "facekd.engine.distributed",
    "init_distributed": "facekd.engine.distributed",
    "shutdown_distributed": "facekd.engine.distributed",
    "build_optimizer": "facekd.engine.optim",
    "build_scheduler": "facekd.engine.optim",
    "register_optimizer": "facekd.engine.optim",
    "register_schedule": "facekd.engine.optim",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Import the defining submodule on first use (keeps ``import facekd.engine`` light)."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
