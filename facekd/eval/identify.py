"""1:N identification benchmark: gallery/probe search with faiss, CMC, open-set TPIR@FPIR, index recall.

``python -m facekd.eval.identify --gallery G --probes P [--distractors D] [--model M --arch A]``
where each source is a folder of aligned images (one sub-folder per identity), a .rec dataset or
a .npy embeddings file with labels. Probes whose identity is not in the gallery are non-mated.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from facekd.eval.embed import DEFAULT_BATCH_SIZE, FaceEmbedder, parse_model_options, user_errors
from facekd.eval.identification import (CMC_RANKS, FPIR_TARGETS, GalleryIndex, IdentificationError,
                                        IndexOptions, add_distractors, identification_metrics, index_kinds,
                                        prepare_embeddings, prepare_labels)
from facekd.eval.identification_tuning import DEFAULT_TARGET_RECALL, TUNE_QUERIES, tuned_index
from facekd.eval.sources import EmbeddingSet, EmbeddingSourceError, load_embeddings, match_labels_by_name
from facekd.log import get_logger
from facekd.pipelines.preflight import open_model

log = get_logger("facekd.eval.identify")


def build_parser() -> argparse.ArgumentParser:
    """Command-line options of ``python -m facekd.eval.identify``."""
    p = argparse.ArgumentParser(prog="python -m facekd.eval.identify",
                                description="Gallery/probe face identification with faiss: CMC rank-1/5/10, "
                                            "open-set TPIR@FPIR and the index's recall@1 against exact search.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--gallery", default=None,
                   help="gallery: image folder (sub-folder per identity), .rec dataset or .npy embeddings")
    p.add_argument("--gallery-labels", default=None,
                   help="labels .npy for a .npy gallery (default: <stem>_labels.npy next to it)")
    p.add_argument("--probes", required=True, help="probes: image folder, .rec dataset or .npy embeddings")
    p.add_argument("--probe-labels", default=None,
                   help="labels .npy for .npy probes (default: <stem>_labels.npy next to it)")
    p.add_argument("--distractors", default=None,
                   help="extra gallery images/embeddings of other people (MegaFace-style); labels ignored")
    p.add_argument("--model", default=None, help="model for image sources: torch weights (with --arch) or .onnx")
    p.add_argument("--arch", default=None, help="architecture of a torch weights file, e.g. r100, mbf")
    p.add_argument("--model-option", action="append", default=[], metavar="KEY=VALUE",
                   help="builder option of a torch weights file, repeatable (e.g. width=0.5, input_size=32); "
                        "facekd checkpoints carry their own")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="images per forward pass")
    p.add_argument("--index", default="auto",
                   help=f"index: auto (by gallery size), one of {', '.join(index_kinds())}, "
                        "or a faiss factory string such as 'IVF4096,SQ8'")
    p.add_argument("--hnsw-m", type=int, default=IndexOptions.hnsw_m, help="HNSW links per node")
    p.add_argument("--ef-construction", type=int, default=IndexOptions.ef_construction, help="HNSW build beam")
    p.add_argument("--ef-search", type=int, default=None,
                   help=f"HNSW search beam (default: tuned to --target-recall, else {IndexOptions.ef_search})")
    p.add_argument("--nlist", type=int, default=None,
                   help="IVF lists (default: power of two near 8*sqrt(N); half that for ivfpq)")
    p.add_argument("--nprobe", type=int, default=None,
                   help="IVF lists visited per query (default: tuned to --target-recall, else nlist/8, >= 16)")
    p.add_argument("--rerank", type=int, default=None,
                   help="re-rank RERANK*k candidates of an approximate index with exact scores "
                        "(0 = off; default: tuned to --target-recall for ivfpq, else 4 for ivfpq, off otherwise)")
    p.add_argument("--target-recall", type=float, default=DEFAULT_TARGET_RECALL,
                   help="tune an approximate index's search (nprobe / efSearch / re-rank depth) on a sample of the "
                        "probes: the fastest setting whose top-1 matches exact search on this share of them; exact "
                        "search when nothing approximate is faster (0 = no tuning; off when any of --nprobe, "
                        "--ef-search, --rerank is given)")
    p.add_argument("--tune-queries", type=int, default=TUNE_QUERIES, help="probes sampled to tune the search")
    p.add_argument("--threads", type=int, default=None, help="faiss threads (default: all cores)")
    p.add_argument("--save-index", default=None, help="directory to save the built index (and labels) to")
    p.add_argument("--load-index", default=None, help="directory of a saved index to search instead of building")
    p.add_argument("--recall-queries", type=int, default=2000,
                   help="probes (not used for tuning, when there are enough) used to measure the top-1 search's "
                        "recall@1 against exact search")
    p.add_argument("--no-recall", action="store_true", help="skip the exact-search recall check")
    p.add_argument("--candidates", type=int, default=50,
                   help="gallery hits retrieved per probe (identities are ranked among them)")
    p.add_argument("--out", default=None, help="directory for identification.json (default: print only)")
    return p


def _load_source(path: str, labels: str | None, model: Any, batch_size: int, what: str,
                 need_labels: bool = True) -> EmbeddingSet:
    """Read and validate one source: normalised embeddings and (when needed) integer labels."""
    loaded = load_embeddings(path, model, labels, batch_size, desc=what)
    emb = prepare_embeddings(loaded.embeddings, f"{what} ({path})")
    lab = loaded.labels
    if need_labels:
        if lab is None:
            raise IdentificationError(f"{what} ({path}): no identity labels; pass --{what}-labels "
                                      f"or store <stem>_labels.npy next to the embeddings")
        lab = prepare_labels(lab, emb.shape[0], f"{what} labels ({path})")
    return EmbeddingSet(emb, lab, loaded.names)


def format_report(result: dict[str, Any]) -> str:
    """Human-readable summary lines of ``identification_metrics``' result."""
    lines = [f"index {result['index']}: gallery {result['gallery_size']}, probes {result['n_probes']} "
             f"({result['n_mated']} mated, {result['n_nonmated']} non-mated), "
             f"{result['queries_per_second']:.0f} queries/s"]
    if result["cmc"]:
        lines.append("CMC  " + "  ".join(f"{k}: {v:.5f}" for k, v in result["cmc"].items()))
    for key, v in result["tpir_at_fpir"].items():
        lines.append(f"TPIR@FPIR={key}: {v['tpir']:.5f} (FPIR {v['fpir']:.5f}, threshold {v['threshold']:.4f})")
    for key, why in result["tpir_at_fpir_skipped"].items():
        lines.append(f"TPIR@FPIR={key}: n/a ({why})")
    tuning = result.get("search_tuning", {})
    if "setting" in tuning:
        chosen = ", ".join(f"{k}={v}" for k, v in tuning["setting"].items()) or "exact search"
        lines.append(f"search tuned to recall@1 >= {tuning['target_recall']} on {tuning['queries']} probes: "
                     f"{tuning['index']} {chosen} ({tuning['speedup_vs_exact']:.1f}x exact search"
                     + (f"; {tuning['fallback']}" if tuning["fallback"] else "") + ")")
    if "recall_at_1" in result:
        lines.append(f"recall@1 of the top-1 search vs exact search: {result['recall_at_1']:.5f} on "
                     f"{result['recall_queries']} queries")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Build (or load) the gallery index, search the probes, print and optionally save the metrics."""
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except (IdentificationError, EmbeddingSourceError, *user_errors()) as err:
        print(f"facekd.eval.identify: {err}", file=sys.stderr)
        return 2


def _tune(args: argparse.Namespace, index: GalleryIndex, gallery: np.ndarray | None,
          probes: np.ndarray) -> tuple[GalleryIndex, dict[str, Any], np.ndarray | None]:
    """Tune the index's search to --target-recall when that applies; (index, what was done, tuning rows)."""
    explicit = [f for f, v in (("--nprobe", args.nprobe), ("--ef-search", args.ef_search), ("--rerank", args.rerank))
                if v is not None]
    why = ("exact index" if index.kind == "flat" else "--target-recall 0" if args.target_recall <= 0 else
           f"search set by {', '.join(explicit)}" if explicit else
           "no gallery embeddings for exact search (give --gallery with --load-index)" if gallery is None else None)
    if why is not None:
        return index, {"skipped": why, "index": index.kind}, None
    index, tuning, rows = tuned_index(index, gallery, probes, args.target_recall, args.tune_queries)
    return index, tuning.as_dict(), rows


def _run(args: argparse.Namespace) -> int:
    if args.gallery is None and args.load_index is None:
        raise IdentificationError("give --gallery (to build an index) or --load-index")
    if args.load_index and args.distractors:
        raise IdentificationError("--distractors cannot be added to a loaded index; rebuild it")
    model = (open_model(FaceEmbedder, args.model, args.arch, batch_size=args.batch_size,
                        **parse_model_options(args.model_option)) if args.model else None)
    gallery: np.ndarray | None = None
    if args.gallery:
        gallery_set = _load_source(args.gallery, args.gallery_labels, model, args.batch_size, "gallery")
        gallery, gallery_labels = gallery_set.embeddings, gallery_set.labels
        if args.distractors:
            extra = _load_source(args.distractors, None, model, args.batch_size, "distractors", need_labels=False)
            gallery, gallery_labels = add_distractors(gallery, gallery_labels, extra.embeddings)
            log.info("gallery with distractors: %d vectors", gallery.shape[0])
    options = IndexOptions(hnsw_m=args.hnsw_m, ef_construction=args.ef_construction,
                           ef_search=args.ef_search if args.ef_search is not None else IndexOptions.ef_search,
                           nlist=args.nlist, nprobe=args.nprobe, rerank=args.rerank, threads=args.threads)
    if args.load_index:
        index = GalleryIndex.load(args.load_index)
        if gallery is not None and gallery.shape[0] != index.size:
            raise IdentificationError(f"the gallery has {gallery.shape[0]} vectors but the index "
                                      f"{args.load_index} holds {index.size}")
    else:
        index = GalleryIndex.build(gallery, gallery_labels, args.index, options, names=gallery_set.names)
    probe_set = _load_source(args.probes, args.probe_labels, model, args.batch_size, "probe")
    probes = probe_set.embeddings
    index, tuning, tune_rows = _tune(args, index, gallery, probes)
    if args.save_index and not args.load_index:
        log.info("saved index to %s", index.save(args.save_index))
    probe_labels = match_labels_by_name(EmbeddingSet(probes[:0], None, index.names), probe_set)
    result = identification_metrics(index, probes, probe_labels, CMC_RANKS, FPIR_TARGETS,
                                    gallery_for_exact=None if args.no_recall else gallery,
                                    recall_queries=args.recall_queries, candidates=args.candidates,
                                    recall_exclude=tune_rows)
    result["search_tuning"] = tuning
    result["index_memory_bytes"] = index.memory_bytes()
    result["index_build_seconds"] = index.build_seconds
    print(format_report(result))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "identification.json").write_text(json.dumps(result, indent=2))
        print(f"wrote {out / 'identification.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
