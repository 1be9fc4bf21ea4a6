"""1:N identification throughput and recall: faiss flat / HNSW / IVF / IVF-PQ vs numpy brute force.

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
from typing import Callable, Sequence, TypeVar

import numpy as np

from bench._report import table, write_section
from facekd.eval.identification import GalleryIndex, IndexOptions, recall_at_1

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
    args = parser.parse_args(argv)
    if args.quick:
        args.gallery_size, args.queries, args.brute_queries = 40_000, 2_000, 1_000
    n, q_n, b_n = args.gallery_size, args.queries, min(args.brute_queries, args.queries)
    t0 = time.perf_counter()
    gallery, g_lab, queries, q_lab = face_like_embeddings(n // 2, 2, q_n)
    print(f"data: gallery {gallery.shape}, queries {queries.shape} in {time.perf_counter() - t0:.1f} s", flush=True)

    (gt_scores, gt_ids), seconds = timed(lambda: numpy_brute_force(gallery, queries[:b_n]), budget_s=20.0)
    brute_qps = b_n / seconds
    rank1_exact = float(np.mean(g_lab[gt_ids] == q_lab[:b_n]))
    rows = [["numpy brute force", "-", "-", f"{gallery.nbytes / 2**20:.0f}", f"{brute_qps:,.0f}", "1.0x",
             "1.0000", f"{rank1_exact:.4f}"]]
    print(rows[-1], flush=True)

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
    best: tuple[float, str] | None = None
    for label, kind, build_options, sweeps in configs:
        index = GalleryIndex.build(gallery, g_lab, kind, build_options, show_progress=False)
        memory_mb = index.memory_bytes() / 2**20
        for setting, search_options in sweeps:
            if kind != "flat":
                index.configure_search(search_options.ef_search, search_options.nprobe, search_options.rerank)
            searched = b_n if kind == "flat" else q_n  # exact search costs as much as brute force
            (scores, ids), seconds = timed(
                lambda: index.search(queries[:searched], 10, show_progress=False, normalised=True))
            qps = searched / seconds
            recall = recall_at_1(ids[:b_n], scores[:b_n], gt_ids[:, None], gt_scores[:, None])
            rank1 = float(np.mean(g_lab[ids[:b_n, 0]] == q_lab[:b_n]))
            speedup = qps / brute_qps
            rows.append([label, setting or "-", f"{index.build_seconds:.1f}", f"{memory_mb:.0f}", f"{qps:,.0f}",
                         f"{speedup:.1f}x", f"{recall:.4f}", f"{rank1:.4f}"])
            print(rows[-1], flush=True)
            if kind != "flat" and recall >= GOAL_RECALL and (best is None or speedup > best[0]):
                best = (speedup, f"{label}, {setting}")
        del index

    goal = f"Goal (recall@1 >= {GOAL_RECALL} at >= {GOAL_SPEEDUP:.0f}x numpy brute force): "
    if best is None:
        goal += f"NOT met: no approximate index reached recall {GOAL_RECALL}."
    else:
        goal += (f"{'met' if best[0] >= GOAL_SPEEDUP else 'NOT met'}; fastest index with recall >= "
                 f"{GOAL_RECALL}: {best[1]} at {best[0]:.1f}x.")
    body = (f"Gallery {n:,} x 512 float32 ({n // 2:,} identities x 2 images), {q_n:,} queries searched by each "
            f"approximate index (top-10); numpy brute force (top-1 argmax) and faiss flat run on the first "
            f"{b_n:,} queries, which are also the ones recall@1 and rank-1 are measured on. faiss and numpy "
            f"both use all cores; each speed is the fastest of up to 3 runs (the box is shared). HNSW uses "
            f"M={args.hnsw_m}, efConstruction={args.ef_construction} to keep its build within minutes on 2 "
            f"cores. Memory = serialised index size (for re-ranked indexes it includes the float copy used "
            f"for re-ranking).\n\n"
            + table(["index", "search setting", "build (s)", "memory (MiB)", "queries/s", "vs numpy",
                     "recall@1", "rank-1"], rows)
            + f"\n\n{goal}")
    write_section("identification", f"Identification ({n:,} gallery, {q_n:,} queries)", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
