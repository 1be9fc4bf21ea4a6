"""Shipping a student: fp32 / fp16 / int8 ONNX variants checked against torch, their latency and
accuracy in one report, and an insightface model pack (``python -m facekd.export``).

The names below are imported lazily from their submodules on first use.
"""
from __future__ import annotations

from facekd._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "main": "facekd.export.command",
    "run_export": "facekd.export.command",
    "ExportOptions": "facekd.export.command",
    "ExportInputError": "facekd.export.errors",
    "ExportDriftError": "facekd.export.errors",
    "convert_fp16": "facekd.export.variants",
    "quantize_int8": "facekd.export.variants",
    "INT8_RECIPES": "facekd.export.variants",
    "measure_latency": "facekd.export.latency",
    "write_pack": "facekd.export.pack",
    "load_pack": "facekd.export.pack",
})
