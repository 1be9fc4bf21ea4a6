"""What machine a figure came from: used by benchmark tables and export reports alike."""
from __future__ import annotations

import platform
from pathlib import Path

__all__ = ["cpu_name"]


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo (``platform`` elsewhere), plus ', AVX-512 VNNI' when it has it."""
    cpu = platform.processor() or platform.machine()
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return cpu
    for line in info.splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return cpu + (", AVX-512 VNNI" if "avx512_vnni" in info else "")
