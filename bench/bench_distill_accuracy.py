"""Distillation accuracy on synthetic identities: teacher, student alone, ``kd``, ``cosine``, ``srd``
and ``srd`` with an unlabeled open-set pool; same data, steps and optimiser for every student, 3
seeds, evaluated on identities none of the models saw.

Runs the public pipelines through the demo's stage functions (``facekd.pipelines.demo``): one
teacher (seed 0), then each student method once per seed. Goal (issue 6): ``srd`` beats every
baseline and closes at least half of the teacher-student gap; the pool adds on top.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Sequence

from bench._report import table, write_section
from facekd.pipelines.demo import DemoConfig, ModelRun, stage_data, stage_evaluate, stage_student_alone, \
    stage_student_distilled, stage_teacher

FAR = 1e-3
METHODS = (  # (key, title, loss or None for the student alone, loss options, unlabeled pool)
    ("alone", "student alone (ArcFace)", None, (), False),
    ("kd", "student + kd (Hinton, T=4)", "kd", (), False),
    ("cosine", "student + cosine", "cosine", (), False),
    ("srd_kl", "student + srd, KL logits (T=4)", "srd", ("srd.mode=kl",), False),
    ("srd", "student + srd, MSE logits (default)", "srd", (), False),
    ("srd_pool", "student + srd + unlabeled pool", "srd", (), True),
)


def bench_config(quick: bool) -> DemoConfig:
    """The demo's CPU configuration with enough impostor pairs for TAR@FAR=1e-3 (10,000)."""
    cfg = DemoConfig(val_ids=300, pairs=20000, workers=2)
    if quick:
        cfg = replace(cfg, teacher_steps=cfg.teacher_steps // 2, student_steps=cfg.student_steps // 2)
    return cfg


def _mean_std(values: Sequence[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} +- {statistics.stdev(values):.4f}"


def main(argv: Sequence[str] | None = None) -> int:
    """Train the teacher and every student method for each seed, print and record the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="half the training steps (still 3 seeds)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per student method")
    parser.add_argument("--labeled-per-id", type=int, default=0,
                        help="students see only this many labeled photos per identity (the teacher keeps all; "
                             "the semi-supervised setting where an unlabeled pool matters most); 0 = all")
    parser.add_argument("--work-dir", default=None,
                        help="keep the runs here (finished runs are reused); default: a temporary folder")
    args = parser.parse_args(argv)
    os.environ.setdefault("FACEKD_NO_PROGRESS", "1")
    cfg = bench_config(args.quick)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="facekd_bench_acc_") as tmp:
        out = Path(args.work_dir or tmp)
        cfg = replace(cfg, out=str(out))
        data = stage_data(cfg, out)
        teacher = stage_teacher(cfg, out)
        stage_evaluate(teacher, data, FAR)
        teacher_per_id = cfg.per_id
        if args.labeled_per_id:
            cfg = replace(cfg, per_id=args.labeled_per_id)
        results: dict[str, list[ModelRun]] = {m[0]: [] for m in METHODS}
        for seed in range(args.seeds):
            for key, _title, loss, options, pool in METHODS:
                name = f"{key}_seed{seed}"
                if loss is None:
                    run = stage_student_alone(cfg, out, key=name, seed=seed)
                else:
                    run = stage_student_distilled(cfg, out, teacher, pool, loss=loss, key=name, seed=seed,
                                                  loss_options=options)
                stage_evaluate(run, data, FAR)
                results[key].append(run)
                print(f"{name}: accuracy {run.metrics['accuracy']:.4f}, TAR@FAR=1e-3 {run.metrics['tar_at_far']:.4f}, "
                      f"rank-1 {run.metrics['rank1']:.4f}", flush=True)
    minutes = (time.perf_counter() - t0) / 60

    alone = statistics.mean(r.metrics["accuracy"] for r in results["alone"])
    gap = teacher.metrics["accuracy"] - alone
    rows = [["teacher " + f"{cfg.teacher} x{cfg.teacher_width}", f"{teacher.metrics['accuracy']:.4f}",
             f"{teacher.metrics['tar_at_far']:.4f}", f"{teacher.metrics['rank1']:.4f}", "1 (seed 0)", ""]]
    for key, title, *_ in METHODS:
        runs = results[key]
        acc = [r.metrics["accuracy"] for r in runs]
        closed = (statistics.mean(acc) - alone) / gap if gap > 0 and key != "alone" else None
        rows.append([title, _mean_std(acc), _mean_std([r.metrics["tar_at_far"] for r in runs]),
                     _mean_std([r.metrics["rank1"] for r in runs]), str(len(runs)),
                     "" if closed is None else f"{closed:+.0%}"])
    body = (
        f"Synthetic identities at {cfg.input_size} px ({cfg.train_ids} labeled identities x {cfg.per_id} photos for "
        f"the students, x {teacher_per_id} for the teacher); "
        f"teacher {cfg.teacher} x{cfg.teacher_width} ({cfg.teacher_steps} steps), students {cfg.student} "
        f"x{cfg.student_width} with {cfg.student_embedding}-d embeddings, each {cfg.student_steps} steps of "
        f"{cfg.batch_size} labeled images, SGD lr {cfg.lr} cosine, clip 5, ArcFace (s={cfg.scale:g}, "
        f"m={cfg.margin}) on labeled rows for every student; the pool adds {cfg.pool_ids} other identities x "
        f"{cfg.pool_per_id} photos, one unlabeled row per labeled row. Evaluation on identities none of the "
        f"models saw: {cfg.pairs} verification pairs of {cfg.val_ids} identities (10-fold accuracy as insightface "
        f"computes it; TAR at FAR=1e-3 over all pairs) and rank-1 identification ({cfg.gallery_ids} gallery "
        f"identities). mean +- std over seeds (student initialisation, data order, augmentation); 'gap closed' = "
        f"(method - alone) / (teacher - alone) in mean accuracy. Wall time {minutes:.0f} min.\n\n"
        + table(["model", "verification acc", "TAR@FAR=1e-3", "rank-1", "seeds", "gap closed"], rows)
    )
    means = {key: statistics.mean(r.metrics["accuracy"] for r in runs) for key, runs in results.items()}
    stds = {key: statistics.stdev(r.metrics["accuracy"] for r in runs) if len(runs) > 1 else 0.0
            for key, runs in results.items()}
    best_baseline = max(("kd", "cosine"), key=means.__getitem__)
    margin = means["srd"] - means[best_baseline]
    noise = max(stds["srd"], stds[best_baseline])
    verdict = "yes" if margin > noise else ("no, within one std" if margin > -noise else "no")
    closed_srd = (means["srd"] - alone) / gap if gap > 0 else float("nan")
    body += (
        f"\n\nGoals of issue 6, read off this table: srd beats every baseline: **{verdict}** (srd {means['srd']:.4f} "
        f"vs best baseline {best_baseline} {means[best_baseline]:.4f}, difference {margin:+.4f}); srd closes at least "
        f"half of the teacher-student gap: **{'yes' if closed_srd >= 0.5 else 'no'}** ({closed_srd:.0%}); the "
        f"unlabeled pool adds on top of srd: **{'yes' if means['srd_pool'] - means['srd'] > stds['srd'] else 'no'}** "
        f"({means['srd_pool'] - means['srd']:+.4f}). MSE vs KL on the critic logits: {means['srd']:.4f} vs "
        f"{means['srd_kl']:.4f}. The pool run sees the same labeled images but twice the images per step (one "
        "unlabeled row per labeled row), so it also costs about twice the compute.")
    if args.labeled_per_id:
        write_section("distill_accuracy_few_labels", f"Distillation accuracy with {args.labeled_per_id} labeled photos "
                      "per identity (3 seeds)", body)
    else:
        write_section("distill_accuracy", "Distillation accuracy on synthetic identities (3 seeds)", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
