"""``python -m facekd.pipelines.distill`` end to end on tiny synthetic identities: a teacher trained
here is distilled into a student with SRD, with and without an unlabeled pool; outputs load; the
teacher classifier is fitted and reused on resume; the cache is built once; bad setups fail clearly."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from facekd.data.datasets import open_dataset
from facekd.engine.metrics_log import read_metrics
from facekd.models.registry import build_backbone
from facekd.models.weights import load_backbone, load_classifier, load_weights_file
from facekd.pipelines import distill as distill_pipeline
from facekd.pipelines import train as train_pipeline
from facekd.pipelines.distill import DistillConfig, DistillTask, sample_critic_centres

DATA = "synthetic:ids=10,per_id=6,size=32"
POOL = "synthetic:ids=6,per_id=4,size=32"
STILL = ("--lr", "1e-30", "--weight-decay", "0", "--momentum", "0")
COMMON = ["--input-size", "32", "--batch-size", "12", "--workers", "0", "--no-tensorboard", "--val-pairs", "100",
          "--log-every", "2"]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny teacher trained for a few steps (a plain backbone.pth, no classifier inside)."""
    out = tmp_path_factory.mktemp("teacher")
    assert train_pipeline.main([*COMMON, "--backbone", "r18", "--width", "0.125", "--embedding-size", "32",
                                "--scale", "16", "--max-steps", "12", "--set", f"data={DATA}",
                                "--out", str(out)]) == 0
    return out / "backbone.pth"


def _student_args(teacher: Path, out: Path, *extra: str) -> list[str]:
    return [*COMMON, "--teacher", "r18", "--teacher-weights", str(teacher), "--teacher-width", "0.125",
            "--teacher-embedding-size", "32", "--teacher-scale", "16", "--student", "mbf", "--width", "0.125",
            "--embedding-size", "16", "--scale", "16", "--set", f"data={DATA}", "--out", str(out), *extra]


def test_srd_with_unlabeled_pool_writes_outputs_and_resumes(teacher: Path, tmp_path: Path) -> None:
    out = tmp_path / "srd"
    args = _student_args(teacher, out, "--unlabeled", POOL, "--max-steps", "6", "--ckpt-every", "3",
                         "--export-onnx")
    assert distill_pipeline.main(args) == 0
    for name in ("backbone.pth", "head.pth", "teacher_head.pth", "teacher_fit.json", "model.onnx",
                 "config.yaml", "metrics.jsonl"):
        assert (out / name).is_file(), name
    manifests = sorted(p.parent.name for p in (out / "teacher_cache").rglob("manifest.json"))
    assert len(manifests) == 2  # labeled set and unlabeled pool
    records = read_metrics(out)
    terms = {k for r in records for k in r if k.startswith("loss/")}
    assert {"loss/arcface", "loss/srd/logits", "loss/srd/feat"} <= terms
    assert all(torch.isfinite(torch.tensor(r[k])) for r in records for k in terms if k in r)
    assert any(k.startswith("eval/synthetic/accuracy") for r in records for k in r)
    # the student's backbone.pth is a plain state dict that loads strictly into the named model
    state = load_weights_file(out / "backbone.pth")
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    model = load_backbone("mbf", out / "backbone.pth", width=0.125, embedding_size=16, input_size=32)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 16)
    fit = json.loads((out / "teacher_fit.json").read_text())
    head = load_classifier(out / "teacher_head.pth")
    assert fit["num_classes"] == 10 and head.shape == (10, 32)
    # the fit's top-1 recomputed by hand: the teacher's embeddings of every image and its flip
    # (cached as float16 in the run, so a row or two may differ) scored by the saved classifier
    net = load_backbone("r18", teacher, width=0.125, embedding_size=32, input_size=32).eval()
    ds = open_dataset(DATA)
    images = torch.stack([torch.from_numpy(ds.read(i)[0]) for i in range(len(ds))]).permute(0, 3, 1, 2)
    x = (images.float() / 255 - 0.5) / 0.5
    with torch.no_grad():
        emb = torch.cat([net(x), net(torch.flip(x, dims=[3]))])
    labels = torch.as_tensor(ds.labels).repeat(2)
    by_hand = ((emb @ head.T.float()).argmax(1) == labels).float().mean().item()
    assert fit["top1"] == pytest.approx(by_hand, abs=2 / len(labels)) and by_hand > 0.5  # chance: 0.1

    # extend the run: the fitted classifier and the caches are reused, training continues at step 6
    stamp = {p: p.stat().st_mtime_ns for p in (out / "teacher_cache").rglob("*.f16")}
    assert distill_pipeline.main(["--resume", str(out), "--max-steps", "8"]) == 0
    assert {p: p.stat().st_mtime_ns for p in (out / "teacher_cache").rglob("*.f16")} == stamp
    steps = [r["step"] for r in read_metrics(out) if "loss/srd/logits" in r]
    assert steps == sorted(set(steps)) and steps[-1] == 8


def test_kd_and_cosine_pure_distillation(teacher: Path, tmp_path: Path) -> None:
    out = tmp_path / "kd"
    assert distill_pipeline.main(_student_args(teacher, out, "--loss", "kd:1.0,cosine:0.5", "--max-steps", "3",
                                               "--val-pairs", "0")) == 0
    terms = {k for r in read_metrics(out) for k in r if k.startswith("loss/")}
    assert terms == {"loss/kd/kl", "loss/cosine/cos", "loss/arcface"}
    # no labels used at all: no student head, the critic's own logits for kd
    out2 = tmp_path / "pure"
    assert distill_pipeline.main(_student_args(teacher, out2, "--label-weight", "0", "--loss", "srd",
                                               "--loss-option", "srd.mode=kl", "--online-teacher",
                                               "--max-steps", "3", "--val-pairs", "0")) == 0
    assert not (out2 / "head.pth").exists() and not (out2 / "teacher_cache").exists()
    terms = {k for r in read_metrics(out2) for k in r if k.startswith("loss/")}
    assert "loss/arcface" not in terms and "loss/srd/logits" in terms


def test_init_student_and_student_options(teacher: Path, tmp_path: Path) -> None:
    first = tmp_path / "first"  # gives a teacher cache and a fitted teacher classifier to reuse
    assert distill_pipeline.main(_student_args(teacher, first, "--max-steps", "1", "--val-pairs", "0",
                                               *STILL)) == 0
    # initial weights no random draw can give: the student's own init shifted by a fixed pattern
    torch.manual_seed(123)
    init = build_backbone("mbf", width=0.125, embedding_size=16, input_size=32).state_dict()
    init = {k: v + 0.25 * torch.randn_like(v) if v.is_floating_point() else v for k, v in init.items()}
    torch.save(init, tmp_path / "init.pth")
    second = tmp_path / "second"
    assert distill_pipeline.main(_student_args(teacher, second, "--max-steps", "1", "--val-pairs", "0", *STILL,
                                               "--init-student", str(tmp_path / "init.pth"),
                                               "--cache-dir", str(first / "teacher_cache"),
                                               "--teacher-head", str(first / "teacher_head.pth"))) == 0
    weights = [k for k in init if "running" not in k and "num_batches" not in k]
    b = load_weights_file(second / "backbone.pth")
    # (almost) no update: only BatchNorm running statistics move, the weights are exactly the given ones
    assert all(torch.allclose(init[k], b[k], rtol=1e-6, atol=1e-20) for k in weights)
    a = load_weights_file(first / "backbone.pth")  # the same run without --init-student is far from them
    assert all(not torch.allclose(init[k], a[k], rtol=1e-2, atol=1e-3) for k in weights)
    assert not (second / "teacher_head.pth").exists()  # the classifier was given, not fitted


def test_setup_errors_are_clear(teacher: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert distill_pipeline.main([*COMMON, "--teacher", "r100", "--data", DATA, "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "--teacher-weights" in err and "backbone.pth" in err and "onnx" in err.lower()
    assert distill_pipeline.main(_student_args(teacher, tmp_path / "y", "--loss", "nope", "--max-steps", "1")) == 2
    assert "unknown distillation loss 'nope'" in capsys.readouterr().err
    assert distill_pipeline.main(_student_args(teacher, tmp_path / "z", "--teacher-width", "0.25",
                                               "--max-steps", "1")) == 2
    assert str(teacher) in capsys.readouterr().err


def test_sample_critic_centres_keeps_positives() -> None:
    g = torch.Generator().manual_seed(0)
    labels = torch.tensor([3, 3, 7, -1, 42])
    centres = sample_critic_centres(labels, 20, 0.25, g)
    assert centres.tolist() == sorted(set(centres.tolist())) and len(centres) == 5
    assert {3, 7} <= set(centres.tolist()) and 42 not in centres.tolist()
    assert sample_critic_centres(torch.arange(8), 20, 0.1, g).tolist() == list(range(8))


@pytest.mark.parametrize("flags, message", [(("--loss", "srdd"), "unknown distillation loss 'srdd'"),
                                            (("--loss-option", "srd.conector=angle"), "takes no option(s) conector"),
                                            (("--loss", "srd,kd:-1"), "must be >= 0")])
def test_loss_mistakes_fail_before_the_teacher_is_touched(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                          flags: tuple[str, ...], message: str) -> None:
    # the teacher file does not even exist: the loss error must come first, in one line
    code = distill_pipeline.main(_student_args(tmp_path / "missing.pth", tmp_path / "out", *flags))
    err = capsys.readouterr().err
    assert code == 2 and message in err and "missing.pth" not in err
    assert not (tmp_path / "out" / "teacher_cache").exists()


# ----------------------------------------------------------------------------------------------
# inside DistillTask: cached == online teacher, Partial FC, the unlabeled mix

def _task(teacher: Path, out: Path, *extra: str) -> DistillTask:
    from facekd.engine.config import parse_training_config
    from facekd.engine.distributed import DistInfo

    cfg, _ = parse_training_config(DistillConfig, _student_args(teacher, out, "--max-steps", "1", *extra))
    return DistillTask(cfg, DistInfo(0, 1, 0, torch.device("cpu")))


def test_cached_and_online_teacher_give_the_same_loss_inside_the_task(teacher: Path, tmp_path: Path) -> None:
    cached = _task(teacher, tmp_path / "cached", "--unlabeled", POOL)
    online = _task(teacher, tmp_path / "online", "--unlabeled", POOL, "--online-teacher",
                   "--teacher-head", str(tmp_path / "cached" / "teacher_head.pth"))
    assert cached.teacher.cache is not None and online.teacher.cache is None  # two different paths
    batch = next(iter(cached.loader))
    assert batch.labeled.any() and (~batch.labeled).any() and batch.flipped.any()
    modules = cached.modules()  # one student, one connector, one head: only the teacher differs
    modules["backbone"].eval()
    t_cached, t_online = cached.teacher.outputs(batch), online.teacher.outputs(batch)
    # the cache holds float16 copies of the online embeddings of the same images (flips included)
    torch.testing.assert_close(t_cached.embedding, t_online.embedding, rtol=2e-3, atol=2e-3 * float(
        t_online.embedding.abs().max()))
    a = cached.compute_losses(batch, modules)
    b = online.compute_losses(batch, modules)
    assert set(a) == set(b) == {"arcface", "srd/logits", "srd/feat"}
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=5e-3, atol=1e-6)


def test_partial_fc_through_the_distill_task(teacher: Path, tmp_path: Path) -> None:
    """--partial-fc 0.5: the student head samples half the classes (every positive kept) and the
    critic scores the very same sample; the command runs and saves the full head."""
    from facekd.models.partial_fc import PartialFC

    task = _task(teacher, tmp_path / "task", "--partial-fc", "0.5", "--loss-option", "srd.mode=kl")
    assert isinstance(task.head, PartialFC) and task.head.sample_rate == 0.5
    batch = next(iter(task.loader))
    modules = task.modules()
    terms = task.compute_losses(batch, modules)
    sample = task.head.all_last_samples()
    positives = set(batch.labels[batch.labeled].tolist())
    assert positives <= set(sample.tolist()) and len(sample) == max(5, len(positives)) < 10
    assert torch.equal(task._critic_centres(batch, modules), sample)
    # the critic's KL equals the one computed by hand on the sampled centres only (not on all 10)
    with torch.no_grad():
        e_s = modules["backbone"](batch.images, return_features=True).embedding
        e_t = task.teacher.outputs(batch, sample).embedding
        q = modules["distill"].losses["srd"].connector.matrix()
        centres = F.normalize(task.teacher.classifier_weight(), dim=1)

        def kl(rows: torch.Tensor) -> float:
            z_hat = 16.0 * F.normalize(F.normalize(e_s, dim=1) @ q.T, dim=1) @ centres[rows].T
            z_t = 16.0 * F.normalize(e_t, dim=1) @ centres[rows].T
            log_p_s, log_p_t = F.log_softmax(z_hat / 4.0, dim=1), F.log_softmax(z_t / 4.0, dim=1)
            return float(8.0 * (log_p_t.exp() * (log_p_t - log_p_s)).sum(1).mean() * 16.0)

    assert terms["srd/logits"].item() == pytest.approx(kl(sample), rel=1e-4)
    assert abs(kl(torch.arange(10)) - kl(sample)) > 1e-3 * kl(sample)
    out = tmp_path / "run"
    assert distill_pipeline.main(_student_args(teacher, out, "--partial-fc", "0.5", "--max-steps", "2",
                                               "--val-pairs", "0")) == 0
    records = read_metrics(out)
    assert {"loss/arcface", "loss/srd/logits"} <= {k for r in records for k in r}
    assert load_classifier(out / "head.pth").shape == (10, 16)


@pytest.mark.parametrize("ratio, unlabeled", [(1.0, 12), (0.5, 6), (0.25, 3)])
def test_unlabeled_ratio_sets_the_mix_of_every_batch(teacher: Path, tmp_path: Path, ratio: float,
                                                     unlabeled: int) -> None:
    task = _task(teacher, tmp_path / "mix", "--unlabeled", POOL, "--unlabeled-ratio", str(ratio))
    it = iter(task.loader)
    for _ in range(3):
        batch = next(it)
        assert int(batch.labeled.sum()) == 12 and int((~batch.labeled).sum()) == unlabeled
        assert (batch.labels[~batch.labeled] == -1).all() and (batch.source[~batch.labeled] == 1).all()
    modules = task.modules()
    terms = task.compute_losses(batch, modules)
    assert set(terms) == {"arcface", "srd/logits", "srd/feat"}
    # README: unlabeled rows get only the distillation terms: the margin loss is that of the labeled rows
    with torch.no_grad():
        emb = modules["backbone"](batch.images)
        labeled_only = modules["head"](emb[batch.labeled], batch.labels[batch.labeled])
    assert terms["arcface"].item() == pytest.approx(labeled_only.item(), rel=1e-5)


def test_killed_distillation_resumes_to_the_uninterrupted_weights(teacher: Path, tmp_path: Path) -> None:
    """README: --resume continues a run after a crash; with a pool, SRD and a mid-epoch cut the
    student, its head and the connector end bitwise equal to a run that was never stopped."""
    from facekd.engine.checkpoint import list_checkpoints
    from facekd.engine.config import parse_training_config

    def kill_after(step: int):
        def callback(trainer, done: int) -> None:
            if done == step:
                raise KeyboardInterrupt
        return callback

    common = ("--unlabeled", POOL, "--unlabeled-ratio", "0.5", "--max-steps", "8", "--ckpt-every", "3",
              "--val-pairs", "0", "--seed", "4", "--deterministic")
    assert distill_pipeline.main(_student_args(teacher, tmp_path / "full", *common)) == 0
    cfg, _ = parse_training_config(DistillConfig, _student_args(teacher, tmp_path / "cut", *common))
    with pytest.raises(KeyboardInterrupt):  # 60 images / 12 = 5 steps per epoch: dies mid-epoch 2
        distill_pipeline.run(cfg, callbacks=[kill_after(7)])
    assert list_checkpoints(tmp_path / "cut")[-1].name == "step_00000006.pt"
    assert distill_pipeline.main(["--resume", str(tmp_path / "cut")]) == 0
    for name in ("backbone.pth", "head.pth"):
        full, resumed = load_weights_file(tmp_path / "full" / name), load_weights_file(tmp_path / "cut" / name)
        assert full.keys() == resumed.keys() and all(torch.equal(full[k], resumed[k]) for k in full), name
    full_ckpt = torch.load(list_checkpoints(tmp_path / "full")[-1], weights_only=False)
    cut_ckpt = torch.load(list_checkpoints(tmp_path / "cut")[-1], weights_only=False)
    assert full_ckpt["step"] == cut_ckpt["step"] == 8 and "distill" in full_ckpt["modules"]
    connector, resumed = full_ckpt["modules"]["distill"], cut_ckpt["modules"]["distill"]
    assert connector and all(torch.equal(connector[k], resumed[k]) for k in connector)


def test_kd_and_cosine_terms_inside_the_task_equal_hand_computations(teacher: Path, tmp_path: Path) -> None:
    """The baselines' values, not only their names: kd = KL(softmax(z_t/4) || softmax(z_s/4)) * 16 with
    z_s the student head's margin-free logits and z_t the teacher critic's; cosine = 0.5 * 16 * mean(1 - cos)."""
    task = _task(teacher, tmp_path / "kd", "--loss", "kd:1.0,cosine:0.5")
    batch = next(iter(task.loader))
    modules = task.modules()
    modules["backbone"].eval()
    terms = task.compute_losses(batch, modules)
    with torch.no_grad():
        e_s = modules["backbone"](batch.images)
        e_t = task.teacher.outputs(batch).embedding
        head_w = F.normalize(modules["head"].weight, dim=1)
        z_s = 16.0 * F.normalize(e_s, dim=1) @ head_w.T
        z_t = 16.0 * F.normalize(e_t, dim=1) @ F.normalize(task.teacher.classifier_weight(), dim=1).T
        log_p_s, log_p_t = F.log_softmax(z_s / 4.0, dim=1), F.log_softmax(z_t / 4.0, dim=1)
        kd = (log_p_t.exp() * (log_p_t - log_p_s)).sum(1).mean() * 16.0
        q = modules["distill"].losses["cosine"].connector.matrix()
        cos = F.cosine_similarity(F.normalize(e_s, dim=1) @ q.T, e_t, dim=1)
    assert terms["kd/kl"].item() == pytest.approx(kd.item(), rel=1e-4) and kd.item() > 1e-3
    assert terms["cosine/cos"].item() == pytest.approx(0.5 * 16.0 * (1 - cos).mean().item(), rel=1e-4)
