"""facekd: distil ArcFace-style face recognition teachers into mobile and binary students with SRD."""

__version__ = "0.1.0"
