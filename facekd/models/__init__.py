"""Backbones (faces and classification), heads, weight loading and ONNX: one flat factory.

The names below are imported lazily from their submodules on first use.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    "build_backbone": "facekd.models.registry",
    "list_backbones": "facekd.models.registry",
    "backbone_kind": "facekd.models.registry",
    "register_backbone": "facekd.models.registry",
    "UnknownModelError": "facekd.models.registry",
    "InvalidModelOptionError": "facekd.models.scaling",
    "FaceOutput": "facekd.models.outputs",
    "ClassifierOutput": "facekd.models.outputs",
    "build_head": "facekd.models.heads",
    "register_head": "facekd.models.heads",
    "list_heads": "facekd.models.heads",
    "MarginHead": "facekd.models.heads",
    "PartialFC": "facekd.models.heads",
    "LinearHead": "facekd.models.heads",
    "save_full_classifier": "facekd.models.heads",
    "HeadError": "facekd.models.heads",
    "load_backbone": "facekd.models.weights",
    "load_classifier": "facekd.models.weights",
    "load_weights_file": "facekd.models.weights",
    "save_weights_file": "facekd.models.weights",
    "make_facekd_checkpoint": "facekd.models.weights",
    "merge_classifier_shards": "facekd.models.weights",
    "load_state_dict_strict": "facekd.models.weights",
    "WeightsFileError": "facekd.models.weights",
    "StateDictMismatchError": "facekd.models.weights",
    "FACEKD_FORMAT": "facekd.models.weights",
    "FACEKD_VERSION": "facekd.models.weights",
    "export_onnx": "facekd.models.onnx_backbone",
    "OnnxBackbone": "facekd.models.onnx_backbone",
    "OnnxModelError": "facekd.models.onnx_backbone",
    "OnnxExportError": "facekd.models.onnx_backbone",
    "count_parameters": "facekd.models.summary",
    "count_macs": "facekd.models.summary",
    "summarize": "facekd.models.summary",
    "count_binary_ops": "facekd.models.summary",
    "model_size_bytes": "facekd.models.summary",
    "set_binary_stage": "facekd.models.binary_layers",
    "binary_stage_of": "facekd.models.binary_layers",
    "BinaryStageError": "facekd.models.binary_layers",
    "BINARY_STAGES": "facekd.models.binary_layers",
    "BinaryConv2d": "facekd.models.binary_layers",
    "RSign": "facekd.models.binary_layers",
    "RPReLU": "facekd.models.binary_layers",
    "sign_ste": "facekd.models.binary_layers",
    "hard_sign": "facekd.models.binary_layers",
    "BinaryMobileFaceNet": "facekd.models.binary_nets",
    "BinaryCifarResNet": "facekd.models.binary_nets",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Import the defining submodule on first use (keeps ``import facekd.models`` light)."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
