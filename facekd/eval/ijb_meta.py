"""Readers for insightface's IJB-B / IJB-C release layout (``DIR/meta``, ``DIR/loose_crop``).

Every reader checks its file line by line and raises ``IJBInputError`` whose message names the
file and the (1-based) line of the first problem. The 15.6M-line pair list is read by numpy's C
parser; only when that fails is the file scanned again in Python to say which line is wrong.
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

TARGETS = ("IJBC", "IJBB")
GALLERY_SPLITS = {"IJBC": ("G1", "G2"), "IJBB": ("S1", "S2")}


class IJBInputError(ValueError):
    """A missing or malformed IJB input; the message names the file and, where it applies, the line."""


@dataclass
class ImageList:
    """The 5pts file: image names, 5 landmarks [N, 5, 2] and faceness scores [N] (float32), source lines."""

    path: Path
    names: list[str]
    landmarks: np.ndarray
    faceness: np.ndarray
    lines: np.ndarray  # 1-based line number of each image in the file


@dataclass
class TemplateMedia:
    """The tid_mid file: image name, template id and media id of each image, in file order."""

    path: Path
    names: list[str]
    templates: np.ndarray
    medias: np.ndarray


@dataclass
class PairList:
    """The template pair file: template 1, template 2, label (1 genuine, 0 impostor) per line."""

    path: Path
    t1: np.ndarray
    t2: np.ndarray
    labels: np.ndarray


@dataclass
class TemplateSubjects:
    """A 1:N csv (gallery or probe): template id and subject id of each row, with its line number."""

    path: Path
    templates: np.ndarray
    subjects: np.ndarray
    lines: np.ndarray


@dataclass
class IJBMeta:
    """Everything under ``DIR/meta`` that the protocols read; ``gallery``/``probes`` None without 1:N files."""

    target: str
    root: Path
    images: ImageList
    media: TemplateMedia
    pairs: PairList
    gallery: list[TemplateSubjects] | None = None
    probes: TemplateSubjects | None = None

    @property
    def image_dir(self) -> Path:
        """Folder of the loose crops."""
        return self.root / "loose_crop"


def meta_paths(root: str | Path, target: str) -> dict[str, Path]:
    """Paths of the meta files of ``target`` (IJBC or IJBB) under ``root/meta``."""
    t = target.lower()
    meta = Path(root) / "meta"
    g1, g2 = GALLERY_SPLITS[target]
    return {"5pts": meta / f"{t}_name_5pts_score.txt", "tid_mid": meta / f"{t}_face_tid_mid.txt",
            "pairs": meta / f"{t}_template_pair_label.txt", "gallery1": meta / f"{t}_1N_gallery_{g1}.csv",
            "gallery2": meta / f"{t}_1N_gallery_{g2}.csv", "probes": meta / f"{t}_1N_probe_mixed.csv"}


def _require(path: Path) -> Path:
    if not path.is_file():
        raise IJBInputError(f"{path}: missing meta file (insightface's IJB layout puts it under DIR/meta)")
    return path


def _lines(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(1-based line number, whitespace-split fields) of every non-blank line."""
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            for number, line in enumerate(fh, 1):
                fields = line.split()
                if fields:
                    yield number, fields
    except UnicodeDecodeError as err:
        raise IJBInputError(f"{path}: not a text file ({err.reason} at byte {err.start})") from err


def _int(path: Path, line: int, value: str, what: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise IJBInputError(f"{path}:{line}: {what} '{value}' is not an integer") from None


def _float(path: Path, line: int, value: str, what: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise IJBInputError(f"{path}:{line}: {what} '{value}' is not a number") from None
    if not math.isfinite(number):
        raise IJBInputError(f"{path}:{line}: {what} '{value}' is not finite")
    return number


def _wrong_fields(path: Path, line: int, expected: str, found: int) -> IJBInputError:
    return IJBInputError(f"{path}:{line}: expected {expected}, found {found} fields")


def read_image_list(path: str | Path) -> ImageList:
    """Read ``{t}_name_5pts_score.txt``: name, x1 y1 ... x5 y5, faceness score per line."""
    path = _require(Path(path))
    names, coords, scores, lines = [], [], [], []
    for number, fields in _lines(path):
        if len(fields) != 12:
            raise _wrong_fields(path, number, "12 fields (image name, 10 landmark coordinates, faceness score)",
                                len(fields))
        names.append(fields[0])
        coords.append([_float(path, number, v, "landmark coordinate") for v in fields[1:11]])
        _float(path, number, fields[11], "faceness score")
        scores.append(fields[11])
        lines.append(number)
    if not names:
        raise IJBInputError(f"{path}: no images listed")
    # as arcface_torch: coordinates via float(), scores via numpy's str -> float32 cast
    return ImageList(path, names, np.asarray(coords, dtype=np.float32).reshape(-1, 5, 2),
                     np.array(scores).astype(np.float32), np.asarray(lines, dtype=np.int64))


def read_template_media(path: str | Path) -> TemplateMedia:
    """Read ``{t}_face_tid_mid.txt``: image name, template id, media id per line."""
    path = _require(Path(path))
    names, templates, medias = [], [], []
    for number, fields in _lines(path):
        if len(fields) != 3:
            raise _wrong_fields(path, number, "3 fields (image name, template id, media id)", len(fields))
        names.append(fields[0])
        templates.append(_int(path, number, fields[1], "template id"))
        medias.append(_int(path, number, fields[2], "media id"))
    if not names:
        raise IJBInputError(f"{path}: no images listed")
    tid = np.asarray(templates, dtype=np.int64)
    if tid.min() < 0:
        raise IJBInputError(f"{path}:{_line_of_record(path, int(np.argmax(tid < 0)))}: negative template id")
    return TemplateMedia(path, names, tid, np.asarray(medias, dtype=np.int64))


def _line_of_record(path: Path, k: int) -> int:
    """1-based line number of the ``k``-th (0-based) non-blank line."""
    for i, (number, _fields) in enumerate(_lines(path)):
        if i == k:
            return number
    return -1


def _first_bad_pair_line(path: Path, check: Callable[[int, list[str]], None]) -> None:
    for number, fields in _lines(path):
        check(number, fields)


def _check_pair_fields(path: Path) -> Callable[[int, list[str]], None]:
    def check(number: int, fields: list[str]) -> None:
        if len(fields) != 3:
            raise _wrong_fields(path, number, "3 fields (template 1, template 2, label)", len(fields))
        _int(path, number, fields[0], "template id")
        _int(path, number, fields[1], "template id")
        label = _int(path, number, fields[2], "label")
        if label not in (0, 1):
            raise IJBInputError(f"{path}:{number}: label {label} is not 0 or 1")
    return check


def read_pairs(path: str | Path) -> PairList:
    """Read ``{t}_template_pair_label.txt``: template 1, template 2, label (0/1) per line (numpy's C parser)."""
    path = _require(Path(path))
    try:
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # an empty file: reported below
            data = np.loadtxt(path, dtype=np.int64, ndmin=2, comments=None)
    except (ValueError, UnicodeDecodeError):
        _first_bad_pair_line(path, _check_pair_fields(path))
        raise IJBInputError(f"{path}: cannot be read as integer triplets") from None
    if data.size == 0:
        raise IJBInputError(f"{path}: no pairs listed")
    bad = (data.shape[1] != 3) or bool(np.any((data[:, 2] != 0) & (data[:, 2] != 1)))
    if bad:
        _first_bad_pair_line(path, _check_pair_fields(path))
        raise IJBInputError(f"{path}: not triplets of template 1, template 2, label 0/1")
    return PairList(path, np.ascontiguousarray(data[:, 0]), np.ascontiguousarray(data[:, 1]),
                    np.ascontiguousarray(data[:, 2]))


def read_template_subjects(path: str | Path) -> TemplateSubjects:
    """Read a 1:N csv (header row; template id, subject id, ... per row)."""
    path = _require(Path(path))
    templates, subjects, lines = [], [], []
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None or len(header) < 2:
            raise IJBInputError(f"{path}:1: expected a header row with at least 2 columns "
                                "(TEMPLATE_ID, SUBJECT_ID, ...)")
        for row in reader:
            number = reader.line_num
            if not row or not "".join(row).strip():
                continue
            if len(row) != len(header):
                raise IJBInputError(f"{path}:{number}: expected {len(header)} fields like the header, "
                                    f"found {len(row)}")
            templates.append(_int(path, number, row[0].strip(), "template id"))
            subjects.append(_int(path, number, row[1].strip(), "subject id"))
            lines.append(number)
    if not templates:
        raise IJBInputError(f"{path}: no rows after the header")
    return TemplateSubjects(path, np.asarray(templates, dtype=np.int64), np.asarray(subjects, dtype=np.int64),
                            np.asarray(lines, dtype=np.int64))


def _check_same_images(images: ImageList, media: TemplateMedia) -> None:
    if len(images.names) != len(media.names):
        raise IJBInputError(f"{media.path}: lists {len(media.names)} images, {images.path} lists "
                            f"{len(images.names)}; the two files must list the same images in the same order")
    for k, (a, b) in enumerate(zip(images.names, media.names)):
        if a != b:
            raise IJBInputError(f"{media.path}:{_line_of_record(media.path, k)}: image '{b}' where "
                                f"{images.path}:{images.lines[k]} has '{a}' (the files must list the same images "
                                "in the same order)")


def check_known_templates(known: np.ndarray, templates: np.ndarray, path: Path,
                          line_of: Callable[[int], int], media_path: Path) -> None:
    """Raise naming the first line of ``path`` whose template has no image in the tid_mid file."""
    pos = np.searchsorted(known, templates)
    missing = (pos >= known.size) | (known[np.minimum(pos, known.size - 1)] != templates)
    if missing.any():
        k = int(np.argmax(missing))
        raise IJBInputError(f"{path}:{line_of(k)}: template {int(templates[k])} has no image in {media_path}")


def read_meta(root: str | Path, target: str) -> IJBMeta:
    """Read and cross-check the meta files of ``target``; the 1:N files are read when all three exist."""
    target = target.upper()
    if target not in TARGETS:
        raise IJBInputError(f"--target must be IJBC or IJBB, got '{target}'")
    root = Path(root)
    if not root.is_dir():
        raise IJBInputError(f"{root}: no such folder (the IJB release folder with meta/ and loose_crop/)")
    paths = meta_paths(root, target)
    images = read_image_list(paths["5pts"])
    media = read_template_media(paths["tid_mid"])
    _check_same_images(images, media)
    pairs = read_pairs(paths["pairs"])
    known = np.unique(media.templates)
    for column in (pairs.t1, pairs.t2):
        check_known_templates(known, column, pairs.path, lambda k: _line_of_record(pairs.path, k), media.path)
    meta = IJBMeta(target, root, images, media, pairs)
    one_n = [paths["gallery1"], paths["gallery2"], paths["probes"]]
    present = [p.is_file() for p in one_n]
    if any(present) and not all(present):
        missing = [str(p) for p, ok in zip(one_n, present) if not ok]
        raise IJBInputError(f"{missing[0]}: missing 1:N file (the other 1:N files of {target} are present)")
    if all(present):
        meta.gallery = [read_template_subjects(p) for p in one_n[:2]]
        meta.probes = read_template_subjects(one_n[2])
        for part in (*meta.gallery, meta.probes):
            check_known_templates(known, part.templates, part.path, lambda k, p=part: int(p.lines[k]), media.path)
    return meta
