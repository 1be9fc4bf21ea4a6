"""SRRL with ``labeled_only`` when a training batch covers a single row: no BatchNorm error."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from facekd.data.batch import Batch
from facekd.distill.critic import CosineCritic, LinearCritic
from facekd.distill.losses.registry import build_loss
from facekd.distill.outputs import StudentOutput, TeacherOutput


def _batch(mask: list[bool]) -> Batch:
    m = torch.tensor(mask)
    n = len(mask)
    return Batch(images=torch.zeros(n, 3, 8, 8), labels=torch.where(m, torch.arange(n) % 3, torch.full((n,), -1)),
                 labeled=m, index=torch.arange(n), source=(~m).long(), flipped=torch.zeros(n, dtype=torch.bool))


def _face_inputs(n: int, grad: bool = True) -> tuple[StudentOutput, TeacherOutput, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    e_s = torch.randn(n, 6, generator=gen, requires_grad=grad)
    e_t = torch.randn(n, 5, generator=gen)
    critic = CosineCritic(torch.nn.functional.normalize(torch.randn(3, 5, generator=gen), dim=1))
    return StudentOutput(embedding=e_s), TeacherOutput(embedding=e_t, critic=critic), e_s


def test_face_srrl_with_one_labeled_row_gives_a_zero_with_a_graph() -> None:
    loss = build_loss("srrl", "face", student_dim=6, teacher_dim=5).train()
    student, teacher, e_s = _face_inputs(4)
    terms = loss(student, teacher, _batch([False, True, False, False]))
    assert set(terms) == {"srrl/logits", "srrl/feat"} and all(v.item() == 0.0 for v in terms.values())
    sum(terms.values()).backward()
    assert e_s.grad is not None and e_s.grad.abs().sum() == 0
    assert all(p.grad is not None for p in loss.parameters())  # DDP sees a gradient for every parameter


def test_face_srrl_one_row_in_eval_and_two_rows_in_training_still_compute() -> None:
    student, teacher, _ = _face_inputs(4)
    loss = build_loss("srrl", "face", student_dim=6, teacher_dim=5)
    evaluated = loss.eval()(student, teacher, _batch([False, True, False, False]))
    assert all(v.item() > 0 for v in evaluated.values())  # running statistics: a real value
    trained = loss.train()(student, teacher, _batch([False, True, True, False]))
    assert all(v.item() > 0 for v in trained.values())


def test_classifier_srrl_one_row_on_a_1x1_map() -> None:
    gen = torch.Generator().manual_seed(1)
    fc = nn.Linear(5, 3)
    fmap_s = torch.randn(3, 4, 1, 1, generator=gen, requires_grad=True)
    fmap_t = torch.randn(3, 5, 1, 1, generator=gen)
    pooled_t = fmap_t.flatten(1)
    teacher = TeacherOutput(feature_map=fmap_t, pooled=pooled_t, logits=fc(pooled_t).detach(), critic=LinearCritic(fc))
    student = StudentOutput(feature_map=fmap_s, pooled=fmap_s.flatten(1), logits=torch.randn(3, 3))
    loss = build_loss("srrl", "classifier", student_dim=4, teacher_dim=5).train()
    terms = loss(student, teacher, _batch([True, False, False]))
    assert all(v.item() == 0.0 for v in terms.values())
    sum(terms.values()).backward()
    assert fmap_s.grad is not None and fmap_s.grad.abs().sum() == 0
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        nn.BatchNorm1d(5).train()(torch.randn(1, 5))  # what the loss avoids
