"""End-to-end evaluation commands on tiny synthetic data: verify (torch checkpoint, backbone.pth,
ONNX) and identify (.rec image datasets embedded by a model)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from facekd.data.image_codec import encode_image
from facekd.data.recordio import IRHeader, RecordIOWriter, pack_record
from facekd.data.synthetic import synthetic_splits
from facekd.eval.identify import main as identify_main
from facekd.eval.verify import VerificationSet, main as verify_main, verify_model
from facekd.models.registry import build_backbone
from facekd.models.weights import make_facekd_checkpoint, save_weights_file

from _by_hand import accuracy_by_hand, embed_by_hand, identity_ranks_by_hand

OPTIONS = {"input_size": 32, "width": 0.125, "embedding_size": 16}


@pytest.fixture(scope="module")
def splits():
    return synthetic_splits(num_train_ids=1, images_per_id=1, num_val_ids=20, num_pairs=60, num_gallery_ids=12,
                            num_unlabeled_ids=0, size=32, seed=0)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, splits):
    root = tmp_path_factory.mktemp("evalcli")
    torch.manual_seed(0)
    model = build_backbone("r18", **OPTIONS)
    model.train()
    with torch.no_grad():
        model(torch.randn(8, 3, 32, 32))  # non-trivial batch-norm statistics
    model.eval()
    save_weights_file(make_facekd_checkpoint("r18", OPTIONS, model), root / "ckpt.pt")
    torch.save(model.state_dict(), root / "backbone.pth")
    splits.save_pairs(root / "synth.bin")
    return root, model


@pytest.fixture(scope="module")
def hand_accuracy(workdir, splits) -> float:
    return accuracy_by_hand(workdir[1], splits.pair_images, splits.issame)


def _check_report(out, expected_accuracy: float) -> dict:
    report = json.loads((out / "verification.json").read_text())
    metrics = report["sets"]["synth"]
    assert metrics["n_pairs"] == 60
    for key in ("accuracy", "accuracy_std", "threshold", "val_at_far", "auc", "eer", "best_accuracy_single_threshold"):
        assert math.isfinite(metrics[key]), key
    assert metrics["accuracy"] == pytest.approx(expected_accuracy, abs=1e-9)
    assert metrics["best_accuracy_single_threshold"] >= metrics["accuracy"] - 1e-9  # tuned on all pairs at once
    assert (out / "roc.png").stat().st_size > 1000 and (out / "scores.png").stat().st_size > 1000
    return metrics


def test_verify_checkpoint_and_backbone_pth_agree(workdir, hand_accuracy, capsys) -> None:
    root, _ = workdir
    assert verify_main(["--model", str(root / "ckpt.pt"), "--bins", str(root / "synth.bin"),
                        "--out", str(root / "v1")]) == 0
    printed = capsys.readouterr().out
    assert "Accuracy-Flip" in printed and "synth" in printed and "+-" in printed
    a = _check_report(root / "v1", hand_accuracy)
    options = [f"--model-option={k}={v}" for k, v in OPTIONS.items()]
    assert verify_main(["--model", str(root / "backbone.pth"), "--arch", "r18", *options,
                        "--bins", "synth.bin", "--data-dir", str(root), "--out", str(root / "v2")]) == 0
    b = _check_report(root / "v2", hand_accuracy)
    assert a["accuracy"] == b["accuracy"] and a["auc"] == b["auc"]


def test_verify_onnx_matches_torch(workdir, splits, hand_accuracy) -> None:
    onnx_backbone = pytest.importorskip("facekd.models.onnx_backbone")
    root, model = workdir
    path = onnx_backbone.export_onnx(model, root / "model.onnx")
    assert verify_main(["--model", str(path), "--bins", str(root / "synth.bin"), "--out", str(root / "v3")]) == 0
    _check_report(root / "v3", hand_accuracy)
    vs = [VerificationSet("synth", splits.pair_images, splits.issame)]
    torch_res = verify_model(model, vs, show_progress=False)[0]
    onnx_res = verify_model(onnx_backbone.OnnxBackbone(path), vs, show_progress=False)[0]
    np.testing.assert_allclose(onnx_res.distances, torch_res.distances, atol=1e-4)


def test_verify_reports_bad_input(workdir, capsys) -> None:
    root, _ = workdir
    assert verify_main(["--model", str(root / "ckpt.pt"), "--bins", str(root / "missing.bin")]) == 2
    assert "missing.bin" in capsys.readouterr().err
    assert verify_main(["--model", str(root / "backbone.pth"), "--bins", str(root / "synth.bin")]) == 2
    assert "--arch" in capsys.readouterr().err
    (root / "broken.bin").write_bytes(b"not a pickle")
    assert verify_main(["--model", str(root / "ckpt.pt"), "--bins", str(root / "broken.bin")]) == 2
    assert "broken.bin" in capsys.readouterr().err


def _write_rec(path, images: np.ndarray, labels: np.ndarray) -> None:
    with RecordIOWriter(path) as writer:
        for key, (img, label) in enumerate(zip(images, labels)):
            writer.write(key, pack_record(IRHeader(0, float(label), key, 0), encode_image(img, ".png")))


def test_identify_with_rec_datasets(workdir, splits, tmp_path) -> None:
    root, _ = workdir
    _write_rec(tmp_path / "gallery.rec", splits.gallery_images, splits.gallery_labels)
    probe_labels = np.where(splits.probe_labels < 0, 1000 + np.arange(splits.probe_labels.size),
                            splits.probe_labels)  # non-mated: identities absent from the gallery
    _write_rec(tmp_path / "probes.rec", splits.probe_images, probe_labels)
    rc = identify_main(["--model", str(root / "ckpt.pt"), "--gallery", str(tmp_path / "gallery.rec"),
                        "--probes", str(tmp_path / "probes.rec"), "--index", "flat", "--out", str(tmp_path / "out")])
    assert rc == 0
    report = json.loads((tmp_path / "out" / "identification.json").read_text())
    assert report["gallery_size"] == 12 and report["n_mated"] == 24 and report["n_nonmated"] == 6
    # CMC recomputed by hand: rank of the true identity among gallery identities ordered by best cosine
    _, model = workdir
    gallery, probes = embed_by_hand(model, splits.gallery_images), embed_by_hand(model, splits.probe_images)
    ranks = identity_ranks_by_hand(probes, probe_labels, gallery, splits.gallery_labels)
    assert len(ranks) == 24
    for k in (1, 5, 10):
        assert report["cmc"][f"rank{k}"] == pytest.approx((ranks <= k).mean(), abs=1e-9), k
    assert report["recall_at_1"] == 1.0 and report["recall_queries"] == 30  # exact search over every probe


def test_identify_image_source_needs_a_model(tmp_path, splits, capsys) -> None:
    _write_rec(tmp_path / "g.rec", splits.gallery_images[:2], splits.gallery_labels[:2])
    rc = identify_main(["--gallery", str(tmp_path / "g.rec"), "--probes", str(tmp_path / "g.rec")])
    assert rc == 2 and "--model" in capsys.readouterr().err


@pytest.mark.parametrize("entry", [verify_main, identify_main])
def test_help_lists_every_option(entry, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        entry(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "--model" in text and "default" in text


def _write_folder(root, images: np.ndarray, names: list[str]) -> None:
    import cv2
    for k, (img, name) in enumerate(zip(images, names)):
        (root / name).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / name / f"{k}.png"), img[:, :, ::-1])


def test_identify_with_image_folders_matches_identities_by_name(workdir, splits, tmp_path) -> None:
    root, _ = workdir
    gallery_names = [f"person_{label:02d}" for label in splits.gallery_labels]
    # probe folders: the mated ones carry the gallery names, non-mated ones sort first ("a_...") so
    # that the folders' own label numbers differ from the gallery's
    probe_names = [f"person_{label:02d}" if label >= 0 else f"a_stranger_{k}"
                   for k, label in enumerate(splits.probe_labels)]
    _write_folder(tmp_path / "gallery", splits.gallery_images, gallery_names)
    _write_folder(tmp_path / "probes", splits.probe_images, probe_names)
    rc = identify_main(["--model", str(root / "ckpt.pt"), "--gallery", str(tmp_path / "gallery"),
                        "--probes", str(tmp_path / "probes"), "--index", "flat", "--save-index", str(tmp_path / "idx"),
                        "--out", str(tmp_path / "out")])
    assert rc == 0
    report = json.loads((tmp_path / "out" / "identification.json").read_text())
    assert report["n_mated"] == 24 and report["n_nonmated"] == 6
    rc = identify_main(["--model", str(root / "ckpt.pt"), "--load-index", str(tmp_path / "idx"),
                        "--probes", str(tmp_path / "probes"), "--out", str(tmp_path / "out2")])
    again = json.loads((tmp_path / "out2" / "identification.json").read_text())
    assert rc == 0 and again["n_mated"] == 24 and again["cmc"] == report["cmc"]


def test_verify_explains_small_folds_below_chance_and_nan(workdir, capsys) -> None:
    from facekd.eval.verification import evaluate
    from facekd.eval.verify import MIN_PAIRS_PER_FOLD, metric_notes

    root, _ = workdir
    assert verify_main(["--model", str(root / "ckpt.pt"), "--bins", str(root / "synth.bin"),
                        "--out", str(root / "notes")]) == 0
    out = capsys.readouterr().out
    assert "note [synth]: 60 pairs in 10 folds is 6 pairs per fold (fewer than 50)" in out
    report = json.loads((root / "notes" / "verification.json").read_text())
    assert any("6 pairs per fold" in n for n in report["sets"]["synth"]["notes"])

    rng = np.random.default_rng(0)
    emb = rng.standard_normal((2000, 16))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    blocked = np.r_[np.ones(500, bool), np.zeros(500, bool)]  # genuine first, impostors last: 5 folds each
    metrics = evaluate(emb, blocked, nfolds=10)
    assert math.isnan(metrics["val_at_far"])
    notes = metric_notes(metrics, blocked, 10)
    nan_note = next(n for n in notes if n.startswith("VAL@FAR=1e-3 is nan"))
    assert "test fold(s) 6, 7, 8, 9, 10 of 10 hold no genuine pair" in nan_note
    assert any("hold no impostor pair" in n and "1, 2, 3, 4, 5" in n for n in notes)
    assert not any("pairs per fold" in n for n in notes)  # 100 per fold is enough

    interleaved = np.tile([True, False], 500)  # balanced in every fold: well-defined and quiet
    quiet = evaluate(emb, interleaved)
    assert not math.isnan(quiet["val_at_far"])
    assert [n for n in metric_notes(quiet, interleaved, 10) if " is nan" in n or "hold no" in n] == []
    low = dict(quiet, accuracy=0.175)
    assert any(n.startswith("Accuracy-Flip 0.175 is below chance (0.500") for n in metric_notes(low, interleaved, 10))
    assert MIN_PAIRS_PER_FOLD == 50


def test_verify_mismatch_hint_names_verify_flags(workdir, capsys) -> None:
    # backbone.pth is r18 at width 0.125, 16-d, 32 px; given without width/embedding options
    root, _ = workdir
    assert verify_main(["--model", str(root / "backbone.pth"), "--arch", "r18", "--model-option", "input_size=32",
                        "--bins", str(root / "synth.bin"), "--out", str(root / "hint")]) == 2
    err = capsys.readouterr().err
    hint = [line for line in err.splitlines() if "model (--model): try" in line]
    assert len(hint) == 1 and "--model-option width=0.125" in hint[0]
    assert "--model-option embedding_size=16" in hint[0] and "--teacher" not in err and "Traceback" not in err
    # right width and size but the wrong input side: the fc layer says 32 px
    assert verify_main(["--model", str(root / "backbone.pth"), "--arch", "r18", "--model-option", "width=0.125",
                        "--model-option", "embedding_size=16", "--model-option", "input_size=64",
                        "--bins", str(root / "synth.bin"), "--out", str(root / "hint")]) == 2
    assert "--model-option input_size=32" in capsys.readouterr().err


def test_verify_warns_that_arch_is_ignored_for_onnx(workdir, caplog) -> None:
    import logging

    onnx_backbone = pytest.importorskip("facekd.models.onnx_backbone")
    root, model = workdir
    path = onnx_backbone.export_onnx(model, root / "arch.onnx")
    logger = logging.getLogger("facekd")
    logger.addHandler(caplog.handler)
    try:
        assert verify_main(["--model", str(path), "--arch", "r100", "--bins", str(root / "synth.bin"),
                            "--out", str(root / "v_onnx_arch")]) == 0
    finally:
        logger.removeHandler(caplog.handler)
    assert any("--arch r100" in r.getMessage() and "ignored" in r.getMessage() and r.levelno == logging.WARNING
               for r in caplog.records)


def test_training_validation_sets_explain_their_layout_once(caplog) -> None:
    """``--val-bins`` sets in train/distill: the layout notes come before training, not a bare nan."""
    from facekd.pipelines.common import ValidationSet, warn_fold_layout

    blocked = np.r_[np.ones(300, bool), np.zeros(300, bool)]
    images = np.zeros((1200, 4, 4, 3), np.uint8)
    with caplog.at_level("WARNING"):
        warn_fold_layout([ValidationSet("blocked", images, blocked),
                          ValidationSet("fine", images, np.tile([True, False], 300))])
    messages = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(messages) == 2 and all(m.startswith("validation set blocked: ") for m in messages)
    assert "test fold(s) 6, 7, 8, 9, 10 of 10 hold no genuine pair" in messages[0]
    assert "test fold(s) 1, 2, 3, 4, 5 of 10 hold no impostor pair" in messages[1]
