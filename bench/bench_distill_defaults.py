"""Distillation at the commands' own defaults (issue 19): no recipe flags at all.

Every student run gets only sizes, steps, seed and data: ArcFace s=64 m=0.5, ``--teacher-scale 64``,
lr 0.1 with polynomial decay, no warm-up, no gradient clipping, the default distillation options.
The teacher stands for the good teacher a user brings (a released r100): it is trained with a recipe
that converges on small data (s=32, m=0.4, warm-up, clipping, cosine decay, as the accuracy
benchmark's), and its own margin head (``head.pth``) is the critic. Two synthetic settings (the
accuracy benchmark's and a second one with more identities and fewer photos each), 3 seeds,
evaluated on identities none of the models saw. Goal: ``srd`` and ``srd`` + pool never below the
student alone.

Runs are kept in ``--work-dir`` (finished runs are reused, so the table can be rewritten without
retraining).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from bench._report import table, write_section


@dataclass(frozen=True)
class Setting:
    """One synthetic data setting."""

    key: str
    ids: int
    per_id: int
    teacher_steps: int
    student_steps: int
    seed: int


SETTINGS = {
    "bench": Setting("bench", ids=300, per_id=20, teacher_steps=500, student_steps=400, seed=0),
    "wide": Setting("wide", ids=500, per_id=12, teacher_steps=600, student_steps=400, seed=1),
}
METHODS = {  # key -> (title, loss or None for the student alone, unlabeled pool)
    "alone": ("student alone (ArcFace)", None, False),
    "kd": ("student + kd", "kd", False),
    "cosine": ("student + cosine", "cosine", False),
    "srd": ("student + srd", "srd", False),
    "kd_pool": ("student + kd + pool", "kd", True),
    "srd_pool": ("student + srd + pool", "srd", True),
}
SIZE, POOL_IDS, POOL_PER_ID = 32, 600, 10
TEACHER = {"arch": "r18", "width": 0.25, "embedding_size": 128}
STUDENT = {"arch": "mbf", "width": 0.125, "embedding_size": 64}
COMMON = ["--input-size", str(SIZE), "--amp", "off", "--val-pairs", "0", "--no-tensorboard", "--log-every", "100",
          "--ckpt-every", "200", "--keep-ckpts", "1"]


def _data(s: Setting) -> str:
    return f"synthetic:ids={s.ids},per_id={s.per_id},size={SIZE},seed={s.seed}"


def _pool(s: Setting) -> str:
    return f"synthetic:ids={POOL_IDS},per_id={POOL_PER_ID},size={SIZE},seed={s.seed}"


def _teacher_recipe(s: Setting) -> list[str]:
    return ["--scale", "32", "--margin", "0.4", "--clip-grad-norm", "5", "--warmup-steps", str(s.teacher_steps // 20),
            "--schedule", "cosine"]


def _train(argv: list[str], out: Path, entry: str) -> None:
    from facekd.engine.checkpoint import latest_checkpoint
    from facekd.pipelines import distill, train

    main = train.main if entry == "train" else distill.main
    if (out / "backbone.pth").is_file():
        return
    code = main(["--resume", str(out)] if latest_checkpoint(out) is not None else argv)
    if code:
        raise SystemExit(f"bench: {entry} run {out} failed (exit {code})")


def _eval_sets(root: Path, s: Setting) -> Path:
    from facekd.data.synthetic import export_eval_sets

    data = root / s.key / "eval"
    if not (data / "synthetic_val.bin").is_file():
        export_eval_sets(data, size=SIZE, seed=s.seed, num_val_ids=300, num_pairs=6000)
    return data


def _verify(run: Path, model: dict, data: Path) -> dict:
    from facekd.eval import verify

    out = run / "verification"
    if not (out / "verification.json").is_file():
        args = ["--model", str(run / "backbone.pth"), "--arch", model["arch"], "--out", str(out),
                "--bins", str(data / "synthetic_val.bin")]
        for k in ("width", "embedding_size"):
            args += ["--model-option", f"{k}={model[k]}"]
        args += ["--model-option", f"input_size={SIZE}"]
        if verify.main(args):
            raise SystemExit(f"bench: verify {run} failed")
    return json.loads((out / "verification.json").read_text())["sets"]["synthetic_val"]


def _teacher(root: Path, s: Setting, workers: int) -> Path:
    out = root / s.key / "teacher"
    _train(["--backbone", TEACHER["arch"], "--width", str(TEACHER["width"]), "--embedding-size",
            str(TEACHER["embedding_size"]), "--max-steps", str(s.teacher_steps), "--data", _data(s), "--workers",
            str(workers), *COMMON, *_teacher_recipe(s), "--out", str(out)], out, "train")
    return out


def _student(root: Path, s: Setting, key: str, seed: int, teacher: Path, workers: int) -> Path:
    _title, loss, pool = METHODS[key]
    out = root / s.key / f"{key}_seed{seed}"
    common = ["--width", str(STUDENT["width"]), "--embedding-size", str(STUDENT["embedding_size"]), "--max-steps",
              str(s.student_steps), "--data", _data(s), "--seed", str(seed), "--workers", str(workers), *COMMON,
              "--out", str(out)]
    if loss is None:
        _train(["--backbone", STUDENT["arch"], *common], out, "train")
    else:
        _train(["--teacher", TEACHER["arch"], "--teacher-weights", str(teacher / "backbone.pth"), "--teacher-head",
                str(teacher / "head.pth"), "--teacher-width", str(TEACHER["width"]), "--teacher-embedding-size",
                str(TEACHER["embedding_size"]), "--student", STUDENT["arch"], "--loss", loss, "--cache-dir",
                str(root / s.key / "teacher_cache"), *(["--unlabeled", _pool(s)] if pool else []), *common],
               out, "distill")
    return out


def _fmt(values: Sequence[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} +- {statistics.stdev(values):.4f}"


def run_setting(root: Path, s: Setting, methods: Sequence[str], seeds: int, workers: int) -> str:
    """Train and evaluate one setting; the Markdown table with its verdicts."""
    data = _eval_sets(root, s)
    teacher = _teacher(root, s, workers)
    t_acc = _verify(teacher, TEACHER, data)["accuracy"]
    acc: dict[str, list[float]] = {}
    for seed in range(seeds):
        for key in methods:
            run = _student(root, s, key, seed, teacher, workers)
            acc.setdefault(key, []).append(_verify(run, STUDENT, data)["accuracy"])
            print(f"{s.key} {key} seed {seed}: {acc[key][-1]:.4f}", flush=True)
    alone = acc["alone"]
    rows = [[f"teacher {TEACHER['arch']} x{TEACHER['width']}", f"{t_acc:.4f}", "", "", ""]]
    for key in methods:
        diffs = [a - b for a, b in zip(acc[key], alone)]
        verdict = "" if key == "alone" else ("yes" if min(diffs) >= 0 else f"no ({sum(d < 0 for d in diffs)} of "
                                                                           f"{len(diffs)} seeds below)")
        rows.append([METHODS[key][0], _fmt(acc[key]), "" if key == "alone" else f"{statistics.mean(diffs):+.4f}",
                     "" if key == "alone" else " ".join(f"{d:+.3f}" for d in diffs), verdict])
    return (f"**{s.key}**: {s.ids} identities x {s.per_id} photos, teacher {s.teacher_steps} steps, students "
            f"{s.student_steps} steps of 128; pool rows: {POOL_IDS} other identities x {POOL_PER_ID}, one per "
            f"labeled row.\n\n"
            + table(["model", "verification acc", "vs alone (mean)", "vs alone per seed (same seed)",
                     "never below alone"], rows))


def _parse_plan(text: str) -> dict[str, list[str]]:
    plan: dict[str, list[str]] = {}
    for part in filter(None, text.split(";")):
        key, _, names = part.partition(":")
        methods = [m for m in names.split(",") if m] or list(METHODS)
        bad = [x for x in [key, *methods] if x not in SETTINGS and x not in METHODS]
        if key not in SETTINGS or bad:
            raise SystemExit(f"bench: unknown setting or method in --plan: {part!r}")
        plan[key] = ["alone"] + [m for m in methods if m != "alone"]
    return plan


def main(argv: Sequence[str] | None = None) -> int:
    """Run the selected settings and methods; print and record the tables."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plan", default=";".join(f"{k}:{','.join(METHODS)}" for k in SETTINGS),
                        help="settings and their methods, 'SETTING:METHOD,...;SETTING:...' (settings: "
                             f"{', '.join(SETTINGS)}; methods: {', '.join(METHODS)}); default: every method in each")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="data-loading workers of each run")
    parser.add_argument("--quick", action="store_true", help="one seed, the 'bench' setting, alone and srd only")
    parser.add_argument("--work-dir", default=None, help="keep the runs here (finished runs are reused)")
    args = parser.parse_args(argv)
    os.environ.setdefault("FACEKD_NO_PROGRESS", "1")
    plan = {"bench": ["alone", "srd"]} if args.quick else _parse_plan(args.plan)
    seeds = 1 if args.quick else args.seeds
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="facekd_bench_defaults_") as tmp:
        root = Path(args.work_dir or tmp)
        parts = [run_setting(root, SETTINGS[k], methods, seeds, args.workers) for k, methods in plan.items()]
    minutes = (time.perf_counter() - t0) / 60
    body = ("Every student run at the commands' own defaults (ArcFace s=64 m=0.5, `--teacher-scale 64`, lr 0.1 poly, "
            "no warm-up, no clipping, default loss options); teacher r18 x0.25 (128-d), trained with a recipe that "
            "converges on small data (s=32, m=0.4, warm-up, clip 5, cosine: the good teacher a user brings), its own "
            "head.pth as the critic; students mbf x0.125 (64-d), 32 px synthetic identities; verification accuracy "
            "(10-fold, as "
            "insightface computes it) on 6,000 pairs of 300 held-out identities; mean +- std over "
            f"{seeds} seed(s); per-seed differences against the student alone of the same seed. Wall time "
            f"{minutes:.0f} min.\n\n" + "\n\n".join(parts))
    print(body)
    write_section("distill_defaults", "Distillation at the commands' defaults (no recipe flags)", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
