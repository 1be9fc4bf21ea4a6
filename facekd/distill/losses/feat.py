"""FitNet-style feature regression (Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015):
a connector maps the student's representation to the teacher's, trained with an MSE.

Faces: Linear + BN1d on the embedding, MSE against the teacher embedding (``feat_norm`` as in
``srd``: "none" raw, "l2" directions). Classification: Conv1x1 + BN2d + ReLU on the student's last
feature map, MSE against the teacher's last map; when their spatial sizes differ the larger map is
average-pooled to the smaller size first. Term ``feat/mse`` = weight * MSE.
"""
from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor

from facekd.distill.connectors import EmbeddingConnector, MapConnector
from facekd.distill.losses.functional import FEATURE_NORMS, check_mode, check_positive, feature_mse
from facekd.distill.losses.registry import DistillLoss, register_loss
from facekd.distill.outputs import StudentOutput, TeacherOutput

__all__ = ["FeatFace", "FeatMap", "match_spatial"]


def match_spatial(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Average-pool the larger of two maps [N, C, h, w] to the other's spatial size."""
    ha, wa = a.shape[-2:]
    hb, wb = b.shape[-2:]
    size = (min(ha, hb), min(wa, wb))
    if (ha, wa) != size:
        a = F.adaptive_avg_pool2d(a, size)
    if (hb, wb) != size:
        b = F.adaptive_avg_pool2d(b, size)
    return a, b


@register_loss("feat", kinds=("face",))
class FeatFace(DistillLoss):
    """MSE between the connected student embedding and the teacher embedding; options: weight, feat_norm."""

    scores_centres = False  # never reads the critic

    def __init__(self, student_dim: int, teacher_dim: int, *, weight: float = 1.0, feat_norm: str = "none") -> None:
        super().__init__(student_dim, teacher_dim)
        self.weight = check_positive(self.name, "weight", weight)
        self.feat_norm = check_mode(self.name, "feat_norm", feat_norm, FEATURE_NORMS)
        self.connector = EmbeddingConnector(student_dim, teacher_dim)

    def forward(self, student: StudentOutput, teacher: TeacherOutput, batch: Any) -> dict[str, Tensor]:
        """``{"feat/mse": ...}``."""
        phi = self.connector(student.require("embedding", self.name))
        target = teacher.require("embedding", self.name).detach()
        return {self.term("mse"): self.weight * feature_mse(phi, target, self.feat_norm, "feat embeddings")}


@register_loss("feat", kinds=("classifier",))
class FeatMap(DistillLoss):
    """MSE between the connected student feature map and the teacher's (spatially matched); option: weight."""

    scores_centres = False  # never reads the critic

    def __init__(self, student_dim: int, teacher_dim: int, *, weight: float = 1.0) -> None:
        super().__init__(student_dim, teacher_dim)
        self.weight = check_positive(self.name, "weight", weight)
        self.connector = MapConnector(student_dim, teacher_dim)

    def forward(self, student: StudentOutput, teacher: TeacherOutput, batch: Any) -> dict[str, Tensor]:
        """``{"feat/mse": ...}``."""
        phi = self.connector(student.require("feature_map", self.name))
        phi, target = match_spatial(phi, teacher.require("feature_map", self.name).detach())
        return {self.term("mse"): self.weight * F.mse_loss(phi.float(), target.float())}
