"""onnxruntime CPU latency of an ONNX face model: median and p90 over timed runs, images/s, and the
machine's load average around the measurement (latency on a shared machine is only as good as
its quietness, so the report carries it)."""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

DEFAULT_SETTINGS = ((1, 1), (32, 0))
"""(batch, threads) pairs measured: batch 1 on one thread, batch 32 on all threads (0 = all cores)."""


@dataclass
class Latency:
    """One latency measurement of a model at a batch size and thread count."""

    batch: int
    threads: int
    runs: int
    median_ms: float
    p90_ms: float
    images_per_s: float
    load_before: float
    load_after: float

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for report.json."""
        return asdict(self)


def cpu_count() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def load_average() -> float:
    """The 1-minute load average (NaN where the OS does not report it)."""
    try:
        return float(os.getloadavg()[0])
    except (AttributeError, OSError):
        return float("nan")


def measure_latency(path: str, batch: int = 1, threads: int = 1, min_runs: int = 5, max_runs: int = 50,
                    budget_s: float = 20.0, warmup: int = 3, seed: int = 0) -> Latency:
    """Time ``session.run`` on a random normalised batch: ``warmup`` runs, then at least
    ``min_runs`` and at most ``max_runs`` timed runs, stopping early once ``budget_s`` is spent."""
    import onnxruntime as ort

    n_threads = cpu_count() if threads <= 0 else threads
    options = ort.SessionOptions()
    options.intra_op_num_threads = n_threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    size = [d if isinstance(d, int) else batch for d in inp.shape]
    size[0] = batch
    x = np.random.default_rng(seed).uniform(-1, 1, size).astype(np.float32)
    feed = {inp.name: x}
    load_before = load_average()
    for _ in range(warmup):
        session.run(None, feed)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_runs and (len(times) < min_runs or time.perf_counter() - start < budget_s):
        t = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - t)
    arr = np.asarray(times) * 1000.0
    median = float(np.median(arr))
    return Latency(batch, n_threads, len(times), median, float(np.percentile(arr, 90)),
                   batch / (median / 1000.0), load_before, load_average())
