"""Evaluation: verification exactly as insightface reports it (LFW, CFP-FP, AgeDB-30 .bin sets)
and faiss-based 1:N identification.

The names below are imported lazily from their submodules on first use.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    "evaluate": "facekd.eval.verification",
    "far_key": "facekd.eval.verification",
    "TAR_FAR_TARGETS": "facekd.eval.verification",
    "VerificationInputError": "facekd.eval.verification",
    "roc_points": "facekd.eval.verification",
    "verify_model": "facekd.eval.verify",
    "load_sets": "facekd.eval.verify",
    "VerificationSet": "facekd.eval.verify",
    "embed_images": "facekd.eval.embed",
    "load_model": "facekd.eval.embed",
    "GalleryIndex": "facekd.eval.identification",
    "IndexOptions": "facekd.eval.identification",
    "identification_metrics": "facekd.eval.identification",
    "IdentificationError": "facekd.eval.identification",
    "load_embeddings": "facekd.eval.sources",
    "EmbeddingSet": "facekd.eval.sources",
    "plot_roc": "facekd.eval.plots",
    "plot_score_distributions": "facekd.eval.plots",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Import the defining submodule on first use (keeps ``import facekd.eval`` light)."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
