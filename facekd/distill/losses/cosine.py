"""Embedding cosine distillation, the usual face KD: ``cosine/cos`` = weight * mean over rows of
(1 - cos(phi(v_s), v_t)), v = the embedding (faces) or the pooled feature (classification).

phi is a Linear + BN1d connector (``connector=True``, default, as the other losses here so that
comparisons are fair) or the identity (``connector=False``: the student's own embedding is pulled
onto the teacher's, which needs equal sizes; common when both are 512-d).
"""
from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from facekd.distill.connectors import EmbeddingConnector
from facekd.distill.losses.functional import check_positive, check_same_shape
from facekd.distill.losses.registry import DistillLoss, InvalidLossOptionError, register_loss
from facekd.distill.outputs import StudentOutput, TeacherOutput

__all__ = ["CosineEmbedding"]


@register_loss("cosine", kinds=("face", "classifier"))
class CosineEmbedding(DistillLoss):
    """1 - cosine between the (connected) student vector and the teacher's; options: weight, connector."""

    def __init__(self, student_dim: int, teacher_dim: int, *, weight: float = 1.0, connector: bool = True) -> None:
        super().__init__(student_dim, teacher_dim)
        self.weight = check_positive(self.name, "weight", weight)
        if not connector and student_dim != teacher_dim:
            raise InvalidLossOptionError(f"loss 'cosine' with connector=False needs equal sizes, got student "
                                         f"{student_dim} vs teacher {teacher_dim}; use connector=True")
        self.connector: nn.Module = EmbeddingConnector(student_dim, teacher_dim) if connector else nn.Identity()

    def forward(self, student: StudentOutput, teacher: TeacherOutput, batch: Any) -> dict[str, Tensor]:
        """``{"cosine/cos": weight * mean(1 - cos)}``."""
        phi = self.connector(student.vector)
        target = teacher.vector.detach()
        check_same_shape(phi, target, "cosine vectors")
        cos = F.cosine_similarity(phi.float(), target.float(), dim=1)
        return {self.term("cos"): self.weight * (1.0 - cos).mean()}
