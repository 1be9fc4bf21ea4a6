"""SRD at the distill command's own defaults (ArcFace s=64 m=0.5, --teacher-scale 64, no warm-up, no
clipping, default loss options) must not do harm: on a tiny case its held-out accuracy is not below
the student trained alone with the same data, steps and seed by more than noise, and it closes a
good part of the teacher-student gap."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from facekd.pipelines import distill as distill_pipeline
from facekd.pipelines import train as train_pipeline

DATA = "synthetic:ids=40,per_id=8,size=32,seed=3"
COMMON = ["--input-size", "32", "--batch-size", "32", "--workers", "0", "--no-tensorboard", "--val-pairs", "400",
          "--amp", "off", "--data", DATA]
NOISE = 0.03
"""Seed-to-seed spread of this tiny case's held-out accuracy is about 0.02."""


def _accuracy(run: Path) -> float:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["eval/synthetic/accuracy"] for r in rows if "eval/synthetic/accuracy" in r][-1]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small teacher trained with a recipe that converges on tiny data; its head is the critic."""
    out = tmp_path_factory.mktemp("teacher")
    assert train_pipeline.main([*COMMON, "--backbone", "r18", "--width", "0.125", "--embedding-size", "32",
                                "--scale", "32", "--margin", "0.4", "--warmup-steps", "10", "--clip-grad-norm", "5",
                                "--schedule", "cosine", "--max-steps", "120", "--out", str(out)]) == 0
    return out


def test_srd_at_the_defaults_is_not_below_the_student_alone(teacher: Path, tmp_path: Path,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    student = ["--width", "0.125", "--embedding-size", "16", "--max-steps", "60", "--seed", "1"]
    alone = tmp_path / "alone"
    assert train_pipeline.main([*COMMON, "--backbone", "mbf", *student, "--out", str(alone)]) == 0
    srd = tmp_path / "srd"
    with caplog.at_level(logging.WARNING, logger="facekd"):
        assert distill_pipeline.main([*COMMON, "--teacher", "r18", "--teacher-weights", str(teacher / "backbone.pth"),
                                      "--teacher-head", str(teacher / "head.pth"), "--teacher-width", "0.125",
                                      "--teacher-embedding-size", "32", "--student", "mbf", *student,
                                      "--out", str(srd)]) == 0
    acc_teacher, acc_alone, acc_srd = _accuracy(teacher), _accuracy(alone), _accuracy(srd)
    assert acc_srd >= acc_alone - NOISE, (acc_srd, acc_alone)
    # and it transfers: at least 40% of the teacher-student gap closed (about 70% measured; the earlier
    # Linear+BN form with raw s^2-weighted logits closed about 13% here)
    assert acc_teacher - acc_alone > 0.1
    assert (acc_srd - acc_alone) / (acc_teacher - acc_alone) >= 0.4, (acc_teacher, acc_alone, acc_srd)
    assert not [r for r in caplog.records if "distillation may be hurting" in r.getMessage()]
    rows = [json.loads(line) for line in (srd / "metrics.jsonl").read_text().splitlines()]
    assert [r["eval/synthetic/mean_cos"] for r in rows if "eval/synthetic/mean_cos" in r][-1] < 0.75
