"""``python -m facekd.export``: fp32 / fp16 / int8 ONNX of a face model, each checked against the
torch model, timed with onnxruntime and evaluated on ``--bins``; ``report.md`` + ``report.json``;
optionally an insightface model pack (``--pack NAME --detector det.onnx``).

Files in ``--out``: ``model_fp32.onnx``, ``model_fp16.onnx``, ``model_int8.onnx`` (one per
``--precision``), ``teacher/model_fp32.onnx`` with ``--teacher``, ``report.md``, ``report.json``,
``accuracy_latency.png`` and, with ``--pack``, ``models/NAME/``.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from facekd.export.calibration import DEFAULT_CALIB_IMAGES, read_calibration_images
from facekd.export.errors import ExportDriftError, ExportInputError
from facekd.export.latency import DEFAULT_SETTINGS, measure_latency
from facekd.export.report import VariantResult, machine_info, set_summary, write_report
from facekd.export.variants import INT8_RECIPES, PRECISIONS, convert_fp16, is_int8, parse_precisions, quantize_int8
from facekd.log import get_logger

log = get_logger("facekd.export")

COSINE_TOLERANCE = 0.99
"""fp16/int8 fail when any held-out crop's embedding has cosine below this with torch's."""
FP32_TOLERANCE = 1e-3
"""fp32 fails when max |torch - onnx| exceeds this x max(1, max |embedding|) (export_onnx's rule)."""
AGREEMENT_IMAGES = 256
"""Held-out crops the agreement with torch is measured on (``--check-images``)."""


@dataclass
class ExportOptions:
    """Everything one export run needs (the command line maps onto it one to one)."""

    model: str
    out: str
    arch: str | None = None
    model_options: dict[str, Any] = field(default_factory=dict)
    precisions: Sequence[str] = ("fp32", "fp16", "int8")
    calib: str | None = None
    calib_images: int = DEFAULT_CALIB_IMAGES
    bins: Sequence[str] = ()
    teacher: str | None = None
    teacher_arch: str | None = None
    teacher_options: dict[str, Any] = field(default_factory=dict)
    pack: str | None = None
    detector: str | None = None
    pack_variant: str | None = None
    allow_drift: bool = False
    latency: bool = True
    latency_runs: int = 50
    latency_seconds: float = 20.0
    batch_size: int = 64
    check_images: int = AGREEMENT_IMAGES


def check_options(o: ExportOptions) -> list[str]:
    """Validate everything cheap before any model is loaded; returns the precisions in order."""
    precisions = parse_precisions(",".join(o.precisions))
    if "fp32" not in precisions:
        precisions.insert(0, "fp32")  # the reference every other variant is converted from
    int8 = [p for p in precisions if is_int8(p)]
    if int8 and not o.calib:
        raise ExportInputError(f"--precision {','.join(int8)} needs --calib SOURCE: static int8 quantisation "
                               "calibrates activation ranges on aligned face crops (an image folder, .rec, "
                               ".bin or synthetic:...), never on the --bins report images")
    if not Path(o.model).is_file():
        raise ExportInputError(f"{o.model}: model file not found (--model)")
    if o.model.lower().endswith(".onnx"):
        raise ExportInputError(f"{o.model}: --model must be torch weights (facekd checkpoint or backbone.pth): "
                               "every variant is checked against the torch model")
    for b in o.bins:
        if not Path(b).is_file():
            raise ExportInputError(f"{b}: verification .bin not found (--bins)")
    if o.teacher and not Path(o.teacher).is_file():
        raise ExportInputError(f"{o.teacher}: teacher file not found (--teacher)")
    if o.pack or o.detector:
        if not (o.pack and o.detector):
            raise ExportInputError("--pack NAME and --detector det.onnx go together")
        from facekd.export.pack import check_detector

        if not Path(o.detector).is_file():
            raise ExportInputError(f"{o.detector}: detector file not found (--detector)")
        check_detector(o.detector)
        if o.pack_variant and o.pack_variant not in precisions:
            raise ExportInputError(f"--pack-variant {o.pack_variant} is not among --precision {','.join(precisions)}")
    return precisions


def _held_out_crops(o: ExportOptions, size: tuple[int, int]) -> tuple[np.ndarray, str]:
    """Crops the agreement is measured on: spread over the first --bins set, else synthetic
    identities of the held-out verification namespace (never a calibration source's)."""
    if o.bins:
        from facekd.data.verification_bin import load_bin

        images, _ = load_bin(o.bins[0], size)
        take = np.unique(np.linspace(0, images.shape[0] - 1, min(o.check_images, images.shape[0])).round().astype(int))
        return images[take], f"{Path(o.bins[0]).name}"
    from facekd.data.synthetic import VERIFICATION_BASE, SyntheticFaceDataset
    from facekd.eval.embed import read_dataset_images

    ds = SyntheticFaceDataset(max(1, o.check_images // 4), 4, size=size[0], seed=12345, first_identity=VERIFICATION_BASE)
    images, _ = read_dataset_images(ds, None, size)
    return images, "synthetic held-out identities (no --bins given)"


def _reference(ref: Any, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The torch model's flip-summed normalised and raw (no flip) embeddings of the check crops."""
    from facekd.eval.embed import FaceEmbedder

    return (FaceEmbedder(ref, batch_size=64).embed(crops),
            FaceEmbedder(ref, flip=False, batch_size=64).embed(crops, normalise=False))


def _agreement(reference: tuple[np.ndarray, np.ndarray], variant: Any, crops: np.ndarray) -> dict[str, float]:
    """Cosine of flip-summed normalised embeddings, and the raw max abs difference (fp32's check)."""
    from facekd.eval.embed import FaceEmbedder

    a, raw_a = reference
    b = FaceEmbedder(variant, batch_size=64).embed(crops)
    raw_b = FaceEmbedder(variant, flip=False, batch_size=64).embed(crops, normalise=False)
    cos = np.sum(a * b, axis=1)
    return {"cos_mean": float(cos.mean()), "cos_min": float(cos.min()), "images": int(crops.shape[0]),
            "max_abs_diff": float(np.abs(raw_a - raw_b).max()), "max_abs_embedding": float(np.abs(raw_a).max())}


def _drift_problem(precision: str, agreement: dict[str, float]) -> str | None:
    if precision == "fp32":
        allowed = FP32_TOLERANCE * max(1.0, agreement["max_abs_embedding"])
        if not agreement["max_abs_diff"] <= allowed:
            return (f"max |torch - onnx| = {agreement['max_abs_diff']:.3g} > {allowed:.3g} "
                    f"({FP32_TOLERANCE:g} x max(1, max |embedding|))")
        return None
    if not agreement["cos_min"] >= COSINE_TOLERANCE:
        return (f"cosine with torch min {agreement['cos_min']:.5f} (mean {agreement['cos_mean']:.5f}) "
                f"< {COSINE_TOLERANCE} on {agreement['images']} held-out crops")
    return None


def _latencies(path: Path, o: ExportOptions) -> list:
    if not o.latency:
        return []
    out = []
    for batch, threads in DEFAULT_SETTINGS:
        runs = o.latency_runs if batch == 1 else max(1, o.latency_runs // 5)
        lat = measure_latency(str(path), batch, threads, min_runs=min(5, runs), max_runs=runs,
                              budget_s=o.latency_seconds)
        log.info("%s: batch %d, %d thread(s): median %.2f ms, p90 %.2f ms (%d runs, load %.2f)", path.name, batch,
                 lat.threads, lat.median_ms, lat.p90_ms, lat.runs, lat.load_after)
        out.append(lat)
    return out


def _evaluate_sets(model: Any, sets: Sequence[Any], reference: dict[str, dict[str, Any]] | None,
                   batch_size: int) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    from facekd.eval.embed import FaceEmbedder
    from facekd.eval.verify import verify_model

    results = verify_model(FaceEmbedder(model, batch_size=batch_size), sets, show_progress=False)
    raw = {r.name: r.metrics for r in results}
    return raw, {n: set_summary(m, None if reference is None else reference[n]) for n, m in raw.items()}


def _summary(model: Any, size: int) -> tuple[int, int]:
    from facekd.models.summary import count_macs, count_parameters

    return count_parameters(model), count_macs(model, size)


def run_export(o: ExportOptions) -> list[VariantResult]:
    """The whole export (see the module docstring); returns the report rows."""
    from facekd.eval.embed import FaceEmbedder, load_model, to_model_input
    from facekd.eval.verify import load_sets
    from facekd.models.onnx_backbone import OnnxBackbone, export_onnx

    precisions = check_options(o)
    out = Path(o.out)
    out.mkdir(parents=True, exist_ok=True)
    model = load_model(o.model, o.arch, **o.model_options)
    size = int(getattr(model, "input_size"))
    if o.pack and (size < 112 or size % 16):
        raise ExportInputError(f"--pack: {o.model} takes {size} px crops; insightface's FaceAnalysis only loads "
                               "recognition models of at least 112 px divisible by 16 (export a 112 px model)")
    calib = None
    if any(is_int8(p) for p in precisions):
        calib = read_calibration_images(o.calib, o.calib_images, (size, size), report_files=o.bins)
    crops, crops_source = _held_out_crops(o, (size, size))
    sets = load_sets(o.bins, size) if o.bins else []
    params, macs = _summary(model, size)
    reference = _reference(model, crops)

    torch_row = VariantResult("torch", o.model, Path(o.model).stat().st_size, params, macs)
    torch_raw, torch_row.sets = _evaluate_sets(model, sets, None, o.batch_size) if sets else ({}, {})
    results = [torch_row]
    fp32_path = out / "model_fp32.onnx"
    for precision in precisions:
        path = out / f"model_{precision}.onnx"
        if precision == "fp32":
            export_onnx(model, path, input_size=size)
        elif precision == "fp16":
            convert_fp16(fp32_path, path)
        else:
            quantize_int8(fp32_path, path, to_model_input(calib).numpy(), INT8_RECIPES[precision])
        onnx_model = OnnxBackbone(path, providers=["CPUExecutionProvider"])
        row = VariantResult(precision, str(path), path.stat().st_size, params, macs)
        row.agreement = _agreement(reference, onnx_model, crops)
        problem = _drift_problem(precision, row.agreement)
        if problem:
            if not o.allow_drift:
                path.unlink()
                raise ExportDriftError(f"{path}: {precision} drifts from the torch model: {problem}; the file was "
                                       "removed (pass --allow-drift to keep it and report the figures)")
            row.notes.append(f"drift beyond tolerance, kept by --allow-drift: {problem}")
        if is_int8(precision):
            row.notes.append(INT8_RECIPES[precision].description)
        if sets:
            _, row.sets = _evaluate_sets(onnx_model, sets, torch_raw, o.batch_size)
        row.latency = _latencies(path, o)
        results.append(row)
    if o.teacher:
        teacher = load_model(o.teacher, o.teacher_arch, **o.teacher_options)
        t_size = int(getattr(teacher, "input_size"))
        t_path = export_onnx(teacher, out / "teacher" / "model_fp32.onnx", input_size=t_size)
        t_params, t_macs = _summary(teacher, t_size)
        row = VariantResult("teacher fp32", str(t_path), t_path.stat().st_size, t_params, t_macs)
        if sets:
            _, row.sets = _evaluate_sets(teacher, load_sets(o.bins, t_size), torch_raw, o.batch_size)
        row.latency = _latencies(t_path, o)
        row.notes.append(f"teacher {getattr(teacher, 'arch', o.teacher_arch)} at {t_size} px; set differences are "
                         "to the student's torch model")
        results.append(row)
        del teacher
    if o.pack:
        from facekd.export.pack import write_pack

        variant = o.pack_variant or "fp32"
        folder = write_pack(out, o.pack, o.detector, out / f"model_{variant}.onnx",
                            {"source_model": str(o.model), "variant": variant})
        results[0].notes.append(f"insightface model pack: {folder} (variant {variant})")
    meta = {"model": str(o.model), "arch": getattr(model, "arch", o.arch), "input_size": size,
            "calibration": f"{o.calib} ({calib.shape[0]} images)" if calib is not None else None,
            "agreement_images": int(crops.shape[0]), "agreement_source": crops_source,
            "bins": list(o.bins), "precisions": precisions, **machine_info()}
    md, js = write_report(out, results, meta)
    log.info("wrote %s and %s", md, js)
    return results


def build_parser() -> argparse.ArgumentParser:
    """Command-line options of ``python -m facekd.export``."""
    p = argparse.ArgumentParser(prog="python -m facekd.export",
                                description="Export a face model to fp32 / fp16 / int8 ONNX, check each against "
                                            "torch, time it with onnxruntime, evaluate it on .bin sets, write "
                                            "report.md/report.json; optionally an insightface model pack.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", required=True, help="torch weights: facekd checkpoint or backbone.pth (with --arch)")
    p.add_argument("--arch", default=None, help="architecture of a backbone.pth, e.g. mbf, r100")
    p.add_argument("--model-option", action="append", default=[], metavar="KEY=VALUE",
                   help="builder option of a plain weights file, repeatable (width=0.5, input_size=112...)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--precision", default="fp32,fp16,int8",
                   help=f"comma-separated variants among {', '.join(PRECISIONS)} (int8 = the fast recipe; "
                        "int8_qdq and int8_qop_full = the plain ones, for comparison)")
    p.add_argument("--calib", default=None,
                   help="int8 calibration source: image folder, .rec, .bin or synthetic:... (not a --bins file)")
    p.add_argument("--calib-images", type=int, default=DEFAULT_CALIB_IMAGES, help="calibration crops used")
    p.add_argument("--bins", default="", help="comma-separated verification .bin files for the accuracy report")
    p.add_argument("--teacher", default=None, help="teacher weights, timed and evaluated beside the student")
    p.add_argument("--teacher-arch", default=None, help="architecture of a teacher backbone.pth")
    p.add_argument("--teacher-option", action="append", default=[], metavar="KEY=VALUE",
                   help="builder option of the teacher weights file, repeatable")
    p.add_argument("--pack", default=None, metavar="NAME", help="write an insightface model pack OUT/models/NAME/")
    p.add_argument("--detector", default=None, help="insightface detection ONNX (SCRFD/RetinaFace) for --pack")
    p.add_argument("--pack-variant", default=None, help="variant put in the pack (default fp32)")
    p.add_argument("--allow-drift", action="store_true",
                   help="keep variants whose embeddings disagree with torch beyond tolerance (reported)")
    p.add_argument("--no-latency", action="store_true", help="skip the latency measurements")
    p.add_argument("--latency-runs", type=int, default=50, help="most timed runs at batch 1 (batch 32: a fifth)")
    p.add_argument("--latency-seconds", type=float, default=20.0, help="time budget per latency measurement")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass in the evaluations")
    p.add_argument("--check-images", type=int, default=AGREEMENT_IMAGES,
                   help="held-out crops the agreement with torch is measured on (from the first --bins set, "
                        "else synthetic identities never used for calibration)")
    return p


def options_from_args(args: argparse.Namespace) -> ExportOptions:
    """``ExportOptions`` from parsed command-line arguments."""
    from facekd.eval.embed import parse_model_options

    return ExportOptions(model=args.model, out=args.out, arch=args.arch,
                         model_options=parse_model_options(args.model_option),
                         precisions=parse_precisions(args.precision), calib=args.calib,
                         calib_images=args.calib_images,
                         bins=[b.strip() for b in args.bins.split(",") if b.strip()], teacher=args.teacher,
                         teacher_arch=args.teacher_arch, teacher_options=parse_model_options(args.teacher_option),
                         pack=args.pack, detector=args.detector, pack_variant=args.pack_variant,
                         allow_drift=args.allow_drift, latency=not args.no_latency, latency_runs=args.latency_runs,
                         latency_seconds=args.latency_seconds, batch_size=args.batch_size,
                         check_images=args.check_images)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the export; exit 2 with a one-line message on bad input or drift."""
    from facekd.eval.embed import user_errors
    from facekd.eval.verification import VerificationInputError

    args = build_parser().parse_args(argv)
    try:
        results = run_export(options_from_args(args))
    except (ExportInputError, ExportDriftError, VerificationInputError, *user_errors()) as err:
        print(f"facekd.export: {err}", file=sys.stderr)
        return 2
    print(Path(args.out) / "report.md")
    for r in results:
        b1 = next((lat for lat in r.latency if lat.batch == 1), None)
        parts = [f"  {r.name:14s} {(r.file_bytes or 0) / 1e6:8.3f} MB"]
        if b1 is not None:
            parts.append(f"{b1.median_ms:8.2f} ms (batch 1, 1 thread)")
        if r.sets:
            parts.append(f"accuracy {next(iter(r.sets.values()))['accuracy']:.4f}")
        if "cos_min" in r.agreement:
            parts.append(f"cos min {r.agreement['cos_min']:.5f}")
        print("  ".join(parts))
    return 0
