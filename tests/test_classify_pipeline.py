"""``python -m facekd.pipelines.classify`` end to end on a fake CIFAR-100 folder written here: a teacher
is trained, then distilled with SRD and an open-set unlabeled pool; CE covers labeled rows only; SRD
equals a hand computation; RepDistiller checkpoints teach; bad setups fail clearly."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from facekd.data.batch import Batch
from facekd.engine.config import parse_training_config
from facekd.engine.distributed import DistInfo
from facekd.engine.metrics_log import read_metrics
from facekd.models.weights import load_backbone
from facekd.pipelines import classify
from facekd.pipelines.classify import ClassifyConfig, ClassifyTask, topk_correct

TINY = ["--batch-size", "8", "--workers", "0", "--no-tensorboard", "--log-every", "1", "--eval-batch-size", "16"]
CPU = DistInfo(0, 1, 0, torch.device("cpu"))


@pytest.fixture(scope="module")
def cifar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cifar-100-python folder (protocol-2 pickles) of 4 classes: 24 training and 8 test images,
    each class a colour, so a few steps already learn something."""
    root = tmp_path_factory.mktemp("cifar")
    folder = root / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(0)
    classes = [3, 17, 42, 99]
    colours = np.array([[220, 40, 40], [40, 220, 40], [40, 40, 220], [220, 220, 40]])
    for split, n in (("train", 24), ("test", 8)):
        labels = [classes[i % 4] for i in range(n)]
        images = np.clip(colours[np.arange(n) % 4][:, None, None, :] + rng.normal(0, 30, (n, 32, 32, 3)), 0, 255)
        rows = images.astype(np.uint8).transpose(0, 3, 1, 2).reshape(n, -1)
        entry = {"data": rows, "fine_labels": labels, "coarse_labels": [c // 5 for c in labels],
                 "filenames": [f"{i}.png" for i in range(n)], "batch_label": split}
        (folder / split).write_bytes(pickle.dumps(entry, protocol=2))
    (folder / "meta").write_bytes(pickle.dumps({"fine_label_names": [f"c{i}" for i in range(100)]}, protocol=2))
    return root


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An open-set unlabeled pool: a Places365-like tree of 40x40 PNGs of no CIFAR class."""
    root = tmp_path_factory.mktemp("pool")
    rng = np.random.default_rng(1)
    for k in range(10):
        path = root / ("a" if k % 2 else "b") / f"{k}.png"
        path.parent.mkdir(exist_ok=True)
        assert cv2.imwrite(str(path), rng.integers(0, 256, (40, 40, 3), dtype=np.uint8))
    return root


@pytest.fixture(scope="module")
def teacher(cifar: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("teacher")
    assert classify.main([*TINY, "--mode", "teacher", "--model", "resnet20", "--data", f"cifar100:{cifar}",
                          "--epochs", "2", "--lr", "0.02", "--out", str(out)]) == 0
    return out


def test_teacher_run_logs_topk_each_epoch(teacher: Path, cifar: Path) -> None:
    records = read_metrics(teacher)
    evals = [r for r in records if "eval/test/top1" in r]
    assert [r["step"] for r in evals] == [3, 6]  # 24 images / batch 8 = 3 steps per epoch
    assert all(0.0 <= r["eval/test/top1"] <= r["eval/test/top5"] <= 100.0 for r in evals)
    assert {k for r in records for k in r if k.startswith("loss/")} == {"loss/ce"}
    results = json.loads((teacher / "results.json").read_text())
    assert results["reported"] == "last" and results["last"]["top1"] == evals[-1]["eval/test/top1"]
    assert results["best"]["top1"] == max(r["eval/test/top1"] for r in evals)
    model = load_backbone("resnet20", teacher / "backbone.pth", num_classes=100)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 100)
    # the last logged top-k is that of the saved model, scored by hand
    assert {k: evals[-1][f"eval/test/{k}"] for k in ("top1", "top5")} == pytest.approx(_topk_by_hand(model, cifar))


def test_srd_distillation_with_open_set_pool(cifar: Path, pool: Path, teacher: Path, tmp_path: Path) -> None:
    out = tmp_path / "srd"
    args = [*TINY, "--mode", "distill", "--model", "resnet8x4", "--teacher", "resnet20",
            "--teacher-weights", str(teacher / "backbone.pth"), "--data", f"cifar100:{cifar}",
            "--unlabeled", f"folder:{pool}", "--max-steps", "4", "--out", str(out)]
    assert classify.main(args) == 0
    records = read_metrics(out)
    terms = {k for r in records for k in r if k.startswith("loss/")}
    assert terms == {"loss/ce", "loss/srd/logits", "loss/srd/feat", "loss/srd/head"}
    assert all(np.isfinite(r[k]) for r in records for k in terms if k in r)
    results = json.loads((out / "results.json").read_text())
    teacher_results = json.loads((teacher / "results.json").read_text())
    assert results["teacher"]["top1"] == pytest.approx(teacher_results["last"]["top1"])
    model = load_backbone("resnet8x4", out / "backbone.pth", num_classes=100)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 100)
    assert not any(k.startswith(("distill.", "teacher.")) for k in torch.load(out / "backbone.pth",
                                                                               weights_only=True))


def _task(teacher: Path, cifar: Path, pool: Path | None, *extra: str) -> ClassifyTask:
    argv = ["--mode", "distill", "--model", "resnet20", "--teacher", "resnet20", "--teacher-weights",
            str(teacher / "backbone.pth"), "--data", f"cifar100:{cifar}", "--workers", "0", "--batch-size", "4",
            "--no-eval-teacher", *extra]
    if pool is not None:
        argv += ["--unlabeled", f"folder:{pool}"]
    cfg, _ = parse_training_config(ClassifyConfig, argv)
    return ClassifyTask(cfg, CPU)


def _hand_srd(student_map: torch.Tensor, conv: torch.nn.Conv2d, bn: torch.nn.BatchNorm2d,
              teacher_fc: torch.nn.Linear) -> tuple[torch.Tensor, torch.Tensor]:
    """x_hat = GAP(ReLU(BN_batchstats(W * F_s))) and z_hat = W_t x_hat + b_t, written out by hand."""
    y = torch.einsum("nchw,oc->nohw", student_map, conv.weight[:, :, 0, 0])
    mean = y.mean(dim=(0, 2, 3), keepdim=True)
    var = y.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
    y = (y - mean) / torch.sqrt(var + bn.eps) * bn.weight.view(1, -1, 1, 1) + bn.bias.view(1, -1, 1, 1)
    x_hat = y.clamp_min(0).mean(dim=(2, 3))
    return x_hat, x_hat @ teacher_fc.weight.t() + teacher_fc.bias


def test_ce_on_labeled_rows_only_and_srd_equals_hand_computation(cifar: Path, pool: Path, teacher: Path) -> None:
    task = _task(teacher, cifar, pool, "--labeled-per-class", "2", "--unlabeled-ratio", "1.0")
    assert len(task.dataset) == 8 and task.num_classes == 100  # 2 of each of the 4 classes present
    batch = next(iter(task.loader))
    assert batch.labeled.tolist() == [True] * 4 + [False] * 4 and (batch.labels[4:] == -1).all()
    modules = task.modules()
    modules["backbone"].train()
    terms = task.compute_losses(batch, modules)
    assert set(terms) == {"ce", "srd/logits", "srd/feat", "srd/head"}

    out = modules["backbone"](batch.images, return_features=True)
    assert torch.allclose(terms["ce"], F.cross_entropy(out.logits[:4], batch.labels[:4]), atol=1e-6)
    connector = modules["distill"].losses["srd"].connector
    teacher_model = task.teacher.backbone
    with torch.no_grad():
        t_out = teacher_model(batch.images, return_features=True)
    x_hat, z_hat = _hand_srd(out.feature_map, connector.conv, connector.bn, teacher_model.fc)
    # all 8 rows, the 4 unlabeled ones included, are distilled (default mode=kl, T=4)
    kl = F.kl_div(F.log_softmax(z_hat / 4, 1), F.softmax(t_out.logits / 4, 1), reduction="batchmean") * 16
    assert torch.allclose(terms["srd/logits"], kl, rtol=1e-4, atol=1e-6)
    assert torch.allclose(terms["srd/feat"], ((x_hat - t_out.feature_map.mean(dim=(2, 3))) ** 2).mean(),
                          rtol=1e-4, atol=1e-6)
    # the head term: the student's own logits learn the teacher's (KL, T=4) on all 8 rows too
    head = F.kl_div(F.log_softmax(out.logits / 4, 1), F.softmax(t_out.logits / 4, 1), reduction="batchmean") * 16
    assert torch.allclose(terms["srd/head"], head, rtol=1e-4, atol=1e-6)
    # the labels of the unlabeled rows are never read: changing them changes nothing
    relabeled = Batch(batch.images, batch.labels.clone(), batch.labeled, batch.index, batch.source, batch.flipped)
    relabeled.labels[4:] = 7
    assert torch.allclose(task.compute_losses(relabeled, modules)["ce"], terms["ce"], atol=1e-6)
    # gradients reach the student and the connector through the frozen (not detached) teacher fc
    sum(terms.values()).backward()
    assert teacher_model.fc.weight.grad is None and not teacher_model.fc.weight.requires_grad
    assert connector.conv.weight.grad is not None and connector.conv.weight.grad.abs().sum() > 0
    assert modules["backbone"].conv1.weight.grad.abs().sum() > 0


def test_srd_logit_term_alone_trains_student_and_connector_through_the_frozen_fc(cifar: Path, pool: Path,
                                                                               teacher: Path) -> None:
    """Backward on the cross-network logit term only: its gradient equals that of the hand formula,
    reaches the connector and the student through the teacher's fc, and never the fc itself."""
    task = _task(teacher, cifar, pool, "--labeled-per-class", "2", "--unlabeled-ratio", "1.0",
                 "--loss-option", "srd.mode=mse")
    batch = next(iter(task.loader))
    modules = task.modules()
    modules["backbone"].train()
    connector = modules["distill"].losses["srd"].connector
    teacher_fc = task.teacher.backbone.fc
    fc_before = teacher_fc.weight.detach().clone()
    logits_term = task.compute_losses(batch, modules)["srd/logits"]
    logits_term.backward()
    got = connector.conv.weight.grad.clone()
    assert teacher_fc.weight.grad is None and teacher_fc.bias.grad is None and not teacher_fc.weight.requires_grad
    assert got.abs().sum() > 0 and modules["backbone"].conv1.weight.grad.abs().sum() > 0
    # the same gradient from the formula written out: d/dW_conv of mean((W_t GAP(ReLU(BN(W F_s))) + b_t - z_t)^2)
    with torch.no_grad():
        z_t = task.teacher.backbone(batch.images, return_features=True).logits
        f_s = modules["backbone"](batch.images, return_features=True).feature_map
    w = connector.conv.weight.detach().clone().requires_grad_(True)
    conv = torch.nn.Conv2d(w.shape[1], w.shape[0], 1, bias=False)
    conv.weight = torch.nn.Parameter(w)
    _, z_hat = _hand_srd(f_s, conv, connector.bn, teacher_fc)
    (expected,) = torch.autograd.grad(((z_hat - z_t) ** 2).mean(), conv.weight)
    torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-7)
    # one SGD step on the term moves the connector, never the teacher's classifier
    torch.optim.SGD([p for p in connector.parameters()], lr=0.1).step()
    assert torch.equal(teacher_fc.weight, fc_before)


def _topk_by_hand(model: torch.nn.Module, cifar: Path) -> dict[str, float]:
    """top-1/top-5 (%) of ``model`` on the fixture's test pickle: CIFAR-100 mean/std normalisation written out."""
    entry = pickle.loads((cifar / "cifar-100-python" / "test").read_bytes())
    images = torch.from_numpy(np.asarray(entry["data"]).reshape(-1, 3, 32, 32)).float() / 255
    mean, std = torch.tensor([0.5071, 0.4867, 0.4408]), torch.tensor([0.2675, 0.2565, 0.2761])
    x = (images - mean[:, None, None]) / std[:, None, None]
    labels = torch.tensor(entry["fine_labels"])
    with torch.no_grad():
        top5 = model.eval()(x).topk(5, dim=1).indices
    return {"top1": 100.0 * float((top5[:, 0] == labels).float().mean()),
            "top5": 100.0 * float((top5 == labels[:, None]).any(1).float().mean())}


def test_repdistiller_checkpoint_teaches(cifar: Path, teacher: Path, tmp_path: Path) -> None:
    # the teacher trained above, saved the way RepDistiller saves its models
    model = load_backbone("resnet20", teacher / "backbone.pth", num_classes=100).eval()
    state = {"epoch": 240, "best_acc": torch.tensor(71.2), "model": model.state_dict(),
             "optimizer": torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9).state_dict()}
    path = tmp_path / "resnet20_best.pth"
    torch.save(state, path)
    out = tmp_path / "kd"
    assert classify.main([*TINY, "--mode", "distill", "--model", "resnet20", "--teacher", "resnet20",
                          "--teacher-weights", str(path), "--data", f"cifar100:{cifar}", "--loss", "kd:0.9",
                          "--label-weight", "0.1", "--max-steps", "1", "--out", str(out)]) == 0
    assert {k for r in read_metrics(out) for k in r if k.startswith("loss/")} == {"loss/ce", "loss/kd/kl"}
    # the teacher scored in the run is exactly the saved model, scored by hand
    expected = _topk_by_hand(model, cifar)
    assert json.loads((out / "results.json").read_text())["teacher"] == pytest.approx(expected)
    assert expected["top1"] >= 25.0  # a trained teacher on colour-coded classes: far above 1 in 100


def test_topk_counts() -> None:
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.05, 0.15], [0.2, 0.3, 0.5]])
    assert topk_correct(logits, torch.tensor([1, 2, 0]), (1, 2, 5)) == {1: 1, 2: 2, 5: 3}


def test_setup_errors_are_clear(cifar: Path, teacher: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = ["--out", str(tmp_path / "x"), *TINY, "--max-steps", "1"]
    assert classify.main(out) == 2
    assert "--data" in capsys.readouterr().err
    assert classify.main([*out, "--data", f"cifar100:{tmp_path / 'none'}"]) == 2
    assert "https://www.cs.toronto.edu/~kriz/cifar.html" in capsys.readouterr().err
    assert classify.main([*out, "--data", "imagenet:/x"]) == 2
    assert "unknown classification data" in capsys.readouterr().err
    assert classify.main([*out, "--data", f"cifar100:{cifar}", "--mode", "distill"]) == 2
    assert "--teacher-weights" in capsys.readouterr().err
    assert classify.main([*out, "--data", f"cifar100:{cifar}", "--unlabeled", "digits"]) == 2
    assert "only apply to --mode distill" in capsys.readouterr().err
    assert classify.main([*out, "--data", f"cifar100:{cifar}", "--model", "mbf"]) == 2
    assert "face backbone" in capsys.readouterr().err
    assert classify.main([*out, "--data", f"cifar100:{cifar}", "--mode", "distill", "--teacher", "resnet56",
                          "--teacher-weights", str(teacher / "backbone.pth")]) == 2
    assert "does not fit architecture 'resnet56'" in capsys.readouterr().err
    assert classify.main([*out, "--data", f"cifar100:{cifar}", "--mode", "distill", "--teacher", "resnet20",
                          "--teacher-weights", str(teacher / "backbone.pth"), "--loss", "fitnet"]) == 2
    assert "unknown distillation loss 'fitnet' for classifier students" in capsys.readouterr().err


@pytest.mark.parametrize("preset, pair", [("cifar100_teacher", (None, "resnet32x4")),
                                          ("cifar100_resnet32x4_resnet8x4", ("resnet32x4", "resnet8x4")),
                                          ("cifar100_wrn_40_2_wrn_40_1", ("wrn_40_2", "wrn_40_1")),
                                          ("cifar100_wrn_40_2_wrn_16_2", ("wrn_40_2", "wrn_16_2")),
                                          ("cifar100_openset", ("resnet32x4", "resnet8x4"))])
def test_presets_hold_the_cifar100_recipe(preset: str, pair: tuple[str | None, str]) -> None:
    cfg, _ = parse_training_config(ClassifyConfig, ["--config", preset])
    assert (cfg.teacher, cfg.model) == pair
    assert (cfg.batch_size, cfg.epochs, cfg.lr, cfg.momentum, cfg.weight_decay) == (64, 240, 0.05, 0.9, 5e-4)
    assert (cfg.schedule, cfg.lr_milestones, cfg.lr_gamma, cfg.input_size) == ("step", [150, 180, 210], 0.1, 32)
    assert cfg.mode == ("teacher" if pair[0] is None else "distill")
    if pair[0] is not None:
        assert (cfg.loss, cfg.label_weight, cfg.unlabeled_ratio) == ("srd", 1.0, 1.0)


def test_binary_classifier_two_stages_with_init_model(cifar: Path, teacher: Path, tmp_path: Path) -> None:
    """Stage 1 (binary activations) then stage 2 (binary weights too) started from stage 1's weights."""
    from facekd.models.weights import load_weights_file

    common = [*TINY, "--mode", "distill", "--model", "resnet20_bin", "--teacher-weights", str(teacher / "backbone.pth"),
              "--teacher", "resnet20", "--data", f"cifar100:{cifar}", "--loss", "srd", "--max-steps", "2",
              "--eval-epochs", "0", "--no-eval-teacher"]
    one, two = tmp_path / "stage1", tmp_path / "stage2"
    assert classify.main([*common, "--model-option", "stage=1", "--out", str(one)]) == 0
    assert classify.main([*common, "--model-option", "stage=2", "--init-model", str(one / "backbone.pth"),
                          "--lr", "1e-30", "--weight-decay", "0", "--momentum", "0", "--out", str(two)]) == 0
    a, b = load_weights_file(one / "backbone.pth"), load_weights_file(two / "backbone.pth")
    assert a.keys() == b.keys()
    assert all(torch.allclose(a[k], b[k], rtol=1e-6, atol=1e-20) for k in a if "running" not in k and "num_batches" not in k)


def test_classify_distillation_under_torchrun_matches_one_process(cifar: Path, teacher: Path, tmp_path: Path) -> None:
    """README: every training pipeline runs under torchrun unchanged. 2 gloo processes x 12 images
    train the weights of one process x 24 (one global batch per epoch, no augmentation, frozen BN)."""
    import os
    import subprocess
    import sys

    from _asserts import assert_states_close
    from facekd.models.weights import load_weights_file

    common = ["--mode", "distill", "--model", "resnet20", "--teacher", "resnet20", "--teacher-weights",
              str(teacher / "backbone.pth"), "--data", f"cifar100:{cifar}", "--loss", "srd", "--workers", "0",
              "--no-tensorboard", "--flip", "0", "--crop-padding", "0", "--bn-mode", "frozen", "--max-steps", "2",
              "--lr", "0.05", "--no-eval-teacher", "--device", "cpu", "--log-every", "1"]
    assert classify.main([*common, "--batch-size", "24", "--out", str(tmp_path / "single")]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FACEKD_NO_PROGRESS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "facekd.pipelines.classify", *common, "--batch-size", "12",
                           "--out", str(tmp_path / "ddp")], env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "distributed: 2 processes, backend gloo" in proc.stderr
    single, ddp = (load_weights_file(tmp_path / run / "backbone.pth") for run in ("single", "ddp"))
    assert_states_close(ddp, single)
    losses = [r["loss/srd/logits"] for r in read_metrics(tmp_path / "ddp") if "loss/srd/logits" in r]
    assert len(losses) == 2 and losses[1] != losses[0]  # the second step saw updated weights
    assert losses == pytest.approx([r["loss/srd/logits"] for r in read_metrics(tmp_path / "single")
                                    if "loss/srd/logits" in r], rel=1e-4)
