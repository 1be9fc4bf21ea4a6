"""Classification heads for face training: margin softmax (ArcFace, CosFace, combined), Partial FC
and a plain linear classifier, built by name through a decorator registry.

Every head maps embeddings [N, D] and labels [N] (-1 marks an unlabeled sample) to a scalar loss,
and exposes ``logits(emb, labels=None)`` and ``full_weight()`` so that distillation losses can
use a (teacher's) classifier as a critic without reaching into its parameters.

The margin math and shared checks live in ``facekd.models.margin``; Partial FC (sharded centres,
sampled negatives) in ``facekd.models.partial_fc``. Both are re-exported here.
"""
from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Callable

import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from facekd.models.margin import (
    COS_EPS, HeadError, InvalidHeadOptionError, check_embeddings, check_labels, check_margins,
    check_sizes, copy_weight, init_centres, labeled_cross_entropy, margin_logits, margin_target, no_autocast,
    normalised_cosine,
)
from facekd.models.partial_fc import PartialFC, shard_range
from facekd.registry import Registry

__all__ = [
    "COS_EPS", "HeadError", "UnknownHeadError", "InvalidHeadOptionError", "register_head", "build_head",
    "list_heads", "head_options", "margin_target", "margin_logits", "MarginHead", "PartialFC", "LinearHead",
    "shard_range", "save_full_classifier",
]


class UnknownHeadError(HeadError):
    """A head name that no builder registered."""


HeadBuilder = Callable[..., nn.Module]
HEADS: Registry[HeadBuilder] = Registry("head", error=UnknownHeadError)
"""Head builders ``builder(embedding_size, num_classes, **options)`` by name."""


def register_head(name: str) -> Callable[[HeadBuilder], HeadBuilder]:
    """Decorator registering a head builder ``builder(embedding_size, num_classes, **options)``."""
    return HEADS.register(name)


def list_heads() -> list[str]:
    """Registered head names."""
    return HEADS.names()


def head_options(name: str) -> dict[str, Any]:
    """The options a registered head takes, with their defaults."""
    builder = _lookup(name)
    params = list(inspect.signature(builder).parameters.values())[2:]
    return {p.name: p.default for p in params}


def _lookup(name: str) -> HeadBuilder:
    return HEADS.get(name)


def build_head(name: str, embedding_size: int, num_classes: int, **options: Any) -> nn.Module:
    """Build a registered head; unknown options raise an error listing the ones it takes."""
    builder = _lookup(name)
    accepted = head_options(name)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise InvalidHeadOptionError(
            f"head '{name}' takes no option(s) {', '.join(unknown)}; it takes: "
            + ", ".join(f"{k}={v!r}" for k, v in accepted.items()))
    return builder(embedding_size, num_classes, **options)


# ----------------------------------------------------------------------------------------------
# heads

class MarginHead(nn.Module):
    """Margin softmax over all classes (ArcFace, CosFace or any combined margin); one process."""

    def __init__(self, embedding_size: int, num_classes: int, s: float = 64.0,
                 m1: float = 1.0, m2: float = 0.5, m3: float = 0.0) -> None:
        super().__init__()
        check_sizes(embedding_size, num_classes)
        check_margins(s, m1)
        self.embedding_size, self.num_classes = embedding_size, num_classes
        self.s, self.m1, self.m2, self.m3 = float(s), float(m1), float(m2), float(m3)
        self.weight = init_centres(num_classes, embedding_size)
        self.last_sample: Tensor | None = None  # every class is used each step

    def cosine(self, emb: Tensor) -> Tensor:
        """Cosine [N, C] between the embeddings and every class centre (float32)."""
        check_embeddings(emb, self.embedding_size, type(self).__name__)
        with no_autocast(emb):
            return normalised_cosine(emb, self.weight)

    def logits(self, emb: Tensor, labels: Tensor | None = None) -> Tensor:
        """Scaled logits [N, C]; the margin goes on the target class of rows with a label >= 0."""
        cos = self.cosine(emb)
        if labels is not None:
            check_labels(labels, emb, self.num_classes, type(self).__name__)
        with no_autocast(emb):
            return margin_logits(cos, labels, self.s, self.m1, self.m2, self.m3)

    def forward(self, emb: Tensor, labels: Tensor) -> Tensor:
        """Mean margin cross-entropy over the labeled rows (0 with a graph when none is labeled)."""
        return labeled_cross_entropy(self.logits(emb, labels), labels)

    def full_weight(self) -> Tensor:
        """The class centres [C, D] (a detached copy)."""
        return self.weight.detach().clone()

    def load_full_weight(self, weight: Tensor) -> None:
        """Copy a full [C, D] classifier into this head."""
        copy_weight(self.weight, weight, 0)

    def extra_repr(self) -> str:
        return (f"embedding_size={self.embedding_size}, num_classes={self.num_classes}, s={self.s}, "
                f"m=({self.m1}, {self.m2}, {self.m3})")


class LinearHead(nn.Module):
    """A plain linear classifier (``weight`` [C, D], optional ``bias``) trained with cross-entropy."""

    def __init__(self, embedding_size: int, num_classes: int, bias: bool = True) -> None:
        super().__init__()
        check_sizes(embedding_size, num_classes)
        self.embedding_size, self.num_classes = embedding_size, num_classes
        init = nn.Linear(embedding_size, num_classes, bias=bias)  # nn.Linear's default initialisation
        self.weight = init.weight
        self.bias = init.bias
        self.last_sample: Tensor | None = None

    def logits(self, emb: Tensor, labels: Tensor | None = None) -> Tensor:
        """Logits [N, C] in float32; ``labels`` is accepted for interface parity and ignored."""
        check_embeddings(emb, self.embedding_size, type(self).__name__)
        with no_autocast(emb):
            return F.linear(emb.float(), self.weight.float(), None if self.bias is None else self.bias.float())

    def forward(self, emb: Tensor, labels: Tensor) -> Tensor:
        """Mean cross-entropy over the labeled rows."""
        check_labels(labels, emb, self.num_classes, type(self).__name__)
        return labeled_cross_entropy(self.logits(emb), labels)

    def full_weight(self) -> Tensor:
        """The classifier matrix [C, D] (a detached copy)."""
        return self.weight.detach().clone()

    def load_full_weight(self, weight: Tensor) -> None:
        """Copy a full [C, D] classifier matrix into this head (the bias is left unchanged)."""
        copy_weight(self.weight, weight, 0)


def save_full_classifier(head: nn.Module, path: str | Path) -> Path | None:
    """Gather the whole classifier and write ``{"weight": [C, D]}`` from rank 0 (collective).

    Returns the path on rank 0 and None on the other ranks.
    """
    from facekd.models.weights import save_weights_file

    weight = head.full_weight()
    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    if rank != 0:
        return None
    return save_weights_file({"weight": weight.cpu()}, path)


# ----------------------------------------------------------------------------------------------
# registered heads

def _margin_head(embedding_size: int, num_classes: int, s: float, m1: float, m2: float, m3: float,
                 sample_rate: float, partial_fc: bool, process_group: Any) -> nn.Module:
    if sample_rate < 1.0 or partial_fc:
        return PartialFC(embedding_size, num_classes, s, m1, m2, m3, sample_rate, process_group)
    if process_group is not None:
        raise InvalidHeadOptionError("process_group is only used by Partial FC (partial_fc=True or sample_rate < 1)")
    return MarginHead(embedding_size, num_classes, s, m1, m2, m3)


@register_head("arcface")
def build_arcface(embedding_size: int, num_classes: int, s: float = 64.0, margin: float = 0.5,
                  sample_rate: float = 1.0, partial_fc: bool = False, process_group: Any = None) -> nn.Module:
    """ArcFace, additive angular margin: m = (1, margin, 0); Partial FC when sample_rate < 1 or partial_fc."""
    return _margin_head(embedding_size, num_classes, s, 1.0, margin, 0.0, sample_rate, partial_fc, process_group)


@register_head("cosface")
def build_cosface(embedding_size: int, num_classes: int, s: float = 64.0, margin: float = 0.4,
                  sample_rate: float = 1.0, partial_fc: bool = False, process_group: Any = None) -> nn.Module:
    """CosFace, additive cosine margin: m = (1, 0, margin); Partial FC when sample_rate < 1 or partial_fc."""
    return _margin_head(embedding_size, num_classes, s, 1.0, 0.0, margin, sample_rate, partial_fc, process_group)


@register_head("combined")
def build_combined(embedding_size: int, num_classes: int, s: float = 64.0, m1: float = 1.0, m2: float = 0.5,
                   m3: float = 0.0, sample_rate: float = 1.0, partial_fc: bool = False,
                   process_group: Any = None) -> nn.Module:
    """Any combined margin s*(cos(m1*theta + m2) - m3); Partial FC when sample_rate < 1 or partial_fc."""
    return _margin_head(embedding_size, num_classes, s, m1, m2, m3, sample_rate, partial_fc, process_group)


@register_head("linear")
def build_linear(embedding_size: int, num_classes: int, bias: bool = True) -> nn.Module:
    """A plain nn.Linear classifier with cross-entropy (classification students, baselines)."""
    return LinearHead(embedding_size, num_classes, bias=bias)
