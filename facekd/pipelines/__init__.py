"""Entry points (``python -m facekd.pipelines.NAME``): train, distill, classify, demo.

The names below are imported lazily from their submodules on first use.
"""
from __future__ import annotations

from facekd._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "FaceTrainConfig": "facekd.pipelines.train",
    "FaceTrainTask": "facekd.pipelines.train",
    "DistillConfig": "facekd.pipelines.distill",
    "DistillTask": "facekd.pipelines.distill",
    "ClassifyConfig": "facekd.pipelines.classify",
    "ClassifyTask": "facekd.pipelines.classify",
    "DemoConfig": "facekd.pipelines.demo",
})
