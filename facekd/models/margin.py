"""Margin softmax math and the checks every classification head shares (MarginHead, PartialFC).

Margin convention (arcface_torch's CombinedMarginLoss): on the target class the logit is
``s * (cos(m1 * theta + m2) - m3)``; elsewhere ``s * cos(theta)``. All margin math runs in float32
with autocast disabled and cosines clamped to [-1 + COS_EPS, 1 - COS_EPS], so fp16/bf16 inputs
and angles near 0 or pi give finite losses and gradients. Beyond ``theta_max = (pi - m2) / m1``
(where ``m1 * theta + m2`` would pass pi and the margin curve would turn back up) the target
logit continues as ``cos(theta) - (1 + cos(theta_max)) - m3``: continuous at ``theta_max`` and
monotonically decreasing in theta, so a harder sample never gets an easier target.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "COS_EPS", "INIT_STD", "HeadError", "InvalidHeadOptionError", "margin_target", "margin_logits",
    "normalised_cosine", "no_autocast", "check_embeddings", "check_labels", "labeled_cross_entropy",
    "init_centres", "check_sizes", "check_margins", "copy_weight",
]

COS_EPS = 1e-6
"""Cosines are clamped to [-1 + COS_EPS, 1 - COS_EPS] so that acos and its gradient stay finite."""
INIT_STD = 0.01
"""Class centres start as N(0, INIT_STD) like arcface_torch's."""


class HeadError(ValueError):
    """Inputs a head cannot use (wrong shapes, labels out of range); the message says what is wrong."""


class InvalidHeadOptionError(HeadError):
    """A head option that the named head does not take, or a value it cannot use."""


def margin_target(cos_target: Tensor, m1: float, m2: float, m3: float) -> Tensor:
    """Target-class value ``cos(m1*theta + m2) - m3`` (continued monotonically past theta_max)."""
    if m1 == 1.0 and m2 == 0.0:
        return cos_target - m3
    theta = torch.acos(cos_target)
    theta_max = (math.pi - m2) / m1
    margin_curve = torch.cos(m1 * theta + m2)
    if theta_max >= math.pi:
        return margin_curve - m3
    continued = cos_target - (1.0 + math.cos(theta_max))
    return torch.where(theta <= theta_max, margin_curve, continued) - m3


def margin_logits(cos: Tensor, labels: Tensor | None, s: float, m1: float, m2: float, m3: float) -> Tensor:
    """``s * cos`` with the margin applied at (i, labels[i]) for rows with labels[i] >= 0."""
    logits = cos
    if labels is not None:
        rows = torch.nonzero(labels >= 0).squeeze(1)
        if rows.numel():
            cols = labels[rows]
            logits = cos.index_put((rows, cols), margin_target(cos[rows, cols], m1, m2, m3))
    return logits * s


def normalised_cosine(emb: Tensor, weight: Tensor) -> Tensor:
    """Clamped cosine between rows of ``emb`` and rows of ``weight``, in float32."""
    cos = F.linear(F.normalize(emb.float(), dim=1), F.normalize(weight.float(), dim=1))
    return cos.clamp(-1.0 + COS_EPS, 1.0 - COS_EPS)


def no_autocast(t: Tensor) -> torch.autocast:
    """A context that turns autocast off on ``t``'s device (margin math runs in float32)."""
    return torch.autocast(device_type=t.device.type, enabled=False)


def check_embeddings(emb: Tensor, embedding_size: int, what: str) -> None:
    """Raise HeadError unless ``emb`` is [N, embedding_size]."""
    if emb.dim() != 2 or emb.shape[1] != embedding_size:
        raise HeadError(f"{what} expects embeddings [N, {embedding_size}], got shape {list(emb.shape)}")


def check_labels(labels: Tensor, emb: Tensor, num_classes: int, what: str) -> None:
    """Raise HeadError unless ``labels`` are [N] integer classes below ``num_classes`` (or -1)."""
    if labels.dim() != 1 or labels.shape[0] != emb.shape[0]:
        raise HeadError(f"{what} expects labels [{emb.shape[0]}], got shape {list(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise HeadError(f"{what} expects integer class labels, got dtype {labels.dtype}")
    if labels.numel() and int(labels.max()) >= num_classes:
        raise HeadError(f"{what}: label {int(labels.max())} out of range for {num_classes} classes "
                        "(labels are 0..num_classes-1, or -1 for unlabeled samples)")


def labeled_cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean cross-entropy over rows with a label >= 0; a zero that still has a graph when there are none."""
    labeled = labels >= 0
    if not bool(labeled.any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits[labeled], labels[labeled])


def init_centres(num_classes: int, embedding_size: int) -> nn.Parameter:
    """Class centres [num_classes, embedding_size] drawn from N(0, INIT_STD)."""
    return nn.Parameter(torch.normal(0.0, INIT_STD, (num_classes, embedding_size)))


def check_sizes(embedding_size: int, num_classes: int) -> None:
    """Raise InvalidHeadOptionError unless both sizes are positive integers."""
    for option, value in (("embedding_size", embedding_size), ("num_classes", num_classes)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidHeadOptionError(f"{option} must be a positive integer, got {value!r}")


def check_margins(s: float, m1: float) -> None:
    """Raise InvalidHeadOptionError unless the scale and the multiplicative margin are positive."""
    if not s > 0:
        raise InvalidHeadOptionError(f"scale s must be positive, got {s!r}")
    if not m1 > 0:
        raise InvalidHeadOptionError(f"multiplicative margin m1 must be positive, got {m1!r}")


@torch.no_grad()
def copy_weight(param: Tensor, full: Tensor, start: int) -> None:
    """Copy rows ``start:start + len(param)`` of a full [C, D] classifier into ``param``."""
    rows = param.shape[0]
    if full.dim() != 2 or full.shape[1] != param.shape[1] or full.shape[0] < start + rows:
        raise HeadError(f"classifier of shape {list(full.shape)} does not fit this head "
                        f"(needs [>= {start + rows}, {param.shape[1]}])")
    param.copy_(full[start:start + rows].to(param.dtype))
