"""facekd: distil ArcFace-style face recognition teachers into mobile and binary students with SRD."""

from facekd._lazy import lazy_exports

__version__ = "0.1.0"

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "FaceEmbedder": "facekd.eval.embed",
    "PhotoFace": "facekd.eval.embed",
})
