"""What every training command shares: which errors are the user's (a message, exit 2, no
traceback) and how a finished run is reported; train, distill and classify call ``run_command``."""
from __future__ import annotations

import sys
from typing import Any, Callable, TypeVar

from facekd.engine import distributed as fdist
from facekd.engine.trainer import NonFiniteLossError, TrainResult

__all__ = ["setup_errors", "run_command"]

C = TypeVar("C")


def setup_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean bad input or settings (files, options, checkpoints), not a facekd bug."""
    from facekd.config import ConfigError
    from facekd.data.errors import DataFileNotFoundError, DataFormatError
    from facekd.engine.checkpoint import CheckpointError
    from facekd.engine.distributed import DistributedError
    from facekd.engine.optim import OptimError
    from facekd.engine.trainer import EngineError
    from facekd.models.heads import HeadError
    from facekd.models.registry import UnknownModelError
    from facekd.models.weights import StateDictMismatchError, WeightsFileError

    return (EngineError, CheckpointError, ConfigError, DistributedError, DataFormatError, DataFileNotFoundError,
            HeadError, UnknownModelError, WeightsFileError, StateDictMismatchError, OptimError)


def run_command(run: Callable[[C], TrainResult], cfg: C, errors: tuple[type[BaseException], ...],
                footer: str = "", after: Callable[[TrainResult], Any] | None = None) -> int:
    """Run a pipeline for its command line: print where the outputs went and the final metrics
    (rank 0), exit 1 on a non-finite loss, 2 on a setup error, and always leave the process group."""
    try:
        result = run(cfg)
        if fdist.is_main():
            print(f"done: {result.steps} steps; outputs in {result.out_dir}")
            for key, value in sorted(result.metrics.items()):
                print(f"  {key}: {value:.4f}")
            if footer:
                print(footer)
    except NonFiniteLossError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except errors as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        fdist.shutdown_distributed()
    return 0
