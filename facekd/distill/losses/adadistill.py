"""AdaDistill (Boutros, Struc, Damer, "AdaDistill: Adaptive Knowledge Distillation for Deep Face
Recognition", ECCV 2024, arXiv 2407.01332; code github.com/fdbtrs/AdaDistill, utils/losses.py
``AdaptiveAArcFace`` / ``AdaptiveACosFace`` and train/train_AdaDistill.py).

The student is trained with a margin softmax whose class centres are not learned but built from
the *teacher's* embeddings, updated by an exponential moving average whose rate adapts from easy
to hard: early, when student and teacher disagree, a centre follows the teacher's current
embeddings (simple knowledge); as the student catches up, it keeps its history (the teacher's
class-level knowledge). Per step, on the labeled rows i (class y_i), with unit vectors
s_i = phi(e_s,i)/|.| (student, connected) and t_i = e_t,i/|.| (teacher, detached), as the code does:

    cos_st,i = clamp(cos(s_i, t_i), -1, 1)                         (no gradient)
    lam_i    = clamp(cos(C[y_i], t_i), 1e-6, 1)                    (``adaptive_weighted_alpha=True``)
    alpha_i  = clamp(cos_st,i * lam_i, 1e-6, 1)                    (without the weight: cos_st,i alone)
    C[y_i]  <- alpha_i * C[y_i] + (1 - alpha_i) * t_i              (centres before the step, no gradient)
    z_ij = s * cos(s_i, C[j]),  z_iy = s * f(cos(s_i, C[y_i])) with the updated centres,
    f = cos(arccos(.) + m) (ArcFace) or . - m (CosFace); term ``adadistill/ce`` = mean cross-entropy.

The official code's alpha is per row (its ``target_logit_mean`` is the [1, B] vector of the alpha_i,
not a batch mean; the un-weighted branch it also contains refers to an undefined ``t_alpha``).
``alpha_reduce="mean"`` uses one alpha per step instead, the mean of the alpha_i over the step's
labeled rows. Defaults from the official config/config.py: ArcFace, ``scale`` s = 64, ``margin``
m = 0.45, ``adaptive_weighted_alpha=True``; the centres are the only state and are not trained
(the official head is in eval mode and outside the optimizer).

facekd's choices where the code leaves it open, all deterministic (a resumed run replays exactly):

* the centres are a buffer of this module (saved in checkpoints, restored by ``load_state_dict``),
  sized C x D_t at the first step from ``num_classes`` or, when 0, the teacher critic's class count
  (the classifier over the labeled classes); they start at zero instead of N(0, 0.01): a class not
  yet seen scores cos = 0 (the code: the cosine with a random vector, |cos| ~ 1/sqrt(D)) and its
  first visit sets C[y] = (1 - 1e-6) t_i (the code: about t_i plus its 0.01-scale random start);
* several rows of one class in a step update C[y] one after the other in row order, each with its
  alpha_i computed from the centres before the step (the code assigns them at once, so one row wins);
* under torchrun the rows of every rank are gathered (rank order) before the update, so every rank
  holds the same centres (the code updates each GPU's copy from its own rows);
* ``connector``: the code needs equal embedding sizes (MobileFaceNet and ResNet teachers, both
  512-d): ``"none"``; ``"angle"`` (default: Q e/|e|, Q semi-orthogonal, angles kept) or ``"bn"``
  map other sizes into the teacher's space, trained with the student.

Only labeled rows count (the centre of a row is that of its label); an unlabeled pool is ignored.
The published method trains the student with this loss alone (``--label-weight 0`` in
facekd.pipelines.distill); the default ``--label-weight 1`` adds the student's own margin head.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from facekd.distill.losses.functional import check_mode, check_positive, take_rows
from facekd.distill.losses.proxyless import MARGIN_HEADS, connector_module, margin_cross_entropy, zero_term
from facekd.distill.losses.registry import DistillLoss, InvalidLossOptionError, register_loss, select_rows
from facekd.distill.outputs import DistillInputError, StudentOutput, TeacherOutput
from facekd.engine import distributed as fdist

__all__ = ["AdaDistill", "ALPHA_REDUCE", "ALPHA_MIN"]

ALPHA_REDUCE = ("sample", "mean")
ALPHA_MIN = 1e-6
"""Lower clamp of lam and alpha, as the official code."""


@register_loss("adadistill", kinds=("face",))
class AdaDistill(DistillLoss):
    """Margin softmax on the student embedding over class centres that are an adaptive EMA of the
    teacher's embeddings (labeled rows).

    Options: scale (64), margin (0.45), head ("arcface" | "cosface"), adaptive_weighted_alpha (True),
    alpha_reduce ("sample" per row as the code | "mean" over the step), connector ("angle" | "bn" |
    "none"), num_classes (0: the teacher critic's class count). The module docstring gives the equations.
    """

    scores_centres = False  # its centres are its own buffer, not the critic's sample

    centres: Tensor

    def __init__(self, student_dim: int, teacher_dim: int, *, scale: float = 64.0, margin: float = 0.45,
                 head: str = "arcface", adaptive_weighted_alpha: bool = True, alpha_reduce: str = "sample",
                 connector: str = "angle", num_classes: int = 0) -> None:
        super().__init__(student_dim, teacher_dim)
        self.head = check_mode(self.name, "head", head, MARGIN_HEADS)
        self.scale = check_positive(self.name, "scale", scale, allow_zero=False)
        self.margin = check_positive(self.name, "margin", margin)
        if not isinstance(adaptive_weighted_alpha, bool):
            raise InvalidLossOptionError(f"loss '{self.name}': adaptive_weighted_alpha must be true or false, got "
                                         f"{adaptive_weighted_alpha!r}")
        self.adaptive_weighted_alpha = adaptive_weighted_alpha
        self.alpha_reduce = check_mode(self.name, "alpha_reduce", alpha_reduce, ALPHA_REDUCE)
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
            raise InvalidLossOptionError(f"loss '{self.name}': num_classes must be an integer >= 0 (0: the teacher "
                                         f"classifier's), got {num_classes!r}")
        self.num_classes = num_classes
        self.connector = connector_module(self.name, connector, student_dim, teacher_dim)
        self.register_buffer("centres", torch.zeros(num_classes, teacher_dim))
        self.last_alpha: Tensor | None = None  # alpha of each labeled row of the last update (for logs and tests)

    # -------------------------------------------------------------------------------- state
    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        saved = state_dict.get(prefix + "centres")
        if isinstance(saved, Tensor) and saved.dim() == 2 and saved.shape[1] == self.teacher_dim \
                and saved.shape != self.centres.shape:
            self.centres = torch.zeros(saved.shape, dtype=self.centres.dtype, device=self.centres.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _size_centres(self, teacher: TeacherOutput, labels: Tensor) -> None:
        """Allocate the C x D_t centres at the first step (C: num_classes, else the critic's classes)."""
        if self.centres.shape[0] == 0:
            count = self.num_classes or int(getattr(teacher.critic, "num_classes", 0) or 0)
            if count < 1:
                raise DistillInputError(f"loss '{self.name}' needs the number of classes: set "
                                        f"--loss-option {self.name}.num_classes=C (the teacher has no classifier)")
            self.centres = torch.zeros(count, self.teacher_dim, device=labels.device)
        if labels.numel() and int(labels.max()) >= self.centres.shape[0]:
            raise DistillInputError(f"loss '{self.name}': label {int(labels.max())} is beyond its "
                                    f"{self.centres.shape[0]} class centres; set --loss-option "
                                    f"{self.name}.num_classes to the labeled set's class count")
        if self.centres.device != labels.device:
            self.centres = self.centres.to(labels.device)

    # -------------------------------------------------------------------------------- update
    @torch.no_grad()
    def update_centres(self, student_unit: Tensor, teacher_unit: Tensor, labels: Tensor) -> Tensor:
        """The EMA step of the centres from unit student/teacher rows of classes ``labels`` (every
        rank's rows under torchrun); returns the alpha of each (local and gathered) row."""
        cos_st = (student_unit * teacher_unit).sum(dim=1)
        if fdist.is_distributed() and fdist.world_size() > 1:
            sizes = [int(n) for n in fdist.all_gather_objects(int(labels.shape[0]))]
            labels = fdist.gather_rows(labels, sizes)
            teacher_unit = fdist.gather_rows(teacher_unit, sizes)
            cos_st = fdist.gather_rows(cos_st, sizes)
        cos_st = cos_st.clamp(-1.0, 1.0)
        old = self.centres.index_select(0, labels)
        if self.adaptive_weighted_alpha:
            lam = (F.normalize(old, dim=1) * teacher_unit).sum(dim=1).clamp(ALPHA_MIN, 1.0)
            alpha = (cos_st * lam).clamp(ALPHA_MIN, 1.0)
        else:
            alpha = cos_st.clamp(ALPHA_MIN, 1.0)
        if self.alpha_reduce == "mean":
            alpha = alpha.mean().expand_as(alpha)
        # several rows of one class: one after the other in row order (k-th occurrences in pass k)
        same = labels.unsqueeze(1) == labels.unsqueeze(0)
        occurrence = torch.tril(same, diagonal=-1).sum(dim=1)
        for k in range(int(occurrence.max()) + 1 if labels.numel() else 0):
            sel = torch.nonzero(occurrence == k).squeeze(1)
            ids, a = labels.index_select(0, sel), alpha.index_select(0, sel).unsqueeze(1)
            self.centres[ids] = a * self.centres.index_select(0, ids) + (1.0 - a) * teacher_unit.index_select(0, sel)
        return alpha

    # -------------------------------------------------------------------------------- loss
    def forward(self, student: StudentOutput, teacher: TeacherOutput, batch: Any) -> dict[str, Tensor]:
        """Update the centres from this step's labeled rows, then ``{"adadistill/ce": margin CE}``."""
        emb = student.require("embedding", self.name)
        rows = select_rows(batch, emb.shape[0], True, emb.device)
        assert rows is not None
        labels = batch.labels.to(emb.device).index_select(0, rows)
        self._size_centres(teacher, labels)
        if rows.numel() == 0:
            if fdist.is_distributed() and fdist.world_size() > 1:  # every rank takes part in the gather
                none = emb.new_zeros((0, self.teacher_dim), dtype=torch.float32)
                self.last_alpha = self.update_centres(none, none, labels)
            return {self.term("ce"): zero_term(emb, self)}
        phi = self.connector(take_rows(emb, rows))
        with torch.autocast(device_type=emb.device.type, enabled=False):  # float32 cosines and update
            t_unit = F.normalize(take_rows(teacher.require("embedding", self.name), rows).detach().float(), dim=1)
            s_unit = F.normalize(phi.float(), dim=1)
            self.last_alpha = self.update_centres(s_unit.detach(), t_unit, labels)
            cos = s_unit @ F.normalize(self.centres, dim=1).t()
            return {self.term("ce"): margin_cross_entropy(cos, labels, self.head, self.scale, self.margin)}

    def extra_repr(self) -> str:
        return (f"head={self.head}, scale={self.scale:g}, margin={self.margin:g}, "
                f"adaptive_weighted_alpha={self.adaptive_weighted_alpha}, alpha_reduce={self.alpha_reduce}, "
                f"classes={self.centres.shape[0] or self.num_classes or 'from the critic'}")
