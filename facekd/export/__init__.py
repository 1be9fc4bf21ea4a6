"""Shipping a student: fp32 / fp16 / int8 ONNX variants checked against torch, their latency and
accuracy in one report, and an insightface model pack (``python -m facekd.export``).

Import what you need from its submodule (``facekd.export.command``, ``facekd.export.variants``...);
``main`` is here for ``facekd export`` and loads onnxruntime only when called.
"""
from __future__ import annotations

from typing import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """``facekd export ...``: run ``facekd.export.command.main`` (imported on call, it is heavy)."""
    from facekd.export.command import main as run

    return int(run(argv) or 0)
