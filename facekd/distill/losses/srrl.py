"""SRRL: knowledge distillation via softmax regression representation learning (Yang, Martinez,
Bulat, Tzimiropoulos, ICLR 2021), SRD's supervised predecessor.

The student's penultimate feature, mapped by a connector, must (a) match the teacher's
penultimate feature (L_FM) and (b) give the teacher's output when passed through the teacher's
frozen classifier (L_SR, "achieved with a simple L2 loss" in the paper's abstract). As the
authors' public code (github.com/jingyang2017/KD_SRRL, train_imagenet_distillation.py) does it:
connector Conv1x1(no bias) + BN2d + ReLU on the student's last map; L_FM = MSE between the
spatial means of the connected student map and of the teacher map; L_SR = MSE between the teacher
classifier's logits on the connected, pooled student feature and the teacher's logits; total =
CE + w * (L_FM + L_SR), w = 1. Terms: ``srrl/logits`` = beta * L_SR, ``srrl/feat`` = alpha * L_FM.

SRRL distils on the labeled training set only, so ``labeled_only=True`` by default: rows from an
unlabeled pool are ignored. On a batch without unlabeled rows it equals ``srd`` with
``mode="mse"`` (the same construction: SRD extends it to open-set unlabeled data). Face form
(facekd's transfer, not in the paper): connector Linear + BN1d on the embedding, critic
s * cos(W_t, .) without margin, as ``srd`` for faces.

A training batch whose covered rows give the connector's BatchNorm a single value per channel
(one labeled row of a face batch) has no batch statistics: that step's SRRL terms are a zero
that keeps the graph (as for a batch without labeled rows) instead of a BatchNorm error.
"""
from __future__ import annotations

from typing import Any

from torch import Tensor

from facekd.distill.losses.functional import check_positive
from facekd.distill.losses.registry import register_loss, select_rows
from facekd.distill.losses.srd import CriticMatchingLoss, FaceCriticMatching, MapCriticMatching
from facekd.distill.outputs import StudentOutput, TeacherOutput

__all__ = ["SRRLFace", "SRRLClassifier"]


def _values_per_channel(loss: CriticMatchingLoss, student: StudentOutput, batch: Any) -> int:
    """How many values per channel the connector's BatchNorm sees: covered rows (x map positions)."""
    anchor = student.require(loss._anchor, loss.name)
    rows = select_rows(batch, anchor.shape[0], loss.labeled_only, anchor.device)
    n = anchor.shape[0] if rows is None else int(rows.numel())
    if isinstance(loss, MapCriticMatching):
        fmap = student.require("feature_map", loss.name)
        n *= int(fmap.shape[-1]) * int(fmap.shape[-2])
    return n


def _single_value_zero(loss: CriticMatchingLoss, student: StudentOutput, batch: Any) -> dict[str, Tensor] | None:
    """Graph-keeping zero terms when, in training, BatchNorm would get one value per channel; else None."""
    if not loss.training or _values_per_channel(loss, student, batch) != 1:
        return None
    anchor = student.require(loss._anchor, loss.name)
    zero = anchor.sum() * 0.0 + sum(p.sum() for p in loss.parameters()) * 0.0
    return {loss.term("logits"): zero, loss.term("feat"): zero}


class _SRRL:
    """SRRL's options and step on top of a critic-matching form (face or map): L2 losses, labeled rows."""

    def __init__(self, student_dim: int, teacher_dim: int, *, alpha: float = 1.0, beta: float = 1.0,
                 labeled_only: bool = True) -> None:
        alpha = check_positive(self.name, "alpha", alpha)
        beta = check_positive(self.name, "beta", beta)
        super().__init__(student_dim, teacher_dim, mode="mse", T=1.0, logit_weight=beta, feat_weight=alpha,
                         feat_norm="none", labeled_only=labeled_only)

    def forward(self, student: StudentOutput, teacher: TeacherOutput, batch: Any) -> dict[str, Tensor]:
        """``srrl/logits`` and ``srrl/feat`` over the covered rows (zero when BatchNorm sees one value)."""
        return _single_value_zero(self, student, batch) or super().forward(student, teacher, batch)


@register_loss("srrl", kinds=("face",))
class SRRLFace(_SRRL, FaceCriticMatching):
    """SRRL for face students: L_SR on s*cos logits + L_FM on the embedding, labeled rows only.

    Options: alpha (L_FM weight), beta (L_SR weight), labeled_only (True, as published).
    """


@register_loss("srrl", kinds=("classifier",))
class SRRLClassifier(_SRRL, MapCriticMatching):
    """SRRL for classification students as published (conv1x1-BN-ReLU, GAP, teacher fc, L2 losses).

    Options: alpha (L_FM weight), beta (L_SR weight), labeled_only (True, as published).
    """
