"""ProxylessKD (Shi, Ren, Chen, Yan, "ProxylessKD: Direct Knowledge Distillation with Inherited
Classifier for Face Recognition", arXiv 2011.00265): the student inherits the teacher's classifier.

The teacher's class centres W_t (the critic of ``TeacherOutput``, the same matrix ``srd`` uses) are
frozen and become the student's classifier; the student's (connected) embedding is trained with a
margin softmax through them, so it learns to be discriminative *in the teacher's embedding space*
instead of imitating the teacher through a proxy (logits, features). On a labeled row i of class y:

    cos_ij = cos(W_t[j], phi(e_s,i))                                  (every class j of the critic)
    z_ij   = s * cos_ij for j != y,   z_iy = s * f(cos_iy)
    f(c)   = cos(arccos(c) + m)  (``head="arcface"``)   or   c - m  (``head="cosface"``)
    term ``proxyless/ce`` = mean over labeled rows of cross-entropy(z_i, y_i)

The margin maths is facekd's (``facekd.models.heads.margin_target``: float32, cosines clamped to
[-1 + 1e-6, 1 - 1e-6], the ArcFace curve continued monotonically past pi - m). Gradients reach the
student and the connector; W_t is frozen (``requires_grad`` off) and gets none. Only labeled rows
count (the loss needs the class); rows of an unlabeled pool are ignored, a batch without labeled
rows gives a zero that still reaches every parameter. With Partial FC (``TeacherOutput.centres``)
the softmax runs over the sampled centres, which always hold the batch's classes.

Options (the paper's names): ``scale`` s and ``margin`` m of the margin loss, as the run's own head
(the paper's point is that the inherited classifier lets the student use a large-margin softmax
such as ArcFace; defaults are arcface_torch's s = 64, and ``margin=None`` picks 0.5 for ArcFace
and 0.4 for CosFace, as ``--margin`` does: pass the run's ``--scale`` and ``--margin`` when they
differ, as bench/bench_distill_accuracy.py does); ``head`` ("arcface" | "cosface");
``connector``: the paper feeds the student embedding straight into the inherited classifier
(``"none"``, which needs equal embedding sizes); ``"angle"`` (default, facekd's: phi(e) = Q e/|e|
with Q semi-orthogonal, so the angles the margin loss shapes in the teacher's space are the
student's own, and any sizes work) or ``"bn"`` (Linear + BatchNorm1d).

The published method trains the student with this loss alone (the inherited classifier replaces
the student's own); in ``facekd.pipelines.distill`` that is ``--label-weight 0``, while the default
``--label-weight 1`` adds the student's own margin head on the same labeled rows.
The teacher's classifier must cover the student's classes in the same order (true for a critic
fitted on the labeled set, or a teacher trained on it); a label beyond it fails in one line.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from facekd.distill.connectors import build_embedding_connector
from facekd.distill.losses.functional import check_mode, check_positive, take_rows
from facekd.distill.losses.registry import DistillLoss, InvalidLossOptionError, register_loss, select_rows
from facekd.distill.outputs import DistillInputError, StudentOutput, TeacherOutput
from facekd.models.heads import COS_EPS, margin_target

__all__ = ["ProxylessKD", "MARGIN_HEADS", "DEFAULT_MARGINS", "margin_cross_entropy", "connector_module",
           "labels_in_centres", "zero_term"]

MARGIN_HEADS = ("arcface", "cosface")
DEFAULT_MARGINS = {"arcface": 0.5, "cosface": 0.4}
"""Margins when ``margin=None``: those of ``--head`` in facekd.pipelines.distill."""


def connector_module(loss: str, connector: str, student_dim: int, teacher_dim: int) -> nn.Module:
    """``"none"`` (identity; equal sizes only), ``"angle"`` or ``"bn"`` (facekd.distill.connectors)."""
    kind = check_mode(loss, "connector", connector, ("angle", "bn", "none"))
    if kind == "none":
        if student_dim != teacher_dim:
            raise InvalidLossOptionError(f"loss '{loss}': connector=none feeds the student embedding to the teacher's "
                                         f"space as it is, which needs equal sizes, got student {student_dim} vs "
                                         f"teacher {teacher_dim}; use {loss}.connector=angle or bn")
        return nn.Identity()
    return build_embedding_connector(kind, student_dim, teacher_dim)


def zero_term(anchor: Tensor, module: nn.Module) -> Tensor:
    """A zero that reaches ``anchor`` and every parameter of ``module`` (DDP expects gradients for all)."""
    return anchor.sum() * 0.0 + sum(p.sum() for p in module.parameters()) * 0.0


def margin_cross_entropy(cos: Tensor, targets: Tensor, head: str, scale: float, margin: float) -> Tensor:
    """Mean over rows of the cross-entropy of ``scale * cos`` with the ArcFace (cos(theta + m)) or
    CosFace (cos - m) margin on column ``targets[i]`` of row i (float32)."""
    cos = cos.float().clamp(-1.0 + COS_EPS, 1.0 - COS_EPS)
    m2, m3 = (margin, 0.0) if head == "arcface" else (0.0, margin)
    rows = torch.arange(cos.shape[0], device=cos.device)
    logits = cos.index_put((rows, targets), margin_target(cos[rows, targets], 1.0, m2, m3)) * scale
    return F.cross_entropy(logits, targets)


def labels_in_centres(labels: Tensor, centres: Tensor | None, num_classes: int, loss: str) -> Tensor:
    """Column of each label among the critic's classes (``centres``: Partial FC's sampled class ids,
    None for all); a DistillInputError naming the fix when a label is not among them."""
    if labels.numel() and int(labels.max()) >= num_classes:
        raise DistillInputError(f"loss '{loss}': label {int(labels.max())} is beyond the teacher classifier's "
                                f"{num_classes} classes; it needs the teacher's classifier over the student's "
                                "classes (fit it on the labeled set: drop --teacher-head)")
    if centres is None:
        return labels
    lookup = torch.full((num_classes,), -1, dtype=torch.long, device=labels.device)
    lookup[centres.to(labels.device)] = torch.arange(centres.numel(), device=labels.device)
    cols = lookup[labels]
    if labels.numel() and int(cols.min()) < 0:
        raise DistillInputError(f"loss '{loss}': the critic's sampled centres miss a class of the batch; "
                                "Partial FC samples must hold every positive class")
    return cols


@register_loss("proxyless", kinds=("face",))
class ProxylessKD(DistillLoss):
    """Margin softmax of the connected student embedding through the teacher's frozen centres, labeled rows.

    Options: scale, margin (None: 0.5 ArcFace, 0.4 CosFace), head ("arcface" | "cosface"),
    connector ("angle" | "bn" | "none"). The module docstring gives the equations.
    """

    def __init__(self, student_dim: int, teacher_dim: int, *, scale: float = 64.0, margin: float | None = None,
                 head: str = "arcface", connector: str = "angle") -> None:
        super().__init__(student_dim, teacher_dim)
        self.head = check_mode(self.name, "head", head, MARGIN_HEADS)
        self.scale = check_positive(self.name, "scale", scale, allow_zero=False)
        self.margin = DEFAULT_MARGINS[self.head] if margin is None else check_positive(self.name, "margin", margin)
        self.connector = connector_module(self.name, connector, student_dim, teacher_dim)

    def forward(self, student: StudentOutput, teacher: TeacherOutput, batch: Any) -> dict[str, Tensor]:
        """``{"proxyless/ce": margin cross-entropy over the labeled rows}``."""
        emb = student.require("embedding", self.name)
        rows = select_rows(batch, emb.shape[0], True, emb.device)
        assert rows is not None
        if rows.numel() == 0:
            return {self.term("ce"): zero_term(emb, self)}
        critic = teacher.require("critic", self.name)
        labels = batch.labels.to(emb.device).index_select(0, rows)
        cols = labels_in_centres(labels, teacher.centres, int(critic.num_classes), self.name)
        phi = self.connector(take_rows(emb, rows))
        cos = teacher.cross_logits(phi, self.name).float() / float(critic.scale)
        with torch.autocast(device_type=emb.device.type, enabled=False):  # the margin maths in float32
            return {self.term("ce"): margin_cross_entropy(cos, cols, self.head, self.scale, self.margin)}

    def extra_repr(self) -> str:
        return f"head={self.head}, scale={self.scale:g}, margin={self.margin:g}"
