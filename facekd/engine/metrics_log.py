"""Run metrics: one JSON line per log step and per evaluation in ``metrics.jsonl``, mirrored to
TensorBoard. Only rank 0 writes; on the other ranks every call is a no-op."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Mapping

from facekd.log import get_logger

log = get_logger(__name__)

__all__ = ["MetricsLog", "read_metrics", "METRICS_FILE"]

METRICS_FILE = "metrics.jsonl"


def _plain(value: Any) -> Any:
    """A JSON-safe number (NaN/inf become strings so every line stays valid JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class MetricsLog:
    """Appends metric records to ``out_dir/metrics.jsonl`` and TensorBoard (rank 0 only)."""

    def __init__(self, out_dir: str | os.PathLike[str], enabled: bool = True, tensorboard: bool = True) -> None:
        self.enabled = enabled
        self.path = Path(out_dir) / METRICS_FILE
        self._writer = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(Path(out_dir) / "tensorboard"))

    def truncate_after(self, step: int) -> None:
        """Drop records of steps after ``step`` (a resumed run repeats them)."""
        if not self.enabled or not self.path.exists():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line torn by a kill mid-write
                continue
            if record.get("step", 0) <= step:
                kept.append(line)
        self.path.write_text("".join(line + "\n" for line in kept))

    def write(self, record: Mapping[str, Any]) -> None:
        """Append one record (must hold ``step``); numeric entries also go to TensorBoard."""
        if not self.enabled:
            return
        line = {k: _plain(v) for k, v in record.items()}
        with open(self.path, "a") as f:
            f.write(json.dumps(line) + "\n")
        if self._writer is not None:
            step = int(record["step"])
            for key, value in record.items():
                if key in ("step", "epoch") or isinstance(value, bool) or not isinstance(value, (int, float)):
                    continue
                self._writer.add_scalar(key, value, step)
            self._writer.flush()

    def close(self) -> None:
        """Flush and close TensorBoard."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def read_metrics(out_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """All records of a run's ``metrics.jsonl``."""
    path = Path(out_dir) / METRICS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
