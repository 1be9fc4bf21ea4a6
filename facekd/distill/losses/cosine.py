"""Embedding cosine distillation, the usual face KD: ``cosine/cos`` = weight * mean over rows of
(1 - cos(phi(v_s), v_t)), v = the embedding (faces) or the pooled feature (classification).

phi is, by ``connector``: ``"angle"`` (faces' default: Q e/|e| with Q semi-orthogonal, so the
angles the loss shapes are the student's own, as SRD's default connector), ``"bn"`` (Linear +
BN1d; classification's default; ``True`` means this, as before) or ``"none"`` (``False``: the
student's own embedding is pulled onto the teacher's, which needs equal sizes; common when both
are 512-d). At the distill command's defaults the Linear + BN connector let the student's
embedding drift where the BN hides it and ended below the student trained alone (issue 19).
"""
from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from facekd.distill.connectors import build_embedding_connector
from facekd.distill.losses.functional import check_mode, check_positive, check_same_shape
from facekd.distill.losses.registry import DistillLoss, InvalidLossOptionError, register_loss
from facekd.distill.outputs import StudentOutput, TeacherOutput

__all__ = ["CosineEmbedding", "CosineFace"]


def _connector_kind(value: str | bool) -> str:
    if value is True:
        return "bn"
    if value is False or value is None:
        return "none"
    return check_mode("cosine", "connector", str(value), ("angle", "bn", "none"))


@register_loss("cosine", kinds=("classifier",))
class CosineEmbedding(DistillLoss):
    """1 - cosine between the (connected) student vector and the teacher's; options: weight, connector."""

    scores_centres = False  # never reads the critic

    def __init__(self, student_dim: int, teacher_dim: int, *, weight: float = 1.0,
                 connector: str | bool = "bn") -> None:
        super().__init__(student_dim, teacher_dim)
        self.weight = check_positive(self.name, "weight", weight)
        kind = _connector_kind(connector)
        if kind == "none" and student_dim != teacher_dim:
            raise InvalidLossOptionError(f"loss 'cosine' with connector=none needs equal sizes, got student "
                                         f"{student_dim} vs teacher {teacher_dim}; use connector=angle or bn")
        self.connector: nn.Module = nn.Identity() if kind == "none" else \
            build_embedding_connector(kind, student_dim, teacher_dim)

    def forward(self, student: StudentOutput, teacher: TeacherOutput, batch: Any) -> dict[str, Tensor]:
        """``{"cosine/cos": weight * mean(1 - cos)}``."""
        phi = self.connector(student.vector)
        target = teacher.vector.detach()
        check_same_shape(phi, target, "cosine vectors")
        cos = F.cosine_similarity(phi.float(), target.float(), dim=1)
        return {self.term("cos"): self.weight * (1.0 - cos).mean()}


@register_loss("cosine", kinds=("face",))
class CosineFace(CosineEmbedding):
    """Face embeddings: the angle-preserving connector and weight 16 by default, i.e. SRD's default
    feature term (8 x (2 - 2 cos)) alone: at the distill command's defaults (s=64, m=0.5) a weight of 1
    lost against the margin loss and ended below the student alone (0.589 vs 0.672, one seed)."""

    def __init__(self, student_dim: int, teacher_dim: int, *, weight: float = 16.0,
                 connector: str | bool = "angle") -> None:
        super().__init__(student_dim, teacher_dim, weight=weight, connector=connector)
