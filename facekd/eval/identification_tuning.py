"""Search-parameter tuning that keeps a recall promise: the fastest nprobe / efSearch / re-rank depth
whose top-1 agrees with exact search on at least ``target_recall`` of a sample of the user's probes.

Each candidate setting runs the search a user's top-1 query runs (k = 1) on the sample and is
timed against exact (flat) search on the same queries. Settings are walked in increasing cost
(nprobe or efSearch up a ladder, for each re-rank depth) and a walk stops at the first setting
that reaches the target or that is already slower than exact search. When no approximate setting
reaches the target faster than exact search, the answer is exact search.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import faiss
import numpy as np

from facekd.log import get_logger

log = get_logger(__name__)

DEFAULT_TARGET_RECALL = 0.99
TUNE_QUERIES = 1000
NPROBE_LADDER = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 160, 192, 256, 320, 384, 512, 768, 1024,
                 1536, 2048, 3072, 4096, 6144, 8192, 12288, 16384, 32768, 65536, 131072, 262144)
EF_LADDER = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048)
PLATEAU_STEPS = 3
CONFIDENCE_Z = 1.645  # one-sided 95%
RERANK_DEPTHS = (1024, 256, 64, 16, 4)  # deepest first: its walk bounds the others' cost


@dataclass
class SearchTuning:
    """What the tuner chose and measured; ``setting`` is {} for exact search."""

    target_recall: float
    index: str
    setting: dict[str, int]
    recall_at_1: float  # of k=1 searches on the tuning sample
    seconds_per_query: float
    exact_seconds_per_query: float
    queries: int
    fallback: str | None = None
    trials: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (for identification.json)."""
        out = asdict(self)
        out["speedup_vs_exact"] = self.exact_seconds_per_query / max(self.seconds_per_query, 1e-12)
        return out


def tunable_parameters(index: Any) -> dict[str, list[int]]:
    """Search parameters of a GalleryIndex's faiss index worth tuning, each with its ladder of values."""
    from facekd.eval.identification import _ivf_or_none
    raw = index.index
    params: dict[str, list[int]] = {}
    base = faiss.downcast_index(raw.base_index) if isinstance(raw, faiss.IndexRefine) else raw
    ivf = _ivf_or_none(base)
    if ivf is not None:
        params["nprobe"] = [p for p in NPROBE_LADDER if p < ivf.nlist] + [int(ivf.nlist)]
    elif hasattr(base, "hnsw"):
        params["ef_search"] = list(EF_LADDER)
    if isinstance(raw, faiss.IndexRefine):
        params["rerank"] = list(RERANK_DEPTHS)
    return params


def confident_recall(recall: float, n: int, z: float = CONFIDENCE_Z) -> float:
    """One-sided lower confidence bound (normal approximation) of a recall measured on ``n`` queries.

    A setting is accepted when this bound reaches the target, so that it keeps the target on
    probes it was not tuned on, not only on the sample (picking the first setting to cross the
    target on a sample overstates its recall).
    """
    return recall - z * float(np.sqrt(max(recall * (1.0 - recall), 1.0 / n) / n))


def _timed_search(index: Any, queries: np.ndarray, repeats: int) -> tuple[np.ndarray, np.ndarray, float]:
    best = float("inf")
    for _ in range(max(repeats, 1)):
        t0 = time.perf_counter()
        scores, ids = index.search(queries, 1)
        best = min(best, time.perf_counter() - t0)
    return scores, ids, best


def tune_search(index: Any, gallery: np.ndarray, queries: np.ndarray, target_recall: float = DEFAULT_TARGET_RECALL,
                sample: int = TUNE_QUERIES, seed: int = 0, repeats: int = 2) -> tuple[SearchTuning, np.ndarray]:
    """Tune ``index`` (a GalleryIndex over ``gallery``) in place; returns (tuning, rows of ``queries`` used).

    ``gallery`` and ``queries`` are L2-normalised float32. ``tuning.fallback`` is set when exact
    search should replace the index (the caller rebuilds it as ``flat``).
    """
    from facekd.eval.identification import recall_at_1
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(queries.shape[0], min(sample, queries.shape[0]), replace=False))
    q = np.ascontiguousarray(queries[rows])
    flat = faiss.IndexFlatIP(gallery.shape[1])
    flat.add(gallery)
    ex_scores, ex_ids, exact_s = _timed_search(flat, q, repeats)
    del flat
    params = tunable_parameters(index)
    primary = next((p for p in ("nprobe", "ef_search") if p in params), None)
    ladder: list[int | None] = list(params[primary]) if primary else [None]
    depths: list[int | None] = list(params.get("rerank", [])) or [None]
    trials: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    first = 0  # a shallower re-rank never reaches the target at fewer lists / a smaller beam than a deeper one
    for depth in depths:
        history: list[float] = []
        ended = "ladder"  # why this walk ended: ladder (exhausted), reached, slower, plateau
        for step in range(first, len(ladder)):
            setting = {k: v for k, v in ((primary, ladder[step]), ("rerank", depth)) if k is not None and v is not None}
            index.configure_search(**setting)
            scores, ids, seconds = _timed_search(index.index, q, 1)
            recall = recall_at_1(ids, scores, ex_ids, ex_scores)
            reached = confident_recall(recall, q.shape[0]) >= target_recall
            if reached and repeats > 1:
                scores, ids, seconds = _timed_search(index.index, q, repeats)
            trial = {**setting, "recall_at_1": recall, "seconds_per_query": seconds / q.shape[0]}
            trials.append(trial)
            history.append(recall)
            first = step
            if reached:
                if best is None or trial["seconds_per_query"] < best["seconds_per_query"]:
                    best = trial
                ended = "reached"
                break
            bound = exact_s if best is None else min(exact_s, best["seconds_per_query"] * q.shape[0])
            if seconds > bound:
                ended = "slower"  # every later setting of this walk is slower still
                break
            if len(history) > PLATEAU_STEPS and max(history[-PLATEAU_STEPS:]) <= history[-PLATEAU_STEPS - 1]:
                ended = "plateau"
                break
        if ended in ("plateau", "ladder"):
            break  # recall stopped short of the target at this depth: a shallower one cannot do better
    exact_spq = exact_s / q.shape[0]
    if best is None or best["seconds_per_query"] >= exact_spq:
        why = (f"no approximate setting reached recall@1 {target_recall} (95% lower bound on the sample) "
               "before it was slower than exact search"
               if best is None else
               f"the fastest setting at recall@1 >= {target_recall} ({best['seconds_per_query'] * 1e3:.3f} ms/query) "
               f"is not faster than exact search ({exact_spq * 1e3:.3f} ms/query)")
        log.info("search tuning: %s; exact search it is", why)
        return SearchTuning(target_recall, "flat", {}, 1.0, exact_spq, exact_spq, int(q.shape[0]), why, trials), rows
    setting = {k: int(v) for k, v in best.items() if k in ("nprobe", "ef_search", "rerank")}
    index.configure_search(**setting)
    log.info("search tuning: %s reaches recall@1 %.4f at %.1fx exact search", setting, best["recall_at_1"],
             exact_spq / best["seconds_per_query"])
    return SearchTuning(target_recall, index.kind, setting, float(best["recall_at_1"]), best["seconds_per_query"],
                        exact_spq, int(q.shape[0]), None, trials), rows


def tuned_index(index: Any, gallery: np.ndarray, queries: np.ndarray, target_recall: float = DEFAULT_TARGET_RECALL,
                sample: int = TUNE_QUERIES) -> tuple[Any, SearchTuning, np.ndarray]:
    """(index to search, tuning, tuning rows of ``queries``): ``index`` tuned in place, or a flat index
    over ``gallery`` when exact search is the faster way to the target."""
    from facekd.eval.identification import GalleryIndex, prepare_embeddings
    g = prepare_embeddings(gallery, "gallery")
    tuning, rows = tune_search(index, g, prepare_embeddings(queries, "probes"), target_recall, sample)
    if tuning.fallback:
        index = GalleryIndex.build(g, index.labels, "flat", show_progress=False, names=index.names)
    return index, tuning, rows
