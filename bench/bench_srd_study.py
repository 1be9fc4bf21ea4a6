"""What SRD's face form needs (issue 14, item 2): variants of ``srd`` on the distillation-accuracy
benchmark's data, teacher and recipe (``bench.bench_distill_accuracy``), each with and without the
unlabeled pool where it matters: the loss weight beta, the feature term (lambda_f, 0 = logits only),
MSE vs KL on the cross-network logits, the logit scale (``logit_norm``), the connector, the critic
(the teacher's trained head vs class means), and combinations with ``proxyless`` and ``kd``.

Shares the work directory with bench_distill_accuracy (same data, teacher and cache), so the
default rows (``srd``, ``srd_pool``, ``kd``, ``kd_pool``) are reused, not retrained. The table
decides ``SRDFace``'s defaults; its docstring quotes it.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple, Sequence

from bench._report import table, write_section
from bench.bench_distill_accuracy import FAR, bench_config, method_options
from facekd.pipelines.demo import ModelRun, stage_data, stage_evaluate, stage_student_distilled, stage_teacher


class Variant(NamedTuple):
    key: str
    title: str
    loss: str
    options: tuple[str, ...]
    pool: bool
    fitted: bool = False


VARIANTS = (
    Variant("kd", "kd (baseline)", "kd", (), False),
    Variant("srd", "srd, defaults", "srd", (), False),
    Variant("srd_b16", "srd, beta=16", "srd", ("srd.beta=16",), False),
    Variant("srd_kl", "srd, KL logits (T=4)", "srd", ("srd.mode=kl",), False),
    Variant("srd_proxyless", "srd:1,proxyless:1", "srd:1,proxyless:1",
            ("proxyless.scale={scale}", "proxyless.margin={margin}"), False),
    Variant("srd_kd", "srd:1,kd:1", "srd:1,kd:1", (), False),
    Variant("kd_pool", "kd + pool (baseline)", "kd", (), True),
    Variant("srd_pool", "srd + pool, defaults", "srd", (), True),
    Variant("srd_b16_pool", "srd + pool, beta=16", "srd", ("srd.beta=16",), True),
    Variant("srd_b32_pool", "srd + pool, beta=32", "srd", ("srd.beta=32",), True),
    Variant("srd_logits_pool", "srd + pool, logits only (lambda_f=0)", "srd", ("srd.lambda_f=0",), True),
    Variant("srd_feat4_pool", "srd + pool, lambda_f=4", "srd", ("srd.lambda_f=4",), True),
    Variant("srd_raw_pool", "srd + pool, raw s*cos MSE (logit_norm=none, beta=1)", "srd",
            ("srd.logit_norm=none", "srd.beta=1"), True),
    Variant("srd_bn_pool", "srd + pool, Linear+BN connector", "srd", ("srd.connector=bn",), True),
    Variant("srd_kl_pool", "srd + pool, KL logits (T=4)", "srd", ("srd.mode=kl",), True),
    Variant("srd_fitted_pool", "srd + pool, critic fitted from class means", "srd", (), True, True),
    Variant("srd_proxyless_pool", "srd:1,proxyless:1 + pool", "srd:1,proxyless:1",
            ("proxyless.scale={scale}", "proxyless.margin={margin}"), True),
    Variant("srd_kd_pool", "srd:1,kd:1 + pool", "srd:1,kd:1", (), True),
)


def select(spec: str) -> tuple[Variant, ...]:
    """The VARIANTS named in ``spec`` (comma-separated keys, 'all' for every one)."""
    keys = [k.strip() for k in spec.split(",") if k.strip()]
    if not keys or keys == ["all"]:
        return VARIANTS
    known = {v.key: v for v in VARIANTS}
    bad = [k for k in keys if k not in known]
    if bad:
        raise SystemExit(f"bench_srd_study: unknown variant(s) {', '.join(bad)}; known: {', '.join(known)}")
    return tuple(known[k] for k in keys)


def main(argv: Sequence[str] | None = None) -> int:
    """Train each variant for each seed (reusing finished runs), print and record the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", required=True, help="bench_distill_accuracy's work directory (runs reused)")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds, e.g. 0,1,2")
    parser.add_argument("--variants", default="all", help="comma-separated keys; known: "
                                                          + ", ".join(v.key for v in VARIANTS))
    parser.add_argument("--existing-only", action="store_true",
                        help="train nothing: tabulate the finished runs of the named variants and seeds")
    args = parser.parse_args(argv)
    os.environ.setdefault("FACEKD_NO_PROGRESS", "1")
    out = Path(args.work_dir)
    cfg = replace(bench_config(False), out=str(out))
    seeds = [int(s) for s in args.seeds.split(",")]
    variants = select(args.variants)
    t0 = time.perf_counter()
    data = stage_data(cfg, out)
    teacher = stage_teacher(cfg, out)
    stage_evaluate(teacher, data, FAR)
    results: dict[str, list[ModelRun]] = {v.key: [] for v in variants}
    for seed in seeds:
        for v in variants:
            if args.existing_only and not (out / f"{v.key}_seed{seed}" / "backbone.pth").is_file():
                continue
            extra = () if v.fitted else ("--teacher-head", str(teacher.out / "head.pth"))
            run = stage_student_distilled(cfg, out, teacher, v.pool, loss=v.loss, key=f"{v.key}_seed{seed}",
                                          seed=seed, loss_options=method_options(v.options, cfg), extra_args=extra)
            stage_evaluate(run, data, FAR)
            results[v.key].append(run)
            print(f"{v.key}_seed{seed}: accuracy {run.metrics['accuracy']:.4f}, "
                  f"TAR@FAR=1e-3 {run.metrics['tar_at_far']:.4f}", flush=True)
    rows = []
    for v in variants:
        if not results[v.key]:
            continue
        acc = [r.metrics["accuracy"] for r in results[v.key]]
        tar = [r.metrics["tar_at_far"] for r in results[v.key]]
        spread = f" +- {statistics.stdev(acc):.4f}" if len(acc) > 1 else ""
        rows.append([v.title, ", ".join(f"{a:.4f}" for a in acc), f"{statistics.mean(acc):.4f}{spread}",
                     f"{statistics.mean(tar):.4f}", "yes" if v.pool else "no"])
    minutes = (time.perf_counter() - t0) / 60
    body = (f"Variants of `srd` on bench_distill_accuracy's setting (20 labels per identity, teacher's trained "
            f"head as the critic unless said, {cfg.student_steps} student steps of {cfg.batch_size} labeled "
            f"images, pool rows one unlabeled per labeled); seeds {args.seeds} (each row lists the seeds it "
            f"ran); wall time {minutes:.0f} min "
            f"(finished runs reused).\n\n"
            + table(["variant", "accuracy per seed", "mean accuracy", "TAR@FAR=1e-3", "pool"], rows))
    write_section("srd_study", "What SRD's face form needs (issue 14)", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
