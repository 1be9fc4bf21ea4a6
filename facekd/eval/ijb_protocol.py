"""IJB-B / IJB-C protocols as arcface_torch's ``eval_ijbc.py`` and insightface's ``ijb_1n.py`` compute them.

The arithmetic is theirs, reorganised to run in a few vectorised passes instead of a ``np.where``
per template and 100k-pair batches:

* image input = flip-summed feature (float32), optionally L2-normalised (``--norm-feature``),
  times the faceness score (unless ``--no-detector-score``);
* template = sum over its media of the mean of the media's images, in float32 and in the same
  order as the reference loops (images in file order, media by ascending id), then float64 and
  L2-normalised; so template features are bit-identical to the reference's;
* pair score = cosine (float64), in chunks: pairs sorted by first template, each chunk scored as a
  dense block product when the block is dense enough, else as row-wise dot products;
* ROC by scikit-learn's ``roc_curve``; TAR at FAR x read as arcface_torch does;
* 1:N: top-1/5/10 and TPIR at FPIR by ijb_1n.py's rule.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

FAR_TARGETS: tuple[float, ...] = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
FPIR_TARGETS: tuple[float, ...] = (0.01, 0.1)
TOP_K: tuple[int, ...] = (1, 5, 10)
PAIR_CHUNK = 1 << 20
DENSE_RATIO = 6.0  # a dense block product costs about this much less per dot product than a gathered one


@dataclass(frozen=True)
class TestMode:
    """arcface_torch's test mode: F2 (flip summed), N1 (norm kept), D1 (detector score) by default."""

    flip: bool = True
    detector_score: bool = True
    norm_feature: bool = False


def image_inputs(features: np.ndarray, faceness: np.ndarray, mode: TestMode) -> np.ndarray:
    """Per-image inputs to template aggregation (float32), exactly as eval_ijbc.py forms them."""
    x = np.asarray(features, dtype=np.float32)
    if mode.norm_feature:
        x = x / np.sqrt(np.sum(x ** 2, -1, keepdims=True))
    if mode.detector_score:
        x = x * np.asarray(faceness, dtype=np.float32)[:, np.newaxis]
    return x


def _ordered_sum(out: np.ndarray, group: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """out[group[i]] += rows[i] in index order within each group (sequential float32 sums, like the loops).

    Vectorised over groups: step p adds the p-th row of every group that has one, so the number of
    Python steps is the largest group's size, not the number of groups.
    """
    order = np.argsort(group, kind="stable")
    g = group[order]
    starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    counts = np.diff(np.r_[starts, g.size])
    by_size = np.argsort(-counts, kind="stable")
    ids, starts, counts = g[starts][by_size], starts[by_size], counts[by_size]
    for p in range(int(counts[0]) if counts.size else 0):
        active = int(np.searchsorted(-counts, -p, side="left"))  # groups with more than p rows
        out[ids[:active]] += rows[order[starts[:active] + p]]
    return out


def template_sums(x: np.ndarray, templates: np.ndarray, medias: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted unique template ids, unnormalised template features float32 [T, D]): sum of media means."""
    unique_templates, t_inv = np.unique(templates, return_inverse=True)
    t_inv = t_inv.ravel()
    order = np.lexsort((medias, t_inv))  # by template, then media; stable: images keep file order
    key_t, key_m = t_inv[order], medias[order]
    new_group = np.ones(order.size, dtype=bool)
    new_group[1:] = (key_t[1:] != key_t[:-1]) | (key_m[1:] != key_m[:-1])
    group_sorted = np.cumsum(new_group) - 1
    n_groups = int(group_sorted[-1]) + 1
    group = np.empty_like(group_sorted)
    group[order] = group_sorted  # media group of each image, in file order
    media_feats = _ordered_sum(np.zeros((n_groups, x.shape[1]), np.float32), group, x)
    counts = np.bincount(group, minlength=n_groups).astype(np.float32)
    media_feats /= counts[:, None]  # np.mean's float32 division (exact for single images)
    group_template = key_t[new_group]
    feats = _ordered_sum(np.zeros((unique_templates.size, x.shape[1]), np.float32), group_template, media_feats)
    return unique_templates, feats


def normalise_templates(sums: np.ndarray) -> np.ndarray:
    """float64 L2-normalised template features, as eval_ijbc.py (sklearn.preprocessing.normalize)."""
    from sklearn.preprocessing import normalize
    return normalize(sums.astype(np.float64))


def template_rows(unique_templates: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Row of each template id in ``unique_templates`` (the caller has checked that all are present)."""
    return np.searchsorted(unique_templates, ids)


def _dense_block(feats: np.ndarray, r1: np.ndarray, r2: np.ndarray, out: np.ndarray,
                 mark: np.ndarray) -> bool:
    """Score pairs (r1, r2) through one block product when it is dense enough; False when it is not."""
    u1 = np.unique(r1)
    mark[:] = False
    mark[r2] = True
    u2 = np.flatnonzero(mark)
    if u1.size * u2.size > DENSE_RATIO * r1.size:
        return False
    pos2 = np.cumsum(mark) - 1
    block = feats[u1] @ feats[u2].T
    out[:] = block[np.searchsorted(u1, r1), pos2[r2]]
    return True


def _gathered(feats: np.ndarray, r1: np.ndarray, r2: np.ndarray, out: np.ndarray, step: int = 2048) -> None:
    for s in range(0, r1.size, step):
        out[s:s + step] = np.einsum("ij,ij->i", feats[r1[s:s + step]], feats[r2[s:s + step]])


def pair_scores(feats: np.ndarray, r1: np.ndarray, r2: np.ndarray, chunk: int = PAIR_CHUNK) -> np.ndarray:
    """Cosine score (float64) of each pair of template rows, in chunks of about ``chunk`` pairs."""
    n = r1.size
    scores = np.empty(n, dtype=np.float64)
    if n == 0:
        return scores
    if np.all(r1[1:] >= r1[:-1]):
        order = None
        s1, s2 = r1, r2
    else:
        order = np.argsort(r1, kind="stable")
        s1, s2 = r1[order], r2[order]
    mark = np.zeros(feats.shape[0], dtype=bool)
    out = np.empty(n, dtype=np.float64)
    start = 0
    while start < n:
        stop = min(start + chunk, n)
        if stop < n:  # end the chunk at a change of first template, so each block holds whole rows
            edge = int(np.searchsorted(s1, s1[stop - 1], side="left"))
            stop = edge if edge > start else stop
        a, b, o = s1[start:stop], s2[start:stop], out[start:stop]
        if not _dense_block(feats, a, b, o, mark):
            _gathered(feats, a, b, o)
        start = stop
    if order is None:
        return out
    scores[order] = out
    return scores


def tar_at_far(labels: np.ndarray, scores: np.ndarray, fars: Sequence[float] = FAR_TARGETS
               ) -> tuple[dict[float, float], float, np.ndarray, np.ndarray]:
    """({FAR: TAR}, AUC, fpr, tpr): sklearn ROC; TAR = TPR at the FPR nearest FAR (largest TPR on ties)."""
    from sklearn.metrics import auc, roc_curve
    fpr, tpr, _ = roc_curve(labels, scores)
    roc_auc = float(auc(fpr, tpr))
    fpr, tpr = np.flipud(fpr), np.flipud(tpr)  # first of the nearest points = the largest TPR
    table = {float(x): float(tpr[int(np.argmin(np.abs(fpr - x)))]) for x in fars}
    return table, roc_auc, fpr, tpr


def one_n_templates(sums: np.ndarray, unique_templates: np.ndarray, chosen: np.ndarray,
                    subjects: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(features [U, D] float64 normalised as ijb_1n.py, sorted unique template ids, their subject ids)."""
    uniq, first = np.unique(chosen, return_index=True)
    feats = sums[template_rows(unique_templates, uniq)].astype(np.float64)
    feats = feats / np.sqrt(np.sum(feats ** 2, -1, keepdims=True))
    return feats, uniq, subjects[first]


def identification_1n(gallery: np.ndarray, probes: np.ndarray, mated: np.ndarray,
                      top_k: Sequence[int] = TOP_K, fpirs: Sequence[float] = FPIR_TARGETS,
                      block: int = 2048) -> dict[str, float | dict[str, float]]:
    """Top-k accuracy and TPIR at FPIR of ijb_1n.py: ``mated[i]`` = gallery row of probe i's subject.

    Top-k counts gallery templates scoring strictly above the mated one (the reference's argsort
    differs only on exact ties). TPIR at FPIR f: the threshold is the ceil(Q*f)-th largest score of
    all non-mated (probe, gallery) pairs; TPIR = share of mated scores above it.
    """
    q = probes.shape[0]
    required = [math.ceil(q * f) for f in fpirs]
    keep = max(required)
    above = np.empty(q, dtype=np.int64)
    positive = np.empty(q, dtype=np.float64)
    best: np.ndarray = np.empty(0, dtype=np.float64)
    for s in range(0, q, block):
        sim = probes[s:s + block] @ gallery.T
        rows = np.arange(sim.shape[0])
        pos = sim[rows, mated[s:s + block]].copy()
        positive[s:s + sim.shape[0]] = pos
        above[s:s + sim.shape[0]] = np.sum(sim > pos[:, None], axis=1)
        sim[rows, mated[s:s + block]] = -np.inf
        flat = sim.ravel()
        if flat.size > keep:
            flat = np.partition(flat, flat.size - keep)[flat.size - keep:]
        best = np.concatenate([best, flat])
        if best.size > keep:
            best = np.partition(best, best.size - keep)[best.size - keep:]
    negatives = np.sort(best[np.isfinite(best)])[::-1]
    if negatives.size < keep:
        raise ValueError(f"TPIR at FPIR {max(fpirs)} needs {keep} non-mated scores, the 1:N sets give "
                         f"{negatives.size}")
    result: dict[str, float | dict[str, float]] = {f"top{k}": float(np.mean(above < k)) for k in top_k}
    result["tpir_at_fpir"] = {f"{f:g}": float(np.sum(positive > negatives[r - 1]) / q)
                              for f, r in zip(fpirs, required)}
    return result
