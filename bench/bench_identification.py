"""1:N identification throughput and recall: faiss flat / HNSW / IVF / IVF-PQ vs numpy brute force.

The first row after numpy is what ``python -m facekd.eval.identify`` does by default: ``auto`` index
(IVF-PQ fast-scan + exact re-rank at this size), search tuned by ``--target-recall 0.99`` on 1,000 of
the user's probes (here: queries outside the measured ones), top-1 queries (k = 1).

Synthetic face-like embeddings: identity centres in a 32-d latent space (estimates of the
intrinsic dimension of deep face features are of this order or lower) embedded in 512-d by a
random orthonormal map, plus per-image latent variation and a small isotropic residual, so that
genuine cosine ~0.7 and impostor cosine ~0 +- 0.17. The gallery holds 2 images per identity;
queries are fresh images of gallery identities. Recall@1 is the share of queries whose top-1
equals numpy brute force's top-1, on the same queries, in the same run.
"""
from __future__ import annotations

import argparse
import time
from typing import Any, Callable, Sequence, TypeVar

import numpy as np

from bench._report import table, write_section
from facekd.eval.identification import GalleryIndex, IndexOptions, recall_at_1
from facekd.eval.identification_tuning import DEFAULT_TARGET_RECALL, TUNE_QUERIES, tuned_index

T = TypeVar("T")

GOAL_RECALL = 0.99
GOAL_SPEEDUP = 20.0


def face_like_embeddings(n_ids: int, per_id: int, n_queries: int, dim: int = 512, latent: int = 32,
                         spread: float = 0.5, residual: float = 0.3, seed: int = 0
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(gallery, gallery labels, queries, query labels), unit float32 rows."""
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.standard_normal((dim, latent)))
    basis = basis.astype(np.float32)
    centres = rng.standard_normal((n_ids, latent), dtype=np.float32)

    def images(labels: np.ndarray) -> np.ndarray:
        out = np.empty((labels.size, dim), np.float32)
        for s in range(0, labels.size, 50_000):
            lab = labels[s:s + 50_000]
            z = centres[lab] + spread * rng.standard_normal((lab.size, latent), dtype=np.float32)
            noise = rng.standard_normal((lab.size, dim), dtype=np.float32)
            x = z @ basis.T / np.sqrt(latent) + residual * noise / np.sqrt(dim)
            out[s:s + lab.size] = x / np.linalg.norm(x, axis=1, keepdims=True)
        return out

    g_lab = np.repeat(np.arange(n_ids), per_id)
    q_lab = rng.integers(0, n_ids, n_queries)
    return images(g_lab), g_lab, images(q_lab), q_lab


def numpy_brute_force(gallery: np.ndarray, queries: np.ndarray, chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-1 (scores, ids) by matrix products in chunks (argmax: cheaper than a top-10)."""
    ids = np.empty(queries.shape[0], np.int64)
    scores = np.empty(queries.shape[0], np.float32)
    for s in range(0, queries.shape[0], chunk):
        sim = queries[s:s + chunk] @ gallery.T
        ids[s:s + chunk] = np.argmax(sim, axis=1)
        scores[s:s + chunk] = sim[np.arange(sim.shape[0]), ids[s:s + chunk]]
    return scores, ids


def timed(fn: Callable[[], T], budget_s: float = 10.0, max_runs: int = 3) -> tuple[T, float]:
    """(result, fastest seconds) of up to ``max_runs`` runs, repeating only while runs are short.

    The box is shared: the fastest of several runs is the least disturbed measurement.
    """
    best = float("inf")
    spent = 0.0
    result: T
    for _ in range(max_runs):
        t0 = time.perf_counter()
        result = fn()
        took = time.perf_counter() - t0
        best, spent = min(best, took), spent + took
        if spent > budget_s:
            break
    return result, best


def run_default(gallery: np.ndarray, g_lab: np.ndarray, queries: np.ndarray, q_lab: np.ndarray, b_n: int,
                gt_ids: np.ndarray, gt_scores: np.ndarray) -> dict[str, Any]:
    """The identify CLI's default: auto index tuned to the recall target on queries[b_n:], top-1 queries."""
    t0 = time.perf_counter()
    index = GalleryIndex.build(gallery, g_lab, "auto", IndexOptions(), show_progress=False)
    tuning = None
    if index.kind != "flat":  # as the CLI: an exact index needs no tuning
        index, tuning, _rows = tuned_index(index, gallery, queries[b_n:], DEFAULT_TARGET_RECALL, TUNE_QUERIES)
    build_s = time.perf_counter() - t0
    held_out = queries[:b_n]
    (scores, ids), seconds = timed(lambda: index.search(held_out, 1, show_progress=False, normalised=True))
    chosen = ", ".join(f"{k}={v}" for k, v in tuning.setting.items()) if tuning else ""
    chosen = chosen or "exact search"
    if tuning is not None and tuning.fallback:
        chosen += f" (fallback: {tuning.fallback})"
    note = "" if tuning is None else (f"tuning sample: recall@1 {tuning.recall_at_1:.4f}, {len(tuning.trials)} "
                                      f"settings tried, {tuning.as_dict()['speedup_vs_exact']:.1f}x faiss exact search")
    name = index.kind if index.kind != "ivfpq" else "ivfpq (IVF-PQ fast-scan + re-rank)"
    return {"label": f"**default**: {name}", "setting": chosen, "build": f"{build_s:.1f}",
            "memory": index.memory_bytes() / 2**20, "qps": b_n / seconds,
            "recall": recall_at_1(ids, scores, gt_ids[:, None], gt_scores[:, None]),
            "rank1": float(np.mean(g_lab[ids[:, 0]] == q_lab[:b_n])), "note": note}


def _row(r: dict[str, Any], brute_qps: float) -> list[str]:
    return [r["label"], r["setting"], r["build"], f"{r['memory']:.0f}", f"{r['qps']:,.0f}",
            f"{r['qps'] / brute_qps:.1f}x", f"{r['recall']:.4f}", f"{r['rank1']:.4f}"]


def main(argv: Sequence[str] | None = None) -> int:
    """Build each index, time searches, compare with numpy brute force, update docs/benchmarks.md."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="40k gallery, 2k queries (about a minute)")
    parser.add_argument("--gallery-size", type=int, default=300_000, help="gallery vectors (2 per identity)")
    parser.add_argument("--queries", type=int, default=10_000, help="queries searched by each index")
    parser.add_argument("--brute-queries", type=int, default=2_000,
                        help="queries also searched by numpy brute force (ground truth and its speed)")
    parser.add_argument("--hnsw-m", type=int, default=16, help="HNSW links per node")
    parser.add_argument("--ef-construction", type=int, default=40, help="HNSW build beam")
    parser.add_argument("--default-only", action="store_true", help="only numpy and the default (tuned) index")
    args = parser.parse_args(argv)
    if args.quick:
        args.gallery_size, args.queries, args.brute_queries = 40_000, 2_000, 1_000
    n, q_n, b_n = args.gallery_size, args.queries, min(args.brute_queries, args.queries)
    t0 = time.perf_counter()
    gallery, g_lab, queries, q_lab = face_like_embeddings(n // 2, 2, q_n)
    print(f"data: gallery {gallery.shape}, queries {queries.shape} in {time.perf_counter() - t0:.1f} s", flush=True)

    (gt_scores, gt_ids), seconds = timed(lambda: numpy_brute_force(gallery, queries[:b_n]), budget_s=20.0)
    brute = {"label": "numpy brute force", "setting": "-", "build": "-", "memory": gallery.nbytes / 2**20,
             "qps": b_n / seconds, "recall": 1.0, "rank1": float(np.mean(g_lab[gt_ids] == q_lab[:b_n]))}
    print(brute, flush=True)
    default = run_default(gallery, g_lab, queries, q_lab, b_n, gt_ids, gt_scores)
    print(default, flush=True)
    results = [brute, default]

    nlist_pq = 2048 if n >= 200_000 else 1024 if n >= 50_000 else 256
    configs: list[tuple[str, str, IndexOptions, list[tuple[str, IndexOptions]]]] = [
        ("flat (exact)", "flat", IndexOptions(), [("", IndexOptions())]),
        (f"HNSW M={args.hnsw_m}", "hnsw", IndexOptions(hnsw_m=args.hnsw_m, ef_construction=args.ef_construction),
         [(f"efSearch={ef}", IndexOptions(ef_search=ef)) for ef in (32, 64, 128)]),
        (f"IVF{nlist_pq},Flat", "ivf", IndexOptions(nlist=nlist_pq),
         [(f"nprobe={p}", IndexOptions(nprobe=p)) for p in (64, 256)]),
        (f"IVF{nlist_pq},PQ64x4fs + exact re-rank", "ivfpq", IndexOptions(nlist=nlist_pq, rerank=4),
         [(f"nprobe={p}, rerank 4k", IndexOptions(nprobe=p, rerank=4)) for p in (64, 128, 192, 256)]
         + [("nprobe=256, rerank 8k", IndexOptions(nprobe=256, rerank=8))]),
    ]
    hand_picked: list[dict[str, Any]] = []
    for label, kind, build_options, sweeps in ([] if args.default_only else configs):
        index = GalleryIndex.build(gallery, g_lab, kind, build_options, show_progress=False)
        memory_mb = index.memory_bytes() / 2**20
        for setting, search_options in sweeps:
            if kind != "flat":
                index.configure_search(search_options.ef_search, search_options.nprobe, search_options.rerank)
            searched = b_n if kind == "flat" else q_n  # exact search costs as much as brute force
            (scores, ids), seconds = timed(
                lambda: index.search(queries[:searched], 10, show_progress=False, normalised=True))
            hand_picked.append({"label": label, "setting": setting or "-", "build": f"{index.build_seconds:.1f}",
                                "memory": memory_mb, "qps": searched / seconds, "kind": kind,
                                "recall": recall_at_1(ids[:b_n], scores[:b_n], gt_ids[:, None], gt_scores[:, None]),
                                "rank1": float(np.mean(g_lab[ids[:b_n, 0]] == q_lab[:b_n]))})
            print(hand_picked[-1], flush=True)
        del index
    results += hand_picked

    # numpy again at the end: the faster of the two timings makes every ratio conservative on a shared box
    _, seconds_end = timed(lambda: numpy_brute_force(gallery, queries[:b_n]), budget_s=20.0)
    print(f"numpy brute force: {brute['qps']:,.0f} queries/s at the start, {b_n / seconds_end:,.0f} at the end",
          flush=True)
    brute["qps"] = max(brute["qps"], b_n / seconds_end)
    speedup = default["qps"] / brute["qps"]
    ok = default["recall"] >= GOAL_RECALL and speedup >= GOAL_SPEEDUP
    speedup = default["qps"] / brute["qps"]
    ok = default["recall"] >= GOAL_RECALL and speedup >= GOAL_SPEEDUP
    goal = (f"Goal (recall@1 >= {GOAL_RECALL} at >= {GOAL_SPEEDUP:.0f}x numpy brute force, top-1 queries, with "
            f"the defaults): {'met' if ok else 'NOT met'}: {default['label'].split(': ')[1]}, {default['setting']}: "
            f"recall@1 {default['recall']:.4f} on {b_n:,} held-out queries at {speedup:.1f}x"
            + (f" ({default['note']})" if default["note"] else "") + ".")
    common = (f"Gallery {n:,} x 512 float32 ({n // 2:,} identities x 2 images); numpy brute force (top-1 argmax) "
              f"runs on the first {b_n:,} queries, which are also the ones recall@1 and rank-1 are measured on. "
              f"faiss and numpy both use all cores; each speed is the fastest of up to 3 runs; numpy brute force "
              f"is timed at the start and again at the end of the run and the faster timing is used for every "
              f"ratio. The machine (2 cores) was shared with other jobs during this run, so speeds are "
              f"indicative. Memory = serialised index size (for re-ranked indexes it includes the float copy "
              f"used for re-ranking).")
    headers = ["index", "search setting", "build (s)", "memory (MiB)", "queries/s", "vs numpy", "recall@1", "rank-1"]
    body = (f"What `python -m facekd.eval.identify` does without search options: `auto` index, search tuned to "
            f"recall@1 >= {DEFAULT_TARGET_RECALL} (95% lower bound) on {TUNE_QUERIES:,} queries outside the "
            f"measured {b_n:,} (build time includes the tuning), top-1 queries (k = 1); its recall@1 is on the "
            f"{b_n:,} held-out queries. {common}\n\n"
            + table(headers, [_row(r, brute["qps"]) for r in (brute, default)]) + f"\n\n{goal}")
    write_section("identification_default", f"Identification with the defaults ({n:,} gallery)", body)
    if args.default_only:
        return 0
    reached = [r for r in hand_picked if r["kind"] != "flat" and r["recall"] >= GOAL_RECALL]
    if not reached:
        verdict = f"no hand-picked approximate index reached recall {GOAL_RECALL}."
    else:
        top = max(reached, key=lambda r: r["qps"])
        verdict = (f"fastest hand-picked index with recall >= {GOAL_RECALL}: {top['label']}, {top['setting']} at "
                   f"{top['qps'] / brute['qps']:.1f}x.")
    body = (f"Hand-picked indexes and search settings, {q_n:,} queries searched by each approximate index "
            f"(top-10); faiss flat runs on the first {b_n:,}. HNSW uses M={args.hnsw_m}, "
            f"efConstruction={args.ef_construction} to keep its build within minutes on 2 cores. {common}\n\n"
            + table(headers, [_row(r, brute["qps"]) for r in results]) + f"\n\n{verdict}")
    write_section("identification", f"Identification ({n:,} gallery, {q_n:,} queries)", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
