"""Margin heads, Partial FC (one process) and the head registry: numbers checked against angles."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from facekd.models.heads import (
    COS_EPS, HeadError, InvalidHeadOptionError, LinearHead, MarginHead, PartialFC, UnknownHeadError,
    build_head, list_heads, shard_range,
)

D, C = 16, 12


def _angles(emb: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Angles between every embedding and every centre, computed independently in float64."""
    e = emb.double() / emb.double().norm(dim=1, keepdim=True)
    w = weight.double() / weight.double().norm(dim=1, keepdim=True)
    return torch.acos((e @ w.T).clamp(-1, 1))


def _batch(n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    emb = torch.randn(n, D)
    labels = torch.randint(0, C, (n,))
    return emb, labels


def test_registry_lists_heads_and_rejects_unknown_names_and_options() -> None:
    assert {"arcface", "cosface", "combined", "linear"} <= set(list_heads())
    with pytest.raises(UnknownHeadError, match="unknown head 'sphereface'"):
        build_head("sphereface", D, C)
    with pytest.raises(InvalidHeadOptionError, match="takes no option.*m2.*it takes: s=64.0, margin=0.5"):
        build_head("arcface", D, C, m2=0.3)
    assert isinstance(build_head("arcface", D, C), MarginHead)
    assert isinstance(build_head("cosface", D, C, sample_rate=0.5), PartialFC)
    assert isinstance(build_head("combined", D, C, partial_fc=True), PartialFC)
    assert isinstance(build_head("linear", D, C), LinearHead)
    with pytest.raises(InvalidHeadOptionError, match="sample_rate"):
        build_head("arcface", D, C, sample_rate=0.0)


def test_margin_head_weight_is_arcface_torch_initialised() -> None:
    head = build_head("arcface", 64, 2000)
    assert head.weight.shape == (2000, 64)
    assert abs(head.weight.std().item() - 0.01) < 5e-4
    assert head.state_dict().keys() == {"weight"}


def test_arcface_logits_are_s_cos_theta_plus_m_on_target_only() -> None:
    head = build_head("arcface", D, C)  # s=64, m=(1, 0.5, 0)
    emb, labels = _batch()
    labels[3] = -1  # an unlabeled row gets no margin anywhere
    theta = _angles(emb, head.weight.detach())
    expected = 64.0 * torch.cos(theta)
    rows = torch.arange(len(labels))[labels >= 0]
    assert (theta[rows, labels[rows]] < math.pi - 0.5).all()  # inside the margin's normal range
    expected[rows, labels[rows]] = 64.0 * torch.cos(theta[rows, labels[rows]] + 0.5)
    got = head.logits(emb, labels).double()
    torch.testing.assert_close(got, expected, atol=2e-4, rtol=1e-5)
    torch.testing.assert_close(head.logits(emb).double(), 64.0 * torch.cos(theta), atol=2e-4, rtol=1e-5)


def test_cosface_and_combined_margins_match_their_formulas() -> None:
    emb, labels = _batch()
    cosface = build_head("cosface", D, C, s=30.0, margin=0.35)
    theta = _angles(emb, cosface.weight.detach())
    expected = 30.0 * torch.cos(theta)
    idx = torch.arange(len(labels))
    expected[idx, labels] = 30.0 * (torch.cos(theta[idx, labels]) - 0.35)
    torch.testing.assert_close(cosface.logits(emb, labels).double(), expected, atol=1e-4, rtol=1e-5)

    combined = build_head("combined", D, C, s=10.0, m1=0.9, m2=0.3, m3=0.2)
    theta = _angles(emb, combined.weight.detach())
    expected = 10.0 * torch.cos(theta)
    expected[idx, labels] = 10.0 * (torch.cos(0.9 * theta[idx, labels] + 0.3) - 0.2)
    torch.testing.assert_close(combined.logits(emb, labels).double(), expected, atol=1e-4, rtol=1e-5)


def test_loss_is_mean_cross_entropy_over_labeled_rows() -> None:
    head = build_head("arcface", D, C)
    emb, labels = _batch()
    labels[[1, 5]] = -1
    keep = labels >= 0
    expected = F.cross_entropy(head.logits(emb, labels)[keep], labels[keep])
    torch.testing.assert_close(head(emb, labels), expected)


def test_target_logit_is_monotonic_and_continuous_through_theta_near_pi() -> None:
    head = MarginHead(2, 1, s=1.0, m1=1.0, m2=0.5, m3=0.0)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0]]))
    theta = torch.linspace(0, math.pi, 2001)
    emb = torch.stack([torch.cos(theta), torch.sin(theta)], dim=1)
    target = head.logits(emb, torch.zeros(len(theta), dtype=torch.long))[:, 0]
    assert torch.isfinite(target).all()
    steps = target[1:] - target[:-1]
    assert (steps <= 1e-6).all(), "target logit must not increase with the angle"
    assert steps.abs().max() < 5e-3, "target logit must be continuous"
    inside = (theta >= 0.01) & (theta <= math.pi - 0.5)
    torch.testing.assert_close(target[inside], torch.cos(theta[inside] + 0.5), atol=1e-5, rtol=0)
    # at theta = 0 the cosine clamp (1 - COS_EPS) shifts the angle by ~sqrt(2 * COS_EPS) only
    assert abs(target[0].item() - math.cos(0.5)) < 2 * math.sqrt(2 * COS_EPS)
    # beyond pi - m: cos(theta) shifted so that it meets -1 at pi - m
    beyond = theta > math.pi - 0.5
    torch.testing.assert_close(target[beyond], torch.cos(theta[beyond]) - (1 + math.cos(math.pi - 0.5)),
                               atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["arcface", "cosface", "combined"])
def test_angles_at_zero_and_pi_give_finite_loss_and_gradients(name: str) -> None:
    head = build_head(name, D, C)
    w = head.weight.detach()
    emb = torch.stack([w[0], -w[1], w[2] * 3.0, -w[3] * 0.5]).clone().requires_grad_(True)
    labels = torch.tensor([0, 1, 2, 3])  # theta = 0, pi, 0, pi on the target
    loss = head(emb, labels)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(emb.grad).all() and torch.isfinite(head.weight.grad).all()
    cos = head.cosine(emb)
    assert cos.max() <= 1 - COS_EPS + 1e-7 and cos.min() >= -1 + COS_EPS - 1e-7


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_embeddings_are_computed_in_float32(dtype: torch.dtype) -> None:
    head = build_head("arcface", D, C)
    emb, labels = _batch()
    low = emb.to(dtype).requires_grad_(True)
    loss = head(low, labels)
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert low.grad.dtype == dtype and torch.isfinite(low.grad.float()).all()
    torch.testing.assert_close(loss, head(emb.to(dtype).float(), labels), atol=1e-5, rtol=1e-5)


def test_autocast_does_not_lower_head_precision() -> None:
    head = build_head("arcface", D, C)
    emb, labels = _batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = head(emb, labels)
        logits = head.logits(emb, labels)
    assert logits.dtype == torch.float32
    torch.testing.assert_close(loss, head(emb, labels), atol=1e-5, rtol=1e-5)


def test_all_unlabeled_batch_gives_zero_loss_that_backpropagates() -> None:
    for head in (build_head("arcface", D, C), build_head("arcface", D, C, sample_rate=0.5), build_head("linear", D, C)):
        emb = torch.randn(4, D, requires_grad=True)
        loss = head(emb, torch.full((4,), -1))
        loss.backward()
        assert loss.item() == 0.0
        assert emb.grad is not None and (emb.grad == 0).all()


def test_bad_labels_and_shapes_raise_clear_errors() -> None:
    head = build_head("arcface", D, C)
    emb, labels = _batch()
    with pytest.raises(HeadError, match=f"label {C} out of range for {C} classes"):
        head(emb, torch.full_like(labels, C))
    with pytest.raises(HeadError, match=r"embeddings \[N, 16\]"):
        head(torch.randn(4, D + 1), labels[:4])
    with pytest.raises(HeadError, match="integer class labels"):
        head(emb, labels.float())


def test_partial_fc_at_full_rate_equals_margin_head_in_loss_and_gradients() -> None:
    full = build_head("arcface", D, C)
    pfc = build_head("arcface", D, C, partial_fc=True)
    assert isinstance(pfc, PartialFC) and pfc.num_local == C and pfc.class_start == 0
    pfc.load_full_weight(full.weight.detach())
    emb, labels = _batch(10)
    labels[2] = -1
    e1, e2 = emb.clone().requires_grad_(True), emb.clone().requires_grad_(True)
    l1, l2 = full(e1, labels), pfc(e2, labels)
    l1.backward()
    l2.backward()
    torch.testing.assert_close(l2, l1, atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(e2.grad, e1.grad, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(pfc.weight.grad, full.weight.grad, atol=1e-6, rtol=1e-5)
    assert pfc.last_sample.tolist() == list(range(C))
    torch.testing.assert_close(pfc.full_weight(), full.full_weight())


def test_partial_fc_sampling_keeps_every_positive() -> None:
    num_classes = 40
    pfc = build_head("cosface", D, num_classes, sample_rate=0.5)
    assert pfc.num_sample == 20
    for _ in range(20):
        labels = torch.randint(0, num_classes, (6,))
        emb = torch.randn(6, D, requires_grad=True)
        loss = pfc(emb, labels)
        loss.backward()
        sampled = set(pfc.last_sample.tolist())
        assert set(labels.tolist()) <= sampled and len(sampled) == 20
        assert pfc.last_sample.tolist() == sorted(sampled)
        unused = torch.tensor(sorted(set(range(num_classes)) - sampled))
        assert (pfc.weight.grad[unused] == 0).all()  # centres that were not sampled get no gradient
        assert torch.isfinite(loss) and torch.isfinite(emb.grad).all()
        pfc.weight.grad = None
    # more positives than the sample size: all positives, nothing else
    labels = torch.arange(30)
    pfc(torch.randn(30, D), labels)
    assert pfc.last_sample.tolist() == list(range(30))


def test_partial_fc_sampled_loss_equals_margin_loss_over_sampled_centres() -> None:
    pfc = build_head("arcface", D, 30, sample_rate=0.3)
    emb, labels = torch.randn(5, D), torch.randint(0, 30, (5,))
    loss = pfc(emb, labels)
    idx = pfc.last_sample
    sub = MarginHead(D, len(idx))
    sub.load_full_weight(pfc.full_weight()[idx])
    remapped = torch.searchsorted(idx, labels)
    torch.testing.assert_close(loss, sub(emb, remapped), atol=1e-5, rtol=1e-6)


def test_partial_fc_state_dict_is_its_shard_and_full_state_dict_loads_into_margin_head() -> None:
    pfc = PartialFC(D, C, sample_rate=0.5)
    assert pfc.state_dict()["weight"].shape == (C, D)
    head = MarginHead(D, C)
    head.load_state_dict(pfc.full_state_dict())
    torch.testing.assert_close(head.weight, pfc.weight)


def test_shard_ranges_cover_every_class_once() -> None:
    for classes, world in [(10, 3), (7, 2), (5, 5), (1000, 8)]:
        covered: list[int] = []
        for rank in range(world):
            start, size = shard_range(classes, world, rank)
            covered += list(range(start, start + size))
        assert covered == list(range(classes))


def test_linear_head_is_plain_cross_entropy() -> None:
    head = build_head("linear", D, C)
    emb, labels = _batch()
    expected = F.cross_entropy(emb @ head.weight.T + head.bias, labels)
    torch.testing.assert_close(head(emb, labels), expected)
    assert set(head.state_dict()) == {"weight", "bias"}
