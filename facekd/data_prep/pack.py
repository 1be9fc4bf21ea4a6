"""Pack a folder of aligned crops (one sub-folder per identity) into insightface's RecordIO layout.

``python -m facekd.data_prep.pack CROPS OUT`` writes ``OUT/train.rec``, ``OUT/train.idx`` and
``OUT/property`` (record 0 header, image records, identity records) through
``facekd.data.recordio.FaceRecordWriter``, so both arcface_torch and facekd train from it, plus
``OUT/identities.tsv`` (label, folder name, image count). Identities are labelled 0..K-1 in
sorted folder-name order.

* JPEG crops of the right size are stored byte for byte; anything else is decoded, resized to
  ``--size`` if needed and encoded at ``--quality`` (counted and reported).
* ``--dedup`` drops files whose bytes equal an earlier file (anywhere in the set).
* ``--min-images N`` drops identities with fewer usable images.
* ``--val-ids F`` moves a seeded random fraction F of the identities to ``OUT/val/`` (same
  layout, its own labels 0..), for a train/validation identity split.
* Unreadable files are skipped and listed; existing outputs are refused unless ``--overwrite``.
"""
from __future__ import annotations

import argparse
import hashlib
import os
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Sequence

import numpy as np

from facekd.data.errors import DataFormatError
from facekd.data.folders import is_image_file
from facekd.data.recordio import FaceRecordWriter
from facekd.data_prep.crop_bytes import stored_crop
from facekd.data_prep.errors import DataPrepError, OutputExistsError
from facekd.log import get_logger, progress

__all__ = ["Identity", "PackReport", "scan_identities", "loose_images", "split_identities", "pack_folder",
           "build_parser", "main"]

log = get_logger(__name__)


@dataclass
class Identity:
    """One identity folder: its name and image files (sorted)."""

    name: str
    files: list[Path]


@dataclass
class PackReport:
    """What ``pack_folder`` wrote and what it left out."""

    out_dir: Path
    identities: int = 0
    images: int = 0
    kept_bytes: int = 0
    reencoded: int = 0
    resized: int = 0
    duplicates: list[tuple[str, str]] = field(default_factory=list)   # (dropped, same bytes as)
    unreadable: list[tuple[str, str]] = field(default_factory=list)   # (file, reason)
    dropped_identities: list[tuple[str, int]] = field(default_factory=list)  # (name, images left)
    resized_examples: list[str] = field(default_factory=list)  # the first few resized files
    loose_files: list[str] = field(default_factory=list)  # images directly in INPUT (no identity)
    val: "PackReport | None" = None


def _visible_files(folder: Path) -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out += [Path(dirpath) / f for f in filenames if not f.startswith(".") and is_image_file(Path(f))]
    return sorted(out)


def scan_identities(root: str | PathLike[str]) -> list[Identity]:
    """Identity sub-folders of ``root`` (sorted by name) with their image files (any depth)."""
    root = Path(root)
    if not root.is_dir():
        raise DataPrepError(f"{root}: input folder of identity sub-folders not found")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        loose = loose_images(root)
        hint = (f"; its {len(loose)} images (e.g. {loose[0].name}) lie directly in it: put each "
                f"person's images in a sub-folder named after them" if loose else "")
        raise DataPrepError(f"{root}: no identity sub-folders; expected ROOT/<identity>/<image>{hint}")
    return [Identity(p.name, _visible_files(p)) for p in folders]


def loose_images(root: str | PathLike[str]) -> list[Path]:
    """Image files directly in ``root``: outside every identity folder, so never packed."""
    root = Path(root)
    return sorted(p for p in root.iterdir()
                  if p.is_file() and not p.name.startswith(".") and is_image_file(p))


def split_identities(names: Sequence[str], val_fraction: float, seed: int = 0) -> tuple[list[str], list[str]]:
    """(train, val) names: a seeded random ``val_fraction`` of identities (at least one each side
    when the fraction is > 0), both lists sorted."""
    if not 0.0 <= val_fraction < 1.0:
        raise DataPrepError(f"--val-ids must be in [0, 1), got {val_fraction}")
    names = sorted(names)
    if val_fraction == 0.0:
        return names, []
    if len(names) < 2:
        raise DataPrepError(f"a train/validation split needs at least 2 identities, found {len(names)}")
    n_val = int(np.clip(round(val_fraction * len(names)), 1, len(names) - 1))
    pick = set(np.random.default_rng(seed).permutation(len(names))[:n_val].tolist())
    return ([n for i, n in enumerate(names) if i not in pick], [n for i, n in enumerate(names) if i in pick])


def _dedup(identities: list[Identity], report: PackReport) -> None:
    seen: dict[bytes, Path] = {}
    files = [f for ident in identities for f in ident.files]
    kept: dict[Path, bool] = {}
    for f in progress(files, desc="hash", unit="img"):
        try:
            digest = hashlib.sha256(f.read_bytes()).digest()
        except OSError:
            kept[f] = True  # reported as unreadable when packed
            continue
        first = seen.setdefault(digest, f)
        kept[f] = first == f
        if first != f:
            report.duplicates.append((str(f), str(first)))
    for ident in identities:
        ident.files = [f for f in ident.files if kept[f]]


def _output_paths(out: Path) -> list[Path]:
    return [out / n for n in ("train.rec", "train.idx", "property", "identities.tsv")]


def _write_split(out: Path, identities: list[Identity], *, size: int, quality: int,
                 min_images: int, overwrite: bool, report: PackReport, desc: str) -> None:
    total = sum(len(i.files) for i in identities)
    rows: list[str] = []
    actions = {"kept": 0, "reencoded": 0, "resized": 0}
    with FaceRecordWriter(out, image_size=(size, size), quality=quality, overwrite=overwrite) as writer, \
            progress(total=total, desc=desc, unit="img") as bar:
        for ident in identities:
            blobs, kept_files = [], []
            for f in ident.files:
                try:
                    data, action = stored_crop(f.read_bytes(), size, quality, f)
                except DataFormatError as err:
                    report.unreadable.append((str(f), err.problem))
                    continue
                except OSError as err:
                    report.unreadable.append((str(f), f"cannot read file: {err.strerror or err}"))
                    continue
                blobs.append((data, action))
                kept_files.append(f)
            bar.update(len(ident.files))
            if len(blobs) < min_images:
                report.dropped_identities.append((ident.name, len(blobs)))
                continue
            label = len(rows)
            for f, (data, action) in zip(kept_files, blobs):
                writer.add(data, label)
                actions[action] += 1
                if action == "resized" and len(report.resized_examples) < 3:
                    report.resized_examples.append(str(f))
            rows.append(f"{label}\t{ident.name}\t{len(blobs)}")
        if not rows:
            raise DataPrepError(f"{out}: no identity has --min-images {min_images} usable images; "
                                f"nothing to pack")
    (out / "identities.tsv").write_text("label\tname\timages\n" + "\n".join(rows) + "\n", encoding="utf-8")
    report.identities = len(rows)
    report.kept_bytes, report.reencoded, report.resized = (actions["kept"], actions["reencoded"],
                                                           actions["resized"])
    report.images = sum(actions.values())


def pack_folder(src: str | PathLike[str], out: str | PathLike[str], *, size: int = 112,
                quality: int = 95, dedup: bool = False, min_images: int = 1, val_ids: float = 0.0,
                seed: int = 0, overwrite: bool = False) -> PackReport:
    """Pack ``src`` (ROOT/<identity>/<crop>) into ``out``; see the module docstring."""
    src, out = Path(src), Path(out)
    if size <= 0 or not 1 <= quality <= 100 or min_images < 1:
        raise DataPrepError(f"need --size > 0, --quality in 1..100 and --min-images >= 1 "
                            f"(got {size}, {quality}, {min_images})")
    identities = scan_identities(src)
    train_names, val_names = split_identities([i.name for i in identities], val_ids, seed)
    outs = [out] + ([out / "val"] if val_names else [])
    existing = [p for o in outs for p in _output_paths(o) if p.exists()]
    if existing and not overwrite:
        raise OutputExistsError(f"{existing[0]} exists; pass --overwrite to replace the packed set")
    report = PackReport(out)
    report.loose_files = [str(f) for f in loose_images(src)]
    if report.loose_files:
        log.warning("%s: %d image(s) lie directly in the input folder, outside any identity folder, "
                    "and are not packed (e.g. %s); move them into INPUT/<identity>/", src,
                    len(report.loose_files), report.loose_files[0])
    if dedup:
        _dedup(identities, report)
    by_name = {i.name: i for i in identities}
    _write_split(out, [by_name[n] for n in train_names], size=size, quality=quality,
                 min_images=min_images, overwrite=overwrite, report=report, desc="pack train")
    if val_names:
        report.val = PackReport(out / "val")
        _write_split(out / "val", [by_name[n] for n in val_names], size=size, quality=quality,
                     min_images=min_images, overwrite=overwrite, report=report.val, desc="pack val")
    _hint_align(src, size, report)
    return report


def _hint_align(src: Path, size: int, report: PackReport) -> None:
    """Warn when images had to be resized: pack expects aligned crops, not photos."""
    parts = [r for r in (report, report.val) if r is not None]
    resized = sum(r.resized for r in parts)
    if not resized:
        return
    total = sum(r.images for r in parts)
    example = next(e for r in parts for e in r.resized_examples)
    log.warning("%d of %d images were not %dx%d and were resized (e.g. %s); pack expects aligned face "
                "crops: for photos run 'python -m facekd.data_prep.align %s ALIGNED' and pack ALIGNED "
                "(crops of another size: --size)", resized, total, size, size, example, src)


def build_parser() -> argparse.ArgumentParser:
    """The ``pack`` command's argument parser."""
    p = argparse.ArgumentParser(
        prog="python -m facekd.data_prep.pack",
        description="Pack aligned crops (INPUT/<identity>/<image>) into insightface's "
                    "train.rec/train.idx/property in OUTPUT (plus identities.tsv).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("input", help="folder with one sub-folder of aligned crops per identity")
    p.add_argument("output", help="folder for train.rec, train.idx, property, identities.tsv (and val/)")
    p.add_argument("--size", type=int, default=112, help="stored image size; other sizes are resized")
    p.add_argument("--quality", type=int, default=95,
                   help="JPEG quality for images that must be re-encoded (JPEGs of the right size "
                        "are stored as they are)")
    p.add_argument("--dedup", action="store_true", help="drop files whose bytes equal an earlier file")
    p.add_argument("--min-images", type=int, default=1,
                   help="drop identities with fewer usable images than this")
    p.add_argument("--val-ids", type=float, default=0.0,
                   help="fraction of identities moved to OUTPUT/val/ (0 = no validation split)")
    p.add_argument("--seed", type=int, default=0, help="seed of the validation split")
    p.add_argument("--overwrite", action="store_true", help="replace an existing packed set")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``pack``; exit code 0 on success, 2 on bad usage or existing outputs."""
    args = build_parser().parse_args(argv)
    try:
        report = pack_folder(args.input, args.output, size=args.size, quality=args.quality,
                             dedup=args.dedup, min_images=args.min_images, val_ids=args.val_ids,
                             seed=args.seed, overwrite=args.overwrite)
    except (DataPrepError, FileExistsError) as err:
        log.error("%s", err)
        return 2
    for part in (report, report.val):
        if part is None:
            continue
        log.info("%s: %d identities, %d images (%d stored as is, %d re-encoded, %d resized)",
                 part.out_dir, part.identities, part.images, part.kept_bytes, part.reencoded, part.resized)
        for name, n in part.dropped_identities[:10]:
            log.info("  dropped identity %s: %d usable images < --min-images", name, n)
        for f, reason in part.unreadable[:10]:
            log.info("  skipped %s: %s", f, reason)
    if report.duplicates:
        log.info("dropped %d duplicate files (e.g. %s = %s)", len(report.duplicates), *report.duplicates[0])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
