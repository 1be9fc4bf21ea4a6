"""``python -m facekd.pipelines.demo`` at a minimal size: every stage runs through the public entry
points, every artefact and the report exist, the numbers are finite, and a rerun reuses the stages."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from facekd.data.verification_bin import load_bin
from facekd.engine.checkpoint import list_checkpoints
from facekd.models.weights import load_backbone
from facekd.pipelines import demo

from _by_hand import accuracy_by_hand

MINIMAL = ["--workers", "0", "--train-ids", "20", "--per-id", "4", "--pool-ids", "10", "--pool-per-id", "4",
           "--val-ids", "20", "--pairs", "100", "--gallery-ids", "10", "--teacher-width", "0.125",
           "--teacher-embedding", "32", "--teacher-steps", "10", "--student-steps", "3", "--batch-size", "16",
           "--student-embedding", "16"]


def test_demo_end_to_end_then_reuses_finished_stages(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    assert demo.main([*MINIMAL, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    for module in ("facekd.data.synthetic", "facekd.pipelines.train", "facekd.pipelines.distill",
                   "facekd.eval.verify", "facekd.eval.identify"):
        assert f"python -m {module} " in printed  # each stage echoes the command that reproduces it
    assert "| student + SRD + unlabeled pool |" in printed and "The same on real data" in printed

    data = out / "data"
    assert (data / "synthetic_val.bin").is_file() and (data / "samples.png").is_file()
    assert len(list((data / "gallery").iterdir())) == 10
    for key in ("teacher", "student_alone", "student_srd", "student_srd_pool"):
        run = out / key
        for name in ("backbone.pth", "model.onnx", "metrics.jsonl", "verification/verification.json",
                     "identification/identification.json"):
            assert (run / name).is_file(), f"{key}/{name}"
    assert (out / "student_srd_pool" / "teacher_head.pth").is_file()
    report = (out / "report.md").read_text()
    assert "![ROC](roc.png)" in report and (out / "roc.png").is_file()
    results = json.loads((out / "results.json").read_text())
    assert set(results) == {"teacher", "student_alone", "student_srd", "student_srd_pool"}
    pair_images, issame = load_bin(data / "synthetic_val.bin")
    for key, values in results.items():
        for metric in ("accuracy", "rank1", "params_m", "mmacs"):
            assert math.isfinite(values[metric]) and values[metric] >= 0.0, metric
        # every number is that of the saved model: recomputed by hand or read back from its reports
        model = load_backbone(None, list_checkpoints(out / key)[-1]).eval()
        assert values["accuracy"] == pytest.approx(accuracy_by_hand(model, np.asarray(pair_images), issame),
                                                   abs=1e-9), key
        assert values["params_m"] == pytest.approx(sum(p.numel() for p in model.parameters()) / 1e6), key
        ident = json.loads((out / key / "identification" / "identification.json").read_text())
        assert values["rank1"] == ident["cmc"]["rank1"] and ident["n_mated"] > 0, key
    assert results["teacher"]["mmacs"] > results["student_alone"]["mmacs"]

    # a second run finds every stage done and only rebuilds the report
    stamp = (out / "teacher" / "backbone.pth").stat().st_mtime_ns
    assert demo.main([*MINIMAL, "--out", str(out)]) == 0
    assert (out / "teacher" / "backbone.pth").stat().st_mtime_ns == stamp
    assert "==> teacher" not in capsys.readouterr().out

    # a stage interrupted after a checkpoint continues from it
    (out / "student_srd" / "backbone.pth").unlink()
    assert demo.main([*MINIMAL, "--out", str(out)]) == 0
    assert "continuing the interrupted run" in capsys.readouterr().out
    assert (out / "student_srd" / "backbone.pth").is_file()


def test_demo_refuses_to_mix_settings_with_an_earlier_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    out.mkdir()
    (out / "demo_config.yaml").write_text("student_steps: 999\n")
    assert demo.main([*MINIMAL, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "student_steps" in err and "--fresh" in err
    assert not (out / "data").exists()  # nothing was run
    # --fresh deletes the earlier run and redoes every stage with the settings given now
    (out / "stale.txt").write_text("from the earlier run")
    assert demo.main([*MINIMAL, "--out", str(out), "--fresh"]) == 0
    printed = capsys.readouterr().out
    assert "==> teacher" in printed and not (out / "stale.txt").exists()
    assert "student_steps: 3" in (out / "demo_config.yaml").read_text()
    assert (out / "student_srd_pool" / "backbone.pth").is_file()
