"""Distillation accuracy on synthetic identities: teacher, student alone, ``kd``, ``cosine``, the
face-specific baselines ``proxyless`` (ProxylessKD) and ``adadistill`` (AdaDistill), ``srd``, and
``srd``, ``kd``, ``cosine``, ``feat`` with the same unlabeled open-set pool at the same images per
step; same data, steps and optimiser for every student, 3 seeds, evaluated on identities none of
the models saw. ``--list`` prints the plan (methods, losses, options, images per step) and exits.

Runs the public pipelines through the demo's stage functions (``facekd.pipelines.demo``): one
teacher (seed 0), then each student method once per seed. Settings: the demo's 300 identities x 20
photos (default), ``--labeled-per-id 4`` (the students keep 4 labels per identity, the
semi-supervised case), ``--train-ids 1000 --per-id 10`` (the harder setting, where the critic has
1,000 classes). Goals (issue 14): ``srd`` beats every baseline without the pool and ``srd`` + pool
every baseline with the same pool, closing >= 65 % / >= 80 % of the teacher-student gap.
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
    # options may name {scale} and {margin}: the run's own ArcFace head's (DemoConfig.scale, .margin).
    # Every distilled student's critic is the teacher's own trained margin head (--teacher-head, as the
    # SRD paper does), except the rows in FITTED_CRITIC, which refit class means of the teacher's
    # embeddings (what distill does when a user has no head).
    ("alone", "student alone (ArcFace)", None, (), False),
    ("kd", "student + kd (Hinton, T=4)", "kd", (), False),
    ("cosine", "student + cosine", "cosine", (), False),
    ("srrl", "student + srrl (SRRL, SRD's supervised predecessor: labeled rows)", "srrl", (), False),
    ("srd_kl", "student + srd, KL logits (T=4)", "srd", ("srd.mode=kl",), False),
    ("srd", "student + srd, MSE logits (default)", "srd", (), False),
    ("srd_pool", "student + srd + unlabeled pool", "srd", (), True),
    ("proxyless", "student + proxyless (ProxylessKD: margin loss through the teacher's centres)", "proxyless",
     ("proxyless.scale={scale}", "proxyless.margin={margin}"), False),
    ("adadistill", "student + adadistill (AdaDistill: margin loss on adaptive teacher centres)", "adadistill",
     ("adadistill.scale={scale}", "adadistill.margin={margin}"), False),
    ("srd_fitted", "student + srd, critic fitted from class means (ablation)", "srd", (), False),
    ("proxyless_only", "student + proxyless alone (no ArcFace head: the paper's form)", "proxyless",
     ("proxyless.scale={scale}", "proxyless.margin={margin}"), False),
    ("kd_pool", "student + kd + unlabeled pool", "kd", (), True),
    ("cosine_pool", "student + cosine + unlabeled pool", "cosine", (), True),
    ("feat_pool", "student + feat + unlabeled pool", "feat", (), True),
)
FITTED_CRITIC = ("srd_fitted",)
"""Rows whose critic is refitted from the teacher's class means instead of its trained head."""
NO_LABEL_LOSS = ("proxyless_only",)
"""Rows trained with the distillation loss only (``--label-weight 0``), as their papers do."""
BASELINES = ("kd", "cosine", "srrl", "proxyless", "proxyless_only", "adadistill")
"""Rivals of ``srd`` without the pool."""
POOL_BASELINES = ("kd_pool", "cosine_pool", "feat_pool")
"""Rivals of ``srd_pool``: the same pool, one unlabeled row per labeled row, as ``srd_pool``."""


def method_options(options: Sequence[str], cfg: DemoConfig) -> tuple[str, ...]:
    """A method's loss options with ``{scale}`` and ``{margin}`` filled from the run's head."""
    return tuple(o.format(scale=f"{cfg.scale:g}", margin=f"{cfg.margin:g}") for o in options)


def method_args(key: str, teacher: ModelRun) -> tuple[str, ...]:
    """Distill flags of a row: the teacher's trained head as the critic (unless the row refits it),
    ``--label-weight 0`` for the rows trained with their distillation loss only."""
    args: tuple[str, ...] = () if key in FITTED_CRITIC else ("--teacher-head", str(teacher.out / "head.pth"))
    return args + (("--label-weight", "0") if key in NO_LABEL_LOSS else ())


def select_methods(spec: str) -> tuple[tuple, ...]:
    """The METHODS rows named in ``spec`` (comma-separated keys, 'all' for every one); 'alone' always
    runs (the gap is measured from it). SystemExit with the known keys on an unknown one."""
    keys = [k.strip() for k in spec.split(",") if k.strip()]
    if not keys or keys == ["all"]:
        return METHODS
    known = [m[0] for m in METHODS]
    bad = [k for k in keys if k not in known]
    if bad:
        raise SystemExit(f"bench_distill_accuracy: --methods: unknown method(s) {', '.join(bad)}; known: "
                         f"{', '.join(known)}")
    return tuple(m for m in METHODS if m[0] == "alone" or m[0] in keys)


def _versus(acc: dict[str, list[float]], key: str, rivals: Sequence[str]) -> str:
    """'yes' / 'no, within one std' / 'no' for ``key`` against the best of ``rivals`` on the mean
    accuracy (beyond one std of either), with the numbers and on how many seeds it wins."""
    rivals = [r for r in rivals if acc.get(r)]
    if not acc.get(key) or not rivals:
        return "not run"
    means = {k: statistics.mean(v) for k, v in acc.items() if v}
    best = max(rivals, key=means.__getitem__)
    diff = means[key] - means[best]
    noise = max(_std(acc[key]), _std(acc[best]))
    verdict = "yes" if diff > noise else ("no, within one std" if diff > -noise else "no")
    seeds = min(len(acc[key]), len(acc[best]))
    wins = sum(a > b for a, b in zip(acc[key], acc[best]))
    return (f"**{verdict}** ({key} {means[key]:.4f} vs best {best} {means[best]:.4f}, difference {diff:+.4f}; "
            f"above it on {wins} of {seeds} seeds)")


def _std(values: Sequence[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def verdict_text(acc: dict[str, list[float]], alone: float, gap: float) -> str:
    """The goals read off the table (only for the methods that ran); ``acc``: accuracy per seed."""
    means = {k: statistics.mean(v) for k, v in acc.items() if v}
    parts = [f"Goals, read off this table: srd beats every baseline without the pool: "
             f"{_versus(acc, 'srd', BASELINES)}; srd + pool beats every baseline with the same pool: "
             f"{_versus(acc, 'srd_pool', POOL_BASELINES)}"]
    for key in ("srd", "srd_pool"):
        if key in means and gap > 0:
            parts.append(f"{key} closes {(means[key] - alone) / gap:.0%} of the teacher-student gap")
    if "srd" in means and "srd_pool" in means:
        parts.append(f"the pool adds on top of srd: {means['srd_pool'] - means['srd']:+.4f}")
    if "srd" in means and "srd_fitted" in means:
        parts.append(f"critic: the teacher's trained head {means['srd']:.4f} vs class means fitted on the labeled "
                     f"set {means['srd_fitted']:.4f}")
    if "srd" in means and "srd_kl" in means:
        parts.append(f"MSE vs KL on the critic logits: {means['srd']:.4f} vs {means['srd_kl']:.4f}")
    return ("; ".join(parts) + ". Pool runs see the same labeled images plus one unlabeled row per labeled row "
            "(twice the images per step, about twice the compute), every pool method alike.")


def plan_lines(methods: Sequence[tuple], cfg: DemoConfig, seeds: int) -> list[str]:
    """One line per method: key, loss, options, pool, labeled + unlabeled images per step, seeds."""
    lines = []
    for key, title, loss, options, pool in methods:
        per_step = f"{cfg.batch_size} labeled" + (f" + {cfg.batch_size} unlabeled (pool)" if pool else "")
        opts = ",".join(method_options(options, cfg)) or "-"
        lines.append(f"{key:12s} loss={loss or '-'} options={opts} images/step={per_step} seeds={seeds}  # {title}")
    return lines


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
    parser.add_argument("--train-ids", type=int, default=None,
                        help="labeled training identities (teacher and students; default: the demo's 300); the "
                             "harder setting uses >= 1000 so the class-count dependence of the critic terms shows")
    parser.add_argument("--per-id", type=int, default=None,
                        help="photos per training identity for the teacher (default: the demo's 20)")
    parser.add_argument("--work-dir", default=None,
                        help="keep the runs here (finished runs are reused); default: a temporary folder")
    parser.add_argument("--methods", default="all",
                        help=f"comma-separated methods to run ('alone' always runs); known: "
                             f"{', '.join(m[0] for m in METHODS)}")
    parser.add_argument("--list", action="store_true", help="print the plan (methods, losses, images per step) "
                                                            "and exit without training")
    args = parser.parse_args(argv)
    os.environ.setdefault("FACEKD_NO_PROGRESS", "1")
    cfg = bench_config(args.quick)
    if args.train_ids:
        cfg = replace(cfg, train_ids=args.train_ids)
    if args.per_id:
        cfg = replace(cfg, per_id=args.per_id)
    methods = select_methods(args.methods)
    if args.list:
        print("\n".join(plan_lines(methods, cfg, args.seeds)))
        return 0
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
        results: dict[str, list[ModelRun]] = {m[0]: [] for m in methods}
        for seed in range(args.seeds):
            for key, _title, loss, options, pool in methods:
                name = f"{key}_seed{seed}"
                if loss is None:
                    run = stage_student_alone(cfg, out, key=name, seed=seed)
                else:
                    run = stage_student_distilled(cfg, out, teacher, pool, loss=loss, key=name, seed=seed,
                                                  loss_options=method_options(options, cfg),
                                                  extra_args=method_args(key, teacher))
                stage_evaluate(run, data, FAR)
                results[key].append(run)
                print(f"{name}: accuracy {run.metrics['accuracy']:.4f}, TAR@FAR=1e-3 {run.metrics['tar_at_far']:.4f}, "
                      f"rank-1 {run.metrics['rank1']:.4f}", flush=True)
    minutes = (time.perf_counter() - t0) / 60

    alone = statistics.mean(r.metrics["accuracy"] for r in results["alone"])
    gap = teacher.metrics["accuracy"] - alone
    rows = [["teacher " + f"{cfg.teacher} x{cfg.teacher_width}", f"{teacher.metrics['accuracy']:.4f}",
             f"{teacher.metrics['tar_at_far']:.4f}", f"{teacher.metrics['rank1']:.4f}", "1 (seed 0)", ""]]
    for key, title, *_ in methods:
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
        f"m={cfg.margin}) on labeled rows for every student but proxyless_only (the distillation loss alone, as "
        f"its paper); the critic of every distilled student is the teacher's own trained margin head "
        f"(srd_fitted: class means of the teacher's embeddings instead); the pool adds {cfg.pool_ids} other "
        f"identities x {cfg.pool_per_id} photos, one unlabeled row per labeled row. Evaluation on identities none of the "
        f"models saw: {cfg.pairs} verification pairs of {cfg.val_ids} identities (10-fold accuracy as insightface "
        f"computes it; TAR at FAR=1e-3 over all pairs) and rank-1 identification ({cfg.gallery_ids} gallery "
        f"identities). mean +- std over seeds (student initialisation, data order, augmentation); 'gap closed' = "
        f"(method - alone) / (teacher - alone) in mean accuracy. Wall time {minutes:.0f} min "
        f"(runs already in the work directory are reused, not retrained; one student run takes about 1.5 min "
        f"on 2 idle cores).\n\n"
        + table(["model", "verification acc", "TAR@FAR=1e-3", "rank-1", "seeds", "gap closed"], rows)
    )
    body += "\n\n" + verdict_text({key: [r.metrics["accuracy"] for r in runs] for key, runs in results.items()},
                                    alone, gap)
    if args.train_ids and args.train_ids != DemoConfig().train_ids:
        write_section(f"distill_accuracy_ids{cfg.train_ids}", f"Distillation accuracy with {cfg.train_ids} training "
                      f"identities ({args.seeds} seeds)", body)
    elif args.labeled_per_id:
        write_section("distill_accuracy_few_labels", f"Distillation accuracy with {args.labeled_per_id} labeled photos "
                      f"per identity ({args.seeds} seeds)", body)
    else:
        write_section("distill_accuracy", f"Distillation accuracy on synthetic identities ({args.seeds} seeds)", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
