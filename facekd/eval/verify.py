"""Verification benchmark of a face model on .bin sets (LFW, CFP-FP, AgeDB-30...): table, JSON, plots.

``python -m facekd.eval.verify --model backbone.pth --arch r100 --bins lfw.bin,cfp_fp.bin``
prints insightface-style "Accuracy-Flip: acc+-std" per set with the extra metrics, and writes
``verification.json``, ``roc.png`` and ``scores.png``. ``verify_model`` is the same evaluation
for code (the training engine's periodic evaluation calls it).
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from facekd.eval.embed import DEFAULT_BATCH_SIZE, FaceEmbedder, parse_model_options, user_errors
from facekd.eval.verification import (TAR_FAR_TARGETS, VerificationInputError, evaluate, far_key,
                                      fold_splits, pair_distances, roc_points)
from facekd.log import get_logger
from facekd.pipelines.preflight import open_model

log = get_logger("facekd.eval.verify")

MIN_PAIRS_PER_FOLD = 50
"""Below this many pairs per fold a fold's accuracy moves in steps of 2% or more and its fitted
threshold is noise; verify says so."""


@dataclass
class VerificationSet:
    """One verification benchmark: 2N aligned uint8 RGB images (pair i = 2i, 2i+1) and N flags."""

    name: str
    images: np.ndarray
    issame: np.ndarray


@dataclass
class SetResult:
    """Metrics of one set plus the pair distances behind them (for plots)."""

    name: str
    metrics: dict[str, Any]
    distances: np.ndarray
    issame: np.ndarray


def load_sets(paths: Sequence[str | Path], image_size: int | tuple[int, int] | None = None) -> list[VerificationSet]:
    """Read .bin files (named by file stem) with facekd's safe .bin reader."""
    from facekd.data.verification_bin import load_bin
    sets: list[VerificationSet] = []
    for p in paths:
        path = Path(p)
        log.info("loading %s", path)
        images, issame = load_bin(path, image_size)
        taken = {s.name for s in sets}
        name = path.stem if path.stem not in taken else f"{path.stem}_{len(sets)}"
        sets.append(VerificationSet(name=name, images=images, issame=np.asarray(issame, dtype=bool)))
    return sets


def verify_model(model: Any, sets: Sequence[VerificationSet], batch_size: int = DEFAULT_BATCH_SIZE,
                 device: str | None = None, nfolds: int = 10, flip: bool = True,
                 show_progress: bool = True) -> list[SetResult]:
    """Embed every set (flip-summed, normalised, through ``FaceEmbedder``) and compute all
    verification metrics. ``model`` is a loaded model or a ``FaceEmbedder`` (whose settings
    then replace batch_size/device/flip)."""
    embedder = model if isinstance(model, FaceEmbedder) else FaceEmbedder(model, device=device, flip=flip,
                                                                          batch_size=batch_size)
    results = []
    for vs in sets:
        emb = embedder.embed(vs.images, desc=vs.name, show_progress=show_progress)
        metrics = evaluate(emb, vs.issame, nfolds=nfolds)
        log.info("[%s]Accuracy-Flip: %1.5f+-%1.5f", vs.name, metrics["accuracy"], metrics["accuracy_std"])
        metrics["notes"] = metric_notes(metrics, vs.issame, nfolds)
        for note in metrics["notes"]:
            log.warning("[%s] %s", vs.name, note)
        results.append(SetResult(vs.name, metrics, pair_distances(emb), vs.issame))
    return results


def _folds_text(folds: Sequence[int]) -> str:
    """1-based fold numbers, the first five and how many more."""
    return ", ".join(str(k + 1) for k in folds[:5]) + (f" (+{len(folds) - 5} more)" if len(folds) > 5 else "")


def fold_notes(issame: np.ndarray, nfolds: int = 10, folds_flag: str = "--nfolds") -> list[str]:
    """What the pair layout alone does to the figures, whatever the model: folds too small for a
    meaningful accuracy, folds without a genuine pair (VAL@FAR nan) or an impostor pair (its FAR nan).
    ``folds_flag`` is how the calling command sets the fold count (training: verify's flag)."""
    same = np.asarray(issame, dtype=bool)
    n = int(same.size)
    notes: list[str] = []
    per_fold = n // nfolds
    if per_fold < MIN_PAIRS_PER_FOLD:
        notes.append(f"{n} pairs in {nfolds} folds is {per_fold} pairs per fold (fewer than {MIN_PAIRS_PER_FOLD}): "
                     f"each fold's accuracy moves in steps of {1.0 / max(per_fold, 1):.2g} and its threshold is "
                     f"fitted on {n - per_fold} pairs, so Accuracy-Flip is not meaningful; use more pairs "
                     f"(make_bin --num-pairs) or fewer folds ({folds_flag})")
    no_same, no_diff = [], []
    for k, (_, test) in enumerate(fold_splits(n, nfolds)):
        if not same[test].any():
            no_same.append(k)
        if same[test].all():
            no_diff.append(k)
    if no_same:
        notes.append(f"VAL@FAR=1e-3 is nan: test fold(s) {_folds_text(no_same)} of {nfolds} hold no genuine pair, "
                     f"so VAL (genuine pairs accepted) is undefined there; the folds are contiguous blocks of the "
                     f"file, as insightface's, so build the .bin with genuine and impostor pairs in every block "
                     f"(make_bin --folds {nfolds}) or evaluate with the folds it was built with ({folds_flag})")
    if no_diff:
        notes.append(f"the FAR behind VAL@FAR is nan: test fold(s) {_folds_text(no_diff)} of {nfolds} hold no "
                     f"impostor pair")
    return notes


def metric_notes(metrics: dict[str, Any], issame: np.ndarray, nfolds: int) -> list[str]:
    """Why a set's figures may mislead: the pair layout (``fold_notes``), accuracy below chance,
    NaN metrics."""
    same = np.asarray(issame, dtype=bool)
    notes = fold_notes(same, nfolds)
    chance = max(float(same.mean()), 1.0 - float(same.mean())) if same.size else 0.5
    if metrics["accuracy"] < chance:
        notes.append(f"Accuracy-Flip {metrics['accuracy']:.3f} is below chance ({chance:.3f}, always answering "
                     f"the majority label): thresholds fitted on the training folds do not carry over to the "
                     f"test folds; with few pairs that is noise, else the model is untrained or loaded wrongly "
                     f"(--arch, --model-option width=/input_size=)")
    if np.isnan(metrics["val_at_far"]) and not any(n.startswith("VAL@FAR=1e-3 is nan") for n in notes):
        notes.append("VAL@FAR=1e-3 is nan: the distances are not finite (check the embeddings)")
    for key in ("accuracy", "auc", "eer"):
        if np.isnan(metrics.get(key, 0.0)):
            notes.append(f"{key} is nan: the embeddings hold non-finite values (an untrained or diverged model?)")
    return notes


def format_table(results: Sequence[SetResult]) -> str:
    """A fixed-width text table: Accuracy-Flip (mean+-std) and the extra metrics, one row per set."""
    headers = ["set", "pairs", "Accuracy-Flip", "threshold", "VAL@FAR=1e-3", "AUC", "EER", "best-thr acc"]
    headers += [f"TAR@FAR={far_key(f)}" for f in TAR_FAR_TARGETS]
    rows = []
    for r in results:
        m = r.metrics
        row = [r.name, str(m["n_pairs"]), f"{m['accuracy']:1.5f}+-{m['accuracy_std']:1.5f}",
               f"{m['threshold']:.3f}", f"{m['val_at_far']:1.5f}+-{m['val_std']:1.5f}",
               f"{m['auc']:.5f}", f"{m['eer']:.5f}", f"{m['best_accuracy_single_threshold']:.5f}"]
        row += [f"{m['tar_at_far'][far_key(f)]:.5f}" if far_key(f) in m["tar_at_far"] else "n/a"
                for f in TAR_FAR_TARGETS]
        rows.append(row)
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
    notes = {f"{r.name} TAR@FAR={k}": v for r in results for k, v in r.metrics["tar_at_far_skipped"].items()}
    if notes:
        lines.append("n/a: " + "; ".join(f"{k} {v}" for k, v in notes.items()))
    lines += [f"note [{r.name}]: {note}" for r in results for note in r.metrics.get("notes", [])]
    return "\n".join(lines)


def write_outputs(results: Sequence[SetResult], out_dir: str | Path,
                  info: dict[str, Any] | None = None) -> dict[str, Path]:
    """Write verification.json, pair_distances.npz (to compare models' ROCs later), roc.png (all
    sets, log-FAR) and scores.png (genuine vs impostor)."""
    from facekd.eval.plots import plot_roc, plot_score_distributions
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = dict(info or {})
    report["sets"] = {r.name: r.metrics for r in results}
    report["mean_accuracy"] = float(np.mean([r.metrics["accuracy"] for r in results])) if results else None
    json_path = out / "verification.json"
    json_path.write_text(json.dumps(report, indent=2))
    np.savez(out / "pair_distances.npz", **{f"{r.name}/distances": r.distances for r in results},
             **{f"{r.name}/issame": r.issame for r in results})
    roc = plot_roc({r.name: roc_points(r.distances, r.issame) for r in results}, out / "roc.png")
    scores = plot_score_distributions({r.name: (1.0 - r.distances / 2.0, r.issame) for r in results},
                                      out / "scores.png")
    return {"json": json_path, "roc": roc, "scores": scores}


def build_parser() -> argparse.ArgumentParser:
    """Command-line options of ``python -m facekd.eval.verify``."""
    p = argparse.ArgumentParser(prog="python -m facekd.eval.verify",
                                description="Verification accuracy (insightface Accuracy-Flip protocol) and extra "
                                            "metrics of a face model on .bin benchmark sets.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", required=True,
                   help="model file: facekd checkpoint or arcface_torch backbone.pth (needs --arch), or .onnx")
    p.add_argument("--arch", default=None, help="architecture of a torch weights file, e.g. r100, r50, mbf")
    p.add_argument("--model-option", action="append", default=[], metavar="KEY=VALUE",
                   help="builder option of a torch weights file, repeatable (e.g. width=0.5, input_size=32); "
                        "facekd checkpoints carry their own")
    p.add_argument("--bins", required=True,
                   help="comma-separated verification .bin files, e.g. lfw.bin,cfp_fp.bin,agedb_30.bin")
    p.add_argument("--data-dir", default=None, help="directory the --bins names are relative to")
    p.add_argument("--out", default=None,
                   help="output directory for verification.json, roc.png, scores.png "
                        "(default: a 'verification' folder next to the model file)")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="images per forward pass")
    p.add_argument("--nfolds", type=int, default=10, help="cross-validation folds (insightface uses 10)")
    p.add_argument("--no-flip", action="store_true", help="embed without adding the horizontal flip")
    p.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Evaluate a model on verification sets; print the table and write the report files."""
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except (VerificationInputError, *user_errors()) as err:
        print(f"facekd.eval.verify: {err}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    names = [b.strip() for b in args.bins.split(",") if b.strip()]
    if not names:
        raise VerificationInputError("--bins names no file")
    base = Path(args.data_dir) if args.data_dir else None
    paths = [base / n if base is not None and not Path(n).is_absolute() else Path(n) for n in names]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise VerificationInputError(f"verification file(s) not found: {', '.join(missing)}")
    embedder = open_model(FaceEmbedder, args.model, args.arch, device=args.device, flip=not args.no_flip,
                          batch_size=args.batch_size, **parse_model_options(args.model_option))
    results = verify_model(embedder, load_sets(paths), nfolds=args.nfolds)
    print(format_table(results))
    out = Path(args.out) if args.out else Path(args.model).resolve().parent / "verification"
    files = write_outputs(results, out, {"model": str(args.model), "arch": args.arch, "flip": not args.no_flip,
                                         "nfolds": args.nfolds})
    print("wrote " + ", ".join(str(p) for p in files.values()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
