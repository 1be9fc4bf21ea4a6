"""Face-specific distillation baselines: ``proxyless`` (ProxylessKD, arXiv 2011.00265) and
``adadistill`` (AdaDistill, arXiv 2407.01332) against hand computations (numpy, float64), gradient
routing (student and connector, never the frozen critic or the centres), AdaDistill's centre update
and alpha over two steps, its state through a state_dict, and one tiny run of each through the
distill pipeline."""
from __future__ import annotations

import math
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from facekd.data.batch import Batch
from facekd.distill.critic import CosineCritic
from facekd.distill.losses.registry import InvalidLossOptionError, build_loss, build_losses
from facekd.distill.outputs import DistillInputError, StudentOutput, TeacherOutput
from facekd.engine.metrics_log import read_metrics
from facekd.pipelines import distill as distill_pipeline
from facekd.models.registry import build_backbone

N, DS, DT, C = 7, 5, 6, 4


def batch_of(labels: list[int]) -> Batch:
    """A batch whose rows have these labels (-1 = an unlabeled pool row)."""
    lab = torch.tensor(labels)
    n = len(labels)
    return Batch(images=torch.zeros(n, 3, 8, 8), labels=lab, labeled=lab >= 0, index=torch.arange(n),
                 source=(lab < 0).long(), flipped=torch.zeros(n, dtype=torch.bool))


def t32(a: np.ndarray, grad: bool = False) -> torch.Tensor:
    return torch.tensor(a, dtype=torch.float32, requires_grad=grad)


def unit(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)


def np_margin_ce(cos: np.ndarray, y: np.ndarray, head: str, s: float, m: float) -> float:
    """Mean cross-entropy of s*cos with the ArcFace / CosFace margin on the target (facekd's curve)."""
    cos = np.clip(cos, -1 + 1e-6, 1 - 1e-6).copy()
    rows = np.arange(len(y))
    c = cos[rows, y]
    if head == "cosface":
        target = c - m
    else:
        theta = np.arccos(c)
        target = np.where(theta <= math.pi - m, np.cos(theta + m), c - (1 + math.cos(math.pi - m)))
    cos[rows, y] = target
    z = s * cos
    z = z - z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-logp[rows, y].mean())


@pytest.fixture
def case() -> dict:
    rng = np.random.default_rng(11)
    return {"e_s": rng.normal(size=(N, DS)), "e_t": rng.normal(size=(N, DT)), "W": rng.normal(size=(C, DT)),
            "e_s_eq": rng.normal(size=(N, DT)), "rng": rng}


# ---------------------------------------------------------------- ProxylessKD
@pytest.mark.parametrize("head,margin", [("arcface", 0.5), ("cosface", 0.35)])
@pytest.mark.parametrize("subset", [False, True])
def test_proxyless_matches_hand_computation(case: dict, head: str, margin: float, subset: bool) -> None:
    labels = [2, -1, 0, 3, 2, -1, 1]
    loss = build_loss("proxyless", "face", student_dim=DS, teacher_dim=DT, scale=16.0, margin=margin, head=head)
    centres = torch.tensor([0, 1, 2, 3]) if not subset else torch.tensor([3, 0, 2, 1])
    teacher = TeacherOutput(embedding=t32(case["e_t"]), critic=CosineCritic(t32(case["W"]), scale=30.0),
                            centres=centres if subset else None)
    terms = loss(StudentOutput(embedding=t32(case["e_s"])), teacher, batch_of(labels))
    assert set(terms) == {"proxyless/ce"}
    q = loss.connector.matrix().detach().double().numpy()  # default connector: Q e/|e|
    rows = np.array([i for i, y in enumerate(labels) if y >= 0])
    y = np.array(labels)[rows]
    W = case["W"][centres.numpy()]
    cos = unit(unit(case["e_s"][rows]) @ q.T) @ unit(W).T
    cols = np.array([list(centres.numpy()).index(k) for k in y])
    want = np_margin_ce(cos, cols, head, 16.0, margin)
    assert terms["proxyless/ce"].item() == pytest.approx(want, rel=1e-4)


def test_proxyless_paper_form_and_defaults(case: dict) -> None:
    """connector=none feeds the student embedding itself (equal sizes); margin None is ArcFace's 0.5."""
    loss = build_loss("proxyless", "face", student_dim=DT, teacher_dim=DT, connector="none")
    assert (loss.scale, loss.margin, loss.head) == (64.0, 0.5, "arcface")
    assert build_loss("proxyless", "face", student_dim=DT, teacher_dim=DT, head="cosface").margin == 0.4
    labels = [0, 1, 2, 3, 0, 1, 2]
    terms = loss(StudentOutput(embedding=t32(case["e_s_eq"])),
                 TeacherOutput(embedding=t32(case["e_t"]), critic=CosineCritic(t32(case["W"]))), batch_of(labels))
    want = np_margin_ce(unit(case["e_s_eq"]) @ unit(case["W"]).T, np.array(labels), "arcface", 64.0, 0.5)
    assert terms["proxyless/ce"].item() == pytest.approx(want, rel=1e-4)
    with pytest.raises(InvalidLossOptionError, match="connector=none .* equal sizes"):
        build_loss("proxyless", "face", student_dim=DS, teacher_dim=DT, connector="none")
    with pytest.raises(InvalidLossOptionError, match="head must be one of arcface, cosface"):
        build_loss("proxyless", "face", student_dim=DS, teacher_dim=DT, head="sphereface")


def test_proxyless_gradients_reach_student_and_connector_not_the_critic(case: dict) -> None:
    loss = build_loss("proxyless", "face", student_dim=DS, teacher_dim=DT, connector="bn", scale=16.0)
    critic = CosineCritic(t32(case["W"]), scale=16.0)
    emb = t32(case["e_s"], grad=True)
    terms = loss(StudentOutput(embedding=emb), TeacherOutput(embedding=t32(case["e_t"]), critic=critic),
                 batch_of([0, -1, 1, 2, 3, -1, 0]))
    terms["proxyless/ce"].backward()
    assert emb.grad is not None and emb.grad.abs().sum() > 0
    assert emb.grad[[1, 5]].abs().sum() == 0  # unlabeled rows: no class, no gradient
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in loss.connector.parameters())
    assert not critic.weight.requires_grad and critic.weight.grad is None


def test_proxyless_without_labeled_rows_and_bad_labels(case: dict) -> None:
    loss = build_loss("proxyless", "face", student_dim=DS, teacher_dim=DT)
    emb = t32(case["e_s"], grad=True)
    teacher = TeacherOutput(embedding=t32(case["e_t"]), critic=CosineCritic(t32(case["W"])))
    zero = loss(StudentOutput(embedding=emb), teacher, batch_of([-1] * N))["proxyless/ce"]
    assert zero.item() == 0.0 and zero.requires_grad
    with pytest.raises(DistillInputError, match="beyond the teacher classifier's 4 classes"):
        loss(StudentOutput(embedding=emb), teacher, batch_of([0, 1, 2, 3, 4, 0, 1]))
    missing = TeacherOutput(embedding=t32(case["e_t"]), critic=CosineCritic(t32(case["W"])),
                            centres=torch.tensor([0, 1]))
    with pytest.raises(DistillInputError, match="sampled centres miss a class"):
        loss(StudentOutput(embedding=emb), missing, batch_of([0, 1, 2, -1, -1, -1, -1]))


# ---------------------------------------------------------------- AdaDistill
def np_adadistill_step(centres: np.ndarray, s_unit: np.ndarray, t_unit: np.ndarray, y: np.ndarray,
                       weighted: bool, reduce: str) -> tuple[np.ndarray, np.ndarray]:
    """The official update (alpha from the centres before the step), rows of one class in row order."""
    cos_st = np.clip((s_unit * t_unit).sum(1), -1, 1)
    if weighted:
        lam = np.clip((unit(centres[y]) * t_unit).sum(1), 1e-6, 1)
        alpha = np.clip(cos_st * lam, 1e-6, 1)
    else:
        alpha = np.clip(cos_st, 1e-6, 1)
    if reduce == "mean":
        alpha = np.full_like(alpha, alpha.mean())
    new = centres.copy()
    for i, k in enumerate(y):
        new[k] = alpha[i] * new[k] + (1 - alpha[i]) * t_unit[i]
    return new, alpha


@pytest.mark.parametrize("weighted,reduce", [(True, "sample"), (False, "sample"), (True, "mean")])
def test_adadistill_centres_alpha_and_loss_over_two_steps(weighted: bool, reduce: str) -> None:
    rng = np.random.default_rng(5)
    loss = build_loss("adadistill", "face", student_dim=DT, teacher_dim=DT, connector="none", scale=16.0,
                      margin=0.45, adaptive_weighted_alpha=weighted, alpha_reduce=reduce)
    critic = CosineCritic(t32(rng.normal(size=(C, DT))))  # only its class count is used
    centres = np.zeros((C, DT))
    # step 1 visits classes 0, 2 (twice: in row order) and 3; step 2 revisits 0 and 2 and first sees 1
    for labels in ([2, 0, -1, 2, 3, -1, 0], [1, 2, 0, -1, 2, 0, 3]):
        e_s, e_t = rng.normal(size=(N, DT)), rng.normal(size=(N, DT))
        e_t[1] = e_s[1] + 0.1 * e_t[1]  # one close pair: alpha well above its floor
        terms = loss(StudentOutput(embedding=t32(e_s)), TeacherOutput(embedding=t32(e_t), critic=critic),
                     batch_of(labels))
        rows = np.array([i for i, k in enumerate(labels) if k >= 0])
        y = np.array(labels)[rows]
        s_unit, t_unit = unit(e_s[rows]), unit(e_t[rows])
        centres, alpha = np_adadistill_step(centres, s_unit, t_unit, y, weighted, reduce)
        assert loss.centres.double().numpy() == pytest.approx(centres, abs=1e-5)
        assert loss.last_alpha.double().numpy() == pytest.approx(alpha, rel=1e-4, abs=1e-7)
        want = np_margin_ce(s_unit @ unit(centres).T, y, "arcface", 16.0, 0.45)
        assert terms["adadistill/ce"].item() == pytest.approx(want, rel=1e-4)
    assert loss.centres.shape == (C, DT)  # sized from the critic's classes at the first step


def test_adadistill_gradients_and_defaults(case: dict) -> None:
    loss = build_loss("adadistill", "face", student_dim=DS, teacher_dim=DT)
    assert (loss.scale, loss.margin, loss.head, loss.adaptive_weighted_alpha, loss.alpha_reduce) == \
        (64.0, 0.45, "arcface", True, "sample")
    emb = t32(case["e_s"], grad=True)
    terms = loss(StudentOutput(embedding=emb),
                 TeacherOutput(embedding=t32(case["e_t"]), critic=CosineCritic(t32(case["W"]))),
                 batch_of([0, -1, 1, 2, 3, -1, 0]))
    terms["adadistill/ce"].backward()
    assert emb.grad is not None and emb.grad.abs().sum() > 0 and emb.grad[[1, 5]].abs().sum() == 0
    assert loss.connector.weight.grad is not None and loss.connector.weight.grad.abs().sum() > 0
    assert not loss.centres.requires_grad and [n for n, _ in loss.named_buffers()] == ["centres"]
    zero = loss(StudentOutput(embedding=emb), TeacherOutput(embedding=t32(case["e_t"]),
                                                            critic=CosineCritic(t32(case["W"]))),
                batch_of([-1] * N))["adadistill/ce"]
    assert zero.item() == 0.0 and zero.requires_grad
    with pytest.raises(DistillInputError, match="num_classes"):
        loss(StudentOutput(embedding=emb), TeacherOutput(embedding=t32(case["e_t"])), batch_of([9] * N))
    with pytest.raises(InvalidLossOptionError, match="alpha_reduce must be one of sample, mean"):
        build_loss("adadistill", "face", student_dim=DS, teacher_dim=DT, alpha_reduce="median")


def test_adadistill_state_dict_restores_the_next_loss(case: dict) -> None:
    """A fresh loss set (centres not sized yet) loaded from a state_dict gives the same next step."""
    rng = case["rng"]
    critic = CosineCritic(t32(case["W"]))
    steps = [(t32(rng.normal(size=(N, DS))), t32(rng.normal(size=(N, DT))), batch_of(list(rng.integers(-1, C, N))))
             for _ in range(3)]

    def step(losses: torch.nn.Module, i: int) -> torch.Tensor:
        e_s, e_t, batch = steps[i]
        return losses(StudentOutput(embedding=e_s), TeacherOutput(embedding=e_t, critic=critic), batch)["adadistill/ce"]

    torch.manual_seed(0)
    first = build_losses("adadistill", "face", student_dim=DS, teacher_dim=DT)
    step(first, 0), step(first, 1)
    state = {k: v.clone() for k, v in first.state_dict().items()}
    assert state["losses.adadistill.centres"].shape == (C, DT)
    torch.manual_seed(1)  # another connector initialisation, overwritten by the state
    second = build_losses("adadistill", "face", student_dim=DS, teacher_dim=DT)
    second.load_state_dict(state, strict=True)
    assert step(second, 2).item() == step(first, 2).item()
    key = "losses.adadistill.centres"
    assert torch.equal(second.state_dict()[key], first.state_dict()[key])


# ---------------------------------------------------------------- pipeline
DATA = "synthetic:ids=6,per_id=4,size=32"
POOL = "synthetic:ids=4,per_id=3,size=32"
COMMON = ["--input-size", "32", "--batch-size", "8", "--workers", "0", "--no-tensorboard", "--val-pairs", "0",
          "--log-every", "1"]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A teacher backbone.pth (plain state dict) of a seeded, untrained r18: the runs only need its shape."""
    torch.manual_seed(0)
    model = build_backbone("r18", width=0.125, embedding_size=16, input_size=32)
    path = tmp_path_factory.mktemp("teacher") / "backbone.pth"
    torch.save(model.state_dict(), path)
    return path


@pytest.mark.parametrize("loss,term", [("proxyless", "loss/proxyless/ce"), ("adadistill", "loss/adadistill/ce")])
def test_pipeline_runs_the_baselines(teacher: Path, tmp_path: Path, loss: str, term: str) -> None:
    out = tmp_path / loss
    args = [*COMMON, "--teacher", "r18", "--teacher-weights", str(teacher), "--teacher-width", "0.125",
            "--teacher-embedding-size", "16", "--teacher-scale", "16", "--student", "mbf", "--width", "0.125",
            "--embedding-size", "8", "--scale", "16", "--margin", "0.3", "--set", f"data={DATA}", "--loss", loss,
            f"--loss-option={loss}.scale=16,{loss}.margin=0.3", "--label-weight", "0", "--max-steps", "3",
            "--out", str(out)]
    assert distill_pipeline.main(args) == 0
    records = read_metrics(out)
    values = [r[term] for r in records if term in r]
    assert len(values) == 3 and all(math.isfinite(v) for v in values)
    assert not any("loss/arcface" in r for r in records)  # --label-weight 0: the published form, no own head
    assert (out / "backbone.pth").is_file()


def test_pool_baselines_distil_the_unlabeled_rows(teacher: Path, tmp_path: Path) -> None:
    """kd, cosine and feat with an unlabeled pool (the benchmark's '+ pool' rows) run and log their terms."""
    out = tmp_path / "pool"
    args = [*COMMON, "--teacher", "r18", "--teacher-weights", str(teacher), "--teacher-width", "0.125",
            "--teacher-embedding-size", "16", "--teacher-scale", "16", "--student", "mbf", "--width", "0.125",
            "--embedding-size", "8", "--scale", "16", "--set", f"data={DATA}", "--unlabeled", POOL,
            "--loss", "kd,cosine,feat", "--max-steps", "2", "--out", str(out)]
    assert distill_pipeline.main(args) == 0
    terms = {k for r in read_metrics(out) for k in r if k.startswith("loss/")}
    assert {"loss/kd/kl", "loss/cosine/cos", "loss/feat/mse", "loss/arcface"} <= terms


# ---------------------------------------------------------------- AdaDistill under torchrun
WORLD = 2
DDP_LABELS = [[1, 0, -1, 1, 2], [-1, -1, -1]]  # rank 1 has no labeled row this step: it still takes part


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_problem() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    n = sum(len(x) for x in DDP_LABELS)
    return torch.randn(n, DT, generator=g), torch.randn(n, DT, generator=g), torch.randn(C, DT, generator=g)


def _ddp_worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        e_s, e_t, w = _ddp_problem()
        start = sum(len(x) for x in DDP_LABELS[:rank])
        local = slice(start, start + len(DDP_LABELS[rank]))
        loss = build_loss("adadistill", "face", student_dim=DT, teacher_dim=DT, connector="none", scale=16.0)
        for _ in range(2):
            loss(StudentOutput(embedding=e_s[local]), TeacherOutput(embedding=e_t[local], critic=CosineCritic(w)),
                 batch_of(DDP_LABELS[rank]))
        torch.save(loss.centres, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_adadistill_centres_under_two_processes_equal_the_global_batch(tmp_path: Path) -> None:
    """Every rank holds the centres one process computes from the global batch (ranks' rows in rank order)."""
    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    mp.spawn(_ddp_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    e_s, e_t, w = _ddp_problem()
    single = build_loss("adadistill", "face", student_dim=DT, teacher_dim=DT, connector="none", scale=16.0)
    for _ in range(2):
        single(StudentOutput(embedding=e_s), TeacherOutput(embedding=e_t, critic=CosineCritic(w)),
               batch_of(DDP_LABELS[0] + DDP_LABELS[1]))
    for r in range(WORLD):
        assert torch.allclose(torch.load(tmp_path / f"rank{r}.pt", weights_only=True), single.centres, atol=1e-6)


def test_adadistill_run_resumed_from_a_checkpoint_replays_the_uninterrupted_run(teacher: Path, tmp_path: Path) -> None:
    """The centres travel in the checkpoints: steps 3-4 after a resume log the uninterrupted run's losses."""
    def args(out: Path, steps: int) -> list[str]:
        return [*COMMON, "--teacher", "r18", "--teacher-weights", str(teacher), "--teacher-width", "0.125",
                "--teacher-embedding-size", "16", "--teacher-scale", "16", "--student", "mbf", "--width", "0.125",
                "--embedding-size", "8", "--scale", "16", "--set", f"data={DATA}", "--loss", "adadistill",
                "--loss-option=adadistill.scale=16", "--schedule", "constant", "--max-steps", str(steps),
                "--ckpt-every", "2",
                "--out", str(out)]
    assert distill_pipeline.main(args(tmp_path / "whole", 4)) == 0
    assert distill_pipeline.main(args(tmp_path / "split", 2)) == 0
    assert distill_pipeline.main(["--resume", str(tmp_path / "split"), "--max-steps", "4"]) == 0

    def losses(out: Path) -> dict[int, float]:
        return {r["step"]: r["loss/adadistill/ce"] for r in read_metrics(out) if "loss/adadistill/ce" in r}
    whole, split = losses(tmp_path / "whole"), losses(tmp_path / "split")
    assert sorted(split) == [1, 2, 3, 4]
    assert split == pytest.approx(whole, rel=1e-6)
