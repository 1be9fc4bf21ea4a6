"""The training engine on a tiny in-memory task: schedules, accumulation, determinism, exact
resume after a kill, the NaN guard and checkpoint files."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from facekd.engine.checkpoint import (
    CheckpointError,
    capture_rng,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    resolve_resume,
    restore_rng,
)
from facekd.engine.config import TrainConfig, parse_training_config
from facekd.engine.metrics_log import read_metrics
from facekd.engine.optim import OptimError, ScheduleSpec, build_scheduler, list_schedules
from facekd.engine.task import TrainTask
from facekd.engine.trainer import EngineError, NonFiniteLossError, Trainer, seed_everything, to_device
from facekd.models.weights import load_weights_file

N, DIM, CLASSES = 64, 6, 4


class ToyTask(TrainTask):
    """A linear-BN-linear classifier on fixed random data; batches are a pure function of
    (seed, epoch, position); ``nan_at`` poisons the loss of one 1-based step."""

    arch = "toy"
    head_key = "head"

    def __init__(self, cfg: TrainConfig, bn: bool = True, nan_at: int | None = None, dropout: float = 0.0) -> None:
        g = torch.Generator().manual_seed(1234)
        self.x = torch.randn(N, DIM, generator=g)
        self.y = (self.x[:, 0] > 0).long() + 2 * (self.x[:, 1] > 0).long()
        self.cfg, self.nan_at, self.calls = cfg, nan_at, 0
        seed_everything(cfg.seed)
        layers: list[nn.Module] = [nn.Linear(DIM, 8)]
        if bn:
            layers.append(nn.BatchNorm1d(8))
        layers += [nn.ReLU(), nn.Dropout(dropout)]
        self.backbone = nn.Sequential(*layers)
        self.head = nn.Linear(8, CLASSES)
        self.frozen = nn.Linear(DIM, 3).requires_grad_(False)  # like a teacher: never optimised, never saved

    def modules(self) -> dict[str, nn.Module]:
        return {"backbone": self.backbone, "head": self.head, "teacher": self.frozen}

    def batches_per_epoch(self) -> int:
        return N // self.cfg.batch_size

    def train_batches(self, epoch: int, start: int) -> Iterable[Any]:
        g = torch.Generator().manual_seed(self.cfg.seed * 1000 + epoch)
        order = torch.randperm(N, generator=g)
        bs = self.cfg.batch_size
        for b in range(start, self.batches_per_epoch()):
            idx = order[b * bs:(b + 1) * bs]
            yield {"images": self.x[idx], "labels": self.y[idx]}

    def compute_losses(self, batch: Any, modules: Mapping[str, nn.Module]) -> dict[str, Tensor]:
        self.calls += 1
        logits = modules["head"](modules["backbone"](batch["images"]))
        ce = F.cross_entropy(logits, batch["labels"])
        hint = 0.01 * modules["teacher"](batch["images"]).pow(2).mean()  # a term from a frozen module
        if self.nan_at is not None and self.calls == self.nan_at:
            ce = ce * float("nan")
        return {"ce": ce, "hint": hint}

    def evaluate(self, modules: Mapping[str, nn.Module]) -> dict[str, float]:
        with torch.no_grad():
            pred = modules["head"](modules["backbone"](self.x)).argmax(1)
        return {"toy/accuracy": float((pred == self.y).float().mean())}


def _cfg(tmp_path: Path, name: str = "run", **kw: Any) -> TrainConfig:
    base = dict(out=str(tmp_path / name), device="cpu", batch_size=8, max_steps=12, lr=0.1, log_every=2,
                ckpt_every=4, keep_ckpts=2, tensorboard=False, warmup_steps=2, seed=3, deterministic=True)
    base.update(kw)
    return TrainConfig(**base)


def _weights(task: ToyTask) -> dict[str, Tensor]:
    return {**{f"b.{k}": v.clone() for k, v in task.backbone.state_dict().items()},
            **{f"h.{k}": v.clone() for k, v in task.head.state_dict().items()}}


def _same(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------------------------
# schedules

def _factors(name: str, spec: ScheduleSpec) -> list[float]:
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = build_scheduler(name, opt, spec)
    out = []
    for _ in range(spec.total_steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_schedules_warm_up_then_decay() -> None:
    spec = ScheduleSpec(total_steps=10, steps_per_epoch=2, warmup_steps=2, power=2.0)
    poly = _factors("poly", spec)
    assert poly[:3] == pytest.approx([0.5, 1.0, 1.0])
    assert poly[6] == pytest.approx((1 - 4 / 8) ** 2)
    assert all(a >= b for a, b in zip(poly[1:], poly[2:]))
    cos = _factors("cosine", spec)
    assert cos[2] == pytest.approx(1.0) and cos[6] == pytest.approx(0.5)
    step = _factors("step", ScheduleSpec(total_steps=10, steps_per_epoch=2, milestones=(2, 4), gamma=0.1))
    assert step == pytest.approx([1, 1, 1, 1, 0.1, 0.1, 0.1, 0.1, 0.01, 0.01])
    assert _factors("constant", spec)[5] == 1.0
    assert set(list_schedules()) >= {"poly", "cosine", "step", "constant"}
    with pytest.raises(OptimError, match="unknown schedule 'linear'"):
        _factors("linear", spec)


# ----------------------------------------------------------------------------------------------
# training behaviour

def test_loss_falls_metrics_and_outputs(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, max_steps=40, lr=0.2, eval_every=20, schedule="cosine")
    task = ToyTask(cfg)
    teacher_before = task.frozen.weight.clone()
    result = Trainer(cfg, task).fit()
    records = read_metrics(cfg.out)
    losses = [r["loss"] for r in records if "loss" in r]
    assert losses[-1] < 0.6 * losses[0]
    first = next(r for r in records if "loss" in r)
    assert set(first) >= {"step", "epoch", "loss", "loss/ce", "loss/hint", "lr", "images_per_s"}
    assert first["loss"] == pytest.approx(first["loss/ce"] + first["loss/hint"])
    evals = [r for r in records if "eval/toy/accuracy" in r]
    assert [r["step"] for r in evals] == [20, 40]
    assert result.metrics["eval/toy/accuracy"] > 0.8
    assert torch.equal(task.frozen.weight, teacher_before)  # frozen parts are never optimised
    assert (Path(cfg.out) / "config.yaml").is_file()
    backbone = load_weights_file(Path(cfg.out) / "backbone.pth")
    assert _same(backbone, task.backbone.state_dict())
    assert set(load_weights_file(Path(cfg.out) / "head.pth")) == {"weight", "bias"}
    ckpt = load_checkpoint(latest_checkpoint(cfg.out))
    assert ckpt["step"] == 40 and ckpt["format"] == "facekd"
    assert "teacher" not in ckpt["modules"]  # frozen modules are not saved
    assert len(list_checkpoints(cfg.out)) == 2  # keep_ckpts


def test_two_runs_are_identical(tmp_path: Path) -> None:
    runs = []
    for name in ("a", "b"):
        cfg = _cfg(tmp_path, name)
        task = ToyTask(cfg, dropout=0.2)
        Trainer(cfg, task).fit()
        runs.append(_weights(task))
    assert _same(*runs)


def test_accumulation_matches_a_bigger_batch(tmp_path: Path) -> None:
    """Without BatchNorm, 2 micro-batches of 8 per step equal one batch of 16 (mean losses)."""
    big_cfg = _cfg(tmp_path, "big", batch_size=16, max_steps=4, deterministic=False)
    big = ToyTask(big_cfg, bn=False)
    Trainer(big_cfg, big).fit()
    acc_cfg = _cfg(tmp_path, "acc", batch_size=8, accum_steps=2, max_steps=4, deterministic=False)
    acc = ToyTask(acc_cfg, bn=False)
    acc.train_batches = _halves(big)  # the same 16 rows per step, in two halves
    acc.batches_per_epoch = lambda: 2 * big.batches_per_epoch()
    Trainer(acc_cfg, acc).fit()
    a, b = _weights(big), _weights(acc)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_gradient_clipping_bounds_the_update(tmp_path: Path) -> None:
    """SGD without momentum: one step moves the parameters by exactly lr * clipped gradient."""
    def first_step_delta(clip: float) -> float:
        cfg = _cfg(tmp_path, f"clip{clip}", max_steps=1, lr=1.0, momentum=0.0, weight_decay=0.0,
                   warmup_steps=0, clip_grad_norm=clip)
        task = ToyTask(cfg, bn=False)
        before = {k: v.clone() for k, v in _weights(task).items()}
        Trainer(cfg, task).fit()
        after = _weights(task)
        return float(torch.sqrt(sum((after[k] - before[k]).pow(2).sum() for k in before)))

    free = first_step_delta(0.0)
    assert free > 0.05
    assert first_step_delta(0.01) == pytest.approx(0.01, rel=1e-3)
    assert first_step_delta(10 * free) == pytest.approx(free, rel=1e-5)  # under the limit: untouched


def _halves(task: ToyTask):
    def batches(epoch: int, start: int) -> Iterable[Any]:
        for batch in task.train_batches(epoch, start // 2):  # steps start at even micro-batches
            yield {k: v[:8] for k, v in batch.items()}
            yield {k: v[8:] for k, v in batch.items()}
    return batches


class _Killed(Exception):
    pass


def _kill_at(step: int):
    def callback(trainer: Trainer, done: int) -> None:
        if done == step:
            raise _Killed(f"killed after step {done}")
    return callback


def test_kill_and_resume_gives_the_uninterrupted_weights(tmp_path: Path) -> None:
    full_cfg = _cfg(tmp_path, "full", eval_every=5)
    full = ToyTask(full_cfg, dropout=0.3)
    Trainer(full_cfg, full).fit()

    cut_cfg = _cfg(tmp_path, "cut", eval_every=5)
    with pytest.raises(_Killed):  # killed two steps after the step-4 checkpoint, mid-epoch (8 per epoch)
        Trainer(cut_cfg, ToyTask(cut_cfg, dropout=0.3), callbacks=[_kill_at(6)]).fit()
    assert [p.name for p in list_checkpoints(cut_cfg.out)] == ["step_00000004.pt"]
    stale = Path(cut_cfg.out) / "checkpoints" / ".step_00000008.pt.abc.tmp"
    stale.write_bytes(b"half a checkpoint")  # what a kill during a save leaves behind
    assert latest_checkpoint(cut_cfg.out).name == "step_00000004.pt"

    cfg, _ = parse_training_config(TrainConfig, ["--resume", cut_cfg.out])
    assert cfg.out == cut_cfg.out and cfg.max_steps == 12 and cfg.resume == cut_cfg.out
    resumed = ToyTask(cfg, dropout=0.3)
    trainer = Trainer(cfg, resumed)
    assert trainer.step == 4 and not stale.exists()
    trainer.fit()
    assert _same(_weights(full), _weights(resumed))
    steps = [r["step"] for r in read_metrics(cut_cfg.out) if "loss" in r]
    assert steps == sorted(set(steps)) == [2, 4, 6, 8, 10, 12]  # replayed steps logged once


def test_nan_loss_stops_cleanly_and_keeps_the_checkpoint(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, ckpt_every=3)
    task = ToyTask(cfg, nan_at=5)
    trainer = Trainer(cfg, task)
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at step 5 \(ce=nan\)") as info:
        trainer.fit()
    assert info.value.step == 5 and info.value.checkpoint.name == "step_00000003.pt"
    ckpt_path = latest_checkpoint(cfg.out)
    assert [p.name for p in list_checkpoints(cfg.out)] == ["step_00000003.pt"]
    before = ckpt_path.read_bytes()
    weights = _weights(task)
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())
    assert ckpt_path.read_bytes() == before
    assert not (Path(cfg.out) / "backbone.pth").exists()
    assert "non-finite loss at step 5" in read_metrics(cfg.out)[-1]["error"]


def test_bad_settings_and_resume_targets(tmp_path: Path) -> None:
    with pytest.raises(EngineError, match="fewer than --accum-steps"):
        Trainer(_cfg(tmp_path, batch_size=64, accum_steps=2), ToyTask(_cfg(tmp_path, batch_size=64)))
    with pytest.raises(EngineError, match="needs CUDA"):
        Trainer(_cfg(tmp_path, bn_mode="sync"), ToyTask(_cfg(tmp_path)))
    with pytest.raises(CheckpointError, match="no checkpoint"):
        resolve_resume(tmp_path)
    bogus = tmp_path / "checkpoints" / "step_00000001.pt"
    bogus.parent.mkdir()
    torch.save({"weight": torch.zeros(2)}, bogus)
    with pytest.raises(CheckpointError, match="not a facekd training checkpoint"):
        load_checkpoint(resolve_resume(tmp_path)[1])


def test_rng_states_round_trip_and_to_device() -> None:
    import random

    import numpy as np

    state = capture_rng()
    a = (torch.rand(3), np.random.rand(3), random.random())
    restore_rng(state)
    b = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]
    x = torch.arange(96.0).reshape(2, 3, 4, 4)
    moved = to_device({"x": x, "n": 3}, torch.device("cpu"), torch.channels_last)
    assert moved["x"].is_contiguous(memory_format=torch.channels_last) and moved["n"] == 3
    assert not x.is_contiguous(memory_format=torch.channels_last)  # the input itself is left as it was
    assert torch.equal(moved["x"], x)  # same values at the same indices, only the memory layout differs
    assert moved["x"].stride() == (48, 1, 12, 3)
