"""Distillation at scale, on CPU: ``torchrun --nproc_per_node 2`` (gloo) distils with a teacher cache
built by both ranks and trains the same student as one process with the same global batch; a run
killed under torchrun resumes under torchrun and ends where the uninterrupted run ends; a resume
with other teacher weights is refused; a Partial FC run replays bit for bit after a resume.

As in ``test_ddp.py``: ``--bn-mode frozen`` (per-rank batch statistics differ from full-batch
ones; the connector's BatchNorm included), no flips, one global batch per epoch holding the
whole labeled set, so nothing random remains but float reduction order.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from facekd.engine.checkpoint import list_checkpoints
from facekd.models.registry import build_backbone
from facekd.models.weights import load_weights_file, save_weights_file
from facekd.pipelines import distill
from _asserts import assert_states_close

IDS, PER_ID = 5, 4  # 20 images: one global batch of 20 = 2 ranks x 10
TEACHER = {"input_size": 32, "width": 0.125, "embedding_size": 16}
KILL_SCRIPT = '''
import os, signal, sys
from facekd.engine.config import parse_training_config
from facekd.pipelines import distill

cfg, _ = parse_training_config(distill.DistillConfig, sys.argv[1:])

def die(trainer, step):
    if step == 3 and trainer.info.rank == 1:
        os.kill(os.getpid(), signal.SIGKILL)  # a rank lost after the step-2 checkpoint

distill.run(cfg, callbacks=[die])
'''


def _common(teacher: Path) -> list[str]:
    return ["--teacher", "r18", "--teacher-weights", str(teacher), "--teacher-width", "0.125",
            "--teacher-embedding-size", "16", "--teacher-scale", "16", "--student", "mbf", "--width", "0.125",
            "--input-size", "32", "--embedding-size", "16", "--scale", "16", "--margin", "0.3", "--workers", "0",
            "--max-steps", "4", "--ckpt-every", "2", "--lr", "0.2", "--flip", "0", "--bn-mode", "frozen",
            "--val-pairs", "0", "--no-tensorboard", "--log-every", "1", "--clip-grad-norm", "1.0", "--device", "cpu",
            "--set", f"data=synthetic:ids={IDS},per_id={PER_ID},size=32"]


def _torchrun(args: list[str], script: Path | None = None, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FACEKD_NO_PROGRESS": "1"}
    target = [str(script)] if script else ["-m", "facekd.pipelines.distill"]
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           *target, *args], env=env, capture_output=True, text=True, timeout=280)
    if check:
        assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    return save_weights_file(build_backbone("r18", **TEACHER).state_dict(),
                             tmp_path_factory.mktemp("teacher") / "backbone.pth")


@pytest.fixture(scope="module")
def runs(teacher: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ddp_distill")
    single = root / "single"
    assert distill.main([*_common(teacher), "--batch-size", str(IDS * PER_ID), "--out", str(single)]) == 0
    ddp = root / "ddp"
    proc = _torchrun([*_common(teacher), "--batch-size", str(IDS * PER_ID // 2), "--out", str(ddp)])
    return {"single": single, "ddp": ddp, "log": proc.stderr, "root": root}


def test_two_gloo_processes_distil_the_single_process_student(runs: dict[str, Path]) -> None:
    assert "distributed: 2 processes, backend gloo" in runs["log"]
    manifest = json.loads((runs["ddp"] / "teacher_cache" / "labeled" / "manifest.json").read_text())
    assert manifest["parts"] == [[0, 10], [10, 20]] and manifest["complete"]  # one part per rank
    assert all((runs["ddp"] / "teacher_cache" / "labeled" / f"part-00{p}.f16").is_file() for p in range(2))
    single, ddp = load_weights_file(runs["single"] / "backbone.pth"), load_weights_file(runs["ddp"] / "backbone.pth")
    assert_states_close(ddp, single)
    first = load_weights_file(list_checkpoints(runs["single"])[0])["backbone"]
    assert any(not torch.equal(single[k], first[k]) for k in single)  # the student did move
    assert_states_close(load_weights_file(runs["ddp"] / "teacher_head.pth"), load_weights_file(runs["single"] / "teacher_head.pth"))
    fit = json.loads((runs["ddp"] / "teacher_fit.json").read_text())
    assert fit["teacher_sha256"] == json.loads((runs["single"] / "teacher_fit.json").read_text())["teacher_sha256"]


def test_killed_torchrun_distillation_resumes_under_torchrun(runs: dict[str, Path], teacher: Path) -> None:
    out = runs["root"] / "killed"
    script = runs["root"] / "kill_at_step_3.py"
    script.write_text(KILL_SCRIPT)
    proc = _torchrun([*_common(teacher), "--batch-size", str(IDS * PER_ID // 2), "--out", str(out)], script,
                     check=False)
    assert proc.returncode != 0 and not (out / "backbone.pth").exists()
    assert [p.name for p in list_checkpoints(out)] == ["step_00000002.pt"]
    stamp = {p: p.stat().st_mtime_ns for p in (out / "teacher_cache").rglob("*.f16")}
    proc = _torchrun(["--resume", str(out)])
    assert "resumed from" in proc.stderr and "step 2/4" in proc.stderr
    assert {p: p.stat().st_mtime_ns for p in (out / "teacher_cache").rglob("*.f16")} == stamp  # cache reused
    assert_states_close(load_weights_file(out / "backbone.pth"), load_weights_file(runs["ddp"] / "backbone.pth"), rel=1e-5)


def test_resume_with_other_teacher_weights_is_refused(runs: dict[str, Path], tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    torch.manual_seed(1)
    other = save_weights_file(build_backbone("r18", **TEACHER).state_dict(), tmp_path / "other.pth")
    assert distill.main(["--resume", str(runs["single"]), "--teacher-weights", str(other),
                         "--max-steps", "6"]) == 2
    err = capsys.readouterr().err
    assert "teacher_head.pth: this teacher classifier was fitted for teacher weights" in err
    assert "--teacher-weights" in err


class _Interrupt(Exception):
    pass


def _stop_after_step_2(trainer, step: int) -> None:
    if step == 2:  # after the step-2 checkpoint
        raise _Interrupt


@pytest.mark.parametrize("extra", [[], ["--label-weight", "0"]], ids=["student-head-sample", "own-draw"])
def test_partial_fc_distillation_replays_bit_for_bit_after_resume(teacher: Path, tmp_path: Path,
                                                                  extra: list[str]) -> None:
    from facekd.engine.config import parse_training_config

    args = [*_common(teacher), "--set", "data=synthetic:ids=12,per_id=2,size=32", "--batch-size", "8",
            "--partial-fc", "0.25", "--flip", "0.5", "--bn-mode", "batch", *extra]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert distill.main([*args, "--out", str(straight)]) == 0
    cfg, _ = parse_training_config(distill.DistillConfig, [*args, "--out", str(resumed)])
    with pytest.raises(_Interrupt):
        distill.run(cfg, callbacks=[_stop_after_step_2])
    assert distill.main(["--resume", str(resumed)]) == 0
    a, b = load_weights_file(straight / "backbone.pth"), load_weights_file(resumed / "backbone.pth")
    assert all(torch.equal(a[k], b[k]) for k in a)
    if not extra:
        assert torch.equal(load_weights_file(straight / "head.pth")["weight"],
                           load_weights_file(resumed / "head.pth")["weight"])


def test_rebuild_cache_is_done_once_not_again_on_resume(teacher: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert distill.main([*_common(teacher), "--batch-size", "20", "--max-steps", "2", "--rebuild-cache",
                         "--out", str(out)]) == 0
    stamp = {p: p.stat().st_mtime_ns for p in (out / "teacher_cache").rglob("part-*")}
    assert distill.main(["--resume", str(out), "--max-steps", "3"]) == 0
    assert {p: p.stat().st_mtime_ns for p in (out / "teacher_cache").rglob("part-*")} == stamp
