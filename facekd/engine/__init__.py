"""The one training engine every pipeline uses: a pipeline hands a ``TrainTask`` to the ``Trainer``,
which owns DDP, AMP, schedules, checkpoints, resume, logs and exports.

The names below are imported lazily from their submodules on first use.
"""
from __future__ import annotations

from facekd._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
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
})
