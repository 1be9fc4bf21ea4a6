"""Cost of per-sample augmentation seeding against a 112x112 JPEG decode + augment.

The loaders reseed the dataset's transform before every sample so that its augmentation depends
only on (seed, epoch, stream, index), not on workers or order. This times, per sample and in one
process: decode + augment (``face`` pipeline, default flip only and with every augmentation on),
albumentations' own ``Compose.set_random_seed`` (two new generators per step), and facekd's
``ImageTransform.reseed`` (one shared pair restarted in place) plus the loader's seed packing;
then one epoch through ``EpochLoader`` against a plain shuffled DataLoader over the same
dataset, side by side. Goal: per-sample seeding <= 10% of decode + augment.
"""
from __future__ import annotations

import argparse
import time
from typing import Callable, Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader

from bench._report import table, write_section
from facekd.data.batch import collate_samples
from facekd.data.datasets import ImageDataset
from facekd.data.image_codec import encode_image
from facekd.data.loaders import EpochLoader, sample_seed
from facekd.data.transforms import ImageTransform, face_train_transform

_ALL_AUGMENTATIONS = dict(color_jitter=1.0, blur=0.5, affine=1.0, erasing=0.5)


class JpegsInMemory:
    """An ``ImageSource`` over JPEG bytes held in memory (decode on read)."""

    def __init__(self, blobs: list[np.ndarray]) -> None:
        self.blobs = blobs
        self.labels = np.zeros(len(blobs), dtype=np.int64)

    def __len__(self) -> int:
        return len(self.blobs)

    @property
    def num_classes(self) -> int:
        return 1

    def read(self, i: int) -> tuple[np.ndarray, int]:
        return cv2.cvtColor(cv2.imdecode(self.blobs[i], cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB), 0


def _jpegs(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        field = cv2.resize(rng.integers(0, 256, (6, 6, 3)).astype(np.float32), (112, 112),
                           interpolation=cv2.INTER_CUBIC) + rng.normal(0, 6, (112, 112, 3)).astype(np.float32)
        out.append(np.frombuffer(encode_image(np.clip(field, 0, 255).astype(np.uint8), ".jpg", 95), np.uint8))
    return out


def _per_item_us(fn: Callable[[int], object], n: int, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        for i in range(n):
            fn(i)
        best = min(best, time.process_time() - start)
    return best / n * 1e6


def _epoch_seconds(loader: object) -> float:
    start = time.process_time()
    for _ in loader:  # type: ignore[attr-defined]
        pass
    return time.process_time() - start


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--images", type=int, default=2000, help="synthetic 112x112 JPEGs")
    parser.add_argument("--batch-size", type=int, default=64, help="loader batch size")
    parser.add_argument("--repeats", type=int, default=5, help="timed passes per measurement (best kept)")
    parser.add_argument("--quick", action="store_true", help="500 images, 3 repeats")
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.repeats = 500, 3
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    blobs = _jpegs(args.images)
    source = JpegsInMemory(blobs)

    rows = []
    for label, knobs in (("flip only (default)", {}), ("all augmentations", _ALL_AUGMENTATIONS)):
        aug: ImageTransform = face_train_transform(**knobs)
        work = _per_item_us(lambda i: aug.apply(source.read(i)[0]), args.images, args.repeats)
        albu = _per_item_us(lambda i: aug.compose.set_random_seed(i), args.images, args.repeats)
        ours = _per_item_us(lambda i: aug.reseed(sample_seed(0, 0, i)), args.images, args.repeats)
        aug.reseed(0)  # back on facekd's generators after set_random_seed replaced them
        ours_only = _per_item_us(lambda i: aug.reseed(i << 32 | 12345), args.images, args.repeats)
        rows.append([label, f"{work:.0f}", f"{albu:.1f} ({albu / work:.0%})",
                     f"{ours_only:.1f} ({ours_only / work:.0%})", f"{ours:.1f} ({ours / work:.0%})"])

    dataset = ImageDataset(source, face_train_transform())
    plain = DataLoader(dataset, batch_size=args.batch_size, shuffle=True, drop_last=True, collate_fn=collate_samples,
                       generator=torch.Generator().manual_seed(0))
    seeded = EpochLoader(dataset, args.batch_size, workers=0, pin_memory=False)
    best = {"plain": float("inf"), "seeded": float("inf")}
    passes = 3 * args.repeats  # a whole-loader difference of a few percent needs more passes to beat the noise
    for _ in range(passes):
        best["plain"] = min(best["plain"], _epoch_seconds(plain))
        best["seeded"] = min(best["seeded"], _epoch_seconds(seeded))
    seen = len(seeded) * args.batch_size
    loader_rows = [["DataLoader(shuffle=True), no reseeding", f"{seen / best['plain']:,.0f}", "-"],
                   ["EpochLoader (per-sample reseed)", f"{seen / best['seeded']:,.0f}",
                    f"{best['seeded'] / best['plain'] - 1:+.1%}"]]

    headers = ["face pipeline", "decode + augment (us/img)", "albumentations set_random_seed (us)",
               "ImageTransform.reseed (us)", "reseed + sample_seed (us)"]
    body = (f"{args.images} synthetic 112x112 JPEGs (quality 95) decoded from memory; one process, one thread, "
            f"timed in CPU time of this process (time.process_time, so other jobs on a shared machine do not "
            f"count); best of {args.repeats} passes. Percentages are of decode + augment. ``sample_seed`` derives the "
            f"seed with a SeedSequence on every call; the loader does that once per epoch and only packs the "
            f"index per sample, so its per-sample cost is the ImageTransform.reseed column. "
            f"Goal: per-sample seeding <= 10% of decode + augment.\n\n"
            + table(headers, rows)
            + f"\n\nOne epoch, workers=0, batch {args.batch_size}, flip-only pipeline; best of {passes} "
              f"epochs, the two loaders alternating:\n\n"
            + table(["loader", "img/s", "overhead"], loader_rows)
            + "\n\nCPU time still varies with cache and memory-bandwidth contention on a shared machine; compare "
              "columns within a row.")
    write_section("sample_seeding", "Per-sample augmentation seeding cost", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
