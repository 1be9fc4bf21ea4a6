"""Distillation losses: values against hand computations (numpy, float64), gradient routing through
the frozen critic, and the registry (combined losses, weights, clear errors)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from facekd.data.batch import Batch
from facekd.distill.critic import CosineCritic, LinearCritic
from facekd.distill.losses.registry import (InvalidLossOptionError, LossError, UnknownLossError, build_loss,
                                            build_losses, list_losses, loss_options, parse_loss_options,
                                            parse_loss_spec)
from facekd.distill.outputs import DistillInputError, StudentOutput, TeacherOutput

S = 64.0
BN_FORM = {"connector": "bn", "feat_norm": "none", "logit_norm": "none"}
"""SRD's earlier face form (Linear + BN1d connector, raw logit and feature MSE), still an option."""


def batch_of(n: int, labeled: list[bool] | None = None) -> Batch:
    mask = torch.tensor(labeled if labeled is not None else [True] * n)
    labels = torch.where(mask, torch.arange(n) % 3, torch.full((n,), -1))
    return Batch(images=torch.zeros(n, 3, 8, 8), labels=labels, labeled=mask, index=torch.arange(n),
                 source=(~mask).long(), flipped=torch.zeros(n, dtype=torch.bool))


# ---------------------------------------------------------------- numpy references
def np_normalize(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def np_bn_train(y: np.ndarray, gamma: np.ndarray, beta: np.ndarray, axes: tuple[int, ...],
                eps: float = 1e-5) -> np.ndarray:
    mean = y.mean(axis=axes, keepdims=True)
    var = y.var(axis=axes, keepdims=True)  # biased, as BatchNorm normalises in training
    shape = [1] * y.ndim
    shape[1] = -1
    return (y - mean) / np.sqrt(var + eps) * gamma.reshape(shape) + beta.reshape(shape)


def np_log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def np_hinton(z_s: np.ndarray, z_t: np.ndarray, t: float) -> float:
    ls, lt = np_log_softmax(z_s / t), np_log_softmax(z_t / t)
    return float((np.exp(lt) * (lt - ls)).sum(axis=1).mean() * t * t)


def set_embedding_connector(conn: nn.Module, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    w = rng.normal(size=tuple(conn.linear.weight.shape))
    g = rng.uniform(0.5, 1.5, size=conn.bn.weight.shape[0])
    b = rng.normal(size=conn.bn.bias.shape[0])
    with torch.no_grad():
        conn.linear.weight.copy_(torch.from_numpy(w))
        conn.bn.weight.copy_(torch.from_numpy(g))
        conn.bn.bias.copy_(torch.from_numpy(b))
    return w, g, b


def np_phi_face(e_s: np.ndarray, w: np.ndarray, g: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np_bn_train(e_s @ w.T, g, b, axes=(0,))


@pytest.fixture
def face_case() -> dict:
    rng = np.random.default_rng(3)
    n, ds, dt, c = 6, 5, 7, 9
    return {"rng": rng, "e_s": rng.normal(size=(n, ds)), "e_t": rng.normal(size=(n, dt)),
            "W": rng.normal(size=(c, dt)), "n": n, "ds": ds, "dt": dt}


def t64(a: np.ndarray, grad: bool = False) -> torch.Tensor:
    return torch.tensor(a, dtype=torch.float32, requires_grad=grad)


# ---------------------------------------------------------------- SRD (faces)
@pytest.mark.parametrize("mode", ["mse", "kl"])
@pytest.mark.parametrize("subset", [False, True])
def test_srd_face_matches_hand_computation(face_case: dict, mode: str, subset: bool) -> None:
    f = face_case
    loss = build_loss("srd", "face", student_dim=f["ds"], teacher_dim=f["dt"], mode=mode, T=3.0, beta=0.7,
                      lambda_f=2.0, **BN_FORM)
    w, g, b = set_embedding_connector(loss.connector, f["rng"])
    centres = torch.tensor([0, 4, 8, 2]) if subset else None
    terms = loss(StudentOutput(embedding=t64(f["e_s"])),
                 TeacherOutput(embedding=t64(f["e_t"]), critic=CosineCritic(t64(f["W"]), S), centres=centres),
                 batch_of(f["n"]))
    assert set(terms) == {"srd/logits", "srd/feat"}
    # KL scores the sampled centres; the MSE is over all classes whatever the sample (closed form)
    W = f["W"][centres.numpy()] if subset and mode == "kl" else f["W"]
    phi = np_phi_face(f["e_s"], w, g, b)
    z_hat = S * np_normalize(phi) @ np_normalize(W).T
    z_t = S * np_normalize(f["e_t"]) @ np_normalize(W).T
    want_logits = np.mean((z_hat - z_t) ** 2) if mode == "mse" else np_hinton(z_hat, z_t, 3.0)
    want_feat = np.mean((phi - f["e_t"]) ** 2)
    assert terms["srd/logits"].item() == pytest.approx(0.7 * want_logits, rel=1e-4)
    assert terms["srd/feat"].item() == pytest.approx(0.7 * 2.0 * want_feat, rel=1e-4)


def test_srd_face_default_form_matches_hand_computation(face_case: dict) -> None:
    """Defaults: angle connector (Q e/|e|), 2 - 2cos feature term, logit MSE times D_t / s^2, beta 8."""
    f = face_case
    loss = build_loss("srd", "face", student_dim=f["ds"], teacher_dim=f["dt"])
    q = loss.connector.matrix().detach().numpy().astype(np.float64)
    assert np.allclose(q.T @ q, np.eye(f["ds"]), atol=1e-5)
    terms = loss(StudentOutput(embedding=t64(f["e_s"])),
                 TeacherOutput(embedding=t64(f["e_t"]), critic=CosineCritic(t64(f["W"]), S)), batch_of(f["n"]))
    phi = np_normalize(f["e_s"]) @ q.T
    cos_hat = np_normalize(phi) @ np_normalize(f["W"]).T
    cos_t = np_normalize(f["e_t"]) @ np_normalize(f["W"]).T
    want_logits = 8.0 * f["dt"] * np.mean((cos_hat - cos_t) ** 2)
    want_feat = 8.0 * np.mean(2 - 2 * (np_normalize(phi) * np_normalize(f["e_t"])).sum(1))
    assert terms["srd/logits"].item() == pytest.approx(want_logits, rel=1e-4)
    assert terms["srd/feat"].item() == pytest.approx(want_feat, rel=1e-4)
    with pytest.raises(InvalidLossOptionError, match="feat_norm=l2, or connector=bn"):
        build_loss("srd", "face", student_dim=f["ds"], teacher_dim=f["dt"], feat_norm="none")


def test_srd_face_l2_feature_term(face_case: dict) -> None:
    f = face_case
    loss = build_loss("srd", "face", student_dim=f["ds"], teacher_dim=f["dt"], connector="bn", feat_norm="l2", beta=1.0)
    w, g, b = set_embedding_connector(loss.connector, f["rng"])
    terms = loss(StudentOutput(embedding=t64(f["e_s"])),
                 TeacherOutput(embedding=t64(f["e_t"]), critic=CosineCritic(t64(f["W"]))), batch_of(f["n"]))
    phi = np_phi_face(f["e_s"], w, g, b)
    cos = (np_normalize(phi) * np_normalize(f["e_t"])).sum(1)
    assert terms["srd/feat"].item() == pytest.approx(np.mean(2 - 2 * cos), rel=1e-4)


# ---------------------------------------------------------------- SRD (classification)
def test_srd_classifier_matches_published_construction() -> None:
    rng = np.random.default_rng(5)
    n, cs, ct, k = 4, 3, 5, 6
    f_s = rng.normal(size=(n, cs, 4, 4))           # student map 4x4 ...
    pooled_t = np.abs(rng.normal(size=(n, ct)))   # ... teacher pooled from a map of another size
    W, bias = rng.normal(size=(k, ct)), rng.normal(size=k)
    z_t = rng.normal(size=(n, k))
    loss = build_loss("srd", "classifier", student_dim=cs, teacher_dim=ct, lambda_f=10.0, mode="mse")
    conv = rng.normal(size=(ct, cs))
    g, b = rng.uniform(0.5, 1.5, size=ct), rng.normal(size=ct)
    with torch.no_grad():
        loss.connector.conv.weight.copy_(torch.from_numpy(conv).view(ct, cs, 1, 1))
        loss.connector.bn.weight.copy_(torch.from_numpy(g))
        loss.connector.bn.bias.copy_(torch.from_numpy(b))
    linear = nn.Linear(ct, k)
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(W))
        linear.bias.copy_(torch.from_numpy(bias))
    terms = loss(StudentOutput(feature_map=t64(f_s), logits=torch.zeros(n, k), pooled=t64(f_s.mean((2, 3)))),
                 TeacherOutput(feature_map=torch.zeros(n, ct, 2, 2), pooled=t64(pooled_t), logits=t64(z_t),
                               critic=LinearCritic(linear)), batch_of(n))
    y = np.einsum("oc,nchw->nohw", conv, f_s)
    x_hat = np.maximum(np_bn_train(y, g, b, axes=(0, 2, 3)), 0).mean(axis=(2, 3))
    z_hat = x_hat @ W.T + bias
    assert terms["srd/logits"].item() == pytest.approx(np.mean((z_hat - z_t) ** 2), rel=1e-4)
    assert terms["srd/feat"].item() == pytest.approx(10.0 * np.mean((x_hat - pooled_t) ** 2), rel=1e-4)


def test_srd_classifier_head_term_is_hinton_kl_on_every_row() -> None:
    """srd/head (default weight 1): KL(T) of the student's own logits against the teacher's, over
    every row, pool rows included; only on the labeled rows with labeled_only; absent at head=0."""
    rng = np.random.default_rng(11)
    n, cs, ct, k = 6, 3, 5, 4
    linear = nn.Linear(ct, k)
    z_s, z_t = rng.normal(size=(n, k)) * 3, rng.normal(size=(n, k)) * 5
    student = StudentOutput(feature_map=t64(rng.normal(size=(n, cs, 2, 2))), logits=t64(z_s),
                            pooled=t64(rng.normal(size=(n, cs))))
    teacher = TeacherOutput(feature_map=torch.zeros(n, ct, 2, 2),
                            pooled=t64(np.abs(rng.normal(size=(n, ct)))), logits=t64(z_t),
                            critic=LinearCritic(linear))
    mixed = batch_of(n, [True, True, True, False, False, False])
    terms = build_loss("srd", "classifier", student_dim=cs, teacher_dim=ct, T=3.0)(student, teacher, mixed)
    assert set(terms) == {"srd/logits", "srd/feat", "srd/head"}
    assert terms["srd/head"].item() == pytest.approx(np_hinton(z_s, z_t, 3.0), rel=1e-5)
    half = build_loss("srd", "classifier", student_dim=cs, teacher_dim=ct, head=0.5, labeled_only=True)
    assert half(student, teacher, mixed)["srd/head"].item() == pytest.approx(0.5 * np_hinton(z_s[:3], z_t[:3], 4.0),
                                                                            rel=1e-5)
    published = build_loss("srd", "classifier", student_dim=cs, teacher_dim=ct, head=0.0)
    assert set(published(student, teacher, mixed)) == {"srd/logits", "srd/feat"}
    with pytest.raises(InvalidLossOptionError):
        build_loss("srd", "classifier", student_dim=cs, teacher_dim=ct, head=-1.0)
    other_classes = StudentOutput(feature_map=student.feature_map, logits=t64(z_s[:, :3]), pooled=student.pooled)
    with pytest.raises(DistillInputError, match="srd.head=0"):
        build_loss("srd", "classifier", student_dim=cs, teacher_dim=ct)(other_classes, teacher, mixed)


# ---------------------------------------------------------------- gradient routing
def test_gradients_reach_student_and_connector_never_teacher() -> None:
    from facekd.distill.teacher import Teacher
    from facekd.models.registry import build_backbone

    torch.manual_seed(0)
    student = build_backbone("mbf", input_size=32, width=0.25, embedding_size=16)
    tnet = build_backbone("r18", input_size=32, width=0.125, embedding_size=24)
    teacher = Teacher(tnet, "face", classifier=torch.randn(10, 24), scale=32.0)
    losses = build_losses("srd:1.0,kd:0.5,feat:0.1,cosine:0.1", "face", student_dim=16, teacher_dim=24,
                          options={"kd": {"student_logits": "critic"}})
    b = batch_of(8, [True] * 4 + [False] * 4)
    b.images = torch.randn(8, 3, 32, 32)
    terms = losses(StudentOutput.from_model(student(b.images, return_features=True)), teacher.outputs(b), b)
    sum(terms.values()).backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert teacher.critic.weight.grad is None and not teacher.critic.weight.requires_grad
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in losses.parameters())
    assert sum(p.grad is not None for p in student.parameters()) == sum(1 for _ in student.parameters())


def test_gradients_classifier_teacher_fc_stays_frozen() -> None:
    from facekd.distill.teacher import Teacher
    from facekd.models.registry import build_backbone

    student, tnet = build_backbone("resnet20", num_classes=10), build_backbone("resnet8x4", num_classes=10)
    teacher = Teacher(tnet, "classifier")
    losses = build_losses("srd,srrl,feat,kd,cosine", "classifier", student_dim=student.feature_channels,
                          teacher_dim=teacher.feature_dim)
    b = batch_of(4)
    b.images = torch.randn(4, 3, 32, 32)
    terms = losses(StudentOutput.from_model(student(b.images, return_features=True)), teacher.outputs(b), b)
    sum(terms.values()).backward()
    assert tnet.fc.weight.grad is None and tnet.fc.bias.grad is None
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None for p in losses.parameters())
    assert student.conv1.weight.grad is not None and student.fc.weight.grad is not None  # fc via kd


def test_cross_logits_pass_gradient_through_frozen_centres() -> None:
    """d/dphi of the critic's logits is the one the centres W give (W in the graph, not detached)."""
    w = torch.randn(5, 4)
    critic = CosineCritic(w, scale=2.0)
    phi = torch.randn(3, 4, requires_grad=True)
    critic(phi).sum().backward()
    ref = phi.detach().clone().requires_grad_(True)
    (2.0 * nn.functional.normalize(ref, dim=1) @ nn.functional.normalize(w, dim=1).t()).sum().backward()
    assert torch.allclose(phi.grad, ref.grad, atol=1e-6)
    assert critic.weight.grad is None


def _np_srd_default_logits(e_s: np.ndarray, q: np.ndarray, e_t: np.ndarray, w: np.ndarray, dt: int) -> float:
    """SRD's default logit term written out (float64): 8 * D_t * mean((cos(Q e_s/|e_s|, W) - cos(e_t, W))^2)."""
    cos_hat = np_normalize(np_normalize(e_s) @ q.T) @ np_normalize(w).T
    cos_t = np_normalize(e_t) @ np_normalize(w).T
    return float(8.0 * dt * np.mean((cos_hat - cos_t) ** 2))


def test_srd_face_logit_term_alone_gradient_equals_finite_differences(face_case: dict) -> None:
    """Backward on the cross-network logit term only: the student's gradient is that of the hand
    formula (central differences, float64), the connector gets one, the critic's centres none."""
    f = face_case
    loss = build_loss("srd", "face", student_dim=f["ds"], teacher_dim=f["dt"])
    q = loss.connector.matrix().detach().numpy().astype(np.float64)
    critic = CosineCritic(t64(f["W"]), S)
    e_s = t64(f["e_s"], grad=True)
    terms = loss(StudentOutput(embedding=e_s), TeacherOutput(embedding=t64(f["e_t"]), critic=critic), batch_of(f["n"]))
    terms["srd/logits"].backward()
    eps, numeric = 1e-6, np.zeros_like(f["e_s"])
    for idx in np.ndindex(*f["e_s"].shape):
        up, down = f["e_s"].copy(), f["e_s"].copy()
        up[idx] += eps
        down[idx] -= eps
        numeric[idx] = (_np_srd_default_logits(up, q, f["e_t"], f["W"], f["dt"])
                        - _np_srd_default_logits(down, q, f["e_t"], f["W"], f["dt"])) / (2 * eps)
    assert np.abs(numeric).max() > 1e-3  # the term does depend on the student
    np.testing.assert_allclose(e_s.grad.numpy(), numeric, rtol=2e-3, atol=1e-4)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in loss.connector.parameters())
    assert critic.weight.grad is None and not critic.weight.requires_grad


def test_srd_face_bn_form_logit_term_alone_trains_connector_not_critic(face_case: dict) -> None:
    """The earlier (BN connector) form: the logit term alone gives the connector and the student the
    gradient of the hand formula (autograd on it, float64), and leaves the teacher's centres alone."""
    f = face_case
    loss = build_loss("srd", "face", student_dim=f["ds"], teacher_dim=f["dt"], beta=1.0, lambda_f=1.0, **BN_FORM)
    w, g, b = set_embedding_connector(loss.connector, f["rng"])
    critic = CosineCritic(t64(f["W"]), S)
    e_s = t64(f["e_s"], grad=True)
    terms = loss(StudentOutput(embedding=e_s), TeacherOutput(embedding=t64(f["e_t"]), critic=critic), batch_of(f["n"]))
    terms["srd/logits"].backward()
    # the same formula in float64 torch, built only from the numbers: x -> BN(x W^T) -> s cos(., centres)
    x = torch.tensor(f["e_s"], requires_grad=True)
    lin = torch.tensor(w, requires_grad=True)
    y = x @ lin.T
    phi = (y - y.mean(0)) / torch.sqrt(y.var(0, unbiased=False) + 1e-5) * torch.tensor(g) + torch.tensor(b)
    wn = nn.functional.normalize(torch.tensor(f["W"]), dim=1)
    z_hat = S * nn.functional.normalize(phi, dim=1) @ wn.T
    z_t = S * nn.functional.normalize(torch.tensor(f["e_t"]), dim=1) @ wn.T
    ((z_hat - z_t) ** 2).mean().backward()
    np.testing.assert_allclose(e_s.grad.numpy(), x.grad.numpy(), rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(loss.connector.linear.weight.grad.numpy(), lin.grad.numpy(), rtol=1e-3, atol=1e-5)
    assert critic.weight.grad is None


def test_srd_labeled_only_gives_unlabeled_rows_no_loss(face_case: dict) -> None:
    """labeled_only: the terms are those of the labeled rows alone; unlabeled rows get no gradient
    and changing them changes nothing."""
    f = face_case
    labeled = [True, False, True, False, False, True]
    keep = np.flatnonzero(labeled)
    loss = build_loss("srd", "face", student_dim=f["ds"], teacher_dim=f["dt"], labeled_only=True)
    q = loss.connector.matrix().detach().numpy().astype(np.float64)
    critic = CosineCritic(t64(f["W"]), S)
    e_s = t64(f["e_s"], grad=True)
    terms = loss(StudentOutput(embedding=e_s), TeacherOutput(embedding=t64(f["e_t"]), critic=critic),
                 batch_of(f["n"], labeled))
    want = _np_srd_default_logits(f["e_s"][keep], q, f["e_t"][keep], f["W"], f["dt"])
    assert terms["srd/logits"].item() == pytest.approx(want, rel=1e-4)
    everything = _np_srd_default_logits(f["e_s"], q, f["e_t"], f["W"], f["dt"])
    assert abs(everything - want) > 1e-3 * want  # all rows would give another value
    sum(terms.values()).backward()
    assert torch.all(e_s.grad[~torch.tensor(labeled)] == 0) and e_s.grad[torch.tensor(labeled)].abs().sum() > 0
    moved_s, moved_t = f["e_s"].copy(), f["e_t"].copy()
    moved_s[~np.array(labeled)] += 5.0
    moved_t[~np.array(labeled)] -= 3.0
    again = loss(StudentOutput(embedding=t64(moved_s)), TeacherOutput(embedding=t64(moved_t), critic=critic),
                 batch_of(f["n"], labeled))
    assert all(torch.allclose(again[k], terms[k].detach()) for k in terms)


# ---------------------------------------------------------------- baselines
def test_kd_own_logits_hand_computation() -> None:
    rng = np.random.default_rng(1)
    z_s, e_t, W = rng.normal(size=(5, 6)) * 8, rng.normal(size=(5, 4)), rng.normal(size=(6, 4))
    loss = build_loss("kd", "face", student_dim=3, teacher_dim=4, T=4.0, weight=0.9)
    terms = loss(StudentOutput(embedding=torch.zeros(5, 3), logits=t64(z_s)),
                 TeacherOutput(embedding=t64(e_t), critic=CosineCritic(t64(W), S)), batch_of(5))
    z_t = S * np_normalize(e_t) @ np_normalize(W).T
    assert terms["kd/kl"].item() == pytest.approx(0.9 * np_hinton(z_s, z_t, 4.0), rel=1e-4)
    assert not list(loss.parameters())  # the classic form owns nothing


def test_kd_classifier_uses_both_logits() -> None:
    rng = np.random.default_rng(2)
    z_s, z_t = rng.normal(size=(4, 7)), rng.normal(size=(4, 7))
    loss = build_loss("kd", "classifier", student_dim=3, teacher_dim=3, T=2.0)
    terms = loss(StudentOutput(logits=t64(z_s), pooled=torch.zeros(4, 3)), TeacherOutput(logits=t64(z_t)), batch_of(4))
    assert terms["kd/kl"].item() == pytest.approx(np_hinton(z_s, z_t, 2.0), rel=1e-4)


def test_kd_class_mismatch_says_what_to_do() -> None:
    loss = build_loss("kd", "face", student_dim=3, teacher_dim=4)
    with pytest.raises(DistillInputError, match="student_logits=critic"):
        loss(StudentOutput(embedding=torch.zeros(2, 3), logits=torch.zeros(2, 5)),
             TeacherOutput(embedding=torch.randn(2, 4), critic=CosineCritic(torch.randn(6, 4))), batch_of(2))


def test_feat_face_hand_computation(face_case: dict) -> None:
    f = face_case
    loss = build_loss("feat", "face", student_dim=f["ds"], teacher_dim=f["dt"], weight=0.5)
    w, g, b = set_embedding_connector(loss.connector, f["rng"])
    terms = loss(StudentOutput(embedding=t64(f["e_s"])), TeacherOutput(embedding=t64(f["e_t"])), batch_of(f["n"]))
    want = 0.5 * np.mean((np_phi_face(f["e_s"], w, g, b) - f["e_t"]) ** 2)
    assert terms["feat/mse"].item() == pytest.approx(want, rel=1e-4)


def test_feat_map_pools_larger_map_to_smaller() -> None:
    loss = build_loss("feat", "classifier", student_dim=2, teacher_dim=3)
    f_s, f_t = torch.randn(4, 2, 8, 8), torch.rand(4, 3, 4, 4)
    terms = loss(StudentOutput(feature_map=f_s), TeacherOutput(feature_map=f_t), batch_of(4))
    phi = nn.functional.avg_pool2d(loss.connector(f_s), 2)
    assert terms["feat/mse"].item() == pytest.approx(((phi - f_t) ** 2).mean().item(), rel=1e-5)


def test_cosine_hand_computation_identity_and_connected(face_case: dict) -> None:
    rng = np.random.default_rng(4)
    e_s, e_t = rng.normal(size=(5, 6)), rng.normal(size=(5, 6))
    loss = build_loss("cosine", "face", student_dim=6, teacher_dim=6, connector=False, weight=2.0)
    terms = loss(StudentOutput(embedding=t64(e_s)), TeacherOutput(embedding=t64(e_t)), batch_of(5))
    cos = (np_normalize(e_s) * np_normalize(e_t)).sum(1)
    assert terms["cosine/cos"].item() == pytest.approx(2.0 * np.mean(1 - cos), rel=1e-5)
    f = face_case
    loss = build_loss("cosine", "face", student_dim=f["ds"], teacher_dim=f["dt"], connector="bn", weight=1.0)
    w, g, b = set_embedding_connector(loss.connector, f["rng"])
    terms = loss(StudentOutput(embedding=t64(f["e_s"])), TeacherOutput(embedding=t64(f["e_t"])), batch_of(f["n"]))
    cos = (np_normalize(np_phi_face(f["e_s"], w, g, b)) * np_normalize(f["e_t"])).sum(1)
    assert terms["cosine/cos"].item() == pytest.approx(np.mean(1 - cos), rel=1e-4)
    with pytest.raises(InvalidLossOptionError, match="equal sizes"):
        build_loss("cosine", "face", student_dim=5, teacher_dim=7, connector=False)
    # faces' default: the angle connector, 1 - cos(Q e_s/|e_s|, e_t)
    loss = build_loss("cosine", "face", student_dim=f["ds"], teacher_dim=f["dt"])
    q = loss.connector.matrix().detach().numpy().astype(np.float64)
    terms = loss(StudentOutput(embedding=t64(f["e_s"])), TeacherOutput(embedding=t64(f["e_t"])), batch_of(f["n"]))
    cos = ((np_normalize(f["e_s"]) @ q.T) * np_normalize(f["e_t"])).sum(1)
    assert terms["cosine/cos"].item() == pytest.approx(16.0 * np.mean(1 - cos), rel=1e-4)
    assert type(build_loss("cosine", "classifier", student_dim=5, teacher_dim=7).connector).__name__ == \
        "EmbeddingConnector"


def test_srrl_uses_labeled_rows_only_and_equals_srd_on_them(face_case: dict) -> None:
    f = face_case
    mask = [True, False, True, True, False, True]
    critic = CosineCritic(t64(f["W"]))
    srrl = build_loss("srrl", "face", student_dim=f["ds"], teacher_dim=f["dt"], alpha=3.0)
    srd = build_loss("srd", "face", student_dim=f["ds"], teacher_dim=f["dt"], lambda_f=3.0, beta=1.0, **BN_FORM)
    srd.connector.load_state_dict(srrl.connector.state_dict())
    rows = torch.tensor([i for i, m in enumerate(mask) if m])
    got = srrl(StudentOutput(embedding=t64(f["e_s"])), TeacherOutput(embedding=t64(f["e_t"]), critic=critic),
               batch_of(f["n"], mask))
    ref = srd(StudentOutput(embedding=t64(f["e_s"])[rows]), TeacherOutput(embedding=t64(f["e_t"])[rows], critic=critic),
              batch_of(len(rows)))
    assert got["srrl/logits"].item() == pytest.approx(ref["srd/logits"].item(), rel=1e-5)
    assert got["srrl/feat"].item() == pytest.approx(ref["srd/feat"].item(), rel=1e-5)
    e_s = t64(f["e_s"], grad=True)
    none = srrl(StudentOutput(embedding=e_s), TeacherOutput(embedding=t64(f["e_t"]), critic=critic),
                batch_of(f["n"], [False] * f["n"]))
    assert all(v.item() == 0.0 for v in none.values())
    sum(none.values()).backward()  # a zero that still has a graph
    assert e_s.grad is not None and e_s.grad.abs().sum() == 0


# ---------------------------------------------------------------- registry
def test_registry_lists_every_method_for_both_kinds() -> None:
    for kind in ("face", "classifier"):
        assert set(list_losses(kind)) >= {"srd", "kd", "feat", "cosine", "srrl"}
    assert loss_options("srd", "face")["mode"] == "mse"


def test_build_losses_applies_weights_to_every_term(face_case: dict) -> None:
    f = face_case
    combo = build_losses("srd:2.0,kd:0.5", "face", student_dim=f["ds"], teacher_dim=f["dt"],
                         options={"kd": {"student_logits": "critic"}})
    srd = build_loss("srd", "face", student_dim=f["ds"], teacher_dim=f["dt"])
    kd = build_loss("kd", "face", student_dim=f["ds"], teacher_dim=f["dt"], student_logits="critic")
    srd.load_state_dict(combo.losses["srd"].state_dict())
    kd.load_state_dict(combo.losses["kd"].state_dict())
    s = StudentOutput(embedding=t64(f["e_s"]))
    t = TeacherOutput(embedding=t64(f["e_t"]), critic=CosineCritic(t64(f["W"])))
    got = combo(s, t, batch_of(f["n"]))
    single = {**srd(s, t, batch_of(f["n"])), **kd(s, t, batch_of(f["n"]))}
    assert set(got) == {"srd/logits", "srd/feat", "kd/kl"}
    for key, weight in (("srd/logits", 2.0), ("srd/feat", 2.0), ("kd/kl", 0.5)):
        assert got[key].item() == pytest.approx(weight * single[key].item(), rel=1e-5)
    n_params = sum(p.numel() for p in combo.parameters())
    # the trainable parts: srd's angle connector (a free [D_t, D_s] matrix) and kd's Linear + BN1d
    assert n_params == f["ds"] * f["dt"] + (f["ds"] * f["dt"] + 2 * f["dt"])


def test_registry_errors_are_clear() -> None:
    with pytest.raises(UnknownLossError, match="known: adadistill, cosine, feat, kd, proxyless, srd, srrl"):
        build_losses("srd,bogus", "face", student_dim=4, teacher_dim=4)
    with pytest.raises(InvalidLossOptionError, match="takes: mode='mse'"):
        build_loss("srd", "face", student_dim=4, teacher_dim=4, temperature=2)
    with pytest.raises(InvalidLossOptionError, match="mode must be one of mse, kl"):
        build_loss("srd", "face", student_dim=4, teacher_dim=4, mode="l1")
    with pytest.raises(LossError, match="more than once"):
        parse_loss_spec("srd,srd:0.5")
    with pytest.raises(LossError, match="not a number"):
        parse_loss_spec("srd:heavy")
    with pytest.raises(LossError, match="not in the loss list"):
        build_losses("srd", "face", student_dim=4, teacher_dim=4, options={"kd": {"T": 2}})
    assert parse_loss_spec([("srd", 1), ("kd", 0.5)]) == [("srd", 1.0), ("kd", 0.5)]
    assert parse_loss_spec("srd, kd:0.25") == [("srd", 1.0), ("kd", 0.25)]
    assert parse_loss_options(["srd.mode=kl", "srd.T=2", "cosine.connector=false"]) == \
        {"srd": {"mode": "kl", "T": 2}, "cosine": {"connector": False}}
    with pytest.raises(LossError, match="loss.option=value"):
        parse_loss_options(["mode=kl"])
    with pytest.raises(DistillInputError, match="needs the teacher's critic"):
        build_loss("srd", "face", student_dim=4, teacher_dim=4)(
            StudentOutput(embedding=torch.randn(3, 4)), TeacherOutput(embedding=torch.randn(3, 4)), batch_of(3))


# ---------------------------------------------------------------- the angle connector and scale-free logits
def test_angle_connector_preserves_angles_whatever_the_weight_scale() -> None:
    from facekd.distill.connectors import AngleConnector

    for d_s, d_t in ((5, 7), (7, 7)):
        conn = AngleConnector(d_s, d_t)
        x = torch.randn(9, d_s) * 3.0
        phi = conn(x)
        xn = torch.nn.functional.normalize(x, dim=1)
        assert torch.allclose(phi.norm(dim=1), torch.ones(9), atol=1e-5)
        assert torch.allclose(phi @ phi.t(), xn @ xn.t(), atol=1e-5)
        # weight decay shrinks the free matrix; the map (its orthonormal factor) does not change
        before = conn(x).detach()
        with torch.no_grad():
            conn.weight.mul_(1e-3)
        assert torch.allclose(conn(x), before, atol=1e-5)


def test_angle_connector_trains_under_sgd_with_weight_decay() -> None:
    from facekd.distill.connectors import AngleConnector

    torch.manual_seed(0)
    conn = AngleConnector(4, 6)
    target = torch.nn.functional.normalize(torch.randn(6, 4), dim=0)  # an isometry to learn
    x = torch.randn(64, 4)
    want = torch.nn.functional.normalize(x, dim=1) @ target.t()
    opt = torch.optim.SGD(conn.parameters(), lr=0.5, weight_decay=5e-2)
    first = None
    for _ in range(300):
        loss = (conn(x) - want).pow(2).sum(1).mean()
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1 * first
    q = conn.matrix()
    assert torch.allclose(q.t() @ q, torch.eye(4), atol=1e-4)  # still an isometry


def test_srd_unit_logit_norm_is_the_mse_over_s2_times_d(face_case: dict) -> None:
    f = face_case
    vals = {}
    for s in (16.0, 64.0):
        loss = build_loss("srd", "face", student_dim=f["ds"], teacher_dim=f["dt"], connector="angle",
                          logit_norm="unit", beta=1.0, lambda_f=0.0)
        torch.manual_seed(1)
        loss.connector.weight.data.copy_(torch.nn.init.orthogonal_(torch.empty_like(loss.connector.weight)))
        terms = loss(StudentOutput(embedding=t64(f["e_s"])),
                     TeacherOutput(embedding=t64(f["e_t"]), critic=CosineCritic(t64(f["W"]), s)), batch_of(f["n"]))
        phi = loss.connector(t64(f["e_s"])).detach().numpy().astype(np.float64)
        cos_hat = np_normalize(phi) @ np_normalize(f["W"]).T
        cos_t = np_normalize(f["e_t"]) @ np_normalize(f["W"]).T
        assert terms["srd/logits"].item() == pytest.approx(f["dt"] * np.mean((cos_hat - cos_t) ** 2), rel=1e-4)
        vals[s] = terms["srd/logits"].item()
    assert vals[16.0] == pytest.approx(vals[64.0], rel=1e-5)  # the logit scale s no longer weighs the term


def test_srd_unit_logit_norm_does_not_grow_with_the_class_count() -> None:
    """mean_c (w_c . d)^2 * D = |d|^2 for centres spread over the sphere: 100 or 20,000 classes alike."""
    torch.manual_seed(0)
    d, n = 32, 64
    student = torch.nn.functional.normalize(torch.randn(n, d), dim=1)
    teacher = torch.nn.functional.normalize(student + 0.3 * torch.randn(n, d), dim=1)
    direct = (student - teacher).pow(2).sum(1).mean().item()
    for classes in (100, 20000):
        loss = build_loss("srd", "face", student_dim=d, teacher_dim=d, connector="angle", logit_norm="unit",
                          beta=1.0, lambda_f=0.0)
        with torch.no_grad():
            loss.connector.weight.copy_(torch.eye(d))
        terms = loss(StudentOutput(embedding=student),
                     TeacherOutput(embedding=teacher, critic=CosineCritic(torch.randn(classes, d), 64.0)),
                     batch_of(n))
        assert terms["srd/logits"].item() == pytest.approx(direct, rel=0.35)


def test_negative_or_nan_loss_weights_are_refused() -> None:
    for spec in ("srd,kd:-1", "srd:nan"):
        with pytest.raises(LossError, match="must be >= 0"):
            parse_loss_spec(spec)
    assert parse_loss_spec("srd:0,kd:0.5") == [("srd", 0.0), ("kd", 0.5)]


# ---------------------------------------------------------------- closed-form critic MSE
def test_critic_matching_mse_equals_explicit_logits_over_all_classes() -> None:
    """s^2/C d^T (W^T W) d per row is the MSE of the [N, C] s*cos logits, value and gradient."""
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(3000, 16, generator=gen, dtype=torch.float64)
    critic = CosineCritic(w.float(), 30.0)
    f = torch.randn(5, 16, generator=gen).requires_grad_(True)
    t = torch.randn(5, 16, generator=gen)
    got = critic.matching_mse(f, t)
    got.backward()
    f64 = f.detach().double().requires_grad_(True)
    wn = torch.nn.functional.normalize(w, dim=1)
    z_hat = 30.0 * torch.nn.functional.normalize(f64, dim=1) @ wn.T
    z_t = 30.0 * torch.nn.functional.normalize(t.double(), dim=1) @ wn.T
    want = ((z_hat - z_t) ** 2).mean()
    want.backward()
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    assert torch.allclose(f.grad.double(), f64.grad, rtol=1e-4, atol=1e-9)
    assert critic.weight.grad is None


def test_critic_gram_follows_the_weights() -> None:
    critic = CosineCritic(torch.eye(4)[:3], 2.0)
    first = critic.gram().clone()
    assert torch.allclose(first, torch.diag(torch.tensor([1.0, 1.0, 1.0, 0.0])))
    with torch.no_grad():
        critic.weight.copy_(torch.eye(4)[1:])
    assert torch.allclose(critic.gram(), torch.diag(torch.tensor([0.0, 1.0, 1.0, 1.0])))


def test_srd_mse_with_partial_fc_sample_scores_all_classes() -> None:
    """Under Partial FC the MSE term does not depend on which centres were sampled."""
    gen = torch.Generator().manual_seed(1)
    loss = build_loss("srd", "face", student_dim=6, teacher_dim=8)
    critic = CosineCritic(torch.randn(50, 8, generator=gen), 64.0)
    e_s, e_t = torch.randn(4, 6, generator=gen), torch.randn(4, 8, generator=gen)
    values = [loss(StudentOutput(embedding=e_s), TeacherOutput(embedding=e_t, critic=critic, centres=c),
                   batch_of(4))["srd/logits"].item() for c in (None, torch.tensor([1, 7, 9]), torch.arange(40))]
    assert values[0] == pytest.approx(values[1], rel=1e-6) and values[0] == pytest.approx(values[2], rel=1e-6)


def test_only_losses_that_read_sampled_logits_make_a_step_choose_centres() -> None:
    """SRD's default MSE, feat, cosine and adadistill never read the step's Partial FC sample, so a
    step with only them skips choosing it (a collective under torchrun); kd and SRD's KL do read it."""
    def needs(spec: str, **options: dict) -> bool:
        return build_losses(spec, "face", student_dim=8, teacher_dim=8, options=options).scores_centres

    assert not needs("srd") and not needs("feat,cosine") and not needs("adadistill")
    assert needs("kd") and needs("srd,kd:0.5") and needs("srd", srd={"mode": "kl"}) and needs("proxyless")
