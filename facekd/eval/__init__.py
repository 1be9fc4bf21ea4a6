"""Evaluation: verification exactly as insightface reports it (LFW, CFP-FP, AgeDB-30 .bin sets)
and faiss-based 1:N identification.

The names below are imported lazily from their submodules on first use.
"""
from __future__ import annotations

from facekd._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
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
})
