"""Loading users' weight files safely: backbones and classifiers from arcface_torch, facekd,
RepDistiller-style and plain state-dict files, plus facekd's own checkpoint format.

Every file is read with ``torch.load(weights_only=True)``: a file that holds code or other
objects is refused, never executed. Each recognised layout is a small class in an ordered
registry (``@register_format``); the first whose ``matches`` accepts the loaded dict extracts
the backbone state dict and/or the classifier (class centres [C, D]).

One module per job: ``files`` (safe torch I/O), ``checkpoint`` (facekd's checkpoint schema),
``formats`` (the recognised layouts, ``FORMATS``), ``shards`` (Partial FC classifier shards) and
``loading`` (strict loading into models, ``load_backbone``, ``load_classifier``); every name is
re-exported here.
"""
from __future__ import annotations

from facekd.models.weights.checkpoint import (
    FACEKD_FORMAT, FACEKD_KEYS, FACEKD_VERSION, WRAPPER_PREFIXES, is_state_dict, make_facekd_checkpoint,
    strip_wrapper_prefixes,
)
from facekd.models.weights.files import (
    ONNX_SUFFIX, TORCH_FILE_GLOBALS, WeightsFileError, load_torch_object, load_weights_file, save_weights_file,
)
from facekd.models.weights.formats import (
    ArcfaceTorchCheckpoint, ClassifierFile, FORMATS, FacekdCheckpoint, NestedStateDict, PlainStateDict,
    WeightsFormat, backbone_state_dict, detect_format, list_formats, register_format,
)
from facekd.models.weights.loading import (
    MAX_LISTED_KEYS, StateDictMismatchError, load_backbone, load_classifier, load_state_dict_strict,
)
from facekd.models.weights.shards import (
    RANK_FILE_PATTERNS, merge_classifier_shards, rank_sibling_files, shard_weight,
)

__all__ = [
    "FACEKD_FORMAT", "FACEKD_VERSION", "FACEKD_KEYS", "WeightsFileError", "StateDictMismatchError",
    "load_weights_file", "save_weights_file", "make_facekd_checkpoint", "register_format", "detect_format",
    "WeightsFormat", "list_formats", "strip_wrapper_prefixes", "backbone_state_dict", "rank_sibling_files",
    "merge_classifier_shards", "load_classifier", "load_state_dict_strict", "load_backbone", "FORMATS",
    "WRAPPER_PREFIXES", "RANK_FILE_PATTERNS", "ONNX_SUFFIX", "TORCH_FILE_GLOBALS", "MAX_LISTED_KEYS",
    "load_torch_object", "is_state_dict", "shard_weight", "FacekdCheckpoint", "ArcfaceTorchCheckpoint",
    "NestedStateDict", "ClassifierFile", "PlainStateDict",
]
