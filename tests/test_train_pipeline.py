"""``python -m facekd.pipelines.train`` end to end on tiny synthetic identities: the loss falls,
outputs load back, a killed run resumes to the uninterrupted weights (also mid-epoch with another
loader worker count), a diverging run stops with a clear message, and the ONNX export matches torch
and loads in insightface."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from facekd.config import to_dict
from facekd.engine.checkpoint import list_checkpoints
from facekd.engine.config import parse_training_config
from facekd.engine.metrics_log import read_metrics
from facekd.models.weights import load_backbone, load_classifier, load_weights_file
from facekd.pipelines.common import init_class_centres, synthetic_validation
from facekd.pipelines.train import FaceTrainConfig, main, run

from _by_hand import accuracy_by_hand

TINY = ["--backbone", "mbf", "--width", "0.125", "--input-size", "32", "--embedding-size", "32",
        "--batch-size", "16", "--workers", "0", "--scale", "16", "--margin", "0.3", "--no-tensorboard",
        "--set", "data=synthetic:ids=12,per_id=8,size=32"]


def _args(out: Path, *extra: str) -> list[str]:
    return [*TINY, "--out", str(out), *extra]


def test_loss_falls_and_outputs_load(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert main(_args(out, "--max-steps", "36", "--lr", "0.1", "--log-every", "6", "--val-pairs", "200",
                      "--eval-every", "18", "--ckpt-every", "18")) == 0
    records = read_metrics(out)
    losses = [r["loss/arcface"] for r in records if "loss/arcface" in r]
    assert len(losses) == 6 and losses[-1] < 0.8 * losses[0]
    evals = [r for r in records if "eval/synthetic/accuracy" in r]
    assert [r["step"] for r in evals] == [18, 36]
    saved, _ = parse_training_config(FaceTrainConfig, ["--config", str(out / "config.yaml")])
    assert saved.max_steps == 36 and saved.backbone == "mbf"
    model = load_backbone("mbf", out / "backbone.pth", embedding_size=32, input_size=32, width=0.125)
    from_ckpt = load_backbone(None, list_checkpoints(out)[-1])  # engine checkpoints load like released models
    # each logged accuracy is that of the weights saved at its step, recomputed by hand
    pairs = synthetic_validation("synthetic:ids=12,per_id=8,size=32", 200)
    at_step = {18: load_backbone(None, list_checkpoints(out)[0]), 36: model}
    for r in evals:
        by_hand = accuracy_by_hand(at_step[r["step"]], pairs.images, pairs.issame)
        assert r["eval/synthetic/accuracy"] == pytest.approx(by_hand, abs=1e-9), r["step"]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), from_ckpt(x))
    assert load_classifier(out / "head.pth").shape == (12, 32)


def _kill_after(step: int):
    def callback(trainer, done: int) -> None:
        if done == step:
            raise KeyboardInterrupt
    return callback


def test_killed_run_resumes_to_the_same_weights(tmp_path: Path) -> None:
    common = ("--max-steps", "10", "--ckpt-every", "4", "--val-pairs", "0", "--warmup-steps", "2", "--seed", "5",
              "--deterministic")
    assert main(_args(tmp_path / "full", *common)) == 0
    cfg, _ = parse_training_config(FaceTrainConfig, _args(tmp_path / "cut", *common))
    with pytest.raises(KeyboardInterrupt):  # 96 images / 16 = 6 steps per epoch: dies mid-epoch 2
        run(cfg, callbacks=[_kill_after(7)])
    assert [p.name for p in list_checkpoints(tmp_path / "cut")] == ["step_00000004.pt"]
    assert main(["--resume", str(tmp_path / "cut")]) == 0
    full = load_weights_file(tmp_path / "full" / "backbone.pth")
    resumed = load_weights_file(tmp_path / "cut" / "backbone.pth")
    assert full.keys() == resumed.keys() and all(torch.equal(full[k], resumed[k]) for k in full)
    assert torch.equal(load_classifier(tmp_path / "full" / "head.pth"), load_classifier(tmp_path / "cut" / "head.pth"))


def test_resume_mid_epoch_with_other_worker_count_gives_the_same_weights(tmp_path: Path) -> None:
    # 6 steps per epoch; killed after step 9, resumed from the step-8 checkpoint at batch 2 of epoch 1
    # with two loader workers instead of none: batches, augmentation and so weights stay bitwise equal
    common = ("--max-steps", "10", "--ckpt-every", "4", "--val-pairs", "0", "--warmup-steps", "2", "--seed", "2",
              "--deterministic", "--set", "data=synthetic:ids=12,per_id=8,size=32,seed=3")
    assert main(_args(tmp_path / "full", *common)) == 0
    cfg, _ = parse_training_config(FaceTrainConfig, _args(tmp_path / "cut", *common))
    with pytest.raises(KeyboardInterrupt):
        run(cfg, callbacks=[_kill_after(9)])
    assert list_checkpoints(tmp_path / "cut")[-1].name == "step_00000008.pt"
    assert main(["--resume", str(tmp_path / "cut"), "--workers", "2"]) == 0
    full = load_weights_file(tmp_path / "full" / "backbone.pth")
    resumed = load_weights_file(tmp_path / "cut" / "backbone.pth")
    assert full.keys() == resumed.keys() and all(torch.equal(full[k], resumed[k]) for k in full)


def test_diverging_run_stops_with_the_step_and_keeps_its_checkpoint(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "nan"
    # lr 0.1 for the first epoch (6 steps), then x 1e31 at epoch 1: the weights blow up
    code = main(_args(out, "--max-steps", "12", "--ckpt-every", "6", "--val-pairs", "0", "--schedule", "step",
                      "--lr-milestones", "1", "--lr-gamma", "1e31"))
    assert code == 1
    err = capsys.readouterr().err
    assert "non-finite loss at step" in err and "step_00000006.pt is kept unchanged" in err
    assert [p.name for p in list_checkpoints(out)] == ["step_00000006.pt"]
    ckpt = load_weights_file(list_checkpoints(out)[0])
    assert all(torch.isfinite(v).all() for v in ckpt["backbone"].values() if v.is_floating_point())
    assert not (out / "backbone.pth").exists()


def test_onnx_export_matches_torch_and_loads_in_insightface(tmp_path: Path) -> None:
    import onnxruntime as ort
    from insightface.model_zoo import get_model

    out = tmp_path / "onnx"
    assert main(["--backbone", "mbf", "--width", "0.125", "--input-size", "112", "--embedding-size", "64",
                 "--batch-size", "8", "--workers", "0", "--max-steps", "2", "--val-pairs", "0", "--no-tensorboard",
                 "--export-onnx", "--set", "data=synthetic:ids=4,per_id=4,size=112", "--out", str(out)]) == 0
    model = load_backbone("mbf", out / "backbone.pth", embedding_size=64, input_size=112, width=0.125)
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    (inp,), (outp,) = session.get_inputs(), session.get_outputs()
    assert inp.shape[1:] == [3, 112, 112] and outp.shape[1] == 64
    x = torch.randn(3, 3, 112, 112, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(x).numpy()
    scale = np.abs(expected).max()  # eval-mode embeddings after 2 steps can be large: compare relatively
    assert np.abs(session.run(None, {inp.name: x.numpy()})[0] - expected).max() <= 1e-5 * scale + 1e-5

    rec = get_model(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert rec is not None and rec.taskname == "recognition"
    rgb = np.random.default_rng(0).integers(0, 256, (112, 112, 3), dtype=np.uint8)
    feat = rec.get_feat(rgb[:, :, ::-1].copy())  # insightface takes BGR
    with torch.no_grad():
        ours = model(torch.from_numpy(rgb).permute(2, 0, 1)[None].float().div(255).sub(0.5).div(0.5)).numpy()
    assert np.abs(feat.reshape(-1) - ours.reshape(-1)).max() <= 1e-5 * np.abs(ours).max() + 1e-5


def test_class_centres_do_not_depend_on_sharding() -> None:
    from facekd.models.heads import MarginHead

    full = MarginHead(8, 10000)
    init_class_centres(full, seed=4)
    shard = SimpleNamespace(weight=torch.nn.Parameter(torch.zeros(5, 8)), class_start=4093)  # rows across a block edge
    init_class_centres(shard, seed=4)
    assert torch.equal(shard.weight.detach(), full.weight.detach()[4093:4098])
    assert full.weight.std().item() == pytest.approx(0.01, rel=0.05)


def test_help_and_presets(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--backbone", "--head", "--partial-fc", "--val-bins", "--resume", "--lr", "--export-onnx",
                 "--amp", "--accum-steps", "--set"):
        assert flag in text
    for preset in ("arcface_r100", "arcface_mbf", "train_cpu_tiny"):
        cfg, _ = parse_training_config(FaceTrainConfig, ["--config", preset])
        assert to_dict(cfg)["head"] == "arcface"
    r100, _ = parse_training_config(FaceTrainConfig, ["--config", "arcface_r100", "--lr", "0.2"])
    assert (r100.backbone, r100.lr, r100.clip_grad_norm, r100.weight_decay) == ("r100", 0.2, 5.0, 5e-4)


def test_corrupt_images_are_skipped_and_reported_per_epoch(tmp_path: Path) -> None:
    """An image folder with one corrupt file trains; the epoch's report counts the skipped sample."""
    import cv2

    rng = np.random.default_rng(0)
    root = tmp_path / "faces"
    for identity in range(4):
        folder = root / f"id{identity}"
        folder.mkdir(parents=True)
        for k in range(4):
            assert cv2.imwrite(str(folder / f"{k}.png"), rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    (root / "id2" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really an image")
    out = tmp_path / "run"
    args = [*TINY[:-2], "--batch-size", "17", "--data", str(root), "--max-steps", "2", "--val-pairs", "0",
            "--out", str(out)]
    assert main(args) == 0
    reports = [r for r in read_metrics(out) if "data/skipped" in r]
    assert [(r["epoch"], r["data/skipped"]) for r in reports] == [(0, 1), (1, 1)]
    assert main([*args[:-2], "--on-corrupt", "fail", "--out", str(tmp_path / "strict")]) == 2


def _without_tensorboard(args: list[str]) -> list[str]:
    return [a for a in args if a != "--no-tensorboard"]


def test_tensorboard_events_hold_the_logged_metrics(tmp_path: Path) -> None:
    """README: train writes TensorBoard events (on unless --no-tensorboard): the same scalars as metrics.jsonl."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "tb"
    assert main(_without_tensorboard(_args(out, "--max-steps", "4", "--log-every", "2", "--val-pairs", "0"))) == 0
    events = list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1
    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    logged = {r["step"]: r["loss/arcface"] for r in read_metrics(out) if "loss/arcface" in r}
    scalars = {e.step: e.value for e in acc.Scalars("loss/arcface")}
    assert sorted(logged) == [2, 4] and scalars == pytest.approx(logged, rel=1e-6)
    quiet = tmp_path / "quiet"
    assert main(_args(quiet, "--max-steps", "1", "--val-pairs", "0")) == 0
    assert not (quiet / "tensorboard").exists() or not list((quiet / "tensorboard").iterdir())


def test_bf16_autocast_and_channels_last_train_on_cpu(tmp_path: Path) -> None:
    """README: bf16 autocast is available (it runs on the CPU too) and --channels-last trains the same model."""
    common = ("--max-steps", "3", "--val-pairs", "0", "--log-every", "1", "--seed", "1", "--deterministic", "--lr", "0.01")
    runs = {}
    for name, extra in (("plain", ()), ("bf16", ("--amp", "bf16")), ("cl", ("--channels-last",))):
        assert main(_args(tmp_path / name, *common, *extra)) == 0
        runs[name] = ([r["loss/arcface"] for r in read_metrics(tmp_path / name) if "loss/arcface" in r],
                      load_weights_file(tmp_path / name / "backbone.pth"))
    plain_losses, plain = runs["plain"]
    # channels_last: the same computation in another memory layout (float sums in another order)
    assert runs["cl"][0][0] == pytest.approx(plain_losses[0], rel=1e-5)
    assert runs["cl"][0] == pytest.approx(plain_losses, rel=1e-3)
    # the two trained models embed alike (weights agree to ~1e-2: BN biases whose true gradient is 0 get noise)
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    embed = {}
    for name in ("plain", "cl"):
        model = load_backbone("mbf", tmp_path / name / "backbone.pth", embedding_size=32, input_size=32,
                              width=0.125).eval()
        with torch.no_grad():
            embed[name] = torch.nn.functional.normalize(model(x), dim=1)
    assert float((embed["plain"] * embed["cl"]).sum(1).min()) > 0.999
    # bf16: autocast really ran (the first loss differs in the low bits) and training went on
    bf16_losses, bf16 = runs["bf16"]
    assert bf16_losses[0] != plain_losses[0] and bf16_losses[0] == pytest.approx(plain_losses[0], rel=2e-2)
    assert all(np.isfinite(bf16_losses)) and bf16.keys() == plain.keys()
    assert all(v.dtype == plain[k].dtype for k, v in bf16.items())  # weights stay float32
