"""Training throughput (images/s) of the engine's step: mbf and r50 at 112x112 and the small CPU
configuration, plain vs channels_last vs torch.compile; on CUDA also AMP (fp16) on and off.

Each row is a real ``Trainer`` run (forward, ArcFace loss over 1,000 classes, backward, SGD step,
NaN guard) on a fixed in-memory batch, so data loading is not counted. The first steps (warm-up,
and compilation when compiling) are excluded from the timing.

    python -m bench.bench_train            # full
    python -m bench.bench_train --quick    # fewer steps, smaller 112-px batches
"""
from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn

from bench._report import table, write_section
from facekd.engine.config import TrainConfig
from facekd.engine.task import TrainTask
from facekd.engine.trainer import Trainer
from facekd.models.heads import build_head
from facekd.models.registry import build_backbone

NUM_CLASSES = 1000


@dataclass(frozen=True)
class Case:
    """One benchmark configuration."""

    arch: str
    width: float
    size: int
    embedding: int
    batch: int


class _FixedBatchTask(TrainTask):
    """Backbone + ArcFace head trained on one fixed random batch (no data loading)."""

    def __init__(self, case: Case) -> None:
        self.arch = case.arch
        self.backbone = build_backbone(case.arch, embedding_size=case.embedding, input_size=case.size, width=case.width)
        self.head = build_head("arcface", case.embedding, NUM_CLASSES)
        g = torch.Generator().manual_seed(0)
        self.images = torch.randn(case.batch, 3, case.size, case.size, generator=g)
        self.labels = torch.randint(0, NUM_CLASSES, (case.batch,), generator=g)

    def modules(self) -> dict[str, nn.Module]:
        return {"backbone": self.backbone, "head": self.head}

    def batches_per_epoch(self) -> int:
        return 10_000

    def train_batches(self, epoch: int, start: int) -> Iterable[Any]:
        for _ in range(start, self.batches_per_epoch()):
            yield {"images": self.images, "labels": self.labels}

    def compute_losses(self, batch: Any, modules: Mapping[str, nn.Module]) -> dict[str, Tensor]:
        return {"arcface": modules["head"](modules["backbone"](batch["images"]), batch["labels"])}


def measure(case: Case, variant: Mapping[str, Any], warmup: int, steps: int, device: str) -> float:
    """Images per second over ``steps`` timed steps after ``warmup`` untimed ones."""
    stamps: dict[int, float] = {}

    def clock(trainer: Trainer, step: int) -> None:
        if trainer.device.type == "cuda":
            torch.cuda.synchronize()
        stamps[step] = time.perf_counter()

    with tempfile.TemporaryDirectory() as out:
        cfg = TrainConfig(out=out, device=device, batch_size=case.batch, max_steps=warmup + steps, lr=0.01,
                          log_every=10_000, ckpt_every=10_000, keep_ckpts=1, tensorboard=False, schedule="constant",
                          **variant)
        torch.manual_seed(0)
        Trainer(cfg, _FixedBatchTask(case), callbacks=[clock]).fit()
    return case.batch * steps / (stamps[warmup + steps] - stamps[warmup])


def main(argv: Sequence[str] | None = None) -> int:
    """Run the table and write the ``train`` section of docs/benchmarks.md."""
    parser = argparse.ArgumentParser(prog="python -m bench.bench_train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer timed steps, batch 16 at 112 px (default: off)")
    parser.add_argument("--batch", type=int, default=0,
                        help="batch of the 112-px models (default: 16 with --quick, else 32; use 128 on a GPU)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows (default: off)")
    args = parser.parse_args(argv)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    big_batch = args.batch or (16 if args.quick else 32)
    warmup, steps = (1, 2) if args.quick else (2, 5)
    cases = [Case("mbf", 1.0, 112, 512, big_batch), Case("r50", 1.0, 112, 512, big_batch),
             Case("mbf", 0.25, 32, 128, 128)]
    variants: list[tuple[str, dict[str, Any]]] = [("plain", {"amp": "off"}),
                                                  ("channels_last", {"amp": "off", "channels_last": True})]
    if device == "cuda":
        variants.append(("AMP fp16", {"amp": "fp16"}))
        variants.append(("AMP fp16 + channels_last", {"amp": "fp16", "channels_last": True}))
    rows = []
    for case in cases:
        name = f"{case.arch} x{case.width:g} @{case.size}px, batch {case.batch}"
        results = [(label, measure(case, variant, warmup, steps, device)) for label, variant in variants]
        compile_here = not args.no_compile and (device == "cuda" or case.size <= 32)
        if compile_here:  # on CPU only the small model: inductor's C++ build of the 112-px graphs takes minutes
            results.append(("compiled", measure(case, {"amp": "off", "compile": True}, warmup + 2, steps, device)))
        base = results[0][1]
        for label, ips in results:
            rows.append([name, label, f"{ips:,.1f}", f"{ips / base:.2f}x"])
        print(rows[-len(results):])
    body = table(["model", "variant", "images/s", "vs plain"], rows)
    body += (f"\n\nTimed: {steps} steps after {warmup} warm-up steps (compiled: 2 more), fixed in-memory batch, "
             f"ArcFace over {NUM_CLASSES} classes, SGD; device {device}. On CPU, torch.compile is measured only for "
             "the 32-px model (building the 112-px graphs with inductor's C++ backend takes minutes on 2 cores), "
             "and AMP rows appear only on CUDA. Few timed steps: single figures move by 10-20 % between runs "
             "(tens of percent on the shared 2-core CPU machine); compare rows of one table only.")
    if device == "cuda":
        write_section("train_gpu", "Training throughput on a GPU (engine step, AMP)", body)
    else:
        write_section("train", "Training throughput (engine step)", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
