"""The teacher critic: frozen backbone, loaded or fitted classifier, logits, building from files."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from facekd.distill.teacher import (Teacher, TeacherError, TeacherWeightsMissingError, class_centres,
                                    classifier_top1, load_teacher)
from facekd.models.registry import build_backbone
from facekd.models.weights import make_facekd_checkpoint, save_weights_file

TINY = {"input_size": 32, "width": 0.125, "embedding_size": 16}


def tiny_r18() -> torch.nn.Module:
    return build_backbone("r18", **TINY)


def clustered(num_classes: int = 30, per_class: int = 12, dim: int = 24, noise: float = 0.8,
              seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings that cluster by identity (what a trained teacher gives), with overlap."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(num_classes, dim, generator=g) * 1.5
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    return means[labels] + noise * torch.randn(len(labels), dim, generator=g), labels


def test_teacher_is_frozen_and_stays_in_eval() -> None:
    net = tiny_r18()
    teacher = Teacher(net, "face", classifier=torch.randn(5, 16))
    teacher.train()
    assert not teacher.training and not net.training
    assert all(not p.requires_grad for p in teacher.parameters())
    x = torch.randn(3, 3, 32, 32)
    e = teacher.embed(x)
    assert e.shape == (3, 16) and not e.requires_grad and e.dtype == torch.float32
    assert torch.allclose(e, net.eval()(x))


def test_logits_over_all_centres_and_a_subset() -> None:
    w = torch.randn(7, 16)
    teacher = Teacher(tiny_r18(), "face", classifier=w, scale=32.0)
    e = torch.randn(4, 16)
    full = teacher.logits(e)
    want = 32.0 * torch.nn.functional.normalize(e, dim=1) @ torch.nn.functional.normalize(w, dim=1).t()
    assert torch.allclose(full, want, atol=1e-5)
    idx = torch.tensor([6, 1, 3])
    assert torch.allclose(teacher.logits(e, idx), full[:, idx], atol=1e-6)
    with pytest.raises(ValueError, match=r"class ids in \[0, 7\)"):
        teacher.logits(e, torch.tensor([7]))


def test_no_classifier_says_how_to_get_one() -> None:
    teacher = Teacher(tiny_r18(), "face")
    assert not teacher.has_classifier
    with pytest.raises(TeacherError, match="teacher-head"):
        teacher.logits(torch.randn(2, 16))


def test_fitted_classifier_classifies_training_identities() -> None:
    emb, labels = clustered()
    teacher = Teacher(tiny_r18(), "face", scale=32.0)  # 16-d embeddings: 24-d centres are refused
    with pytest.raises(TeacherError, match="does not fit embeddings of size 16"):
        teacher.fit_classifier(emb, labels)

    class Embeddings24(torch.nn.Module):
        embedding_size = 24

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    teacher = Teacher(Embeddings24(), "face", scale=32.0)
    report = teacher.fit_classifier(emb, labels, num_classes=30)
    assert report["top1_centres"] > 0.9 and report["top1"] == report["top1_centres"]
    assert teacher.num_classes == 30
    assert (teacher.logits(emb).argmax(1) == labels).float().mean().item() == pytest.approx(report["top1"])
    # margin-loss refinement of the classifier alone keeps or improves the fit on harder data
    hard, hard_labels = clustered(noise=1.6, seed=1)
    base = teacher.fit_classifier(hard, hard_labels, 30)
    refined = teacher.fit_classifier(hard, hard_labels, 30, refine_epochs=15, batch_size=60)
    assert refined["top1"] >= base["top1"] and refined["top1"] > 0.9
    assert refined["top1_centres"] == pytest.approx(base["top1"])


def test_class_centres_are_normalised_means_and_flag_empty_classes() -> None:
    emb = torch.tensor([[3.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    centres, empty = class_centres(emb, torch.tensor([0, 0, 2]), 3)
    assert empty == 1
    assert torch.allclose(centres[0], torch.tensor([0.5 ** 0.5, 0.5 ** 0.5]), atol=1e-6)
    assert torch.allclose(centres[2], torch.tensor([0.5 ** 0.5, 0.5 ** 0.5]), atol=1e-6)
    assert centres.norm(dim=1).allclose(torch.ones(3))
    top1 = classifier_top1(torch.eye(2), torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1]]), torch.tensor([0, 1, 1]))
    assert top1 == pytest.approx(2 / 3)
    with pytest.raises(TeacherError, match=r"labels must be in \[0, 3\)"):
        class_centres(emb, torch.tensor([0, 5, 1]), 3)


def test_fit_on_dataset_pass_of_a_real_backbone() -> None:
    """One pass of a (torch) teacher over a labeled synthetic set, then centres + refinement."""
    from facekd.data.datasets import open_dataset

    ds = open_dataset("synthetic:ids=8,per_id=4,size=32")
    teacher = Teacher(tiny_r18(), "face", scale=16.0)
    emb = teacher.embed_dataset(ds, batch_size=16)
    assert emb.shape == (32, 16)
    report = teacher.fit_classifier(emb, ds.labels, ds.num_classes, refine_epochs=30, batch_size=32)
    assert report["num_samples"] == 32 and report["num_classes"] == 8
    # the centre top-1 recomputed by hand: normalised means of unit embeddings, nearest by cosine
    labels = torch.as_tensor(ds.labels)
    unit = emb / emb.norm(dim=1, keepdim=True)
    means = torch.stack([unit[labels == c].mean(0) for c in range(8)])
    means = means / means.norm(dim=1, keepdim=True)
    by_hand = ((emb @ means.T).argmax(1) == labels).float().mean().item()
    assert report["top1_centres"] == pytest.approx(by_hand)
    assert report["top1_centres"] > 0.5  # identities cluster even under an untrained net: far above 1/8
    assert report["top1"] >= report["top1_centres"]
    assert (teacher.logits(emb).argmax(1) == labels).float().mean().item() == pytest.approx(report["top1"])


def test_load_teacher_missing_weights_points_to_sources(tmp_path: Path) -> None:
    with pytest.raises(TeacherWeightsMissingError, match="arcface_torch.*ONNX"):
        load_teacher(None, "r100")
    with pytest.raises(TeacherWeightsMissingError, match="not found"):
        load_teacher(tmp_path / "backbone.pth", "r100")


def test_load_teacher_classifier_sources(tmp_path: Path) -> None:
    net = tiny_r18()
    plain = save_weights_file(net.state_dict(), tmp_path / "backbone.pth")
    teacher = load_teacher(plain, "r18", **TINY)
    assert teacher.kind == "face" and not teacher.has_classifier
    x = torch.full((2, 3, 32, 32), 0.1)
    assert torch.allclose(teacher.embed(x), net.eval()(x))

    centres = torch.randn(9, 16)
    ckpt = save_weights_file(make_facekd_checkpoint("r18", TINY, net, {"weight": centres}, "arcface"),
                             tmp_path / "ck.pt")
    teacher = load_teacher(ckpt)
    assert teacher.num_classes == 9
    assert torch.allclose(teacher.classifier_weight(), torch.nn.functional.normalize(centres, dim=1), atol=1e-6)

    arcface_ckpt = save_weights_file({"epoch": 3, "global_step": 10, "state_dict_backbone": net.state_dict(),
                                      "state_dict_softmax_fc": {"weight": centres}}, tmp_path / "checkpoint_gpu_0.pt")
    from_arcface = load_teacher(arcface_ckpt, "r18", **TINY)
    assert from_arcface.num_classes == 9
    assert torch.allclose(from_arcface.classifier_weight(), teacher.classifier_weight())

    head = teacher.save_classifier(tmp_path / "teacher_head.pth")
    again = load_teacher(plain, "r18", head=head, **TINY)
    assert torch.allclose(again.classifier_weight(), teacher.classifier_weight(), atol=1e-6)

    bad = save_weights_file({"weight": torch.randn(4, 8)}, tmp_path / "bad_head.pth")
    with pytest.raises(TeacherError, match="does not fit"):
        load_teacher(plain, "r18", head=bad, **TINY)


def test_classification_teacher_uses_its_fc(tmp_path: Path) -> None:
    net = build_backbone("resnet20", num_classes=10)
    path = save_weights_file(net.state_dict(), tmp_path / "resnet20.pth")
    teacher = load_teacher(path, "resnet20", num_classes=10)
    assert teacher.kind == "classifier" and teacher.num_classes == 10 and teacher.feature_dim == 64
    x = torch.randn(2, 3, 32, 32)
    out = teacher.features(x)
    assert torch.allclose(teacher.logits(out.pooled), out.logits, atol=1e-5)
    with pytest.raises(TeacherError, match="own weights"):
        load_teacher(path, "resnet20", head=path, num_classes=10)


def test_onnx_teacher_embeds_and_fingerprints_the_file(tmp_path: Path) -> None:
    from facekd.models.onnx_backbone import export_onnx

    net = tiny_r18().eval()
    path = export_onnx(net, tmp_path / "teacher.onnx")
    teacher = load_teacher(path)
    assert teacher.kind == "face" and not teacher.is_torch and not teacher.has_classifier
    x = torch.randn(3, 3, 32, 32)
    assert torch.allclose(teacher.embed(x), net(x), atol=1e-3)
    import hashlib

    assert teacher.fingerprint() == hashlib.sha256(path.read_bytes()).hexdigest()
    assert load_teacher(path).fingerprint() == teacher.fingerprint()  # stable for the same file
    with torch.no_grad():  # one weight changes by a tiny amount: the fingerprint changes
        next(net.parameters()).view(-1)[0] += 1e-3
    changed = load_teacher(export_onnx(net, tmp_path / "changed.onnx"))
    assert changed.fingerprint() != teacher.fingerprint()
    with pytest.raises(TeacherError, match="ONNX"):
        teacher.features(x)


def test_torch_teacher_fingerprint_follows_the_weights_only() -> None:
    net = tiny_r18()
    first = Teacher(net, "face").fingerprint()
    copy = tiny_r18()
    copy.load_state_dict(net.state_dict())
    copy.bn1.num_batches_tracked += 5  # a step counter: does not change outputs
    assert Teacher(copy, "face").fingerprint() == first
    with torch.no_grad():
        copy.conv1.weight.view(-1)[0] += 1e-3
    assert Teacher(copy, "face").fingerprint() != first


def test_cache_is_not_used_online_or_beyond_flips() -> None:
    from facekd.data.transforms import face_train_transform
    from facekd.distill.cache import TeacherCacheSet

    caches = TeacherCacheSet({})
    assert not Teacher(tiny_r18(), online=True).attach_cache(caches)
    teacher = Teacher(tiny_r18())
    assert not teacher.attach_cache(caches, face_train_transform(color_jitter=0.5))
    assert teacher.cache is None
    assert teacher.attach_cache(caches, face_train_transform())


def test_prepare_teacher_caches_and_fits_or_runs_online(tmp_path: Path) -> None:
    from facekd.data.datasets import open_dataset
    from facekd.data.pools import open_unlabeled
    from facekd.data.transforms import face_train_transform
    from facekd.distill.setup import prepare_teacher

    weights = save_weights_file(tiny_r18().state_dict(), tmp_path / "backbone.pth")
    tf = face_train_transform()
    labeled = open_dataset("synthetic:ids=4,per_id=3,size=32", transform=tf)
    pool = open_unlabeled("synthetic:ids=2,per_id=3,size=32", transform=tf)
    from facekd.distill.cache import Collective

    waited = []
    collective = Collective(0, 1, share=lambda obj: obj, barrier=lambda: waited.append(1))
    setup = prepare_teacher(weights, "r18", labeled=labeled, transform=tf, unlabeled=pool,
                            cache_dir=tmp_path / "cache", collective=collective, **TINY)
    assert setup.cached and waited == [1, 1] and setup.teacher.cache is not None  # one barrier per source
    assert sorted(setup.teacher.cache.caches) == [0, 1]
    assert setup.teacher.num_classes == 4 and setup.fit_report["num_samples"] == 24  # both views
    assert setup.fit_report["teacher_sha256"] == setup.teacher.fingerprint()
    head = setup.teacher.save_classifier(tmp_path / "teacher_head.pth")

    online = prepare_teacher(weights, "r18", labeled=labeled, transform=face_train_transform(color_jitter=0.5),
                             cache_dir=tmp_path / "cache2", head=head, **TINY)
    assert not online.cached and online.teacher.cache is None and online.fit_report == {}
    assert not (tmp_path / "cache2").exists()


def test_fitted_classifier_carries_the_teacher_hash_and_refuses_other_weights(tmp_path: Path) -> None:
    from facekd.data.datasets import open_dataset
    from facekd.distill.setup import prepare_teacher
    from facekd.distill.teacher import TeacherMismatchError, classifier_fingerprint
    from facekd.models.weights import load_classifier

    weights = save_weights_file(tiny_r18().state_dict(), tmp_path / "backbone.pth")
    labeled = open_dataset("synthetic:ids=3,per_id=2,size=32")
    setup = prepare_teacher(weights, "r18", labeled=labeled, **TINY)
    head = setup.teacher.save_classifier(tmp_path / "teacher_head.pth")
    assert classifier_fingerprint(head) == setup.teacher.fingerprint()
    assert load_classifier(head).shape == (3, 16)  # still an ordinary classifier file
    again = prepare_teacher(weights, "r18", labeled=labeled, head=head, check_head=True, **TINY)
    assert torch.equal(again.teacher.classifier_weight(), setup.teacher.classifier_weight())

    torch.manual_seed(1)
    other = save_weights_file(tiny_r18().state_dict(), tmp_path / "other.pth")
    with pytest.raises(TeacherMismatchError, match="teacher_head.pth: this teacher classifier was fitted for"):
        prepare_teacher(other, "r18", labeled=labeled, head=head, check_head=True, **TINY)
    prepare_teacher(other, "r18", labeled=labeled, head=head, **TINY)  # an explicit --teacher-head is not checked


def test_teacher_is_placed_on_the_run_device_with_training_precision(tmp_path: Path) -> None:
    from facekd.data.datasets import open_dataset
    from facekd.distill.setup import prepare_teacher

    weights = save_weights_file(tiny_r18().state_dict(), tmp_path / "backbone.pth")
    labeled = open_dataset("synthetic:ids=3,per_id=2,size=32")
    plain = prepare_teacher(weights, "r18", labeled=labeled, device="cpu", **TINY).teacher
    bf16 = prepare_teacher(weights, "r18", labeled=labeled, device="cpu", amp_dtype=torch.bfloat16,
                           channels_last=True, **TINY).teacher
    assert bf16.device.type == "cpu" and bf16.memory_format == torch.channels_last
    assert bf16.backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(4, 3, 32, 32)
    a, b = plain.embed_images(x), bf16.embed_images(x)
    assert a.dtype == b.dtype == torch.float32
    assert not torch.equal(a, b) and torch.allclose(a, b, atol=0.1 * float(a.abs().max()))  # bf16 autocast ran
    assert plain.fingerprint() == bf16.fingerprint()


def test_critic_selects_the_sampled_centres_once_per_sample() -> None:
    from facekd.distill.critic import CosineCritic

    critic = CosineCritic(torch.randn(50, 8), scale=16.0)
    centres = torch.tensor([1, 4, 9, 30])
    x = torch.randn(3, 8)
    first = critic(x, centres)
    selected = critic._selected[3]
    assert critic(torch.randn(5, 8), centres).shape == (5, 4)
    assert critic._selected[3] is selected  # the same sample: its rows are not selected again
    centres[0] = 2  # edited in place: selected again
    expected = torch.nn.functional.linear(torch.nn.functional.normalize(x), critic.weight[centres]) * 16.0
    assert torch.allclose(critic(x, centres), expected, atol=1e-6) and not torch.allclose(first, expected)
    other = torch.tensor([0, 49])
    assert critic(x, other).shape == (3, 2) and critic._selected[0]() is other


def test_saved_face_classifier_rebuilds_the_critic_bit_for_bit(tmp_path: Path) -> None:
    """A resumed run (or another rank) rebuilds the critic from the saved head: the very same bits,
    even for centres that are not unit length (normalising twice can move the last bit)."""
    from facekd.models.weights import load_classifier

    torch.manual_seed(0)
    centres = 3.0 * torch.randn(30, 16)
    teacher = Teacher(tiny_r18(), "face", classifier=centres, scale=32.0)
    head = teacher.save_classifier(tmp_path / "teacher_head.pth")
    again = Teacher(tiny_r18(), "face", classifier=load_classifier(head), scale=32.0)
    assert torch.equal(again.critic.weight, teacher.critic.weight)
    shared = Teacher(tiny_r18(), "face", classifier=teacher.classifier_centres(), scale=32.0)
    assert torch.equal(shared.critic.weight, teacher.critic.weight)
    assert torch.equal(teacher.classifier_centres(), centres)
