"""Backbones (faces and classification), heads, weight loading and ONNX.

The first lookup in ``facekd.models.registry.BACKBONES`` imports every module of this package, so
adding a backbone is one new module (the built-in ones are also imported here, as attributes).
The contract every backbone meets is ``facekd.models.interface``. Heads, weights, ONNX and
summaries live in their submodules (``facekd.models.heads`` ...).
"""
from __future__ import annotations

from facekd.models import binary_nets, cifar_resnet, iresnet, mobilefacenet, torchvision_models, wide_resnet
from facekd.models.interface import Backbone, ClassifierBackbone, FaceBackbone
from facekd.models.outputs import ClassifierOutput, FaceOutput
from facekd.models.registry import (BACKBONES, UnknownModelError, backbone_kind, build_backbone, list_backbones,
                                    register_backbone)
from facekd.models.scaling import InvalidModelOptionError

__all__ = [
    "BACKBONES", "UnknownModelError", "backbone_kind", "build_backbone", "list_backbones", "register_backbone",
    "ClassifierOutput", "FaceOutput", "InvalidModelOptionError", "Backbone", "ClassifierBackbone", "FaceBackbone",
    "binary_nets", "cifar_resnet", "iresnet", "mobilefacenet", "torchvision_models", "wide_resnet",
]
