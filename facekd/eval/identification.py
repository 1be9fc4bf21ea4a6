"""1:N face identification with faiss: gallery indexes (exact and approximate) and open-set metrics.

Embeddings are L2-normalised and searched by inner product (= cosine). ``GalleryIndex.build``
takes a registered kind (``flat`` exact, ``hnsw``, ``ivf``, ``ivfpq`` with exact re-ranking),
``auto`` (by gallery size) or a faiss factory string. ``identification_metrics`` reports CMC
rank-k on mated probes, open-set TPIR at fixed FPIR (non-mated probes searched too) and the
index's recall@1 against exact search.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import faiss
import numpy as np

from facekd.errors import FileProblemError
from facekd.log import get_logger, progress
from facekd.registry import Registry

log = get_logger(__name__)

CMC_RANKS: tuple[int, ...] = (1, 5, 10)
FPIR_TARGETS: tuple[float, ...] = (1e-1, 1e-2)
SEARCH_CHUNK = 2048
DEFAULT_RERANK = {"ivfpq": 4}  # kinds whose approximate scores need exact re-ranking by default
ADD_CHUNK = 16384


class IdentificationError(ValueError):
    """Input that identification cannot use; subclasses say which problem."""


class EmptyGalleryError(IdentificationError):
    """The gallery (or probe set) holds no embeddings."""


class DimensionMismatchError(IdentificationError):
    """Gallery, probes and index disagree on the embedding size."""


class InvalidEmbeddingError(IdentificationError):
    """Embeddings with NaN/inf values, zero rows or the wrong shape."""


class MissingLabelsError(IdentificationError):
    """Embeddings without (or with mismatched) identity labels."""


class IndexFileError(IdentificationError, FileProblemError):
    """A saved index directory that is missing files or inconsistent (``path``: the file or directory)."""


# ---- embeddings ---------------------------------------------------------------------------------

def prepare_embeddings(embeddings: np.ndarray, what: str = "embeddings") -> np.ndarray:
    """Validate a [N, D] array and return it L2-normalised, float32, C-contiguous (faiss input)."""
    emb = np.asarray(embeddings)
    if emb.ndim != 2:
        raise InvalidEmbeddingError(f"{what}: expected a 2-D array [N, D], got shape {emb.shape}")
    if emb.shape[0] == 0:
        raise EmptyGalleryError(f"{what}: no embeddings (shape {emb.shape})")
    if not np.issubdtype(emb.dtype, np.floating):
        raise InvalidEmbeddingError(f"{what}: embeddings must be floating point, got {emb.dtype}")
    emb = np.ascontiguousarray(emb, dtype=np.float32)
    finite = np.isfinite(emb).all(axis=1)
    if not finite.all():
        rows = np.flatnonzero(~finite)
        raise InvalidEmbeddingError(
            f"{what}: {rows.size} rows contain NaN or infinite values (first rows: {rows[:5].tolist()})")
    norms = np.linalg.norm(emb, axis=1)
    if np.any(norms == 0):
        raise InvalidEmbeddingError(f"{what}: {int(np.sum(norms == 0))} rows are all zeros and cannot be normalised")
    return np.ascontiguousarray(emb / norms[:, None])


def prepare_labels(labels: Sequence[int] | np.ndarray | None, n: int, what: str = "labels") -> np.ndarray:
    """Validate identity labels for ``n`` embeddings and return them as int64."""
    if labels is None:
        raise MissingLabelsError(f"{what}: identity labels are required (one per embedding)")
    lab = np.asarray(labels)
    if lab.ndim != 1 or lab.shape[0] != n:
        raise MissingLabelsError(f"{what}: expected {n} labels (one per embedding), got shape {lab.shape}")
    if not np.issubdtype(lab.dtype, np.integer):
        if np.issubdtype(lab.dtype, np.floating) and np.all(np.isfinite(lab)) and np.all(lab == np.round(lab)):
            lab = lab.astype(np.int64)
        else:
            raise MissingLabelsError(f"{what}: labels must be integers, got dtype {lab.dtype}")
    return lab.astype(np.int64)


def add_distractors(gallery: np.ndarray, labels: np.ndarray, distractors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Append distractor embeddings (MegaFace style), each its own identity with label -1, -2, ...

    Negative labels are reserved for distractors (and for non-mated probes), so the gallery's own
    labels must be >= 0.
    """
    if distractors.shape[1] != gallery.shape[1]:
        raise DimensionMismatchError(
            f"distractors have dimension {distractors.shape[1]}, gallery has {gallery.shape[1]}")
    if labels.size and labels.min() < 0:
        raise MissingLabelsError("gallery labels must be >= 0 when distractors are added "
                                 "(negative labels mark distractors)")
    extra = -1 - np.arange(distractors.shape[0], dtype=np.int64)
    return np.concatenate([gallery, distractors]), np.concatenate([labels, extra])


# ---- index construction: a registry of index kinds ----------------------------------------------

@dataclass
class IndexOptions:
    """Index parameters; ``None`` means "choose from the gallery size"."""

    hnsw_m: int = 32
    ef_construction: int = 80
    ef_search: int = 128
    nlist: int | None = None
    nprobe: int | None = None
    train_size: int | None = None
    rerank: int | None = None  # re-rank rerank * k candidates exactly; None: 4 for ivfpq, else off; 0: off
    threads: int | None = None


IndexBuilder = Callable[[np.ndarray, IndexOptions], faiss.Index]
INDEXES: Registry[IndexBuilder] = Registry("index kind")
"""faiss index builders ``(gallery, options) -> empty (trained) index`` by name."""


def register_index(name: str) -> Callable[[IndexBuilder], IndexBuilder]:
    """Decorator registering a builder ``(gallery, options) -> empty (trained) faiss index``."""
    return INDEXES.register(name)


def index_kinds() -> list[str]:
    """Names accepted by ``GalleryIndex.build(kind=...)`` besides ``auto`` and factory strings."""
    return INDEXES.names()


def default_kind(n_gallery: int) -> str:
    """Exact search below 50k vectors; beyond, IVF over PQ fast-scan codes with exact re-ranking
    (the fastest index at recall@1 >= 0.99 in bench_identification on CPU)."""
    return "flat" if n_gallery < 50_000 else "ivfpq"


def default_nlist(n_gallery: int) -> int:
    """IVF list count: the power of two nearest 8 * sqrt(N), within [16, 262144] and <= N / 39.

    faiss's k-means wants at least 39 training vectors per list.
    """
    target = 8.0 * math.sqrt(max(n_gallery, 1))
    nlist = min(max(2 ** round(math.log2(target)), 16), 262_144)
    while nlist > 16 and nlist * 39 > n_gallery:
        nlist //= 2
    return int(nlist)


def default_nlist_pq(n_gallery: int) -> int:
    """IVF-PQ fast-scan list count: half of ``default_nlist`` (about 4 * sqrt(N), at least 16).

    Fast-scan builds a look-up table per visited list, so fewer, longer lists answer faster at the
    same recall (bench_identification), and k-means trains in a quarter of the time.
    """
    return max(16, default_nlist(n_gallery) // 2)


def default_nprobe(nlist: int) -> int:
    """Lists visited per query: 1/8 of the lists, at least 16 (recall@1 ~0.99 in bench_identification)."""
    return int(min(nlist, max(16, nlist // 8)))


def _training_sample(gallery: np.ndarray, size: int) -> np.ndarray:
    if size >= gallery.shape[0]:
        return gallery
    rng = np.random.default_rng(0)
    return gallery[np.sort(rng.choice(gallery.shape[0], size, replace=False))]


@register_index("flat")
def _build_flat(gallery: np.ndarray, options: IndexOptions) -> faiss.Index:
    return faiss.IndexFlatIP(gallery.shape[1])


@register_index("hnsw")
def _build_hnsw(gallery: np.ndarray, options: IndexOptions) -> faiss.Index:
    index = faiss.IndexHNSWFlat(gallery.shape[1], options.hnsw_m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = options.ef_construction
    index.hnsw.efSearch = options.ef_search
    return index


@register_index("ivf")
def _build_ivf(gallery: np.ndarray, options: IndexOptions) -> faiss.Index:
    nlist = options.nlist or default_nlist(gallery.shape[0])
    quantiser = "_HNSW32" if nlist >= 16_384 else ""
    index = faiss.index_factory(gallery.shape[1], f"IVF{nlist}{quantiser},Flat", faiss.METRIC_INNER_PRODUCT)
    _train(index, gallery, options, nlist)
    _apply_search_options(index, options)
    return index


@register_index("ivfpq")
def _build_ivfpq(gallery: np.ndarray, options: IndexOptions) -> faiss.Index:
    """IVF over 4-bit PQ fast-scan codes (d/8 bytes per vector); pair it with ``rerank`` for exact top-k."""
    nlist = options.nlist or default_nlist_pq(gallery.shape[0])
    dim = gallery.shape[1]
    m = next(m for m in (dim // 8, dim // 4, dim // 2, dim) if m and dim % m == 0)
    quantiser = "_HNSW32" if nlist >= 16_384 else ""
    index = faiss.index_factory(dim, f"IVF{nlist}{quantiser},PQ{m}x4fs", faiss.METRIC_INNER_PRODUCT)
    _train(index, gallery, options, nlist)
    _apply_search_options(index, options)
    return index


def _train(index: faiss.Index, gallery: np.ndarray, options: IndexOptions, nlist: int) -> None:
    size = options.train_size or min(gallery.shape[0], 64 * nlist)
    if size < nlist:
        raise IdentificationError(f"an index with {nlist} lists needs at least {nlist} training vectors, "
                                  f"the gallery has {gallery.shape[0]}; use a smaller nlist or a flat index")
    sample = _training_sample(gallery, size)
    log.info("training %s on %d vectors", type(index).__name__, sample.shape[0])
    t0 = time.perf_counter()
    index.train(sample)
    log.info("trained in %.1f s", time.perf_counter() - t0)


def _build_factory(factory: str, gallery: np.ndarray, options: IndexOptions) -> faiss.Index:
    try:
        index = faiss.index_factory(gallery.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as err:
        raise IdentificationError(f"faiss could not build index '{factory}': {err}") from err
    if not index.is_trained:
        ivf = _ivf_or_none(index)
        _train(index, gallery, options, ivf.nlist if ivf is not None else 1)
    _apply_search_options(index, options)
    return index


def _ivf_or_none(index: faiss.Index) -> Any:
    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def _apply_search_options(index: faiss.Index, options: IndexOptions) -> None:
    """Set efSearch / nprobe wherever they apply (also inside refine and transform wrappers)."""
    if isinstance(index, faiss.IndexRefine) and options.rerank:
        index.k_factor = float(options.rerank)
    base = faiss.downcast_index(index.base_index) if hasattr(index, "base_index") else index
    ivf = _ivf_or_none(base)
    if ivf is not None:
        ivf.nprobe = options.nprobe or default_nprobe(ivf.nlist)
    if hasattr(base, "hnsw"):
        base.hnsw.efSearch = options.ef_search


# ---- the gallery index ---------------------------------------------------------------------------

@dataclass
class GalleryIndex:
    """A faiss index over L2-normalised gallery embeddings plus the identity label of each row."""

    index: faiss.Index
    labels: np.ndarray
    kind: str
    options: IndexOptions = field(default_factory=IndexOptions)
    build_seconds: float = 0.0
    names: list[str] | None = None  # identity name of each label, when the gallery came from folders

    @classmethod
    def build(cls, gallery: np.ndarray, labels: Sequence[int] | np.ndarray, kind: str = "auto",
              options: IndexOptions | None = None, show_progress: bool = True,
              names: Sequence[str] | None = None) -> "GalleryIndex":
        """Index ``gallery`` [N, D]; ``kind`` is auto, a registered name (flat, hnsw, ivf) or a faiss factory string."""
        options = options or IndexOptions()
        emb = prepare_embeddings(gallery, "gallery")
        lab = prepare_labels(labels, emb.shape[0], "gallery labels")
        if options.threads:
            faiss.omp_set_num_threads(options.threads)
        kind = default_kind(emb.shape[0]) if kind == "auto" else kind
        t0 = time.perf_counter()
        if kind in INDEXES:
            index = INDEXES.get(kind)(emb, options)
        else:
            index = _build_factory(kind, emb, options)
        rerank = DEFAULT_RERANK.get(kind, 0) if options.rerank is None else options.rerank
        if rerank > 0 and kind != "flat" and not isinstance(index, faiss.IndexRefine):
            index = faiss.IndexRefineFlat(index)
            index.k_factor = float(rerank)
            _apply_search_options(index, options)
        bar = progress(total=emb.shape[0], desc=f"indexing ({kind})", unit="vec",
                       disable=None if show_progress else True)
        for start in range(0, emb.shape[0], ADD_CHUNK):
            chunk = emb[start:start + ADD_CHUNK]
            index.add(chunk)
            bar.update(chunk.shape[0])
        bar.close()
        seconds = time.perf_counter() - t0
        log.info("built %s index over %d x %d in %.1f s", kind, emb.shape[0], emb.shape[1], seconds)
        return cls(index=index, labels=lab, kind=kind, options=options, build_seconds=seconds,
                   names=list(names) if names is not None else None)

    @property
    def dim(self) -> int:
        """Embedding dimension the index expects."""
        return int(self.index.d)

    @property
    def size(self) -> int:
        """Number of gallery vectors."""
        return int(self.index.ntotal)

    def configure_search(self, ef_search: int | None = None, nprobe: int | None = None,
                         rerank: int | None = None) -> None:
        """Change search-time parameters (HNSW efSearch, IVF nprobe, re-rank factor) without rebuilding."""
        changes = {k: v for k, v in (("ef_search", ef_search), ("nprobe", nprobe), ("rerank", rerank))
                   if v is not None}
        self.options = replace(self.options, **changes)
        _apply_search_options(self.index, self.options)

    def memory_bytes(self) -> int:
        """Bytes of the serialised index (what it occupies in RAM, give or take bookkeeping)."""
        return int(faiss.serialize_index(self.index).nbytes)

    def search(self, queries: np.ndarray, k: int = 10, show_progress: bool = True,
               normalised: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (scores [Q, k], gallery row ids [Q, k]) by cosine similarity, in chunks with a progress bar."""
        q = queries if normalised else prepare_embeddings(queries, "queries")
        if q.shape[1] != self.dim:
            raise DimensionMismatchError(f"queries have dimension {q.shape[1]}, the gallery index has {self.dim}")
        k = min(k, self.size)
        scores = np.empty((q.shape[0], k), dtype=np.float32)
        ids = np.empty((q.shape[0], k), dtype=np.int64)
        bar = progress(total=q.shape[0], desc=f"searching ({self.kind})", unit="query",
                       disable=None if show_progress else True)
        for start in range(0, q.shape[0], SEARCH_CHUNK):
            s, i = self.index.search(q[start:start + SEARCH_CHUNK], k)
            scores[start:start + s.shape[0]], ids[start:start + s.shape[0]] = s, i
            bar.update(s.shape[0])
        bar.close()
        return scores, ids

    def save(self, directory: str | Path) -> Path:
        """Write index.faiss, labels.npy and meta.json into ``directory``."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        faiss.write_index(self.index, str(out / "index.faiss"))
        np.save(out / "labels.npy", self.labels)
        meta = {"kind": self.kind, "dim": self.dim, "size": self.size, "options": asdict(self.options),
                "names": self.names}
        (out / "meta.json").write_text(json.dumps(meta, indent=2))
        return out

    @classmethod
    def load(cls, directory: str | Path) -> "GalleryIndex":
        """Read an index written by ``save``; raises IndexFileError naming what is missing or wrong."""
        src = Path(directory)
        missing = [n for n in ("index.faiss", "labels.npy", "meta.json") if not (src / n).is_file()]
        if missing:
            raise IndexFileError(src, f"not a saved gallery index (missing {', '.join(missing)})")
        try:
            meta = json.loads((src / "meta.json").read_text())
            options = IndexOptions(**meta.get("options", {}))
        except (json.JSONDecodeError, TypeError) as err:
            raise IndexFileError(src / "meta.json", f"unreadable index metadata ({err})") from err
        try:
            index = faiss.read_index(str(src / "index.faiss"))
        except RuntimeError as err:
            raise IndexFileError(src / "index.faiss", f"faiss cannot read it ({err})") from err
        labels = np.load(src / "labels.npy", allow_pickle=False)
        if labels.shape != (index.ntotal,):
            raise IndexFileError(src, f"{labels.shape[0]} labels for an index of {index.ntotal} vectors")
        names = meta.get("names")
        return cls(index=index, labels=labels.astype(np.int64), kind=str(meta.get("kind", "loaded")),
                   options=options, names=[str(n) for n in names] if isinstance(names, list) else None)


def exact_search(gallery: np.ndarray, queries: np.ndarray, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` inner-product search (faiss flat, BLAS) of normalised arrays."""
    flat = faiss.IndexFlatIP(gallery.shape[1])
    flat.add(gallery)
    return flat.search(queries, min(k, gallery.shape[0]))


# ---- metrics ------------------------------------------------------------------------------------

def identity_ranks(ranked_labels: np.ndarray, probe_labels: np.ndarray) -> np.ndarray:
    """1-based rank of each probe's identity among the distinct identities of its ranked hits (0 = not found).

    Gallery identities are ranked by their best-scoring sample, so several images of one identity
    count once.
    """
    hits = np.asarray(ranked_labels)
    probes = np.asarray(probe_labels)
    q, k = hits.shape
    earlier = np.tri(k, k, -1, dtype=bool)[None]
    ranks = np.zeros(q, dtype=np.int64)
    for s in range(0, q, 4096):  # bounded memory: chunk x k x k booleans
        h = hits[s:s + 4096]
        first = ~((h[:, :, None] == h[:, None, :]) & earlier).any(axis=2)  # first hit of each identity
        identity_position = np.cumsum(first, axis=1)  # 1-based identity rank at each hit
        correct = h == probes[s:s + 4096, None]
        found = correct.any(axis=1)
        at = identity_position[np.arange(h.shape[0]), np.argmax(correct, axis=1)]
        ranks[s:s + h.shape[0]] = np.where(found, at, 0)
    return ranks


def cmc(ranks: np.ndarray, max_rank: int) -> np.ndarray:
    """Cumulative match characteristic: fraction of probes whose identity rank is <= r, r = 1..max_rank."""
    found = ranks[ranks > 0]
    counts = np.bincount(found, minlength=max_rank + 1)[1:max_rank + 1]
    return np.cumsum(counts) / max(ranks.size, 1)


def tpir_at_fpir(mated_scores: np.ndarray, mated_correct: np.ndarray, nonmated_scores: np.ndarray,
                 fpir: float) -> tuple[float, float, float]:
    """Open-set (TPIR, achieved FPIR, threshold): a probe is accepted when its top score exceeds the threshold.

    The threshold lets through at most ``fpir`` of the non-mated probes; TPIR counts mated probes
    whose top-1 identity is correct and accepted.
    """
    ordered = np.sort(np.asarray(nonmated_scores, dtype=np.float64))[::-1]
    allowed = int(math.floor(fpir * ordered.size + 1e-9))
    threshold = float(ordered[allowed]) if allowed < ordered.size else -np.inf
    accepted = np.asarray(mated_scores) > threshold
    tpir = float(np.mean(accepted & np.asarray(mated_correct, dtype=bool))) if accepted.size else float("nan")
    achieved = float(np.mean(ordered > threshold))
    return tpir, achieved, threshold


def recall_at_1(approx_ids: np.ndarray, approx_scores: np.ndarray, exact_ids: np.ndarray,
                exact_scores: np.ndarray, tolerance: float = 1e-5) -> float:
    """Share of queries whose approximate top-1 is the exact top-1 (a tie in score counts as found)."""
    same = approx_ids[:, 0] == exact_ids[:, 0]
    tie = approx_scores[:, 0] >= exact_scores[:, 0] - tolerance
    return float(np.mean(same | ((approx_ids[:, 0] >= 0) & tie)))


def identification_metrics(index: GalleryIndex, probes: np.ndarray, probe_labels: Sequence[int] | np.ndarray,
                           ranks: Sequence[int] = CMC_RANKS, fpirs: Sequence[float] = FPIR_TARGETS,
                           gallery_for_exact: np.ndarray | None = None, recall_queries: int | None = None,
                           candidates: int = 50, show_progress: bool = True,
                           recall_exclude: np.ndarray | None = None) -> dict[str, Any]:
    """CMC rank-k (mated probes), TPIR@FPIR (mated vs non-mated probes) and recall@1 against exact search.

    A probe is mated when its label is >= 0 and present in the gallery; others are non-mated
    (label -1 is the usual way to mark a probe of an unknown person).

    ``gallery_for_exact`` (the gallery embeddings) enables the recall check for approximate
    indexes: ``recall_at_1`` is that of a top-1 search (k = 1, what a top-1 query runs) on the
    first ``recall_queries`` probes not listed in ``recall_exclude`` (e.g. those used to tune the
    index); the top-1 of the top-``candidates`` search, which re-ranks more candidates and can
    overstate it, is reported beside it as ``candidate_search_recall_at_1``.
    """
    q = prepare_embeddings(probes, "probes")
    labels = prepare_labels(probe_labels, q.shape[0], "probe labels")
    if q.shape[1] != index.dim:
        raise DimensionMismatchError(f"probes have dimension {q.shape[1]}, the gallery index has {index.dim}")
    k = max(candidates, max(ranks))
    t0 = time.perf_counter()
    scores, ids = index.search(q, k, show_progress=show_progress, normalised=True)
    search_seconds = time.perf_counter() - t0
    hit_labels = np.where(ids >= 0, index.labels[np.clip(ids, 0, None)], np.iinfo(np.int64).min)
    mated = (labels >= 0) & np.isin(labels, index.labels)  # negative probe labels: known non-mated
    result: dict[str, Any] = {
        "index": index.kind, "gallery_size": index.size, "n_probes": int(q.shape[0]),
        "n_mated": int(mated.sum()), "n_nonmated": int((~mated).sum()),
        "search_seconds": search_seconds, "queries_per_second": q.shape[0] / max(search_seconds, 1e-12),
    }
    if mated.any():
        id_ranks = identity_ranks(hit_labels[mated], labels[mated])
        curve = cmc(id_ranks, max(ranks))
        result["cmc"] = {f"rank{r}": float(curve[r - 1]) for r in ranks}
    else:
        result["cmc"] = {}
        result["cmc_note"] = "no mated probes (no probe identity is in the gallery)"
    result["tpir_at_fpir"], result["tpir_at_fpir_skipped"] = {}, {}
    n_non = int((~mated).sum())
    for fpir in fpirs:
        key = f"{fpir:.0e}"
        if n_non == 0 or not mated.any():
            result["tpir_at_fpir_skipped"][key] = "needs both mated and non-mated probes"
        elif n_non * fpir < 1:
            result["tpir_at_fpir_skipped"][key] = f"needs >= {math.ceil(1 / fpir)} non-mated probes, have {n_non}"
        else:
            correct = hit_labels[mated, 0] == labels[mated]
            tpir, achieved, thr = tpir_at_fpir(scores[mated, 0], correct, scores[~mated, 0], fpir)
            result["tpir_at_fpir"][key] = {"tpir": tpir, "fpir": achieved, "threshold": thr}
    if index.kind != "flat" and gallery_for_exact is not None:
        gallery = prepare_embeddings(gallery_for_exact, "gallery")
        if gallery.shape[0] != index.size:
            raise DimensionMismatchError(
                f"the exact-search gallery has {gallery.shape[0]} rows, the index {index.size}")
        rows = np.arange(q.shape[0])
        if recall_exclude is not None and np.size(recall_exclude) < q.shape[0]:
            rows = np.setdiff1d(rows, recall_exclude)
        elif recall_exclude is not None:
            result["recall_note"] = "every probe was used to tune the index; recall measured on the same probes"
        rows = rows if recall_queries is None else rows[:recall_queries]
        ex_scores, ex_ids = exact_search(gallery, q[rows], 1)
        top1_scores, top1_ids = index.search(q[rows], 1, show_progress=False, normalised=True)
        result["recall_at_1"] = recall_at_1(top1_ids, top1_scores, ex_ids, ex_scores)
        result["recall_search_k"] = 1
        result["candidate_search_recall_at_1"] = recall_at_1(ids[rows], scores[rows], ex_ids, ex_scores)
        result["recall_queries"] = int(rows.size)
    elif index.kind == "flat":
        result["recall_at_1"] = 1.0
        result["recall_queries"] = int(q.shape[0])
    else:
        result["recall_note"] = "recall@1 not measured: no gallery embeddings for exact search"
    return result
