"""Backbones (faces and classification), heads, weight loading and ONNX: one flat factory."""
from facekd.models.heads import (HeadError, LinearHead, MarginHead, PartialFC, build_head, list_heads,
                                 register_head, save_full_classifier)
from facekd.models.onnx_backbone import OnnxBackbone, OnnxExportError, OnnxModelError, export_onnx
from facekd.models.outputs import ClassifierOutput, FaceOutput
from facekd.models.registry import (UnknownModelError, backbone_kind, build_backbone, list_backbones,
                                    register_backbone)
from facekd.models.scaling import InvalidModelOptionError
from facekd.models.summary import count_macs, count_parameters, summarize
from facekd.models.weights import (FACEKD_FORMAT, FACEKD_VERSION, StateDictMismatchError, WeightsFileError,
                                   load_backbone, load_classifier, load_state_dict_strict, load_weights_file,
                                   make_facekd_checkpoint, merge_classifier_shards, save_weights_file)

__all__ = [
    "build_backbone", "list_backbones", "backbone_kind", "register_backbone", "UnknownModelError",
    "InvalidModelOptionError", "FaceOutput", "ClassifierOutput",
    "build_head", "register_head", "list_heads", "MarginHead", "PartialFC", "LinearHead",
    "save_full_classifier", "HeadError",
    "load_backbone", "load_classifier", "load_weights_file", "save_weights_file", "make_facekd_checkpoint",
    "merge_classifier_shards", "load_state_dict_strict", "WeightsFileError", "StateDictMismatchError",
    "FACEKD_FORMAT", "FACEKD_VERSION",
    "export_onnx", "OnnxBackbone", "OnnxModelError", "OnnxExportError",
    "count_parameters", "count_macs", "summarize",
]
