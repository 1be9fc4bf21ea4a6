"""facekd: distil ArcFace-style face recognition teachers into mobile and binary students with SRD."""
from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["FaceEmbedder", "PhotoFace", "__version__"]

_HEAVY = {"FaceEmbedder": "facekd.eval.embed", "PhotoFace": "facekd.eval.embed"}
"""Names shown in the README that load onnxruntime/insightface: imported on first use."""


def __getattr__(name: str) -> Any:
    """``facekd.FaceEmbedder`` and ``facekd.PhotoFace`` without importing them with the package."""
    if name not in _HEAVY:
        raise AttributeError(f"module 'facekd' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(_HEAVY[name]), name)
    globals()[name] = value
    return value
