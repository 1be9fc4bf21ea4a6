"""Small pieces the losses share: logit matching (MSE or Hinton KL), feature matching, row picking."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from facekd.distill.outputs import DistillInputError

__all__ = ["LOGIT_MODES", "FEATURE_NORMS", "check_same_shape", "logit_matching", "hinton_kl", "feature_mse",
           "take_rows", "check_mode", "check_positive"]

LOGIT_MODES = ("mse", "kl")
FEATURE_NORMS = ("none", "l2")


def check_mode(loss: str, option: str, value: str, choices: tuple[str, ...]) -> str:
    """``value`` when it is one of ``choices``, else an error naming the loss and option."""
    from facekd.distill.losses.registry import InvalidLossOptionError

    if value is None and "none" in choices:  # `--loss-option srd.feat_norm=none` parses as None
        value = "none"
    if value not in choices:
        raise InvalidLossOptionError(f"loss '{loss}': {option} must be one of {', '.join(choices)}, got {value!r}")
    return value


def check_positive(loss: str, option: str, value: float, allow_zero: bool = True) -> float:
    """``value`` as float when >= 0 (or > 0), else an error naming the loss and option."""
    from facekd.distill.losses.registry import InvalidLossOptionError

    ok = value >= 0 if allow_zero else value > 0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise InvalidLossOptionError(f"loss '{loss}': {option} must be a number {bound}, got {value!r}")
    return float(value)


def check_same_shape(a: Tensor, b: Tensor, what: str) -> None:
    """A DistillInputError unless ``a`` and ``b`` have one shape."""
    if a.shape != b.shape:
        raise DistillInputError(f"{what}: shapes differ, {list(a.shape)} vs {list(b.shape)}")


def hinton_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """``KL(softmax(z_t/T) || softmax(z_s/T)) * T^2``, summed over classes, mean over rows (float32)."""
    t = float(temperature)
    log_p_s = F.log_softmax(student_logits.float() / t, dim=1)
    log_p_t = F.log_softmax(teacher_logits.float() / t, dim=1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * (t * t)


def logit_matching(student_logits: Tensor, teacher_logits: Tensor, mode: str, temperature: float, what: str) -> Tensor:
    """MSE over rows x classes (``mode="mse"``) or Hinton's KL with temperature (``"kl"``)."""
    check_same_shape(student_logits, teacher_logits, what)
    if mode == "mse":
        return F.mse_loss(student_logits.float(), teacher_logits.float())
    return hinton_kl(student_logits, teacher_logits, temperature)


def feature_mse(student: Tensor, teacher: Tensor, norm: str, what: str) -> Tensor:
    """``"none"``: MSE over rows x dims of the raw vectors; ``"l2"``: mean over rows of
    ``||u/|u| - v/|v|||^2 = 2 - 2 cos`` (the direction only, in [0, 4])."""
    check_same_shape(student, teacher, what)
    if norm == "none":
        return F.mse_loss(student.float(), teacher.float())
    diff = F.normalize(student.float(), dim=1) - F.normalize(teacher.float(), dim=1)
    return diff.pow(2).sum(dim=1).mean()


def take_rows(t: Tensor | None, rows: Tensor | None) -> Tensor | None:
    """``t[rows]`` (all of ``t`` when ``rows`` is None)."""
    if t is None or rows is None:
        return t
    return t.index_select(0, rows)
