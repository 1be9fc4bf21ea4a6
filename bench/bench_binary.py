"""Binary students on synthetic identities: mbf_bin trained alone vs with KD vs with SRD (two-stage,
several seeds), and the full-precision mbf student (alone and with SRD) for reference.

Every student run goes through ``facekd.pipelines.distill`` with the same data order, margin head,
optimizer and schedule; "alone" is the same pipeline with the distillation weight set to 0, so
only the distillation term differs between rows. A binary student is trained in two stages as in
ReActNet: stage 1 (binary activations, real weights), then stage 2 (both binary) started from the
stage-1 weights (``--student-option stage=2 --init-student stage1/backbone.pth``), each for half
the steps of a full-precision run. The teacher (r18 at reduced width) is trained first by
``facekd.pipelines.train``. Accuracy is the 10-fold verification accuracy on held-out synthetic
identities, as the training pipelines report it.

    python -m bench.bench_binary            # full: 3 seeds (fast on a GPU; --jobs runs seeds in parallel)
    python -m bench.bench_binary --quick    # tiny CPU-sized plumbing check, 1 seed (students stay
                                            # near chance after tens of steps)
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Sequence

from bench._report import table, write_section

ACCURACY = "eval/synthetic/accuracy"
ALONE_LOSS = "cosine:0"
"""'Alone': a distillation term with weight 0 (the pipeline needs one), so nothing else changes."""
METHOD_LOSSES = {"alone": ALONE_LOSS, "kd": "kd", "srd": "srd"}


@dataclass(frozen=True)
class Settings:
    """One benchmark size: data, teacher, students, steps and the student optimizer."""

    data: str
    val_pairs: int
    batch: int
    workers: int
    teacher_width: float
    teacher_embedding: int
    teacher_steps: int
    student_width: float
    student_embedding: int
    fp_steps: int
    stage_steps: int  # per binary stage; stage 1 + stage 2 = 2 x stage_steps
    lr: float
    seeds: tuple[int, ...]
    scale: float = 32.0
    margin: float = 0.4


FULL = Settings(data="synthetic:ids=400,per_id=24,size=32", val_pairs=3000, batch=128, workers=4,
                teacher_width=0.5, teacher_embedding=128, teacher_steps=800, student_width=0.25,
                student_embedding=128, fp_steps=400, stage_steps=200, lr=2e-3, seeds=(0, 1, 2))
QUICK = Settings(data="synthetic:ids=40,per_id=8,size=32", val_pairs=400, batch=32, workers=0,
                 teacher_width=0.25, teacher_embedding=64, teacher_steps=60, student_width=0.125,
                 student_embedding=64, fp_steps=40, stage_steps=20, lr=2e-3, seeds=(0,))


@dataclass(frozen=True)
class Row:
    """One trained student: which model, which method, which seed, and its accuracies."""

    student: str
    method: str
    seed: int
    accuracy: float
    stage1_accuracy: float | None
    seconds: float


def train_teacher(s: Settings, out: Path, device: str) -> tuple[Path, float]:
    """Train the r18 teacher with the plain face pipeline; returns its backbone.pth and accuracy."""
    from facekd.pipelines import train as train_pipeline

    cfg = train_pipeline.FaceTrainConfig(
        out=str(out), device=device, seed=0, workers=s.workers, input_size=32, width=s.teacher_width,
        embedding_size=s.teacher_embedding, batch_size=s.batch, max_steps=s.teacher_steps, lr=0.1,
        warmup_steps=max(1, s.teacher_steps // 20), backbone="r18", scale=s.scale, margin=s.margin, data=s.data,
        val_pairs=s.val_pairs, log_every=max(1, s.teacher_steps // 4), ckpt_every=10**9, keep_ckpts=1,
        tensorboard=False)
    result = train_pipeline.run(cfg)
    return out / "backbone.pth", float(result.metrics[ACCURACY])


def _distill(s: Settings, out: Path, teacher: Path, device: str, seed: int, student: str, loss: str,
             steps: int, options: Sequence[str] = (), weight_decay: float = 1e-5, init: Path | None = None,
             shared: Path | None = None) -> float:
    """One ``facekd.pipelines.distill`` run; ``shared`` is a run whose teacher cache and head to reuse."""
    from facekd.pipelines import distill as distill_pipeline

    reuse: dict[str, Any] = {}
    if shared is not None:
        reuse = {"cache_dir": str(shared / "teacher_cache"), "teacher_head": str(shared / "teacher_head.pth")}
    cfg = distill_pipeline.DistillConfig(
        out=str(out), device=device, seed=seed, workers=s.workers, input_size=32, width=s.student_width,
        embedding_size=s.student_embedding, batch_size=s.batch, max_steps=steps, optimizer="adamw", lr=s.lr,
        weight_decay=weight_decay, schedule="cosine", warmup_steps=max(1, steps // 20),
        log_every=max(1, steps // 4), ckpt_every=10**9, keep_ckpts=1, tensorboard=False,
        teacher="r18", teacher_weights=str(teacher), teacher_width=s.teacher_width,
        teacher_embedding_size=s.teacher_embedding, teacher_scale=s.scale, student=student,
        student_option=list(options), init_student=str(init) if init else None, scale=s.scale, margin=s.margin,
        loss=loss, data=s.data, val_pairs=s.val_pairs, **reuse)
    return float(distill_pipeline.run(cfg).metrics[ACCURACY])


def run_seed(s: Settings, teacher: Path, work: Path, device: str, seed: int) -> list[Row]:
    """Every student of one seed: mbf alone / srd, mbf_bin alone / kd / srd (two stages each).

    The rows so far are kept in WORK/seedN.json after each student, so an interrupted run leaves them.
    """
    rows: list[Row] = []
    base = work / f"seed{seed}"
    shared: Path | None = None

    def keep() -> None:
        (work / f"seed{seed}.json").write_text(json.dumps([asdict(r) for r in rows]))

    for method in ("alone", "srd"):
        start = time.perf_counter()
        out = base / f"mbf_{method}"
        acc = _distill(s, out, teacher, device, seed, "mbf", METHOD_LOSSES[method], s.fp_steps, shared=shared)
        shared = shared or out
        rows.append(Row("mbf", method, seed, acc, None, time.perf_counter() - start))
        keep()
    for method in ("alone", "kd", "srd"):
        start = time.perf_counter()
        first, second = base / f"bin_{method}_stage1", base / f"bin_{method}_stage2"
        acc1 = _distill(s, first, teacher, device, seed, "mbf_bin", METHOD_LOSSES[method], s.stage_steps,
                        ["stage=1"], weight_decay=1e-5, shared=shared)
        acc2 = _distill(s, second, teacher, device, seed, "mbf_bin", METHOD_LOSSES[method], s.stage_steps,
                        ["stage=2"], weight_decay=0.0, init=first / "backbone.pth", shared=shared)
        rows.append(Row("mbf_bin", method, seed, acc2, acc1, time.perf_counter() - start))
        keep()
    return rows


def _run_parallel(s: Settings, teacher: Path, work: Path, device: str, jobs: int, quick: bool) -> list[Row]:
    """Seeds in separate processes (``--seed-job``), at most ``jobs`` at a time; logs in WORK/seedN.log."""
    pending, running, rows = list(s.seeds), [], []
    while pending or running:
        while pending and len(running) < jobs:
            seed = pending.pop(0)
            cmd = [sys.executable, "-m", "bench.bench_binary", "--seed-job", str(seed), "--teacher-weights",
                   str(teacher), "--work", str(work), "--device", device] + (["--quick"] if quick else [])
            log = open(work / f"seed{seed}.log", "w")
            running.append((seed, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                                   cwd=Path(__file__).resolve().parent.parent), log))
        time.sleep(2)
        for item in list(running):
            seed, proc, log = item
            if proc.poll() is None:
                continue
            log.close()
            running.remove(item)
            if proc.returncode != 0:
                raise RuntimeError(f"seed {seed} failed (exit {proc.returncode}); see {work / f'seed{seed}.log'}")
            rows += [Row(**r) for r in json.loads((work / f"seed{seed}.json").read_text())]
    return rows


def _summary_line(s: Settings) -> str:
    from facekd.models.summary import summarize

    fp = summarize("mbf", input_size=32, width=s.student_width, embedding_size=s.student_embedding)
    b = summarize("mbf_bin", input_size=32, width=s.student_width, embedding_size=s.student_embedding)
    return (f"Sizes at 32 px: mbf x{s.student_width:g} {fp['parameters'] / 1e3:.0f} k parameters, "
            f"{fp['macs'] / 1e6:.1f} M MACs, {fp['float_bytes'] / 1024:.0f} KiB; mbf_bin x{s.student_width:g} "
            f"{b['binary_ops'] / 1e6:.1f} M binary ops + {b['real_macs'] / 1e6:.2f} M real MACs "
            f"({b['ops'] / 1e6:.2f} M OPs counting 64 binary ops as one), packed {b['packed_bytes'] / 1024:.0f} KiB "
            f"({b['binary_parameters'] / 1e3:.0f} k 1-bit weights; {b['float_bytes'] / 1024:.0f} KiB as float32).")


def _fmt(values: Sequence[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.pstdev(values):.4f}"


def report(s: Settings, rows: Sequence[Row], teacher_acc: float, device: str, minutes: float) -> str:
    """The Markdown body: accuracy per student and method (mean ± std over seeds, and each seed)."""
    out = []
    for student, method in [("mbf", "alone"), ("mbf", "srd"), ("mbf_bin", "alone"), ("mbf_bin", "kd"),
                            ("mbf_bin", "srd")]:
        mine = sorted((r for r in rows if (r.student, r.method) == (student, method)), key=lambda r: r.seed)
        alone = sorted((r for r in rows if (r.student, r.method) == (student, "alone")), key=lambda r: r.seed)
        delta = [a.accuracy - b.accuracy for a, b in zip(mine, alone)]
        stage1 = [r.stage1_accuracy for r in mine if r.stage1_accuracy is not None]
        out.append([
            "mbf_bin (1-bit, two-stage)" if student == "mbf_bin" else "mbf (full precision)", method,
            _fmt([r.accuracy for r in mine]), "-" if method == "alone" else f"{statistics.mean(delta):+.4f}",
            _fmt(stage1) if stage1 else "-", " / ".join(f"{r.accuracy:.4f}" for r in mine),
            f"{statistics.mean(r.seconds for r in mine):.0f}",
        ])
    body = table(["student", "method", "accuracy", "vs alone", "stage-1 accuracy", "per seed", "s per run"], out)
    steps = (f"{s.fp_steps} steps full precision; {s.stage_steps} + {s.stage_steps} steps binary "
             "(stage 1 binary activations / real weights, then stage 2 both binary from the stage-1 weights)")
    return (f"{body}\n\nTeacher r18 x{s.teacher_width:g} ({s.teacher_embedding}-d, {s.teacher_steps} SGD steps): "
            f"accuracy {teacher_acc:.4f}. Students x{s.student_width:g}, {s.student_embedding}-d: {steps}; batch "
            f"{s.batch}, AdamW lr {s.lr:g} cosine, weight decay 1e-5 (stage 2: 0), ArcFace s={s.scale:g} "
            f"m={s.margin:g} on every labeled row plus the distillation term (kd: Hinton KL, T=4, on the student's "
            f"own logits vs the teacher critic's; srd: critic logits MSE + feature term; alone: the same run with "
            f"the distillation weight 0). Data `{s.data}`; accuracy = 10-fold verification accuracy on "
            f"{s.val_pairs} pairs of held-out synthetic identities; seeds {', '.join(map(str, s.seeds))} "
            f"(mean ± population std; 'vs alone' is the mean paired difference). 's per run' is the wall time "
            f"of one student (a binary row covers both stages; the first mbf run of each seed also builds the "
            f"teacher-feature cache and fits the critic that later runs reuse). Device {device}; "
            f"{minutes:.1f} min in all.\n\n{_summary_line(s)}")


def main(argv: Sequence[str] | None = None) -> int:
    """Train the teacher and every student, print the table and write the ``binary`` section."""
    parser = argparse.ArgumentParser(prog="python -m bench.bench_binary", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="tiny CPU-sized pass: 40 ids, 1 seed, tens of steps (default: off)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda (default: auto)")
    parser.add_argument("--seeds", type=int, default=None,
                        help="number of seeds (default: 3, or 1 with --quick)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="seeds trained in parallel processes (default: 1; a GPU runs 3 at once easily)")
    parser.add_argument("--work", default=None,
                        help="directory for the runs (default: a temporary directory, deleted afterwards)")
    parser.add_argument("--seed-job", type=int, default=None,
                        help="internal (used by --jobs): train one seed's students into --work and write "
                             "WORK/seedN.json (default: off)")
    parser.add_argument("--teacher-weights", default=None,
                        help="internal (used by --jobs): the trained teacher's backbone.pth (default: train one)")
    args = parser.parse_args(argv)
    os.environ.setdefault("FACEKD_NO_PROGRESS", "1")
    import torch

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    s = QUICK if args.quick else FULL
    if args.seeds is not None:
        s = replace(s, seeds=tuple(range(args.seeds)))
    if device == "cuda" and args.quick is False:
        s = replace(s, workers=max(s.workers, 3))

    if args.seed_job is not None:
        if not args.work or not args.teacher_weights:
            parser.error("--seed-job needs --work and --teacher-weights")
        run_seed(s, Path(args.teacher_weights), Path(args.work), device, args.seed_job)
        return 0

    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_binary_") as tmp:
        work = Path(args.work) if args.work else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        teacher, teacher_acc = train_teacher(s, work / "teacher", device)
        print(f"teacher accuracy {teacher_acc:.4f}", flush=True)
        if args.jobs > 1 and len(s.seeds) > 1:
            rows = _run_parallel(s, teacher, work, device, args.jobs, args.quick)
        else:
            rows = [row for seed in s.seeds for row in run_seed(s, teacher, work, device, seed)]
        (work / "rows.json").write_text(json.dumps({"teacher": teacher_acc, "rows": [asdict(r) for r in rows]}))
    minutes = (time.perf_counter() - start) / 60
    write_section("binary", "Binary students (mbf_bin) on synthetic identities",
                  report(s, rows, teacher_acc, device, minutes))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
