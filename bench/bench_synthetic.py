"""Synthetic face generation throughput on one core at 32, 64 and 112 px.

Times ``SyntheticFaces.render`` with the default difficulty and with every nuisance off (the
drawing alone), and a full training sample (render + flip + normalise to a tensor through
``open_dataset("synthetic:...")`` with the ``face`` transform). OpenCV and torch are limited to
one thread; each figure is the best of three repeats, since the machine is shared.
Goal: thousands of images/s at 32-64 px, so the generator is never the bottleneck of a CPU run.
"""
from __future__ import annotations

import argparse
import time
from typing import Callable, Sequence

import cv2
import torch

from bench._report import table, write_section
from facekd.data.datasets import open_dataset
from facekd.data.synthetic import SyntheticFaces
from facekd.data.transforms import face_train_transform

QUIET = dict(pose=0, expression=0, light=0, noise=0, blur=0, occlusion=0, background=0)


def _rate(fn: Callable[[int], object], n: int, repeats: int = 3) -> float:
    """Best images/s over ``repeats`` runs of ``fn(k)`` for k in 0..n-1."""
    best = 0.0
    for r in range(repeats):
        start = time.perf_counter()
        for k in range(n):
            fn(r * n + k)
        best = max(best, n / (time.perf_counter() - start))
    return best


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark, print the table and update docs/benchmarks.md."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="300 images per figure instead of 2000")
    parser.add_argument("--images", type=int, default=None, help="images per figure (default: 2000, 300 with --quick)")
    args = parser.parse_args(argv)
    n = args.images or (300 if args.quick else 2000)
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    rows = []
    for size in (32, 64, 112):
        faces = SyntheticFaces(seed=0, size=size)
        quiet = SyntheticFaces(seed=0, size=size, **QUIET)
        for i in range(100):  # identities are cached after their first photo, as in training
            faces.identity(i)
            quiet.identity(i)
        data = open_dataset(f"synthetic:ids=100,per_id=1000,size={size}", transform=face_train_transform())
        default = _rate(lambda k: faces.render(k % 100, k), n)
        clean = _rate(lambda k: quiet.render(k % 100, k), n)
        sample = _rate(lambda k: data[(k * 7919) % len(data)], n)
        rows.append([f"{size}x{size}", f"{default:,.0f}", f"{1e3 / default:.2f}", f"{clean:,.0f}", f"{sample:,.0f}"])
    body = table(["size", "render, default difficulty (img/s)", "ms/img", "render, nuisances off (img/s)",
                  "training sample: render + flip + normalise (img/s)"], rows)
    body += (f"\n\n{n} images per figure, best of 3, one thread. Identities are drawn once and cached; "
             f"every photo is rendered from scratch.")
    write_section("synthetic", "Synthetic identities: generation throughput (one core)", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
