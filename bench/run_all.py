"""Run every benchmark in bench/ in turn (``make bench``) and rewrite docs/benchmarks.md.

Each ``bench/bench_*.py`` also runs alone (``python -m bench.bench_NAME [--quick]``). The whole set
fits about an hour on a 2-core CPU: scripts that alone need more (or a GPU) are listed in
``RUN_SEPARATELY`` and skipped unless ``--all`` is given; their tables in docs/benchmarks.md name
the command that produced them. ``CPU_ARGS`` are the arguments each script gets here. ``--quick``
passes ``--quick`` to every script (a smoke pass: its figures replace the full ones, so do not
commit them).
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import time
from pathlib import Path

RUN_SEPARATELY = {
    "bench_binary": "python -m bench.bench_binary --jobs 3   (3 seeds x 5 students; about 7 min on one H200)",
    "bench_distill_accuracy": "python -m bench.bench_distill_accuracy   (12 methods x 3 seeds; about 65 min on 2 cores)",
    "bench_srd_study": "python -m bench.bench_srd_study --work-dir DIR   (variants of srd on bench_distill_accuracy's "
                       "work directory; about 2 min per run on 2 cores)",
    "bench_export": "python -m bench.bench_export   (trains a student, exports and times 8 models; about 20 min on 2 cores)",
    "bench_scale": "python -m bench.bench_scale   (93k-identity RecordIO, 2 torchrun x2 runs; about 15 min on 2 cores)",
}
"""Benchmarks run on their own (GPU-sized, or longer than the rest together), with their command."""
CPU_ARGS = {
    "bench_train": ["--quick"],  # the full mode's batch-32 r50 steps take about a minute each on 2 cores
}


def main(argv: list[str] | None = None) -> int:
    """Run the selected benchmarks; return 1 if any failed."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="pass --quick to every script")
    parser.add_argument("--all", action="store_true", help="also run the GPU-sized benchmarks")
    parser.add_argument("--only", nargs="*", default=None, help="run only these (e.g. bench_train bench_synthetic)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    here = Path(__file__).resolve().parent
    names = sorted(m.name for m in pkgutil.iter_modules([str(here)]) if m.name.startswith("bench_"))
    if args.only:
        names = [n for n in names if n in args.only]
    extra = ["--quick"] if args.quick else []
    failed, times = [], {}
    for name in names:
        if name in RUN_SEPARATELY and not args.all and not args.only:
            print(f"\n=== bench.{name}: skipped here; run it alone: {RUN_SEPARATELY[name]} ===", flush=True)
            continue
        print(f"\n=== bench.{name} ===", flush=True)
        module = importlib.import_module(f"bench.{name}")
        saved = sys.argv
        script_args = extra or CPU_ARGS.get(name, [])
        sys.argv = [f"bench/{name}.py", *script_args]
        t0 = time.perf_counter()
        try:
            if module.main(script_args):
                failed.append(name)
        finally:
            sys.argv = saved
            times[name] = time.perf_counter() - t0
    print("\n" + "\n".join(f"{n}: {t / 60:.1f} min" for n, t in times.items()))
    if failed:
        print("failed:", ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
