"""Cheap mistakes fail first, in one line naming the flag and the fix, before anything expensive
runs (the teacher is loaded, its cache built, data scanned); no data is assumed; mismatch hints name
the flags of the command that raised them; presets a command lists are presets it can load."""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Iterator

import pytest
import torch

from facekd.config import presets_for
from facekd.engine.config import parse_training_config
from facekd.models.onnx_backbone import export_onnx
from facekd.models.registry import build_backbone
from facekd.pipelines import classify as classify_pipeline
from facekd.pipelines import distill as distill_pipeline
from facekd.pipelines import train as train_pipeline

DATA = "synthetic:ids=4,per_id=4,size=32"
COMMON = ["--input-size", "32", "--batch-size", "8", "--workers", "0", "--no-tensorboard", "--val-pairs", "0",
          "--max-steps", "1", "--embedding-size", "16", "--width", "0.125"]
TEACHER = {"width": 0.125, "embedding_size": 32, "input_size": 32}


@pytest.fixture
def facekd_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """caplog receiving the ``facekd`` logger's records (it does not propagate to the root)."""
    logger = logging.getLogger("facekd")
    logger.addHandler(caplog.handler)
    try:
        yield caplog
    finally:
        logger.removeHandler(caplog.handler)


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An (untrained) r18 teacher at width 0.125, 32-d embeddings, 32 px: a plain state dict."""
    path = tmp_path_factory.mktemp("teacher") / "backbone.pth"
    torch.manual_seed(0)
    torch.save(build_backbone("r18", **TEACHER).state_dict(), path)
    return path


def _not_a_model(tmp_path: Path) -> Path:
    """A teacher file that would fail to load: any check that runs after loading would show it."""
    path = tmp_path / "teacher.pth"
    path.write_bytes(b"not a torch file")
    return path


def _distill(teacher: Path, out: Path, *extra: str) -> list[str]:
    return [*COMMON, "--teacher", "r18", "--teacher-weights", str(teacher), "--out", str(out), *extra]


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("command", ["train", "distill"])
def test_data_is_required(command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    if command == "train":
        code = train_pipeline.main([*COMMON, "--out", str(out)])
    else:
        code = distill_pipeline.main(_distill(tmp_path / "missing.pth", out))
    line = _one_error_line(capsys.readouterr().err)
    assert code == 2 and "--data" in line and "synthetic:ids=300,per_id=20,size=32" in line
    assert "missing.pth" not in line  # the data error comes before the teacher is looked at
    assert not out.exists()


def test_first_log_line_says_which_data_and_pool(tmp_path: Path, facekd_log: pytest.LogCaptureFixture) -> None:
    pool = "synthetic:ids=3,per_id=4,size=32"
    assert distill_pipeline.main(_distill(tmp_path / "missing.pth", tmp_path / "out", "--data", DATA,
                                          "--unlabeled", pool)) == 2
    first = [r.getMessage() for r in facekd_log.records][0]
    assert DATA in first and pool in first and "--unlabeled-ratio 1" in first
    facekd_log.clear()
    assert train_pipeline.main([*COMMON, "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "t")]) == 2
    assert str(tmp_path / "nowhere") in [r.getMessage() for r in facekd_log.records][0]


@pytest.mark.parametrize("flag, value, extra", [
    ("--data", "nowhere/", ()),
    ("--unlabeled", "nowhere/", ()),
    ("--teacher-head", "nowhere.pth", ()),
    ("--init-student", "nowhere.pth", ()),
    ("--val-bins", "nowhere.bin", ()),
])
def test_missing_paths_name_their_flag_before_the_teacher_loads(flag: str, value: str, extra: tuple[str, ...],
                                                                tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    args = _distill(_not_a_model(tmp_path), out, *(("--data", DATA) if flag != "--data" else ()), flag,
                    str(tmp_path / value), *extra)
    assert distill_pipeline.main(args) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith(f"error: {flag} ") and "no such file or directory" in line
    assert not (out / "teacher_cache").exists()


def test_missing_teacher_weights_name_the_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert distill_pipeline.main(_distill(tmp_path / "missing.pth", tmp_path / "out", "--data", DATA)) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "missing.pth" in line and "--teacher-weights" in line


def test_bad_synthetic_spec_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert train_pipeline.main([*COMMON, "--data", "synthetic:idz=3", "--out", str(tmp_path / "out")]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith("error: --data synthetic:idz=3:") and "unknown synthetic key 'idz'" in line


def test_pool_smaller_than_a_step_fails_before_the_teacher(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    args = _distill(_not_a_model(tmp_path), out, "--data", DATA, "--batch-size", "12", "--unlabeled",
                    "synthetic:ids=2,per_id=4,size=32", "--set", "data=synthetic:ids=4,per_id=6,size=32")
    assert distill_pipeline.main(args) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "--unlabeled pool of 8 images" in line and "12 unlabeled rows" in line
    assert "--unlabeled-ratio (at most 0.66)" in line and "--batch-size" in line
    assert not (out / "teacher_cache").exists()
    # the labeled set too: fewer images than one batch
    assert distill_pipeline.main(_distill(_not_a_model(tmp_path), out, "--data", DATA, "--batch-size", "32")) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "--data has 16 images" in line and "--batch-size 32" in line


def test_onnx_teacher_input_size_checked_before_the_cache(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                          facekd_log: pytest.LogCaptureFixture) -> None:
    model = build_backbone("mbf", width=0.125, embedding_size=16, input_size=32).eval()
    onnx_file = export_onnx(model, tmp_path / "model.onnx")
    out = tmp_path / "out"
    args = [*COMMON, "--input-size", "64", "--data", "synthetic:ids=4,per_id=4,size=64", "--teacher", "r100",
            "--teacher-width", "0.5", "--teacher-weights", str(onnx_file), "--out", str(out)]
    assert distill_pipeline.main(args) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "takes 32px images but --input-size is 64" in line and "pass --input-size 32" in line
    assert "teacher and student" in line
    assert not (out / "teacher_cache").exists()
    warnings = [r.getMessage() for r in facekd_log.records if r.levelno == logging.WARNING]
    assert any("ONNX" in w and "--teacher r100" in w and "--teacher-width 0.5" in w and "ignored" in w
               for w in warnings), warnings


def test_teacher_mismatch_hint_names_distill_flags(teacher_file: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    # width and embedding size left at their defaults: both inferred from the file's shapes
    assert distill_pipeline.main(_distill(teacher_file, tmp_path / "a", "--data", DATA)) == 2
    err = capsys.readouterr().err
    assert "--teacher-width 0.125" in err and "--teacher-embedding-size 32" in err
    assert "--arch" not in err and "Traceback" not in err
    # right width, but the student (and so the teacher) at 64 px: the file says 32 px
    assert distill_pipeline.main(_distill(teacher_file, tmp_path / "b", "--teacher-width", "0.125",
                                          "--teacher-embedding-size", "32", "--input-size", "64", "--data",
                                          "synthetic:ids=4,per_id=4,size=64")) == 2
    err = capsys.readouterr().err
    assert "--input-size 32" in err and "teacher and student share" in err and "--arch" not in err
    assert not (tmp_path / "b" / "teacher_cache").exists()


def test_unnamed_teacher_architecture_names_the_teacher_flag(teacher_file: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    args = [a for a in _distill(teacher_file, tmp_path / "out", "--data", DATA) if a not in ("--teacher", "r18")]
    assert distill_pipeline.main(args) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "does not name its architecture" in line and "--teacher r100" in line and "--arch" not in line


def test_init_student_hint_names_the_student_flags(teacher_file: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    start = tmp_path / "student.pth"
    torch.save(build_backbone("mbf", width=0.25, embedding_size=16, input_size=32).state_dict(), start)
    args = _distill(teacher_file, tmp_path / "out", "--teacher-width", "0.125", "--teacher-embedding-size", "32",
                    "--data", DATA, "--online-teacher", "--student", "mbf", "--init-student", str(start))
    assert distill_pipeline.main(args) == 2
    err = capsys.readouterr().err
    hint = [line for line in err.splitlines() if "student (--init-student): try" in line]
    assert len(hint) == 1 and "--width 0.25" in hint[0] and "--teacher-width" not in hint[0]


def test_presets_listed_by_a_command_load_in_it() -> None:
    for cls in (train_pipeline.FaceTrainConfig, distill_pipeline.DistillConfig, classify_pipeline.ClassifyConfig):
        names = {f.name for f in dataclasses.fields(cls)}
        for preset in presets_for(cls):
            cfg, _ = parse_training_config(cls, ["--config", preset])
            assert isinstance(cfg, cls), preset
        assert all(name in names for name in ("data", "out"))
    assert "cifar100_teacher" not in presets_for(train_pipeline.FaceTrainConfig)
    assert "arcface_mbf" in presets_for(train_pipeline.FaceTrainConfig)
    assert "arcface_mbf" not in presets_for(classify_pipeline.ClassifyConfig)


def test_help_lists_only_the_commands_presets(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        distill_pipeline.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "presets for this command: none" in text and "arcface_mbf" not in text and "cifar100" not in text


@pytest.mark.parametrize("command, preset, other", [("distill", "arcface_mbf", "backbone"),
                                                    ("train", "cifar100_openset", "mode")])
def test_a_preset_of_another_command_is_one_line(command: str, preset: str, other: str,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    main = distill_pipeline.main if command == "distill" else train_pipeline.main
    with pytest.raises(SystemExit) as exit_info:
        main(["--config", preset])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    assert f"--config {preset}: this preset is for another command" in err and other in err
    assert "presets for this command:" in err


@pytest.mark.parametrize("flags, message", [(("--loss", "srdd"), "unknown distillation loss 'srdd'"),
                                            (("--loss", "srd,kd:-1"), "must be >= 0")])
def test_classify_loss_mistakes_fail_before_data_and_teacher(flags: tuple[str, ...], message: str, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    code = classify_pipeline.main(["--mode", "distill", "--data", str(tmp_path / "no_such_data"), "--teacher",
                                   "resnet20", "--teacher-weights", str(tmp_path / "missing.pth"), "--workers", "0",
                                   "--no-tensorboard", "--out", str(tmp_path / "out"), *flags])
    line = _one_error_line(capsys.readouterr().err)
    assert code == 2 and message in line and "missing.pth" not in line and "no_such_data" not in line


CLASSIFY = ["--mode", "distill", "--data", "synthetic:ids=4,per_id=4,size=32", "--model", "resnet20",
            "--teacher", "resnet20", "--batch-size", "8", "--workers", "0", "--no-tensorboard", "--max-steps", "1",
            "--eval-epochs", "0", "--no-eval-teacher"]


def test_classify_pool_smaller_than_a_step_fails_before_the_teacher(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert classify_pipeline.main([*CLASSIFY, "--teacher-weights", str(_not_a_model(tmp_path)), "--unlabeled",
                                   "synthetic:ids=1,per_id=4,size=32", "--out", str(out)]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "--unlabeled pool of 4 images" in line and "8 unlabeled rows" in line and "--unlabeled-ratio" in line


def test_classify_teacher_classes_hint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    teacher = tmp_path / "teacher.pth"
    torch.save(build_backbone("resnet20", num_classes=10, input_size=32).state_dict(), teacher)
    assert classify_pipeline.main([*CLASSIFY, "--teacher-weights", str(teacher), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    hint = [line for line in err.splitlines() if "teacher (--teacher-weights): try" in line]
    assert len(hint) == 1 and "--teacher-num-classes 10" in hint[0] and "Traceback" not in err
