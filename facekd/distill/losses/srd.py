"""SRD: semantic representational distillation (Yang, Zhu, Bulat, Martinez, Tzimiropoulos,
"Knowledge Distillation Meets Open-Set Semi-Supervised Learning", arXiv 2205.06701, IJCV 2024).

The student's representation is mapped by a connector phi into the teacher's space and passed
through the teacher's frozen, not detached classifier (the critic); these *cross-network logits*
must match the teacher's own logits of the same image. No label is used, so every row of the
batch, labeled or from an unlabeled open-set pool, is distilled. Terms (already weighted):

* ``srd/logits`` = beta * L(z_hat, z_t), L = MSE over rows x classes (``mode="mse"``, the
  authors' code) or Hinton's KL with temperature T times T^2 (``mode="kl"``);
* ``srd/feat``   = beta * lambda_f * MSE(phi(student), teacher feature).

Faces (``kind="face"``, facekd's variant): phi = Linear(D_s -> D_t) + BatchNorm1d on the
embedding; z = s * cos(W_t, .) without margin (``CosineCritic``), over all centres or the subset
``TeacherOutput.centres`` (Partial FC's sampled centres). The feature term compares phi(e_s) with
the raw teacher embedding (``feat_norm="none"``, default): arcface embeddings leave a BatchNorm1d,
so their entries are of unit scale and the MSE is of the order of the logit term; ``feat_norm="l2"``
compares directions only (2 - 2 cos per row), as the logits do. Default ``mode="mse"``: MSE on
cosine logits beat KL (T=4) in our CPU prototype (0.964 vs 0.959 verification accuracy,
docs/reference section 9); to be re-decided on the accuracy benchmark.

Classification (``kind="classifier"``, exactly as published): phi = Conv1x1(C_s -> C_t, no
bias) + BatchNorm2d + ReLU on the student's last feature map, then global average pooling:
x_hat = GAP(phi(F_s)); z_hat = W_t x_hat + b_t with the teacher's linear layer; feature term
MSE(x_hat, GAP(F_t)). Student and teacher maps may differ in spatial size: phi is pointwise and
both sides are compared only after GAP, so no resizing is needed (and none is done: pooling
before the ReLU would change the result).
"""
from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor

from facekd.distill.connectors import EmbeddingConnector, MapConnector
from facekd.distill.losses.functional import (FEATURE_NORMS, LOGIT_MODES, check_mode, check_positive, feature_mse,
                                              logit_matching, take_rows)
from facekd.distill.losses.registry import DistillLoss, register_loss, select_rows
from facekd.distill.outputs import StudentOutput, TeacherOutput

__all__ = ["CriticMatchingLoss", "FaceCriticMatching", "MapCriticMatching", "SRDFace", "SRDClassifier"]


class CriticMatchingLoss(DistillLoss):
    """Connector + teacher critic: logit matching on cross-network logits plus a feature term.

    Subclasses say how the student is connected (``connect``) and which teacher vector the
    feature term targets (``teacher_vector``).
    """

    def __init__(self, student_dim: int, teacher_dim: int, *, mode: str, T: float, logit_weight: float,
                 feat_weight: float, feat_norm: str, labeled_only: bool) -> None:
        super().__init__(student_dim, teacher_dim)
        self.mode = check_mode(self.name, "mode", mode, LOGIT_MODES)
        self.temperature = check_positive(self.name, "T", T, allow_zero=False)
        self.logit_weight = float(logit_weight)
        self.feat_weight = float(feat_weight)
        self.feat_norm = check_mode(self.name, "feat_norm", feat_norm, FEATURE_NORMS)
        self.labeled_only = bool(labeled_only)

    _anchor = "embedding"
    """The student field every row of the batch has (used to count rows and to build a zero)."""

    def connect(self, student: StudentOutput, rows: Tensor | None) -> Tensor:
        """The connected student vector phi [n, D_t] of the chosen rows. Override."""
        raise NotImplementedError

    def teacher_vector(self, teacher: TeacherOutput) -> Tensor:
        """The teacher feature the feature term matches. Override."""
        raise NotImplementedError

    def forward(self, student: StudentOutput, teacher: TeacherOutput, batch: Any) -> dict[str, Tensor]:
        """``{"<name>/logits": ..., "<name>/feat": ...}`` over the batch (its labeled rows if labeled_only)."""
        anchor = student.require(self._anchor, self.name)
        rows = select_rows(batch, anchor.shape[0], self.labeled_only, anchor.device)
        if rows is not None and rows.numel() == 0:
            # a zero that reaches the student and every connector parameter (DDP expects gradients for all)
            zero = anchor.sum() * 0.0 + sum(p.sum() for p in self.parameters()) * 0.0
            return {self.term("logits"): zero, self.term("feat"): zero}
        phi = self.connect(student, rows)
        z_hat = teacher.cross_logits(phi, self.name)
        z_t = take_rows(teacher.teacher_logits(self.name), rows)
        target = take_rows(self.teacher_vector(teacher), rows).detach()
        l_logits = logit_matching(z_hat, z_t, self.mode, self.temperature, f"{self.name} logits")
        l_feat = feature_mse(phi, target, self.feat_norm, f"{self.name} features")
        return {self.term("logits"): self.logit_weight * l_logits, self.term("feat"): self.feat_weight * l_feat}

    def extra_repr(self) -> str:
        return (f"mode={self.mode}, T={self.temperature:g}, logit_weight={self.logit_weight:g}, "
                f"feat_weight={self.feat_weight:g}, feat_norm={self.feat_norm}, labeled_only={self.labeled_only}")


class FaceCriticMatching(CriticMatchingLoss):
    """Face form: phi = Linear + BN1d on the embedding; targets the teacher embedding."""

    _anchor = "embedding"

    def __init__(self, student_dim: int, teacher_dim: int, **options: Any) -> None:
        super().__init__(student_dim, teacher_dim, **options)
        self.connector = EmbeddingConnector(student_dim, teacher_dim)

    def connect(self, student: StudentOutput, rows: Tensor | None) -> Tensor:
        return self.connector(take_rows(student.require("embedding", self.name), rows))

    def teacher_vector(self, teacher: TeacherOutput) -> Tensor:
        return teacher.require("embedding", self.name)


class MapCriticMatching(CriticMatchingLoss):
    """Classification form: x_hat = GAP(ReLU(BN2d(Conv1x1(F_s)))); targets GAP(F_t)."""

    _anchor = "feature_map"

    def __init__(self, student_dim: int, teacher_dim: int, **options: Any) -> None:
        super().__init__(student_dim, teacher_dim, **options)
        self.connector = MapConnector(student_dim, teacher_dim)

    def connect(self, student: StudentOutput, rows: Tensor | None) -> Tensor:
        fmap = take_rows(student.require("feature_map", self.name), rows)
        return F.adaptive_avg_pool2d(self.connector(fmap), 1).flatten(1)

    def teacher_vector(self, teacher: TeacherOutput) -> Tensor:
        if teacher.pooled is not None:
            return teacher.pooled
        return F.adaptive_avg_pool2d(teacher.require("feature_map", self.name), 1).flatten(1)


@register_loss("srd", kinds=("face",))
class SRDFace(FaceCriticMatching):
    """SRD for face students: s*cos cross-network logits through the teacher's centres + embedding term.

    Options: mode ("mse" | "kl"), T (KL temperature), beta, lambda_f, feat_norm ("none" | "l2"),
    labeled_only (False: every row, the point of SRD).
    """

    def __init__(self, student_dim: int, teacher_dim: int, *, mode: str = "mse", T: float = 4.0,
                 beta: float = 1.0, lambda_f: float = 1.0, feat_norm: str = "none",
                 labeled_only: bool = False) -> None:
        beta = check_positive(self.name, "beta", beta)
        lambda_f = check_positive(self.name, "lambda_f", lambda_f)
        super().__init__(student_dim, teacher_dim, mode=mode, T=T, logit_weight=beta, feat_weight=beta * lambda_f,
                         feat_norm=feat_norm, labeled_only=labeled_only)


@register_loss("srd", kinds=("classifier",))
class SRDClassifier(MapCriticMatching):
    """SRD for classification students, the published construction (conv1x1-BN-ReLU, GAP, teacher fc).

    Options: mode ("mse" as published | "kl"), T, beta, lambda_f (1; 10 for ShuffleNetV1 in the
    paper), feat_norm ("none" as published), labeled_only.
    """

    def __init__(self, student_dim: int, teacher_dim: int, *, mode: str = "mse", T: float = 4.0,
                 beta: float = 1.0, lambda_f: float = 1.0, feat_norm: str = "none",
                 labeled_only: bool = False) -> None:
        beta = check_positive(self.name, "beta", beta)
        lambda_f = check_positive(self.name, "lambda_f", lambda_f)
        super().__init__(student_dim, teacher_dim, mode=mode, T=T, logit_weight=beta, feat_weight=beta * lambda_f,
                         feat_norm=feat_norm, labeled_only=labeled_only)
