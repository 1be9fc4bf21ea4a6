"""What backbones return when asked for features: the interface every distillation loss reads.

Plain ``model(x)`` returns the embedding (faces) or the logits (classifiers), so models export
and evaluate as users expect; ``model(x, return_features=True)`` returns these named tuples.
"""
from __future__ import annotations

from typing import NamedTuple

from torch import Tensor


class FaceOutput(NamedTuple):
    """A face backbone's embedding [N, D] (not L2-normalised) and its last feature map [N, C, h, w]."""

    embedding: Tensor
    feature_map: Tensor


class ClassifierOutput(NamedTuple):
    """A classifier's logits [N, K], last feature map [N, C, h, w] and pooled feature [N, C]."""

    logits: Tensor
    feature_map: Tensor
    pooled: Tensor
