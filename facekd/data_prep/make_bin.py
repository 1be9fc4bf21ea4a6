"""Build a verification ``.bin`` (lfw.bin-style pickle of image bytes + issame flags) from pairs.

``python -m facekd.data_prep.make_bin OUT.bin`` with one pair source:

* ``--lfw-pairs pairs.txt --root DIR``: LFW's format (header ``10 300`` = folds and pairs per
  class per fold; ``name n1 n2`` = same person, ``name1 n1 name2 n2`` = different), images at
  ``DIR/name/name_0001.jpg`` (``--ext`` for other extensions);
* ``--pair-list list.txt``: lines ``path1 path2 label`` (label 1/0, true/false, same/diff;
  tab-separated when paths contain spaces), paths relative to ``--root`` (default: the list's
  folder);
* ``--folder DIR``: pairs sampled from an identity folder (DIR/<identity>/<image>): identities
  are shuffled (``--seed``) into ``--folds`` disjoint groups, and each fold holds
  ``--num-pairs / folds / 2`` genuine pairs then as many impostor pairs drawn inside its group,
  so insightface's 10-fold protocol (contiguous folds) never shares an identity between folds.
  ``--save-pairs`` writes the sampled pairs as a pair list, once the .bin is written (both
  outputs are checked before anything is read: existing ones need ``--overwrite``).

Images are stored as their JPEG bytes when already ``--size`` JPEGs, else decoded, resized and
encoded at ``--quality`` (``--no-resize`` refuses other sizes). The file is written with
``facekd.data.verification_bin.save_bin`` and reads back with insightface's loader and
``facekd.data.load_bin``.
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from facekd.data.errors import DataFileNotFoundError, DataFormatError
from facekd.data.verification_bin import save_bin
from facekd.data_prep.crop_bytes import stored_crop
from facekd.data_prep.errors import DataPrepError, OutputExistsError
from facekd.data_prep.pack import scan_identities
from facekd.log import get_logger, progress

__all__ = [
    "Pair", "BinReport", "PAIR_SOURCES", "read_lfw_pairs", "read_pair_list", "sample_folder_pairs",
    "write_pair_list", "check_outputs", "build_bin", "build_parser", "main",
]

log = get_logger(__name__)


@dataclass(frozen=True)
class Pair:
    """Two image files and whether they show the same person."""

    a: Path
    b: Path
    same: bool


@dataclass
class BinReport:
    """What ``build_bin`` wrote."""

    path: Path
    pairs: int
    genuine: int
    images: int
    kept_bytes: int = 0
    reencoded: int = 0
    resized: int = 0


# ----------------------------------------------------------------------------- LFW pairs.txt
def _lines(path: Path) -> list[tuple[int, str]]:
    if not path.is_file():
        raise DataFileNotFoundError(path, "pairs file")
    text = path.read_text(encoding="utf-8")
    return [(n, ln.strip()) for n, ln in enumerate(text.splitlines(), 1)
            if ln.strip() and not ln.lstrip().startswith("#")]


def read_lfw_pairs(pairs_txt: str | PathLike[str], root: str | PathLike[str],
                   ext: str = ".jpg") -> list[Pair]:
    """Pairs of an LFW-style pairs.txt; images at ``root/name/name_NNNN<ext>``."""
    path, root = Path(pairs_txt), Path(root)
    lines = _lines(path)
    expected = None
    if lines and len(lines[0][1].split()) == 2:
        head = lines.pop(0)
        try:
            folds, per_fold = (int(t) for t in head[1].split())
        except ValueError:
            raise DataFormatError(path, f"header {head[1]!r} is not two integers (folds, pairs per "
                                        f"class per fold)", f"line {head[0]}") from None
        expected = 2 * folds * per_fold
    pairs = []
    for n, line in lines:
        tok = line.split()
        if len(tok) == 3:
            name, i, j = tok[0], _number(tok[1], path, n), _number(tok[2], path, n)
            pairs.append(Pair(_lfw_file(root, name, i, ext), _lfw_file(root, name, j, ext), True))
        elif len(tok) == 4:
            pairs.append(Pair(_lfw_file(root, tok[0], _number(tok[1], path, n), ext),
                              _lfw_file(root, tok[2], _number(tok[3], path, n), ext), False))
        else:
            raise DataFormatError(path, f"expected 'name n1 n2' or 'name1 n1 name2 n2', got "
                                        f"{len(tok)} fields", f"line {n}")
    if expected is not None and expected != len(pairs):
        log.warning("%s: header announces %d pairs, the file lists %d", path, expected, len(pairs))
    return pairs


def _number(token: str, path: Path, line: int) -> int:
    try:
        return int(token)
    except ValueError:
        raise DataFormatError(path, f"image number {token!r} is not an integer", f"line {line}") from None


def _lfw_file(root: Path, name: str, number: int, ext: str) -> Path:
    return root / name / f"{name}_{number:04d}{ext}"


# ----------------------------------------------------------------------------- path1 path2 label
_LABELS = {"1": True, "0": False, "true": True, "false": False, "same": True, "diff": False,
           "different": False, "genuine": True, "impostor": False}


def read_pair_list(list_file: str | PathLike[str], root: str | PathLike[str] | None = None) -> list[Pair]:
    """Pairs of a ``path1 path2 label`` file (relative paths resolved against ``root``, default
    the list's folder)."""
    path = Path(list_file)
    base = Path(root) if root is not None else path.parent
    pairs = []
    for n, line in _lines(path):
        tok = line.split("\t") if "\t" in line else line.split()
        if len(tok) != 3:
            raise DataFormatError(path, f"expected 'path1 path2 label', got {len(tok)} fields", f"line {n}")
        label = _LABELS.get(tok[2].strip().lower())
        if label is None:
            raise DataFormatError(path, f"label {tok[2]!r} is not one of {sorted(_LABELS)}", f"line {n}")
        pairs.append(Pair(base / tok[0].strip(), base / tok[1].strip(), label))
    return pairs


def write_pair_list(path: str | PathLike[str], pairs: Sequence[Pair], root: str | PathLike[str]) -> Path:
    """Write ``pairs`` as a tab-separated pair list with paths relative to ``root``."""
    path, root = Path(path), Path(root)
    rows = [f"{p.a.relative_to(root).as_posix()}\t{p.b.relative_to(root).as_posix()}\t{int(p.same)}"
            for p in pairs]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- sampled from folders
def sample_folder_pairs(root: str | PathLike[str], num_pairs: int = 6000, folds: int = 10,
                        seed: int = 0) -> list[Pair]:
    """Balanced pairs from ``root/<identity>/<image>`` in ``folds`` contiguous blocks whose
    identities are disjoint; each block = genuine pairs then impostor pairs (seeded)."""
    if folds < 1 or num_pairs < 2 * folds or num_pairs % (2 * folds):
        raise DataPrepError(f"--num-pairs ({num_pairs}) must be a positive multiple of 2 x --folds "
                            f"({2 * folds}) so every fold has as many genuine as impostor pairs")
    identities = [i for i in scan_identities(root) if i.files]
    if len(identities) < 2 * folds:
        fits = len(identities) // 2
        fix = (f"add identities, or pass --folds {fits} (verify's 10-fold accuracy is then computed on folds "
               f"that share identities)" if fits >= 1 else "add identities (at least 2 are needed)")
        raise DataPrepError(f"{root}: {len(identities)} identities with images; {folds} folds of "
                            f"disjoint identities need at least {2 * folds}: {fix}")
    rng = np.random.default_rng(seed)
    groups = np.array_split(rng.permutation(len(identities)), folds)
    per_class = num_pairs // (2 * folds)
    pairs: list[Pair] = []
    for k, group in enumerate(groups):
        members = [identities[i] for i in sorted(group.tolist())]
        pairs += _genuine(members, per_class, rng, k)
        pairs += _impostor(members, per_class, rng, k)
    return pairs


def _draw_unique(draw: Callable[[], tuple[Path, Path]], n: int, possible: int, what: str) -> list[tuple[Path, Path]]:
    if possible < n:
        raise DataPrepError(f"{what}: only {possible} distinct pairs exist, {n} needed; add images "
                            f"or identities, or lower --num-pairs")
    seen: set[frozenset[Path]] = set()
    out = []
    for _ in range(100 * n + 1000):
        a, b = draw()
        key = frozenset((a, b))
        if key not in seen:
            seen.add(key)
            out.append((a, b))
            if len(out) == n:
                return out
    raise DataPrepError(f"{what}: could not draw {n} distinct pairs at random (of {possible} "
                        f"possible); lower --num-pairs")


def _genuine(members: list, n: int, rng: np.random.Generator, fold: int) -> list[Pair]:
    eligible = [m for m in members if len(m.files) >= 2]
    possible = sum(math.comb(len(m.files), 2) for m in eligible)

    def draw() -> tuple[Path, Path]:
        m = eligible[rng.integers(len(eligible))]
        i, j = rng.choice(len(m.files), size=2, replace=False)
        return m.files[i], m.files[j]
    return [Pair(a, b, True) for a, b in
            _draw_unique(draw, n, possible, f"fold {fold} genuine pairs")]


def _impostor(members: list, n: int, rng: np.random.Generator, fold: int) -> list[Pair]:
    sizes = [len(m.files) for m in members]
    possible = (sum(sizes) ** 2 - sum(s * s for s in sizes)) // 2

    def draw() -> tuple[Path, Path]:
        i, j = rng.choice(len(members), size=2, replace=False)
        return (members[i].files[rng.integers(sizes[i])], members[j].files[rng.integers(sizes[j])])
    return [Pair(a, b, False) for a, b in
            _draw_unique(draw, n, possible, f"fold {fold} impostor pairs")]


# ----------------------------------------------------------------------------- writing
def build_bin(pairs: Sequence[Pair], out: str | PathLike[str], *, size: int = 112, quality: int = 95,
              resize: bool = True, overwrite: bool = False) -> BinReport:
    """Read every image of ``pairs`` once, size-check/convert it and write the .bin at ``out``."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise OutputExistsError(f"{out} exists; pass --overwrite to replace it")
    if not pairs:
        raise DataPrepError("no pairs to write")
    files = list(dict.fromkeys(p for pair in pairs for p in (pair.a, pair.b)))
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise DataPrepError(f"{len(missing)} image file(s) of the pairs are missing, e.g. "
                            + ", ".join(str(m) for m in missing[:3]))
    stored: dict[Path, bytes] = {}
    actions = {"kept": 0, "reencoded": 0, "resized": 0}
    for f in progress(files, desc="images", unit="img"):
        data, action = stored_crop(f.read_bytes(), size, quality, f)
        if action == "resized" and not resize:
            raise DataFormatError(f, f"image is not {size}x{size} (--no-resize given)")
        stored[f] = data
        actions[action] += 1
    if actions["resized"]:
        log.warning("%d of %d images were not %dx%d and were resized; are they aligned crops?",
                    actions["resized"], len(files), size, size)
    bins = [stored[f] for pair in pairs for f in (pair.a, pair.b)]
    issame = [pair.same for pair in pairs]
    save_bin(out, bins, issame)
    return BinReport(out, len(pairs), sum(issame), len(files), actions["kept"], actions["reencoded"],
                     actions["resized"])


# ----------------------------------------------------------------------------- command line
_Source = Callable[[argparse.Namespace], list[Pair]]
PAIR_SOURCES: dict[str, _Source] = {}


def _source(dest: str) -> Callable[[_Source], _Source]:
    def deco(fn: _Source) -> _Source:
        PAIR_SOURCES[dest] = fn
        return fn
    return deco


@_source("lfw_pairs")
def _from_lfw(args: argparse.Namespace) -> list[Pair]:
    if args.root is None:
        raise DataPrepError("--lfw-pairs needs --root, the folder holding name/name_NNNN images")
    return read_lfw_pairs(args.lfw_pairs, args.root, args.ext)


@_source("pair_list")
def _from_list(args: argparse.Namespace) -> list[Pair]:
    return read_pair_list(args.pair_list, args.root)


@_source("folder")
def _from_folder(args: argparse.Namespace) -> list[Pair]:
    return sample_folder_pairs(args.folder, args.num_pairs, args.folds, args.seed)


def check_outputs(output: str | PathLike[str], save_pairs: str | PathLike[str] | None, *,
                  folder: str | None, overwrite: bool) -> None:
    """Refuse, before anything is read or written, outputs that exist (without ``--overwrite``), a
    ``--save-pairs`` file that is the .bin itself, and ``--save-pairs`` without ``--folder``."""
    out = Path(output)
    targets = [out]
    if save_pairs is not None:
        pairs_path = Path(save_pairs)
        if folder is None:
            raise DataPrepError("--save-pairs writes the pairs sampled with --folder; the other sources "
                                "already are pair files")
        if pairs_path.resolve() == out.resolve():
            raise DataPrepError(f"--save-pairs {pairs_path} is the output .bin itself; name the pair "
                                f"list differently, e.g. --save-pairs {out.with_suffix('.pairs.txt')}")
        targets.append(pairs_path)
    existing = [t for t in targets if t.exists()]
    if existing and not overwrite:
        raise OutputExistsError(f"{existing[0]} exists; pass --overwrite to replace "
                                + ("it" if len(existing) == 1 else "both"))


def build_parser() -> argparse.ArgumentParser:
    """The ``make_bin`` command's argument parser."""
    p = argparse.ArgumentParser(
        prog="python -m facekd.data_prep.make_bin",
        description="Write a verification .bin (insightface's lfw.bin format) from LFW pairs.txt, "
                    "a 'path1 path2 label' list, or pairs sampled from an identity folder.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("output", help="the .bin file to write")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--lfw-pairs", default=None, help="LFW-style pairs.txt (needs --root)")
    src.add_argument("--pair-list", default=None, help="file of 'path1 path2 label' lines")
    src.add_argument("--folder", default=None,
                     help="identity folder (FOLDER/<identity>/<image>) to sample balanced pairs from")
    p.add_argument("--root", default=None,
                   help="image root for --lfw-pairs (required) and --pair-list (default: the list's folder)")
    p.add_argument("--ext", default=".jpg", help="image extension of LFW-style file names")
    p.add_argument("--num-pairs", type=int, default=6000,
                   help="pairs to sample with --folder (half genuine), a multiple of 2 x --folds")
    p.add_argument("--folds", type=int, default=10, help="folds of disjoint identities with --folder")
    p.add_argument("--seed", type=int, default=0, help="seed of the --folder sampling")
    p.add_argument("--save-pairs", default=None, help="with --folder: also write the sampled pairs here")
    p.add_argument("--size", type=int, default=112, help="stored image size (HxW)")
    p.add_argument("--quality", type=int, default=95, help="JPEG quality for images that are re-encoded")
    p.add_argument("--no-resize", action="store_true",
                   help="refuse images that are not --size x --size instead of resizing them")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``make_bin``; exit code 0 on success, 2 on bad input."""
    args = build_parser().parse_args(argv)
    dest = next(d for d in PAIR_SOURCES if getattr(args, d) is not None)
    try:
        check_outputs(args.output, args.save_pairs, folder=args.folder, overwrite=args.overwrite)
        pairs = PAIR_SOURCES[dest](args)
        report = build_bin(pairs, args.output, size=args.size, quality=args.quality,
                           resize=not args.no_resize, overwrite=args.overwrite)
        if args.save_pairs:  # only once the .bin it describes exists
            log.info("wrote the sampled pairs to %s", write_pair_list(args.save_pairs, pairs, args.folder))
    except (DataPrepError, DataFormatError, DataFileNotFoundError) as err:
        log.error("%s", err)
        return 2
    log.info("%s: %d pairs (%d genuine, %d impostor) over %d images (%d stored as is, %d re-encoded, "
             "%d resized)", report.path, report.pairs, report.genuine, report.pairs - report.genuine,
             report.images, report.kept_bytes, report.reencoded, report.resized)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
