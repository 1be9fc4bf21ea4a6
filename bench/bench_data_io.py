"""RecordIO read + decode + augment throughput against the plain cv2.imdecode bound.

Writes a synthetic train.rec of 112x112 JPEGs to a temporary folder, then times a DataLoader
over ``MXFaceRecord`` (read + decode + flip + normalise) and, side by side in the same run, the
same DataLoader over the same JPEG bytes held in memory (``cv2.imdecode`` + the same augment):
the gap between the two is what the reader costs. Goal: at most 10% over the bound.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Sequence

import albumentations as A
import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from bench._report import table, write_section
from facekd.data.image_codec import encode_image
from facekd.data.recordio import MXFaceRecord, write_face_record


def _augment() -> A.Compose:
    return A.Compose([A.HorizontalFlip(p=0.5), A.Normalize(mean=0.5, std=0.5, max_pixel_value=255.0)])


def _to_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))


class RecordSet(Dataset):
    """MXFaceRecord.read (pread + unpack + decode) followed by the augment."""

    def __init__(self, path: Path) -> None:
        self.records = MXFaceRecord(path)
        self.aug = _augment()

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        rgb, label = self.records.read(i)
        return _to_tensor(self.aug(image=rgb)["image"]), label


class BytesSet(Dataset):
    """The bound: the same JPEG bytes from memory, cv2.imdecode + BGR->RGB, the same augment."""

    def __init__(self, blobs: list[bytes], labels: np.ndarray) -> None:
        self.blobs = [np.frombuffer(b, dtype=np.uint8) for b in blobs]
        self.labels = labels.tolist()
        self.aug = _augment()

    def __len__(self) -> int:
        return len(self.blobs)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        rgb = cv2.cvtColor(cv2.imdecode(self.blobs[i], cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        return _to_tensor(self.aug(image=rgb)["image"]), self.labels[i]


def _synthetic_faces(n: int, ids: int, seed: int = 0) -> list[tuple[bytes, int]]:
    """Compressible 112x112 JPEGs: smooth upsampled colour fields per identity plus small noise."""
    rng = np.random.default_rng(seed)
    per_id = max(1, n // ids)
    out = []
    for k in range(n):
        label = min(k // per_id, ids - 1)
        base = np.random.default_rng(label).integers(0, 256, (6, 6, 3)).astype(np.float32)
        field = cv2.resize(base, (112, 112), interpolation=cv2.INTER_CUBIC)
        field += rng.normal(0, 6, field.shape).astype(np.float32)
        out.append((encode_image(np.clip(field, 0, 255).astype(np.uint8), ".jpg", 95), label))
    return out


def _epoch(loader: DataLoader) -> tuple[float, int]:
    start, seen = time.perf_counter(), 0
    for images, _ in loader:
        seen += images.shape[0]
    return time.perf_counter() - start, seen


def _decode_only(blobs: list[bytes], repeats: int) -> float:
    arrays = [np.frombuffer(b, dtype=np.uint8) for b in blobs]
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for a in arrays:
            cv2.imdecode(a, cv2.IMREAD_COLOR)
        best = min(best, time.perf_counter() - start)
    return len(arrays) / best


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--images", type=int, default=2000, help="images in the synthetic .rec")
    parser.add_argument("--ids", type=int, default=100, help="identities in the synthetic .rec")
    parser.add_argument("--batch-size", type=int, default=64, help="DataLoader batch size")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2],
                        help="DataLoader worker counts to time")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed epochs per setting (best kept; bound and reader alternate)")
    parser.add_argument("--quick", action="store_true", help="500 images, 2 repeats")
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.repeats = 500, 2
    torch.set_num_threads(1)
    cv2.setNumThreads(1)

    with tempfile.TemporaryDirectory(prefix="facekd_bench_io_") as tmp:
        samples = _synthetic_faces(args.images, args.ids)
        write_face_record(Path(tmp) / "set", samples)
        records = RecordSet(Path(tmp) / "set")
        blobs = [records.records.read_bytes(i) for i in range(len(records))]
        bound = BytesSet(blobs, records.records.labels)
        rows = []
        decode_rate = _decode_only(blobs, args.repeats)
        rows.append(["cv2.imdecode only, in-process loop", "-", f"{decode_rate:,.0f}", "-", "-"])
        for workers in args.workers:
            loaders = {name: DataLoader(ds, batch_size=args.batch_size, num_workers=workers,
                                        persistent_workers=workers > 0, shuffle=False)
                       for name, ds in (("bound", bound), ("reader", records))}
            best = {name: float("inf") for name in loaders}
            for name, loader in loaders.items():  # warm-up epoch: starts the workers
                _epoch(loader)
            for _ in range(args.repeats):
                for name, loader in loaders.items():
                    seconds, seen = _epoch(loader)
                    best[name] = min(best[name], seconds)
            rate = {name: seen / best[name] for name in best}
            overhead = best["reader"] / best["bound"] - 1
            rows.append([f"DataLoader, {workers} worker(s)", f"{rate['reader']:,.0f}",
                         f"{rate['bound']:,.0f}", f"{rate['reader'] / rate['bound']:.3f}",
                         f"{overhead * 100:+.1f}%"])
            del loaders
    headers = ["setting", "MXFaceRecord + augment (img/s)", "bound: bytes in memory (img/s)",
               "ratio", "reader overhead"]
    body = (f"{args.images} synthetic 112x112 JPEGs (quality 95) in a train.rec, batch "
            f"{args.batch_size}; augment = albumentations HorizontalFlip + Normalize(0.5, 0.5) "
            f"+ CHW tensor. The bound decodes the same bytes held in memory (cv2.imdecode + "
            f"BGR->RGB) with the same augment and DataLoader; best of {args.repeats} epochs "
            f"after a warm-up, bound and reader alternating. Goal: reader overhead <= 10%.\n\n"
            + table(headers, rows)
            + "\n\nOn a shared 2-core machine the worker rows are noisy (other jobs compete for the "
              "cores); the overhead column is the number to watch.")
    write_section("data_io", "RecordIO read + decode + augment throughput", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
