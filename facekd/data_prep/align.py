"""Detect, align and crop faces: a folder tree of photos -> a mirrored tree of aligned crops.

``python -m facekd.data_prep.align PHOTOS CROPS`` finds 5 landmarks per face (a detector, or a
``--landmarks`` CSV/JSON file), keeps one face per photo by the ``--select`` policy (or every
face with ``--all-faces``) and warps it with insightface's ``face_align.norm_crop`` onto the
ArcFace template. Every photo gets a line in ``CROPS/manifest.jsonl`` (see
``facekd.data_prep.manifest``) and the end of the run writes ``CROPS/align_summary.json`` with
the failures (unreadable, too small, no face, ...) and the photos with several faces. Nothing
about a single photo stops the batch. Re-running skips every photo already in the manifest
(``--retry-failed`` retries the failures, ``--overwrite`` redoes everything).

Crop sizes: norm_crop supports multiples of 112 (template scaled) and of 128 (template scaled
and shifted 8/128 of the width right, insightface's 128-px convention). Other sizes are refused
rather than resized, so a crop is always exactly ``norm_crop`` of its photo and landmarks.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import time
import warnings
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path, PurePosixPath
from typing import Any, Sequence

import cv2
import numpy as np
from insightface.utils.face_align import norm_crop

from facekd.data.errors import DataFormatError
from facekd.data.folders import IMAGE_EXTENSIONS, is_image_file
from facekd.data.image_codec import encode_image
from facekd.data_prep.detectors import (
    DETECTORS, SELECTION_POLICIES, DetectorSpec, Face, FaceDetector, build_detector, check_detector,
    rank_faces,
)
from facekd.data_prep.errors import DataPrepError
from facekd.data_prep.landmarks_io import read_landmarks
from facekd.data_prep.manifest import STATUS_OK, ManifestWriter, load_manifest
from facekd.data_prep.photos import read_photo
from facekd.log import get_logger, progress

__all__ = [
    "check_crop_size", "align_face", "AlignOptions", "AlignJob", "Aligner", "AlignReport",
    "list_images", "plan_jobs", "run_align", "build_parser", "main", "FAILURE_CODES",
]

log = get_logger(__name__)

#: status codes of failed photos and what they mean (the summary counts them)
FAILURE_CODES = {
    "unreadable": "file cannot be read or decoded as an image",
    "too_small": "image smaller than --min-side",
    "no_face": "the detector found no face above --min-score",
    "no_landmarks": "--detector none and the landmarks file has no entry for the image",
    "bad_landmarks": "given landmarks lie outside the image",
    "detector_error": "the detector raised an error on this image",
    "write_error": "the crop could not be written",
}


# ----------------------------------------------------------------------------- the warp
def check_crop_size(size: int) -> int:
    """``size`` if norm_crop supports it (a multiple of 112 or 128), else ``DataPrepError``."""
    size = int(size)
    if size <= 0 or (size % 112 and size % 128):
        raise DataPrepError(
            f"crop size {size} is not supported: insightface's norm_crop places the ArcFace "
            f"template only at multiples of 112 (112, 224, ...) or of 128 (128, 256, ...). "
            f"Align at one of those and resize the crops if you need another size.")
    return size


def align_face(image: np.ndarray, landmarks: np.ndarray | Sequence[Sequence[float]],
               size: int = 112) -> np.ndarray:
    """The ``size`` x ``size`` crop of ``image`` aligning 5 ``landmarks`` (x, y) on the ArcFace
    template: exactly insightface's ``norm_crop`` (similarity transform, zero border)."""
    lmk = np.asarray(landmarks, dtype=np.float64).reshape(5, 2)
    if not np.all(np.isfinite(lmk)):
        raise ValueError("landmarks contain NaN or infinity")
    size = check_crop_size(size)
    with warnings.catch_warnings():  # scikit-image deprecation notice raised inside insightface
        warnings.simplefilter("ignore", FutureWarning)
        return norm_crop(image, lmk, image_size=size)


# ----------------------------------------------------------------------------- one photo
@dataclass(frozen=True)
class AlignOptions:
    """Everything a worker needs to process a photo (picklable)."""

    input_root: str
    output_root: str
    size: int = 112
    detector: DetectorSpec | None = field(default_factory=DetectorSpec)
    select: str = "largest"
    all_faces: bool = False
    min_side: int = 32
    max_side: int = 1280
    ext: str = ".jpg"
    quality: int = 95


@dataclass(frozen=True)
class AlignJob:
    """One photo: its path relative to the input root, the crop path without extension, and the
    user's landmarks (10 floats) when given."""

    source: str
    crop_base: str
    landmarks: tuple[float, ...] | None = None


def _round(a: np.ndarray | None) -> list | None:
    return None if a is None else np.round(np.asarray(a, dtype=np.float64), 2).tolist()


def _exact(a: np.ndarray) -> list:
    """Full-precision floats: the manifest's landmarks reproduce the crop exactly."""
    return np.asarray(a, dtype=np.float64).tolist()


class Aligner:
    """Processes photos one at a time: read, find landmarks, pick face(s), warp, write crop(s).

    The detector is built on first use, so photos with given landmarks never load one.
    """

    def __init__(self, options: AlignOptions) -> None:
        self.options = options
        check_crop_size(options.size)
        if options.select not in SELECTION_POLICIES:
            raise DataPrepError(f"unknown --select {options.select!r}; choose one of {sorted(SELECTION_POLICIES)}")
        self._detector: FaceDetector | None = None

    @property
    def detector(self) -> FaceDetector:
        """The face detector (built once per process)."""
        if self._detector is None:
            assert self.options.detector is not None
            self._detector = build_detector(self.options.detector)
        return self._detector

    def process(self, job: AlignJob, run: str) -> list[dict[str, Any]]:
        """Manifest records for ``job`` (one per written crop, or one failure record)."""
        o = self.options
        base = {"source": job.source, "run": run}
        try:
            image = read_photo(Path(o.input_root) / job.source)
        except DataFormatError as err:
            return [dict(base, status="unreadable", reason=err.problem)]
        h, w = image.shape[:2]
        base["image_size"] = [h, w]
        if min(h, w) < o.min_side:
            return [dict(base, status="too_small",
                         reason=f"image is {h}x{w} px, below --min-side {o.min_side}")]
        if job.landmarks is not None:
            lmk = np.asarray(job.landmarks, dtype=np.float64).reshape(5, 2)
            if np.any(lmk < 0) or np.any(lmk[:, 0] > w) or np.any(lmk[:, 1] > h):
                return [dict(base, status="bad_landmarks", landmarks=_exact(lmk),
                             reason=f"given landmarks fall outside the {h}x{w} image")]
            faces = [Face(np.r_[lmk.min(0), lmk.max(0)], lmk, float("nan"))]
            chosen, given = [0], True
        else:
            if o.detector is None:
                return [dict(base, status="no_landmarks",
                             reason="no entry in the landmarks file and --detector none")]
            try:
                faces = self._detect(image)
            except (RuntimeError, ValueError, cv2.error) as err:
                return [dict(base, status="detector_error", reason=f"{type(err).__name__}: {err}")]
            if not faces:
                return [dict(base, status="no_face",
                             reason=f"no face with score >= {o.detector.min_score}")]
            order = rank_faces(faces, (h, w), o.select)
            chosen, given = (order if o.all_faces else order[:1]), False
        return [self._write(image, job, base, faces, idx, rank, given) for rank, idx in enumerate(chosen)]

    def _detect(self, image: np.ndarray) -> list[Face]:
        h, w = image.shape[:2]
        scale = min(1.0, self.options.max_side / max(h, w))
        if scale < 1.0:
            small = cv2.resize(image, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
            return [f.scaled(1.0 / scale) for f in self.detector.detect(small)]
        return self.detector.detect(image)

    def _write(self, image: np.ndarray, job: AlignJob, base: dict[str, Any], faces: list[Face],
               idx: int, rank: int, given: bool) -> dict[str, Any]:
        o = self.options
        face = faces[idx]
        suffix = f"_{rank}" if o.all_faces and not given else ""
        crop_rel = job.crop_base + suffix + o.ext
        rec = dict(base, status=STATUS_OK, crop=crop_rel, box=None if given else _round(face.box),
                   landmarks=_exact(face.landmarks), score=None if given else round(face.score, 4),
                   faces=len(faces), kept=idx, face=rank,
                   reason="" if len(faces) == 1 else
                   f"{len(faces)} faces; kept #{idx} by --select {o.select}" if not o.all_faces else
                   f"{len(faces)} faces; this is #{idx} (rank {rank})")
        try:
            crop = align_face(image, face.landmarks, o.size)
            _atomic_write(Path(o.output_root) / crop_rel, encode_image(crop, o.ext, o.quality))
        except OSError as err:
            return dict(base, status="write_error", reason=f"{crop_rel}: {err.strerror or err}")
        return rec


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- worker processes
_WORKER: Aligner | None = None


def _init_worker(options: AlignOptions) -> None:
    """Per-process set-up: one thread each for OpenCV and torch (parallelism = processes)."""
    global _WORKER
    cv2.setNumThreads(1)
    import torch  # already loaded by insightface; MTCNN runs on it
    torch.set_num_threads(1)
    _WORKER = Aligner(options)


def _work(jobs: list[AlignJob], run: str) -> list[dict[str, Any]]:
    assert _WORKER is not None, "worker not initialised"
    return [rec for job in jobs for rec in _WORKER.process(job, run)]


# ----------------------------------------------------------------------------- planning
def list_images(root: str | PathLike[str], exclude: str | PathLike[str] | None = None) -> list[str]:
    """Image files under ``root`` as sorted ``/``-separated relative paths (hidden entries and the
    ``exclude`` folder skipped)."""
    root = Path(root)
    skip = Path(exclude).resolve() if exclude is not None else None
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")
                             and (skip is None or (here / d).resolve() != skip))
        for name in filenames:
            if not name.startswith(".") and is_image_file(Path(name)):
                found.append((here / name).relative_to(root).as_posix())
    return sorted(found)


def _crop_bases(sources: list[str]) -> dict[str, str]:
    """Crop path (no extension) per source: the source path minus its extension, or the full name
    when two sources would collide (``a.png`` and ``a.jpg`` -> ``a.png``, ``a.jpg``)."""
    stems = [str(PurePosixPath(s).with_suffix("")) for s in sources]
    counts = Counter(stems)
    return {s: (stem if counts[stem] == 1 else s) for s, stem in zip(sources, stems)}


def _is_done(records: list[dict[str, Any]], output_root: Path, retry_failed: bool) -> bool:
    if all(r.get("status") == STATUS_OK for r in records):
        return all((output_root / r["crop"]).is_file() for r in records)
    return not retry_failed


def plan_jobs(sources: list[str], landmarks: dict[str, np.ndarray] | None,
              done: dict[str, list[dict[str, Any]]], output_root: Path,
              retry_failed: bool = False) -> list[AlignJob]:
    """The photos still to process (those without a finished manifest entry)."""
    bases = _crop_bases(sources)
    jobs = []
    for s in sources:
        if s in done and _is_done(done[s], output_root, retry_failed):
            continue
        lmk = landmarks.get(s) if landmarks else None
        jobs.append(AlignJob(s, bases[s], None if lmk is None else tuple(float(v) for v in lmk.ravel())))
    return jobs


# ----------------------------------------------------------------------------- the batch
@dataclass
class AlignReport:
    """Outcome of ``run_align``: counts over the whole manifest and over this run."""

    total_images: int
    processed: int
    skipped: int
    counts: dict[str, int]
    failures: list[dict[str, Any]]
    multiple_faces: list[dict[str, Any]]
    crops: int
    manifest: Path
    summary: Path

    @property
    def failed(self) -> int:
        """Number of photos (over the whole manifest) without a crop."""
        return len(self.failures)


#: what this module imports at load time: the forkserver imports these once for every worker
_WORKER_IMPORTS = ("cv2", "numpy", "insightface.utils.face_align", "facekd.data.image_codec",
                   "facekd.data_prep.detectors", "facekd.data_prep.landmarks_io",
                   "facekd.data_prep.manifest", "facekd.data_prep.photos")


def _forkserver_preload(main_name: str) -> list[str]:
    """Modules the forkserver imports before forking workers.

    Run as ``python -m facekd.data_prep.align``, this module is ``__main__`` and multiprocessing
    executes it again in each worker as ``__mp_main__`` (so ``__main__._work`` unpickles); a
    preloaded ``facekd.data_prep.align`` would then already sit in ``sys.modules`` and runpy warns
    "found in sys.modules ... unpredictable behaviour". So only its dependencies are preloaded
    then; imported as a library (``facekd align``, tests) the module itself is."""
    return list(_WORKER_IMPORTS) if main_name == "__main__" else [*_WORKER_IMPORTS, main_name]


def _pool_context(start_method: str | None) -> mp.context.BaseContext:
    """``forkserver`` by default where available: workers fork from a clean server that has
    imported this module's dependencies once (cheap start, and no fork of a process whose
    torch/OpenMP thread pools are live, which can deadlock); ``spawn`` elsewhere."""
    method = start_method or ("forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn")
    ctx = mp.get_context(method)
    if method == "forkserver":
        ctx.set_forkserver_preload(_forkserver_preload(__name__))
    return ctx


def _run_in_process(options: AlignOptions, jobs: list[AlignJob], run: str, sink: ManifestWriter,
                    bar: Any) -> None:
    """The batch in this process, with torch limited to one thread meanwhile (MTCNN with several
    OpenMP threads on a busy machine was measured 20x slower, not faster)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        aligner = Aligner(options)
        for job in jobs:
            sink.write(aligner.process(job, run))
            bar.update(1)
    finally:
        torch.set_num_threads(threads)


def _chunks(jobs: list[AlignJob], size: int) -> list[list[AlignJob]]:
    return [jobs[i:i + size] for i in range(0, len(jobs), size)]


def _run_in_pool(options: AlignOptions, jobs: list[AlignJob], run: str, workers: int,
                 start_method: str | None, sink: ManifestWriter, bar: Any) -> None:
    chunk = max(1, min(16, len(jobs) // (workers * 4) or 1))
    pending = iter(_chunks(jobs, chunk))
    ctx = _pool_context(start_method)
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker,
                             initargs=(options,)) as pool:
        inflight: dict[Future, int] = {}

        def submit_next() -> None:
            part = next(pending, None)
            if part is not None:
                inflight[pool.submit(_work, part, run)] = len(part)

        for _ in range(workers * 3):
            submit_next()
        while inflight:
            finished, _ = wait(inflight, return_when=FIRST_COMPLETED)
            for fut in finished:
                n = inflight.pop(fut)
                sink.write(fut.result())
                bar.update(n)
                submit_next()


def run_align(options: AlignOptions, *, landmarks_file: str | PathLike[str] | None = None,
              manifest: str | PathLike[str] | None = None, workers: int = 1,
              overwrite: bool = False, retry_failed: bool = False,
              start_method: str | None = None) -> AlignReport:
    """Align every photo under ``options.input_root`` not yet done; see the module docstring."""
    in_root, out_root = Path(options.input_root), Path(options.output_root)
    if not in_root.is_dir():
        raise DataPrepError(f"{in_root}: input folder not found")
    if in_root.resolve() == out_root.resolve():
        raise DataPrepError(f"{out_root}: the output folder must differ from the input folder")
    Aligner(options)  # validates size and policy before anything is written
    manifest_path = Path(manifest) if manifest is not None else out_root / "manifest.jsonl"
    landmarks = read_landmarks(landmarks_file) if landmarks_file is not None else None
    sources = list_images(in_root, exclude=out_root)
    if not sources:
        raise DataPrepError(f"{in_root}: no image files found (looked for "
                            f"{', '.join(sorted(IMAGE_EXTENSIONS))} in every sub-folder); "
                            f"pass the folder that holds your photos as INPUT")
    if landmarks:
        unknown = sorted(set(landmarks) - set(sources))
        if unknown:
            log.warning("%s: %d landmark entries match no image under %s (e.g. %s)", landmarks_file,
                        len(unknown), in_root, ", ".join(unknown[:3]))
    done = {} if overwrite else load_manifest(manifest_path)
    jobs = plan_jobs(sources, landmarks, done, out_root, retry_failed)
    if options.detector is not None and any(j.landmarks is None for j in jobs):
        check_detector(options.detector)
    run = time.strftime("%Y%m%dT%H%M%S") + f"-{os.getpid()}"
    log.info("%s: %d images, %d already done, %d to align (%d worker%s)", in_root, len(sources),
             len(sources) - len(jobs), len(jobs), workers, "s" if workers != 1 else "")
    with ManifestWriter(manifest_path, truncate=overwrite) as sink, \
            progress(total=len(jobs), desc="align", unit="img") as bar:
        if workers <= 1 or len(jobs) <= 1:
            _run_in_process(options, jobs, run, sink, bar)
        else:
            _run_in_pool(options, jobs, run, workers, start_method, sink, bar)
    return _summarise(set(sources), manifest_path, out_root, len(jobs), len(sources) - len(jobs))


def _summarise(sources: set[str], manifest_path: Path, out_root: Path, processed: int,
               skipped: int) -> AlignReport:
    latest = {s: recs for s, recs in load_manifest(manifest_path).items() if s in sources}
    counts: Counter[str] = Counter()
    failures, multi = [], []
    crops = 0
    for source in sorted(latest):
        recs = latest[source]
        status = recs[0].get("status", "?")
        counts[status] += 1
        if status == STATUS_OK:
            crops += len(recs)
            if recs[0].get("faces", 1) > 1:
                multi.append({"source": source, "faces": recs[0]["faces"], "kept": recs[0]["kept"],
                              "box": recs[0].get("box"), "crops": [r["crop"] for r in recs]})
        else:
            failures.append({"source": source, "status": status, "reason": recs[0].get("reason", "")})
    if len(latest) < len(sources):
        counts["not_in_manifest"] = len(sources) - len(latest)
    report = AlignReport(len(sources), processed, skipped, dict(sorted(counts.items())), failures,
                         multi, crops, manifest_path, out_root / "align_summary.json")
    summary = {"total_images": report.total_images, "processed_this_run": processed,
               "skipped_already_done": skipped, "crops": crops, "counts": report.counts,
               "failure_codes": FAILURE_CODES, "failures": failures, "multiple_faces": multi}
    report.summary.parent.mkdir(parents=True, exist_ok=True)
    report.summary.write_text(json.dumps(summary, indent=1), encoding="utf-8")
    return report


# ----------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    """The ``align`` command's argument parser."""
    p = argparse.ArgumentParser(
        prog="python -m facekd.data_prep.align",
        description="Detect 5 landmarks, align with insightface's norm_crop on the ArcFace template "
                    "and save crops in a tree mirroring INPUT. Resumable: photos already in the "
                    "manifest are skipped. Failures never stop the batch; they are listed in "
                    "OUTPUT/align_summary.json.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("input", help="folder of photos (any tree; identity sub-folders are mirrored)")
    p.add_argument("output", help="folder for the aligned crops, manifest.jsonl and align_summary.json")
    p.add_argument("--landmarks", default=None,
                   help="CSV (path,x1,y1,...,x5,y5) or JSON ({path: [[x,y]x5]}) of 5-point landmarks, "
                        "paths relative to INPUT; listed photos skip detection")
    p.add_argument("--detector", default="mtcnn", choices=sorted(DETECTORS) + ["none"],
                   help="face detector for photos without given landmarks ('none': landmarks file only)")
    p.add_argument("--detector-model", default=None,
                   help="insightface detection ONNX file for scrfd/retinaface (e.g. det_10g.onnx); "
                        "never downloaded")
    p.add_argument("--det-size", type=int, default=640,
                   help="square input size of the scrfd/retinaface network")
    p.add_argument("--min-score", type=float, default=0.9, help="detections below this score are ignored")
    p.add_argument("--select", default="largest", choices=sorted(SELECTION_POLICIES),
                   help="which face to keep when a photo has several: largest box, most central, "
                        "or highest detector score")
    p.add_argument("--all-faces", action="store_true",
                   help="keep every face (crops named NAME_0, NAME_1, ... in --select order)")
    p.add_argument("--size", type=int, default=112,
                   help="crop size in pixels; a multiple of 112 or 128 (norm_crop's templates)")
    p.add_argument("--min-side", type=int, default=32,
                   help="photos whose shorter side is below this many pixels fail as too_small")
    p.add_argument("--max-side", type=int, default=1280,
                   help="photos are downscaled to this longer side for detection only (crops use "
                        "full resolution)")
    p.add_argument("--ext", default=".jpg", choices=[".jpg", ".png"], help="crop file format")
    p.add_argument("--quality", type=int, default=95, help="JPEG quality of the crops")
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                   help="worker processes (1 = run in this process)")
    p.add_argument("--start-method", default=None, choices=["fork", "spawn", "forkserver"],
                   help="multiprocessing start method (default: forkserver where available, else spawn; "
                        "fork is fastest to start but unsafe once torch has run in this process)")
    p.add_argument("--manifest", default=None, help="manifest path (default: OUTPUT/manifest.jsonl)")
    p.add_argument("--retry-failed", action="store_true",
                   help="process photos whose last attempt failed again (successes stay skipped)")
    p.add_argument("--overwrite", action="store_true",
                   help="ignore and restart the manifest: align every photo again")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``align``; exit code 0 when the batch ran (failures are in the summary), 2 on bad usage."""
    args = build_parser().parse_args(argv)
    detector = None if args.detector == "none" else DetectorSpec(
        args.detector, args.detector_model, args.min_score, args.det_size)
    options = AlignOptions(args.input, args.output, args.size, detector, args.select, args.all_faces,
                           args.min_side, args.max_side, args.ext, args.quality)
    try:
        report = run_align(options, landmarks_file=args.landmarks, manifest=args.manifest,
                           workers=args.workers, overwrite=args.overwrite,
                           retry_failed=args.retry_failed, start_method=args.start_method)
    except (DataPrepError, DataFormatError, FileNotFoundError) as err:
        log.error("%s", err)
        return 2
    counts = ", ".join(f"{k} {v}" for k, v in report.counts.items() if v)
    log.info("%d images (%d aligned now, %d skipped as done): %d crops; %s", report.total_images,
             report.processed, report.skipped, report.crops, counts or "nothing to do")
    for f in report.failures[:20]:
        log.info("  failed %s: %s (%s)", f["source"], f["status"], f["reason"])
    if len(report.failures) > 20:
        log.info("  ... %d more in %s", len(report.failures) - 20, report.summary)
    if report.multiple_faces:
        log.info("%d photos had several faces (see %s)", len(report.multiple_faces), report.summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
