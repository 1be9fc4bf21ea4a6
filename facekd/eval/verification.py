"""Face verification metrics on pairs of embeddings, insightface-compatible and vectorised.

``evaluate(embeddings, issame)`` reproduces insightface's "Accuracy-Flip" protocol exactly
(10 contiguous folds, distance = squared L2, thresholds 0..4 step 0.01, best training-fold
threshold applied to the held-out fold, mean and population std of the fold accuracies) and
adds VAL@FAR=1e-3 as insightface computes it, TAR at fixed FARs, ROC AUC, EER and the best
single-threshold accuracy. Every threshold sweep is a sort + ``searchsorted``, not a loop.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from sklearn.model_selection import KFold

ACCURACY_THRESHOLDS = np.arange(0, 4, 0.01)
"""Distance thresholds insightface sweeps for the fold accuracy."""
VAL_THRESHOLDS = np.arange(0, 4, 0.001)
"""Distance thresholds insightface sweeps for VAL@FAR."""
VAL_FAR_TARGET = 1e-3
TAR_FAR_TARGETS: tuple[float, ...] = (1e-1, 1e-2, 1e-3, 1e-4)
MIN_FALSE_ACCEPTS = 10
"""TAR@FAR=f is reported only when the set has at least MIN_FALSE_ACCEPTS / f negative pairs,
so that the operating point rests on at least this many impostor scores (LFW's 3,000 negative
pairs support FAR 1e-1 and 1e-2; FAR 1e-4 needs 100,000)."""


class VerificationInputError(ValueError):
    """Embeddings or pair labels that cannot be evaluated; the message says what is wrong."""


@dataclass(frozen=True)
class RocPoints:
    """An ROC curve over every distinct distance cut: accept a pair when distance <= threshold."""

    fpr: np.ndarray
    tpr: np.ndarray
    thresholds: np.ndarray  # distance thresholds, ascending; the first point accepts nothing
    n_positive: int
    n_negative: int


def _check_inputs(embeddings: np.ndarray, issame: Sequence[bool] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    emb = np.asarray(embeddings)
    same = np.asarray(issame)
    if emb.ndim != 2:
        raise VerificationInputError(f"embeddings must be a 2-D array [2N, D], got shape {emb.shape}")
    if emb.shape[0] == 0 or emb.shape[0] % 2:
        raise VerificationInputError(
            f"embeddings must hold an even, non-zero number of rows (pair i = rows 2i, 2i+1), got {emb.shape[0]}")
    if not np.issubdtype(emb.dtype, np.floating):
        raise VerificationInputError(f"embeddings must be floating point, got dtype {emb.dtype}")
    if not np.all(np.isfinite(emb)):
        bad = int(np.count_nonzero(~np.isfinite(emb).all(axis=1)))
        raise VerificationInputError(f"embeddings contain NaN or infinite values ({bad} rows affected)")
    if same.ndim != 1 or same.shape[0] != emb.shape[0] // 2:
        raise VerificationInputError(
            f"issame must hold one flag per pair: {emb.shape[0] // 2} pairs but {same.size} flags")
    if same.dtype != bool:
        if not np.isin(same, (0, 1)).all():
            raise VerificationInputError("issame must be boolean (or 0/1) flags")
        same = same.astype(bool)
    return emb, same


def pair_distances(embeddings: np.ndarray) -> np.ndarray:
    """Squared L2 distance of each pair (rows 2i and 2i+1), computed as insightface does."""
    emb = np.asarray(embeddings)
    diff = np.subtract(emb[0::2], emb[1::2])
    return np.sum(np.square(diff), 1).astype(np.float64)


def fold_splits(n_pairs: int, nfolds: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, test) pair indices of ``KFold(nfolds, shuffle=False)``: contiguous test blocks."""
    if nfolds < 2 or nfolds > n_pairs:
        raise VerificationInputError(f"nfolds must be between 2 and the number of pairs ({n_pairs}), got {nfolds}")
    return list(KFold(n_splits=nfolds, shuffle=False).split(np.arange(n_pairs)))


def _count_below(values: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """How many of ``values`` are strictly below each threshold (``dist < t`` accepts)."""
    return np.searchsorted(np.sort(values), thresholds, side="left")


def accuracy_at_thresholds(dist: np.ndarray, issame: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Accuracy of "same when dist < t" for every threshold t, as (TP + TN) / pairs."""
    tp = _count_below(dist[issame], thresholds)
    fp = _count_below(dist[~issame], thresholds)
    tn = int(np.count_nonzero(~issame)) - fp
    return (tp + tn).astype(np.float64) / float(dist.size)


def fold_accuracies(dist: np.ndarray, issame: np.ndarray, nfolds: int = 10,
                    thresholds: np.ndarray = ACCURACY_THRESHOLDS) -> tuple[np.ndarray, np.ndarray]:
    """Per-fold held-out accuracy and the best training threshold of each fold (first maximum)."""
    accuracies = np.zeros(nfolds)
    best = np.zeros(nfolds)
    for k, (train, test) in enumerate(fold_splits(dist.size, nfolds)):
        train_acc = accuracy_at_thresholds(dist[train], issame[train], thresholds)
        best[k] = thresholds[int(np.argmax(train_acc))]
        accuracies[k] = accuracy_at_thresholds(dist[test], issame[test], best[k:k + 1])[0]
    return accuracies, best


def _threshold_at_far(far_curve: np.ndarray, thresholds: np.ndarray, far_target: float) -> float:
    """Threshold reaching ``far_target`` by linear interpolation of the (monotone) FAR curve.

    Same result as insightface's ``interp1d(far, thresholds, kind='slinear')`` (the k=1 B-spline
    of scipy versions that accepted repeated FAR values): between the last FAR <= target and the
    next larger one; 0 when the curve never reaches the target.
    """
    if far_curve[-1] < far_target:
        return 0.0
    j = int(np.searchsorted(far_curve, far_target, side="right")) - 1
    if j >= far_curve.size - 1:  # target equals the largest FAR: first threshold reaching it
        return float(thresholds[int(np.searchsorted(far_curve, far_target, side="left"))])
    x0, x1 = far_curve[j], far_curve[j + 1]
    w = (far_target - x0) / (x1 - x0)
    return float(thresholds[j] * (1.0 - w) + thresholds[j + 1] * w)


def val_at_far(dist: np.ndarray, issame: np.ndarray, far_target: float = VAL_FAR_TARGET, nfolds: int = 10,
               thresholds: np.ndarray = VAL_THRESHOLDS) -> tuple[float, float, float]:
    """insightface's VAL@FAR: (mean VAL, std VAL, mean FAR) over folds, threshold fitted on training folds."""
    vals = np.zeros(nfolds)
    fars = np.zeros(nfolds)
    for k, (train, test) in enumerate(fold_splits(dist.size, nfolds)):
        d_train, s_train = dist[train], issame[train]
        n_diff_train = max(int(np.count_nonzero(~s_train)), 1)
        far_curve = _count_below(d_train[~s_train], thresholds) / n_diff_train
        threshold = _threshold_at_far(far_curve, thresholds, far_target)
        d_test, s_test = dist[test], issame[test]
        accept = d_test < threshold
        n_same, n_diff = np.count_nonzero(s_test), np.count_nonzero(~s_test)
        vals[k] = np.count_nonzero(accept & s_test) / n_same if n_same else np.nan
        fars[k] = np.count_nonzero(accept & ~s_test) / n_diff if n_diff else np.nan
    return float(np.mean(vals)), float(np.std(vals)), float(np.mean(fars))


def roc_points(dist: np.ndarray, issame: np.ndarray) -> RocPoints:
    """ROC over all distinct distances (accept when dist <= threshold), from one sort."""
    order = np.argsort(dist, kind="mergesort")
    d, s = dist[order], issame[order]
    n_pos, n_neg = int(np.count_nonzero(s)), int(np.count_nonzero(~s))
    if n_pos == 0 or n_neg == 0:
        raise VerificationInputError(
            f"an ROC needs both genuine and impostor pairs; got {n_pos} genuine, {n_neg} impostor")
    last_of_value = np.r_[np.flatnonzero(np.diff(d)), d.size - 1]  # cut after each distinct distance
    tp = np.cumsum(s)[last_of_value]
    fp = (last_of_value + 1) - tp
    tpr = np.r_[0.0, tp / n_pos]
    fpr = np.r_[0.0, fp / n_neg]
    thresholds = np.r_[-np.inf, d[last_of_value]]
    return RocPoints(fpr=fpr, tpr=tpr, thresholds=thresholds, n_positive=n_pos, n_negative=n_neg)


def tar_at_far(roc: RocPoints, far: float) -> float:
    """Highest TAR among operating points whose FAR does not exceed ``far``."""
    ok = roc.fpr <= far
    return float(roc.tpr[ok].max())


def equal_error_rate(roc: RocPoints) -> float:
    """The rate where FAR equals FRR (1 - TAR), linearly interpolated between ROC points."""
    fnr = 1.0 - roc.tpr
    gap = fnr - roc.fpr  # decreasing from 1 to -1
    i = int(np.flatnonzero(gap <= 0)[0])
    if i == 0 or gap[i] == 0:
        return float(roc.fpr[i])
    w = gap[i - 1] / (gap[i - 1] - gap[i])
    return float(roc.fpr[i - 1] + w * (roc.fpr[i] - roc.fpr[i - 1]))


def far_key(far: float) -> str:
    """JSON key of a FAR, e.g. 1e-3 -> "1e-03"."""
    return f"{far:.0e}"


def evaluate(embeddings: np.ndarray, issame: Sequence[bool] | np.ndarray, nfolds: int = 10,
             far_targets: Sequence[float] = TAR_FAR_TARGETS,
             min_false_accepts: int = MIN_FALSE_ACCEPTS) -> dict[str, Any]:
    """All verification metrics for 2N embeddings (pair i = rows 2i, 2i+1) and N same/different flags.

    ``accuracy``/``accuracy_std`` equal insightface's Accuracy-Flip on the same embeddings; pass
    flip-summed, L2-normalised embeddings (``facekd.eval.embed.embed_images``) for the usual numbers.
    """
    emb, same = _check_inputs(embeddings, issame)
    dist = pair_distances(emb)
    accuracies, best_thresholds = fold_accuracies(dist, same, nfolds)
    val, val_std, far = val_at_far(dist, same, VAL_FAR_TARGET, nfolds)
    roc = roc_points(dist, same)
    tar: dict[str, float] = {}
    skipped: dict[str, str] = {}
    for target in far_targets:
        needed = int(np.ceil(min_false_accepts / target))
        if roc.n_negative >= needed:
            tar[far_key(target)] = tar_at_far(roc, target)
        else:
            skipped[far_key(target)] = f"needs >= {needed} negative pairs, have {roc.n_negative}"
    n_total = roc.n_positive + roc.n_negative
    correct = roc.tpr * roc.n_positive + (1.0 - roc.fpr) * roc.n_negative
    best = int(np.argmax(correct))
    return {
        "accuracy": float(np.mean(accuracies)),
        "accuracy_std": float(np.std(accuracies)),
        "threshold": float(np.mean(best_thresholds)),
        "fold_accuracies": accuracies.tolist(),
        "val_at_far": val,
        "val_std": val_std,
        "val_far": far,
        "tar_at_far": tar,
        "tar_at_far_skipped": skipped,
        "auc": float(np.trapezoid(roc.tpr, roc.fpr)),
        "eer": equal_error_rate(roc),
        "best_accuracy_single_threshold": float(correct[best] / n_total),
        "best_single_threshold": float(roc.thresholds[best]) if best else None,
        "n_pairs": int(n_total),
        "n_positive": roc.n_positive,
        "n_negative": roc.n_negative,
    }


def mean_pairwise_cosine(embeddings: np.ndarray) -> float:
    """Mean cosine over all pairs i != j of the rows of ``embeddings`` (normalised here), in O(N D)."""
    emb = np.asarray(embeddings, dtype=np.float64)
    if emb.ndim != 2 or emb.shape[0] < 2:
        return float("nan")
    unit = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    n = unit.shape[0]
    total = unit.sum(axis=0)
    return float((total @ total - n) / (n * (n - 1)))
