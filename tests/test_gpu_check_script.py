"""bench/gpu_check.sh is run by hand on GPU machines: its CPU smoke mode keeps it from rotting."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_script_smoke_on_cpu(tmp_path: Path) -> None:
    env = dict(os.environ, DEVICE="cpu", IDS="8", PER_ID="2", STEPS="4", BATCH="8", TEACHER="r18", SIZE="32",
               WORKERS="0", PY=sys.executable)
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), str(tmp_path)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rates = {k: float(v) for k, v in re.findall(r"^(cache build|distill|plain):\s+([\d.]+) img/s", proc.stdout, re.M)}
    assert set(rates) == {"cache build", "distill", "plain"} and all(v > 0 for v in rates.values())
    assert (tmp_path / "distill" / "backbone.pth").is_file() and (tmp_path / "plain" / "backbone.pth").is_file()
