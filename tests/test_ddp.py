"""DDP on CPU: ``torchrun --nproc_per_node 2`` (gloo) trains the same weights as one process with
the same global batch, Partial FC shards cover every class exactly once, and a 2-process
checkpoint (sharded optimizer state gathered) resumes in one process.

BatchNorm: torch's SyncBatchNorm runs on GPUs only, and per-rank batch statistics differ from
full-batch ones, so these runs use ``--bn-mode frozen`` (running statistics; the BN affine
parameters still train), which makes the model a per-sample function and the comparison exact
up to float reduction order. Each epoch is a single global batch holding the whole dataset, so
every step sees the same samples whatever the sampler's order; no flips, Partial FC without
negative sampling: nothing random remains.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from facekd.engine.checkpoint import list_checkpoints, load_checkpoint
from facekd.models.weights import load_weights_file
from facekd.pipelines.train import main
from _asserts import assert_states_close

IDS, PER_ID, DIM = 5, 4, 16  # 20 images: one global batch of 20 = 2 ranks x 10
COMMON = ["--backbone", "mbf", "--width", "0.125", "--input-size", "32", "--embedding-size", str(DIM),
          "--workers", "0", "--max-steps", "3", "--ckpt-every", "2", "--lr", "0.2", "--scale", "16",
          "--margin", "0.3", "--flip", "0", "--bn-mode", "frozen", "--val-pairs", "0", "--no-tensorboard",
          "--log-every", "1", "--clip-grad-norm", "1.0", "--device", "cpu",
          "--set", f"data=synthetic:ids={IDS},per_id={PER_ID},size=32"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ddp")
    single = root / "single"
    assert main([*COMMON, "--batch-size", str(IDS * PER_ID), "--out", str(single)]) == 0
    ddp = root / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FACEKD_NO_PROGRESS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "facekd.pipelines.train", *COMMON, "--batch-size", str(IDS * PER_ID // 2),
                           "--out", str(ddp)], env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return {"single": single, "ddp": ddp, "log": proc.stderr}


def test_two_gloo_processes_train_the_single_process_weights(runs: dict[str, Path]) -> None:
    assert "distributed: 2 processes, backend gloo" in runs["log"]
    assert_states_close(load_weights_file(runs["ddp"] / "backbone.pth"), load_weights_file(runs["single"] / "backbone.pth"))
    single = load_weights_file(runs["single"] / "backbone.pth")
    first = load_checkpoint(list_checkpoints(runs["single"])[0])["backbone"]
    assert any(not torch.equal(single[k], first[k]) for k in single)  # the weights did move


def test_partial_fc_shards_cover_every_class_once(runs: dict[str, Path]) -> None:
    head = load_weights_file(runs["ddp"] / "head.pth")["weight"]
    assert head.shape == (IDS, DIM)  # 5 classes over 2 ranks: rows 0-2 and 3-4, gathered in order
    assert_states_close({"weight": head}, {"weight": load_weights_file(runs["single"] / "head.pth")["weight"]})
    ckpt = load_checkpoint(list_checkpoints(runs["ddp"])[-1])
    assert ckpt["world_size"] == 2 and len(ckpt["rng"]) == 2
    momentum = [s["momentum_buffer"] for s in ckpt["optimizer"]["state"].values()]
    assert any(m.shape == (IDS, DIM) for m in momentum)  # the head's momentum gathered from both shards


def test_two_process_checkpoint_resumes_in_one_process(runs: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    resumed = tmp_path / "resumed"
    shutil.copytree(runs["ddp"], resumed)
    for p in list_checkpoints(resumed)[1:]:
        p.unlink()  # keep the step-2 checkpoint only
    (resumed / "backbone.pth").unlink()
    assert main(["--resume", str(resumed), "--batch-size", str(IDS * PER_ID)]) == 0  # same global batch
    assert_states_close(load_weights_file(resumed / "backbone.pth"), load_weights_file(runs["single"] / "backbone.pth"))
    assert_states_close(load_weights_file(resumed / "head.pth"), load_weights_file(runs["single"] / "head.pth"))


def test_one_process_checkpoint_resumes_in_two_processes(runs: dict[str, Path], tmp_path: Path) -> None:
    """README: a run can resume on a different number of GPUs; here 1 -> 2 gloo processes, the same
    global batch: the full head is sharded on load and the weights end as the single run's."""
    import shutil

    resumed = tmp_path / "resumed"
    shutil.copytree(runs["single"], resumed)
    for p in list_checkpoints(resumed)[1:]:
        p.unlink()  # keep the step-2 checkpoint only
    assert load_checkpoint(list_checkpoints(resumed)[-1])["world_size"] == 1
    (resumed / "backbone.pth").unlink()
    (resumed / "head.pth").unlink()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FACEKD_NO_PROGRESS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "facekd.pipelines.train", "--resume", str(resumed), "--batch-size",
                           str(IDS * PER_ID // 2)], env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "distributed: 2 processes, backend gloo" in proc.stderr
    assert load_checkpoint(list_checkpoints(resumed)[-1])["world_size"] == 2
    assert_states_close(load_weights_file(resumed / "backbone.pth"), load_weights_file(runs["single"] / "backbone.pth"))
    assert_states_close(load_weights_file(resumed / "head.pth"), load_weights_file(runs["single"] / "head.pth"))
