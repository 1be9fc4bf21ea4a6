"""IJB-B / IJB-C evaluation as arcface_torch's eval_ijbc.py (1:1) and insightface's ijb_1n.py (1:N) report it.

``python -m facekd.eval.ijb --root DIR --target IJBC (--model FILE [--arch A] | --features FILE.npy) --out OUT``
reads insightface's release layout as it is (``DIR/meta/*``, ``DIR/loose_crop/``) and writes
``OUT/ijb.json``, ``OUT/{t}_scores.npy`` (one score per pair line), ``OUT/roc.png`` and, after a
model run, ``OUT/features.npy`` (per-image flip-summed features in 5pts order, for ``--features``
reruns). Default test mode F2/N1/D1; ``--no-flip``, ``--no-detector-score``, ``--norm-feature``
give the others.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from facekd.eval.embed import DEFAULT_BATCH_SIZE, load_model, parse_model_options, user_errors
from facekd.eval.ijb_meta import IJBInputError, IJBMeta, read_meta
from facekd.eval.ijb_protocol import (FAR_TARGETS, TestMode, identification_1n, image_inputs, normalise_templates,
                                      one_n_templates, pair_scores, tar_at_far, template_rows, template_sums)
from facekd.log import get_logger
from facekd.pipelines.preflight import open_model

log = get_logger("facekd.eval.ijb")


def build_parser() -> argparse.ArgumentParser:
    """Command-line options of ``python -m facekd.eval.ijb``."""
    p = argparse.ArgumentParser(prog="python -m facekd.eval.ijb",
                                description="IJB-B / IJB-C 1:1 TAR@FAR (arcface_torch's eval_ijbc.py) and 1:N "
                                            "(insightface's ijb_1n.py) on insightface's IJB release layout.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--root", required=True, help="IJB release folder holding meta/ and loose_crop/")
    p.add_argument("--target", required=True, type=str.upper, choices=("IJBC", "IJBB"), help="IJBC or IJBB")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", default=None, help="torch weights (with --arch), facekd checkpoint or .onnx")
    src.add_argument("--features", default=None,
                     help="per-image features .npy [N, D] in 5pts-file order (flip-summed), e.g. OUT/features.npy")
    p.add_argument("--arch", default=None, help="architecture of a torch weights file, e.g. r100, mbf")
    p.add_argument("--model-option", action="append", default=[], metavar="KEY=VALUE",
                   help="builder option of a torch weights file, repeatable")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--no-flip", action="store_true", help="embed the image only (test mode F1 off)")
    p.add_argument("--no-detector-score", action="store_true", help="do not weight by the faceness score (D0)")
    p.add_argument("--norm-feature", action="store_true", help="L2-normalise image features before pooling (N0)")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="images per forward pass")
    p.add_argument("--device", default=None, help="torch device (default: cuda when available)")
    p.add_argument("--workers", type=int, default=4, help="threads decoding and aligning images")
    return p


def format_table(method: str, tars: dict[float, float]) -> str:
    """The TAR@FAR table as arcface_torch prints it (PrettyTable layout, TAR in percent with 2 decimals)."""
    header = ["Methods"] + [str(x) for x in tars]
    row = [method] + ["%.2f" % (v * 100) for v in tars.values()]
    widths = [max(len(h), len(r)) + 2 for h, r in zip(header, row)]

    def centre(text: str, width: int) -> str:
        excess = width - len(text)
        left = excess // 2 + (1 if excess % 2 and len(text) % 2 == 0 else 0)
        return " " * left + text + " " * (excess - left)

    rule = "+" + "+".join("-" * w for w in widths) + "+"
    line = lambda cells: "|" + "|".join(centre(c, w) for c, w in zip(cells, widths)) + "|"  # noqa: E731
    return "\n".join([rule, line(header), rule, line(row), rule])


def plot_ijb_roc(fpr: np.ndarray, tpr: np.ndarray, roc_auc: float, label: str, path: Path) -> Path:
    """ROC on a log FPR axis (1e-6 .. 0.1), as eval_ijbc.py draws it; returns the PNG path."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=120)
    ax.plot(fpr, tpr, lw=1, label=f"[{label} (AUC = {roc_auc * 100:.4f} %)]")
    ax.set_xlim([1e-6, 0.1])
    ax.set_ylim([0.3, 1.0])
    ax.grid(linestyle="--", linewidth=1)
    ax.set_xticks(list(FAR_TARGETS))
    ax.set_xscale("log")
    ax.set_xlabel("False Positive Rate")
    ax.set_ylabel("True Positive Rate")
    ax.set_title("ROC on IJB")
    ax.legend(loc="lower right")
    fig.savefig(path)
    plt.close(fig)
    return path


def load_features(path: str | Path, meta: IJBMeta) -> np.ndarray:
    """A per-image features .npy (plain float array [N, D], N = lines of the 5pts file)."""
    path = Path(path)
    if not path.is_file():
        raise IJBInputError(f"{path}: features file not found")
    try:
        feats = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as err:
        raise IJBInputError(f"{path}: not a plain numeric .npy array ({err})") from None
    n = len(meta.images.names)
    if feats.ndim != 2 or not np.issubdtype(feats.dtype, np.floating):
        raise IJBInputError(f"{path}: expected a float array [N, D], got {feats.dtype} of shape {feats.shape}")
    if feats.shape[0] != n:
        raise IJBInputError(f"{path}: {feats.shape[0]} rows, but {meta.images.path} lists {n} images "
                            f"(last on line {int(meta.images.lines[-1])}); one row per image, in that order")
    if not np.all(np.isfinite(feats)):
        raise IJBInputError(f"{path}: row {int(np.argmax(~np.isfinite(feats).all(axis=1)))} holds NaN or inf")
    return feats.astype(np.float32, copy=False)


def evaluate_features(meta: IJBMeta, features: np.ndarray, mode: TestMode) -> dict[str, Any]:
    """Scores, ROC and the ijb.json content of per-image features under one test mode."""
    t0 = time.perf_counter()
    x = image_inputs(features, meta.images.faceness, mode)
    unique_templates, sums = template_sums(x, meta.media.templates, meta.media.medias)
    feats = normalise_templates(sums)
    scores = pair_scores(feats, template_rows(unique_templates, meta.pairs.t1),
                         template_rows(unique_templates, meta.pairs.t2))
    tars, roc_auc, fpr, tpr = tar_at_far(meta.pairs.labels, scores)
    log.info("templates, scores and ROC in %.1f s", time.perf_counter() - t0)
    report: dict[str, Any] = {
        "target": meta.target, "images": len(meta.images.names), "templates": int(unique_templates.size),
        "pairs": int(scores.size),
        "verification": {"tar_at_far": {f"{x:.0e}": v for x, v in tars.items()}, "auc": roc_auc},
    }
    if meta.gallery is not None and meta.probes is not None:
        report["identification"] = _one_n(meta, sums, unique_templates)
    return {"report": report, "scores": scores, "tars": tars, "auc": roc_auc, "fpr": fpr, "tpr": tpr}


def _one_n(meta: IJBMeta, sums: np.ndarray, unique_templates: np.ndarray) -> dict[str, Any]:
    assert meta.gallery is not None and meta.probes is not None
    g_templates = np.concatenate([g.templates for g in meta.gallery])
    g_subjects = np.concatenate([g.subjects for g in meta.gallery])
    g_feats, _g_ids, g_subj = one_n_templates(sums, unique_templates, g_templates, g_subjects)
    p_feats, p_ids, p_subj = one_n_templates(sums, unique_templates, meta.probes.templates, meta.probes.subjects)
    order = np.argsort(g_subj, kind="stable")
    pos = np.searchsorted(g_subj[order], p_subj)
    pos_c = np.minimum(pos, g_subj.size - 1)
    count = np.searchsorted(g_subj[order], p_subj, side="right") - pos
    bad = count != 1
    if bad.any():
        k = int(np.argmax(bad))
        row = int(np.argmax(meta.probes.templates == p_ids[k]))
        raise IJBInputError(f"{meta.probes.path}:{int(meta.probes.lines[row])}: subject {int(p_subj[k])} of probe "
                            f"template {int(p_ids[k])} has {int(count[k])} gallery templates in "
                            f"{meta.gallery[0].path.name} + {meta.gallery[1].path.name} (ijb_1n.py needs exactly 1)")
    try:
        return identification_1n(g_feats, p_feats, order[pos_c])
    except ValueError as err:
        raise IJBInputError(f"{meta.probes.path}: {err}") from None


def write_outputs(out: Path, meta: IJBMeta, result: dict[str, Any], method: str) -> None:
    """ijb.json, {t}_scores.npy and roc.png into ``out``; prints the TAR@FAR table."""
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / f"{meta.target.lower()}_scores.npy", result["scores"])
    (out / "ijb.json").write_text(json.dumps(result["report"], indent=2))
    plot_ijb_roc(result["fpr"], result["tpr"], result["auc"], method.split("-")[-1], out / "roc.png")
    print(format_table(f"{method}-{meta.target}", result["tars"]))
    ident = result["report"].get("identification")
    if ident:
        print("1:N  " + "  ".join(f"{k} = {ident[k]:.4f}" for k in ("top1", "top5", "top10")) + "  "
              + "  ".join(f"TPIR@FPIR={f} = {v:.4f}" for f, v in ident["tpir_at_fpir"].items()))
    print(f"wrote {out / 'ijb.json'}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the IJB protocol; bad inputs end with a one-line error and exit status 2."""
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except (IJBInputError, *user_errors()) as err:
        print(f"facekd.eval.ijb: {err}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    meta = read_meta(args.root, args.target)
    mode = TestMode(flip=not args.no_flip, detector_score=not args.no_detector_score,
                    norm_feature=args.norm_feature)
    out = Path(args.out)
    if args.features:
        if args.no_flip:
            log.warning("--no-flip has no effect with --features: the file holds the features as they are")
        features = load_features(args.features, meta)
        method = Path(args.features).stem
    else:
        from facekd.eval.ijb_features import extract_features
        model = open_model(load_model, args.model, args.arch, **parse_model_options(args.model_option))
        features = extract_features(model, meta.image_dir, meta.images, args.batch_size, flip=mode.flip,
                                    device=args.device, workers=args.workers)
        out.mkdir(parents=True, exist_ok=True)
        np.save(out / "features.npy", features)
        log.info("wrote %s (rerun with --features to skip the network)", out / "features.npy")
        method = Path(args.model).stem
    write_outputs(out, meta, evaluate_features(meta, features, mode), method)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
