"""``python -m facekd.pipelines.demo`` (``make demo``): the whole facekd story on a laptop CPU.

Built only from the public entry points, each called exactly as a user would call it:
1. data: synthetic identities (``facekd.data.synthetic``: a sample grid, and a held-out
   verification .bin plus gallery/probe folders of identities never trained on);
2. a teacher trained with ArcFace (``facekd.pipelines.train``);
3. the student trained alone, the same way (``facekd.pipelines.train``);
4. the student distilled with SRD (``facekd.pipelines.distill``), then with SRD plus an unlabeled
   open-set pool of other identities;
5. every model verified (``facekd.eval.verify``) and searched 1:N (``facekd.eval.identify``);
6. a table and ``OUT/report.md`` (ROC of all models, the sample grid, the commands for real data).

Every stage writes real artefacts under ``OUT`` (``backbone.pth``, ``model.onnx``, the .bin,
metrics); a finished stage is not redone when the demo is run again (``--fresh`` redoes all).
"""
from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from facekd.config import ConfigError, field, load_yaml, parse_config, save_yaml, to_dict
from facekd.log import get_logger

log = get_logger(__name__)

__all__ = ["DemoConfig", "ModelRun", "run", "main"]

FAR = 1e-2
"""The TAR@FAR level of the demo table (1e-3 needs 10,000 impostor pairs: the benchmark has them)."""


@dataclass
class DemoConfig:
    """Sizes of the demo; the defaults finish in about 10 minutes on 2 CPU cores."""

    out: str = field("runs/demo", help="output directory of every stage and of report.md")
    seed: int = field(0, help="seed of the data generator and of every training run")
    fresh: bool = field(False, help="delete OUT first and redo every stage")
    workers: int = field(2, help="data-loading worker processes of each training run")
    input_size: int = field(32, help="image side in px (teacher and student)")
    # data
    train_ids: int = field(300, help="labeled training identities")
    per_id: int = field(20, help="photos per training identity")
    pool_ids: int = field(600, help="identities of the unlabeled open-set pool (disjoint from the labeled ones)")
    pool_per_id: int = field(10, help="photos per pool identity")
    val_ids: int = field(150, help="held-out identities of the verification pairs")
    pairs: int = field(3000, help="verification pairs (multiple of 20)")
    gallery_ids: int = field(100, help="held-out gallery identities for identification")
    # teacher
    teacher: str = field("r18", help="teacher backbone")
    teacher_width: float = field(0.25, help="teacher channel-width multiplier")
    teacher_embedding: int = field(128, help="teacher embedding size")
    teacher_steps: int = field(500, help="teacher training steps")
    # student
    student: str = field("mbf", help="student backbone")
    student_width: float = field(0.125, help="student channel-width multiplier")
    student_embedding: int = field(64, help="student embedding size")
    student_steps: int = field(400, help="training steps of each student run (alone, SRD, SRD + pool)")
    # optimisation shared by every run
    batch_size: int = field(128, help="labeled images per step")
    lr: float = field(0.1, help="peak learning rate (SGD, cosine decay)")
    scale: float = field(32.0, help="logit scale s of the margin heads and of the critic")
    margin: float = field(0.4, help="ArcFace margin")
    loss: str = field("srd", help="distillation loss of the distilled students")
    export_onnx: bool = field(True, help="export every model to ONNX (checked with onnxruntime)")


@dataclass
class ModelRun:
    """One trained model of the demo and its evaluation."""

    key: str
    title: str
    out: Path
    arch: str
    options: dict[str, Any]
    metrics: dict[str, float]


def _call(title: str, entry: Callable[[Sequence[str]], int], argv: list[str], module: str) -> None:
    """Run a public entry point as its command line would, echoing the equivalent command."""
    print(f"\n==> {title}\n    python -m {module} {' '.join(argv)}", flush=True)
    t = time.perf_counter()
    code = entry(argv)
    if code:
        raise SystemExit(f"demo: stage '{title}' failed (exit {code}); see the messages above")
    print(f"    ({time.perf_counter() - t:.0f} s)", flush=True)


def _done(path: Path) -> bool:
    return path.is_file()


def _train(title: str, entry: Callable[[Sequence[str]], int], argv: list[str], module: str, run_dir: Path) -> None:
    """A training stage; one interrupted before (it left a checkpoint) continues with --resume."""
    from facekd.engine.checkpoint import latest_checkpoint

    if latest_checkpoint(run_dir) is not None:
        _call(f"{title} (continuing the interrupted run)", entry, ["--resume", str(run_dir)], module)
    else:
        _call(title, entry, argv, module)


def _train_common(cfg: DemoConfig, seed: int | None = None) -> list[str]:
    seed = cfg.seed if seed is None else seed
    return ["--input-size", str(cfg.input_size), "--batch-size", str(cfg.batch_size), "--workers", str(cfg.workers),
            "--lr", str(cfg.lr), "--schedule", "cosine", "--warmup-steps", str(max(1, cfg.student_steps // 20)),
            "--scale", str(cfg.scale), "--margin", str(cfg.margin), "--seed", str(seed), "--amp", "off",
            "--clip-grad-norm", "5", "--log-every", "50", "--ckpt-every", "100", "--keep-ckpts", "1",
            "--val-pairs", "0", "--no-tensorboard", *(["--export-onnx"] if cfg.export_onnx else [])]


def _data_spec(cfg: DemoConfig) -> str:
    return f"synthetic:ids={cfg.train_ids},per_id={cfg.per_id},size={cfg.input_size},seed={cfg.seed}"


def _pool_spec(cfg: DemoConfig) -> str:
    return f"synthetic:ids={cfg.pool_ids},per_id={cfg.pool_per_id},size={cfg.input_size},seed={cfg.seed}"


def stage_data(cfg: DemoConfig, out: Path) -> Path:
    """Sample grid and held-out evaluation sets (facekd.data.synthetic)."""
    from facekd.data import synthetic

    data = out / "data"
    if not _done(data / "synthetic_val.bin"):
        _call("data: synthetic identities (sample grid, held-out verification .bin, gallery/probe folders)",
              synthetic.main, ["--grid", str(data / "samples.png"), "--size", str(cfg.input_size), "--seed",
                               str(cfg.seed), "--export", str(data), "--val-ids", str(cfg.val_ids), "--pairs",
                               str(cfg.pairs), "--gallery-ids", str(cfg.gallery_ids)], "facekd.data.synthetic")
        synthetic.write_grid(data / "samples_112.png", 8, 8, 112, cfg.seed)
    return data


def stage_teacher(cfg: DemoConfig, out: Path) -> ModelRun:
    """Train the teacher with ArcFace (facekd.pipelines.train)."""
    from facekd.pipelines import train

    run_dir = out / "teacher"
    options = {"width": cfg.teacher_width, "embedding_size": cfg.teacher_embedding, "input_size": cfg.input_size}
    if not _done(run_dir / "backbone.pth"):
        argv = ["--backbone", cfg.teacher, "--width", str(cfg.teacher_width), "--embedding-size",
                str(cfg.teacher_embedding), "--max-steps", str(cfg.teacher_steps), "--data", _data_spec(cfg),
                *_train_common(cfg), "--out", str(run_dir)]
        _train(f"teacher: {cfg.teacher} x{cfg.teacher_width} trained with ArcFace", train.main, argv,
               "facekd.pipelines.train", run_dir)
    return ModelRun("teacher", f"teacher {cfg.teacher} x{cfg.teacher_width}", run_dir, cfg.teacher, options, {})


def _student_options(cfg: DemoConfig) -> dict[str, Any]:
    return {"width": cfg.student_width, "embedding_size": cfg.student_embedding, "input_size": cfg.input_size}


def stage_student_alone(cfg: DemoConfig, out: Path, key: str = "student_alone", seed: int | None = None) -> ModelRun:
    """The student trained alone with ArcFace, same data and budget (facekd.pipelines.train)."""
    from facekd.pipelines import train

    run_dir = out / key
    if not _done(run_dir / "backbone.pth"):
        argv = ["--backbone", cfg.student, "--width", str(cfg.student_width), "--embedding-size",
                str(cfg.student_embedding), "--max-steps", str(cfg.student_steps), "--data", _data_spec(cfg),
                *_train_common(cfg, seed), "--out", str(run_dir)]
        _train(f"student alone: {cfg.student} x{cfg.student_width} trained with ArcFace only", train.main, argv,
               "facekd.pipelines.train", run_dir)
    return ModelRun(key, "student alone", run_dir, cfg.student, _student_options(cfg), {})


def stage_student_distilled(cfg: DemoConfig, out: Path, teacher: ModelRun, unlabeled: bool, *,
                            loss: str | None = None, key: str | None = None, seed: int | None = None,
                            loss_options: Sequence[str] = (), extra_args: Sequence[str] = ()) -> ModelRun:
    """The student distilled from the teacher (facekd.pipelines.distill), optionally with the pool;
    ``extra_args`` are further distill flags (a benchmark's ``--teacher-head``, ``--label-weight``)."""
    from facekd.pipelines import distill

    loss = loss or cfg.loss
    key = key or ("student_srd_pool" if unlabeled else "student_srd")
    run_dir = out / key
    name = loss.split(":")[0].upper() if "," not in loss else loss
    if not _done(run_dir / "backbone.pth"):
        argv = ["--teacher", teacher.arch, "--teacher-weights", str(teacher.out / "backbone.pth"),
                "--teacher-width", str(cfg.teacher_width), "--teacher-embedding-size", str(cfg.teacher_embedding),
                "--teacher-scale", str(cfg.scale), "--student", cfg.student, "--width", str(cfg.student_width),
                "--embedding-size", str(cfg.student_embedding), "--max-steps", str(cfg.student_steps),
                "--loss", loss, *([f"--loss-option={','.join(loss_options)}"] if loss_options else []),
                "--data", _data_spec(cfg), "--cache-dir", str(out / "teacher_cache"),
                *(["--unlabeled", _pool_spec(cfg)] if unlabeled else []), *_train_common(cfg, seed),
                *extra_args, "--out", str(run_dir)]
        what = f"{name} + unlabeled open-set pool" if unlabeled else name
        _train(f"student distilled with {what}", distill.main, argv, "facekd.pipelines.distill", run_dir)
    title = f"student + {name}" + (" + unlabeled pool" if unlabeled else "")
    return ModelRun(key, title, run_dir, cfg.student, _student_options(cfg), {})


def stage_evaluate(run: ModelRun, data: Path, far: float = FAR) -> None:
    """Verification on the held-out .bin and 1:N identification on gallery/probes (facekd.eval)."""
    from facekd.eval import identify, verify
    from facekd.eval.verification import far_key

    options = [f"{k}={v}" for k, v in run.options.items()]
    model_args = ["--model", str(run.out / "backbone.pth"), "--arch", run.arch]
    for opt in options:
        model_args += ["--model-option", opt]
    ver_dir, id_dir = run.out / "verification", run.out / "identification"
    if not _done(ver_dir / "verification.json"):
        _call(f"verify {run.title}", verify.main, [*model_args, "--bins", str(data / "synthetic_val.bin"),
                                                   "--out", str(ver_dir)], "facekd.eval.verify")
    if not _done(id_dir / "identification.json"):
        _call(f"identify {run.title}", identify.main, [*model_args, "--gallery", str(data / "gallery"),
                                                       "--probes", str(data / "probes"), "--index", "flat",
                                                       "--out", str(id_dir)], "facekd.eval.identify")
    ver = json.loads((ver_dir / "verification.json").read_text())["sets"]["synthetic_val"]
    ident = json.loads((id_dir / "identification.json").read_text())
    run.metrics.update({"accuracy": float(ver["accuracy"]), "accuracy_std": float(ver["accuracy_std"]),
                        "tar_at_far": float(ver["tar_at_far"].get(far_key(far), float("nan"))),
                        "rank1": float(ident["cmc"].get("rank1", float("nan")))})


def _summary(run: ModelRun) -> None:
    from facekd.models.summary import summarize

    s = summarize(run.arch, **run.options)
    run.metrics.update({"params_m": s["parameters"] / 1e6, "mmacs": s["macs"] / 1e6})


def _table(runs: Sequence[ModelRun]) -> str:
    from facekd.eval.verification import far_key

    head = ["model", "verification acc", f"TAR@FAR={far_key(FAR)}", "rank-1", "params (M)", "MACs (M)"]
    rows = [[r.title, f"{r.metrics['accuracy']:.4f} +- {r.metrics['accuracy_std']:.4f}",
             f"{r.metrics['tar_at_far']:.4f}", f"{r.metrics['rank1']:.4f}", f"{r.metrics['params_m']:.3f}",
             f"{r.metrics['mmacs']:.1f}"] for r in runs]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _roc_plot(runs: Sequence[ModelRun], path: Path) -> Path:
    from facekd.eval.plots import plot_roc
    from facekd.eval.verification import roc_points

    curves = {}
    for r in runs:
        saved = np.load(r.out / "verification" / "pair_distances.npz", allow_pickle=False)
        curves[r.title] = roc_points(saved["synthetic_val/distances"], saved["synthetic_val/issame"])
    return plot_roc(curves, path, title="Held-out synthetic identities: verification ROC")


REAL_DATA_COMMANDS = """\
# 1. align and crop your photos (5-point ArcFace template), pack them, build a verification .bin
python -m facekd.data_prep.align photos/ aligned/
python -m facekd.data_prep.pack aligned/ data/mine
python -m facekd.data_prep.align test_photos/ aligned_test/    # identities kept out of training
python -m facekd.data_prep.make_bin --folder aligned_test/ --num-pairs 6000 data/mine_test.bin
# 2. distil a released teacher (arcface_torch backbone.pth, or an insightface .onnx) into MobileFaceNet,
#    labeled MS1M-style .rec plus your unlabeled aligned faces
python -m facekd.pipelines.distill --teacher r100 --teacher-weights backbone.pth --student mbf \\
    --data ms1m/ --unlabeled aligned/ --val-bins data/mine_test.bin,lfw.bin --export-onnx --out runs/mbf
# (the same on 8 GPUs: torchrun --nproc_per_node 8 -m facekd.pipelines.distill ...)
# 3. evaluate (gallery/ and probes/: one sub-folder per held-out person, same names; see README.md)
python -m facekd.eval.verify --model runs/mbf/backbone.pth --arch mbf --bins data/mine_test.bin,lfw.bin --out runs/mbf/verify
python -m facekd.eval.identify --model runs/mbf/model.onnx --gallery gallery/ --probes probes/ --out runs/mbf/identify
"""


def write_report(cfg: DemoConfig, out: Path, data: Path, runs: Sequence[ModelRun], seconds: float) -> Path:
    """``OUT/report.md``: the table, the ROC plot, the sample grid, what was run, what to run next."""
    roc = _roc_plot(runs, out / "roc.png")
    alone, teacher = runs[1].metrics["accuracy"], runs[0].metrics["accuracy"]
    lines = [
        "# facekd demo report", "",
        f"Synthetic identities at {cfg.input_size} px: the teacher ({cfg.teacher} x{cfg.teacher_width}), and the "
        f"student ({cfg.student} x{cfg.student_width}) trained alone, distilled with {cfg.loss.upper()}, and distilled "
        f"with {cfg.loss.upper()} plus an unlabeled pool of {cfg.pool_ids} other identities. Each student run has the "
        f"same {cfg.student_steps} steps of {cfg.batch_size} labeled images ({cfg.train_ids} identities x "
        f"{cfg.per_id}). Evaluation uses identities none of the models saw: {cfg.pairs} verification pairs of "
        f"{cfg.val_ids} identities (10-fold accuracy as insightface reports it, TAR at FAR={FAR:g}) and 1:N "
        f"identification ({cfg.gallery_ids} gallery identities, non-mated probes included). Total time "
        f"{seconds / 60:.1f} min.", "",
        _table(runs), "",
    ]
    for r in runs[2:]:
        gap = teacher - alone
        closed = (r.metrics["accuracy"] - alone) / gap if gap > 0 else float("nan")
        lines.append(f"- {r.title}: {r.metrics['accuracy'] - alone:+.4f} accuracy over the student alone "
                     f"({closed:.0%} of the teacher-student gap closed).")
    lines += ["", "A single seed: differences of a few tenths of a point are within run-to-run noise; the "
              "3-seed comparison is in docs/benchmarks.md (`python -m bench.bench_distill_accuracy`).", "",
              f"![ROC]({roc.name})", "", "Synthetic identities (rows) and photos of each (columns):", "",
              f"![samples]({(data / 'samples_112.png').relative_to(out)})", "",
              "## Artefacts", ""]
    for r in runs:
        files = [p.name for p in (r.out / "backbone.pth", r.out / "model.onnx") if p.exists()]
        lines.append(f"- {r.title}: `{r.out.relative_to(out)}/` ({', '.join(files)}, metrics.jsonl, "
                     "verification/, identification/)")
    lines += [f"- held-out data: `{data.relative_to(out)}/synthetic_val.bin`, `gallery/`, `probes/`", "",
              "## The same on real data", "", "```bash", REAL_DATA_COMMANDS.rstrip(), "```", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    (out / "results.json").write_text(json.dumps({r.key: {"title": r.title, **r.metrics} for r in runs}, indent=2))
    return path


def run(cfg: DemoConfig) -> list[ModelRun]:
    """Every stage in order; returns the evaluated models (teacher, alone, SRD, SRD + pool)."""
    out = Path(cfg.out)
    if cfg.fresh and out.exists():
        shutil.rmtree(out)
    saved = out / "demo_config.yaml"
    if saved.is_file():
        before = {k: v for k, v in load_yaml(saved).items() if k not in ("fresh", "workers")}
        now = {k: v for k, v in to_dict(cfg).items() if k not in ("fresh", "workers")}
        changed = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
        if changed:
            raise ConfigError(f"{out} holds a demo run with other settings ({', '.join(changed)}); its finished "
                              "stages would not match: add --fresh to redo them, or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    save_yaml(cfg, saved)
    t0 = time.perf_counter()
    data = stage_data(cfg, out)
    teacher = stage_teacher(cfg, out)
    runs = [teacher, stage_student_alone(cfg, out), stage_student_distilled(cfg, out, teacher, unlabeled=False),
            stage_student_distilled(cfg, out, teacher, unlabeled=True)]
    for r in runs:
        stage_evaluate(r, data)
        _summary(r)
    report = write_report(cfg, out, data, runs, time.perf_counter() - t0)
    print("\n" + _table(runs))
    print(f"\nreport: {report}\n\nThe same on real data:\n{REAL_DATA_COMMANDS}")
    return runs


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: run the demo (``make demo``)."""
    cfg, _ = parse_config(DemoConfig, argv, prog="python -m facekd.pipelines.demo",
                          description="facekd end to end on synthetic identities, CPU-sized: data, teacher, student "
                                      "alone, student distilled with SRD (with and without an unlabeled pool), "
                                      "verification and identification, report.md. Stages already done in --out "
                                      "are reused; --fresh redoes them.")
    try:
        run(cfg)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted; run the same command again to continue from the last finished stage", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
