"""Hinton KD ("Distilling the Knowledge in a Neural Network", 2015): the student's softened class
distribution must match the teacher's. Term ``kd/kl`` = KL(softmax(z_t/T) || softmax(z_s/T)) * T^2
(summed over classes, mean over rows), T = 4 as in the RepDistiller recipe.

Classification: z_s are the student's logits, z_t the teacher's.

Faces: the teacher's logits are z_t = s * cos(W_t, e_t) through its (fitted or loaded) classifier.
``student_logits="own"`` (default, the classic baseline): z_s are the student's *own* head logits
without margin, s * cos(W_s, e_s) (``StudentOutput.logits``), which needs the student's head and the
teacher's classifier to cover the same classes in the same order (true when the teacher classifier
was fitted on the student's labeled set); with Partial FC pass the student's columns' class ids as
``TeacherOutput.centres``. ``student_logits="critic"``: z_s = s * cos(W_t, phi(e_s)) through the
teacher's classifier after a Linear + BN1d connector, i.e. SRD's logit term with KL and no feature
term; it works with any teacher classifier.
"""
from __future__ import annotations

from typing import Any

from torch import Tensor

from facekd.distill.connectors import EmbeddingConnector
from facekd.distill.losses.functional import check_mode, check_positive, hinton_kl, check_same_shape
from facekd.distill.losses.registry import DistillLoss, register_loss
from facekd.distill.outputs import DistillInputError, StudentOutput, TeacherOutput

__all__ = ["HintonKD", "STUDENT_LOGITS"]

STUDENT_LOGITS = ("own", "critic")


@register_loss("kd", kinds=("face", "classifier"))
class HintonKD(DistillLoss):
    """Hinton's KL on temperature-softened logits; options: T, weight, student_logits ("own" | "critic", faces)."""

    def __init__(self, student_dim: int, teacher_dim: int, *, T: float = 4.0, weight: float = 1.0,
                 student_logits: str = "own") -> None:
        super().__init__(student_dim, teacher_dim)
        self.temperature = check_positive(self.name, "T", T, allow_zero=False)
        self.weight = check_positive(self.name, "weight", weight)
        self.student_logits = check_mode(self.name, "student_logits", student_logits, STUDENT_LOGITS)
        self.connector = EmbeddingConnector(student_dim, teacher_dim) if student_logits == "critic" else None

    def forward(self, student: StudentOutput, teacher: TeacherOutput, batch: Any) -> dict[str, Tensor]:
        """``{"kd/kl": weight * KL * T^2}``."""
        if self.connector is not None:
            z_s = teacher.cross_logits(self.connector(student.vector), self.name)
        else:
            z_s = student.require("logits", self.name)
        z_t = teacher.teacher_logits(self.name)
        try:
            check_same_shape(z_s, z_t, "kd logits")
        except DistillInputError as err:
            raise DistillInputError(f"{err}: the student's logits and the teacher's cover different classes; for "
                                    "faces use kd.student_logits=critic (teacher classifier on the connected "
                                    "student embedding) or give the teacher a classifier over the student's "
                                    "classes") from None
        return {self.term("kl"): self.weight * hinton_kl(z_s, z_t, self.temperature)}

    def extra_repr(self) -> str:
        return f"T={self.temperature:g}, weight={self.weight:g}, student_logits={self.student_logits}"
