"""The written contract of a facekd backbone: what builders take, what models expose, what they return.

A **face** backbone builder takes the options ``embedding_size``, ``input_size``, ``width`` and
``dropout`` (plus its own, e.g. ``fp16``); a **classifier** builder takes ``num_classes`` and
``input_size`` (``dropout`` where it has one). Both validate them with ``check_face_options`` /
``check_classifier_options`` so every model words a bad option the same way.

A built model has ``arch``, ``input_size``, ``feature_channels`` (channels of its last feature map)
and ``embedding_size`` (faces) or ``num_classes`` (classifiers). ``model(x)`` returns the embedding
[N, D] (faces) or logits [N, K] (classifiers), so models export and evaluate as users expect;
``model(x, return_features=True)`` returns ``FaceOutput`` / ``ClassifierOutput``
(``facekd.models.outputs``), the structure every distillation loss reads.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Union, runtime_checkable

import torch
from torch import Tensor, nn

from facekd.models.outputs import ClassifierOutput, FaceOutput
from facekd.models.scaling import check_dropout, check_positive_int, check_width

__all__ = [
    "FACE_OPTIONS", "CLASSIFIER_OPTIONS", "FaceOptions", "ClassifierOptions", "check_face_options",
    "check_classifier_options", "FaceBackbone", "ClassifierBackbone", "Backbone", "interface_problems",
]

FACE_OPTIONS = ("embedding_size", "input_size", "width", "dropout")
"""Options every face builder takes."""
CLASSIFIER_OPTIONS = ("num_classes", "input_size")
"""Options every classifier builder takes."""
MIN_CLASSIFIER_INPUT = 8
"""Smallest input side a classifier accepts unless the builder asks for more."""


@dataclass(frozen=True)
class FaceOptions:
    """A face builder's validated common options."""

    embedding_size: int
    input_size: int
    width: float
    dropout: float


@dataclass(frozen=True)
class ClassifierOptions:
    """A classifier builder's validated common options (``dropout`` 0 where the model has none)."""

    num_classes: int
    input_size: int
    dropout: float = 0.0


def check_face_options(arch: str, *, embedding_size: int, input_size: int, width: float, dropout: float,
                       min_input_size: int) -> FaceOptions:
    """Validate the common face options; an ``InvalidModelOptionError`` names ``arch`` and the option."""
    return FaceOptions(embedding_size=check_positive_int(arch, "embedding_size", embedding_size),
                       input_size=check_positive_int(arch, "input_size", input_size, min_input_size),
                       width=check_width(arch, width), dropout=check_dropout(arch, dropout))


def check_classifier_options(arch: str, *, num_classes: int, input_size: int, dropout: float = 0.0,
                             min_input_size: int = MIN_CLASSIFIER_INPUT) -> ClassifierOptions:
    """Validate the common classifier options; an ``InvalidModelOptionError`` names ``arch`` and the option."""
    return ClassifierOptions(num_classes=check_positive_int(arch, "num_classes", num_classes),
                             input_size=check_positive_int(arch, "input_size", input_size, min_input_size),
                             dropout=check_dropout(arch, dropout))


@runtime_checkable
class FaceBackbone(Protocol):
    """A face model: ``model(x)`` -> embedding [N, D]; ``return_features=True`` -> ``FaceOutput``."""

    arch: str
    input_size: int
    embedding_size: int
    feature_channels: int

    def forward(self, x: Tensor, return_features: bool = False) -> Tensor | FaceOutput:
        """The embedding, or the embedding and last feature map."""
        ...


@runtime_checkable
class ClassifierBackbone(Protocol):
    """A classifier: ``model(x)`` -> logits [N, K]; ``return_features=True`` -> ``ClassifierOutput``."""

    arch: str
    input_size: int
    num_classes: int
    feature_channels: int

    def forward(self, x: Tensor, return_features: bool = False) -> Tensor | ClassifierOutput:
        """The logits, or the logits, last feature map and pooled feature."""
        ...


Backbone = Union[FaceBackbone, ClassifierBackbone]
"""What distillation reads from a student or a torch teacher."""


def interface_problems(model: nn.Module, kind: str, batch: int = 2) -> list[str]:
    """What ``model`` (of ``kind`` "face"/"classifier") lacks of the contract, checked on a random batch;
    an empty list when it meets it."""
    protocol, out_type = (FaceBackbone, FaceOutput) if kind == "face" else (ClassifierBackbone, ClassifierOutput)
    size_attr = "embedding_size" if kind == "face" else "num_classes"
    problems = [f"no integer attribute '{a}'" for a in ("input_size", size_attr, "feature_channels")
                if not isinstance(getattr(model, a, None), int) or isinstance(getattr(model, a), bool)]
    if not isinstance(getattr(model, "arch", None), str):
        problems.append("no string attribute 'arch'")
    if not isinstance(model, protocol):
        problems.append(f"does not satisfy {protocol.__name__}")
    if problems:
        return problems
    size = int(model.input_size)
    x = torch.randn(batch, 3, size, size)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            plain = model(x)
            feats = model(x, return_features=True)
    finally:
        model.train(was_training)
    width = int(getattr(model, size_attr))
    if not isinstance(plain, Tensor) or tuple(plain.shape) != (batch, width):
        problems.append(f"model(x) should be a [{batch}, {width}] tensor, got "
                        f"{tuple(plain.shape) if isinstance(plain, Tensor) else type(plain).__name__}")
    if not isinstance(feats, out_type):
        return problems + [f"model(x, return_features=True) should be {out_type.__name__}, got {type(feats).__name__}"]
    head = feats.embedding if kind == "face" else feats.logits
    if isinstance(plain, Tensor) and not torch.allclose(head, plain, atol=1e-5, rtol=1e-4, equal_nan=True):
        problems.append("return_features=True changes the embedding/logits")
    fmap = feats.feature_map
    if fmap.dim() != 4 or fmap.shape[0] != batch or fmap.shape[1] != model.feature_channels:
        problems.append(f"feature_map should be [{batch}, {model.feature_channels}, h, w], got {tuple(fmap.shape)}")
    if kind == "classifier" and tuple(feats.pooled.shape) != (batch, model.feature_channels):
        problems.append(f"pooled should be [{batch}, {model.feature_channels}], got {tuple(feats.pooled.shape)}")
    return problems
