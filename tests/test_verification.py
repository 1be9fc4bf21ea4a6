"""facekd.eval.verification against a plain per-fold, per-threshold implementation of the protocol."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score, roc_curve

from facekd.eval.verification import (VerificationInputError, evaluate, pair_distances, roc_points,
                                      tar_at_far)


# ---- an independent, deliberately plain implementation of insightface's protocol --------------

def _plain_folds(n: int, k: int) -> list[tuple[list[int], list[int]]]:
    sizes = [n // k + (1 if i < n % k else 0) for i in range(k)]
    out, start = [], 0
    for size in sizes:
        test = list(range(start, start + size))
        train = [i for i in range(n) if i < start or i >= start + size]
        out.append((train, test))
        start += size
    return out


def _plain_accuracy(threshold: float, dist: np.ndarray, same: np.ndarray) -> float:
    tp = tn = 0
    for d, s in zip(dist, same):
        accept = d < threshold
        tp += int(accept and s)
        tn += int((not accept) and (not s))
    return (tp + tn) / len(dist)


def _plain_protocol(emb: np.ndarray, same: np.ndarray, k: int = 10) -> tuple[float, float, float]:
    dist = np.array([np.sum((emb[2 * i] - emb[2 * i + 1]) ** 2) for i in range(len(same))])
    thresholds = np.arange(0, 4, 0.01)
    accs, bests = [], []
    for train, test in _plain_folds(len(same), k):
        best_acc, best_t = -1.0, 0.0
        for t in thresholds:
            a = _plain_accuracy(t, dist[train], same[train])
            if a > best_acc:  # strict: first maximum wins, like np.argmax
                best_acc, best_t = a, t
        bests.append(best_t)
        accs.append(_plain_accuracy(best_t, dist[test], same[test]))
    return float(np.mean(accs)), float(np.std(accs)), float(np.mean(bests))


def _plain_val(emb: np.ndarray, same: np.ndarray, far_target: float = 1e-3, k: int = 10) -> float:
    dist = np.array([np.sum((emb[2 * i] - emb[2 * i + 1]) ** 2) for i in range(len(same))])
    thresholds = np.arange(0, 4, 0.001)
    vals = []
    for train, test in _plain_folds(len(same), k):
        neg = [dist[i] for i in train if not same[i]]
        fars = [sum(d < t for d in neg) / len(neg) for t in thresholds]
        threshold = 0.0
        if max(fars) >= far_target:
            for j in range(len(fars) - 1):  # segment [fars[j], fars[j+1]) holding the target
                if fars[j] <= far_target < fars[j + 1]:
                    w = (far_target - fars[j]) / (fars[j + 1] - fars[j])
                    threshold = thresholds[j] + w * (thresholds[j + 1] - thresholds[j])
        pos = [dist[i] for i in test if same[i]]
        vals.append(sum(d < threshold for d in pos) / len(pos))
    return float(np.mean(vals))


# ---- data ---------------------------------------------------------------------------------------

def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _noisy_pairs(n: int, dim: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    same = rng.random(n) < 0.5
    a = rng.normal(size=(n, dim))
    b = np.where(same[:, None], a + noise * rng.normal(size=(n, dim)), rng.normal(size=(n, dim)))
    emb = np.empty((2 * n, dim))
    emb[0::2], emb[1::2] = a, b
    return _unit(emb), same


def _quantised_pairs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Structured embeddings on a coarse grid: many tied distances and tied fold accuracies."""
    rng = np.random.default_rng(seed)
    same = np.arange(n) % 3 != 0
    grid = _unit(rng.integers(-2, 3, size=(12, 4)).astype(np.float64) + 1e-3)
    left = rng.integers(0, 12, size=n)
    right = np.where(same & (rng.random(n) < 0.7), left, rng.integers(0, 12, size=n))
    emb = np.empty((2 * n, 4))
    emb[0::2], emb[1::2] = grid[left], grid[right]
    return emb, same


CASES = [
    ("random_noise", lambda: _noisy_pairs(600, 32, 1.2, seed=1)),
    ("hard_noise", lambda: _noisy_pairs(457, 16, 3.0, seed=2)),  # uneven fold sizes
    ("quantised", lambda: _quantised_pairs(300, seed=3)),
]


# ---- tests --------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,make", CASES)
def test_accuracy_std_threshold_match_plain_protocol(name: str, make) -> None:
    emb, same = make()
    result = evaluate(emb, same)
    acc, std, thr = _plain_protocol(emb, same)
    assert abs(result["accuracy"] - acc) < 1e-9
    assert abs(result["accuracy_std"] - std) < 1e-9
    assert abs(result["threshold"] - thr) < 1e-9


@pytest.mark.parametrize("name,make", CASES[:2])
def test_val_at_far_matches_plain_protocol(name: str, make) -> None:
    emb, same = make()
    assert abs(evaluate(emb, same)["val_at_far"] - _plain_val(emb, same)) < 1e-9


def test_float32_embeddings_use_the_same_distances() -> None:
    emb, same = _noisy_pairs(400, 24, 1.0, seed=4)
    emb32 = emb.astype(np.float32)
    acc, std, _ = _plain_protocol(emb32, same)
    result = evaluate(emb32, same)
    assert abs(result["accuracy"] - acc) < 1e-9 and abs(result["accuracy_std"] - std) < 1e-9


def test_perfect_embeddings_score_one() -> None:
    n = 200
    same = np.arange(n) % 2 == 0
    basis = np.eye(2 * n)
    emb = np.empty((2 * n, 2 * n))
    emb[0::2] = basis[0::2]
    emb[1::2] = np.where(same[:, None], basis[0::2], basis[1::2])  # same: identical; diff: orthogonal
    r = evaluate(emb, same)
    assert r["accuracy"] == 1.0 and r["accuracy_std"] == 0.0
    assert r["auc"] == 1.0 and r["eer"] == 0.0 and r["best_accuracy_single_threshold"] == 1.0
    assert r["tar_at_far"]["1e-01"] == 1.0
    assert 0.0 < r["threshold"] <= 2.0


def test_random_embeddings_score_about_half() -> None:
    rng = np.random.default_rng(5)
    emb = _unit(rng.normal(size=(4000, 64)))
    same = rng.random(2000) < 0.5
    r = evaluate(emb, same)
    assert 0.44 < r["accuracy"] < 0.56
    assert 0.45 < r["auc"] < 0.55
    assert 0.42 < r["eer"] < 0.58


def test_tar_at_far_auc_eer_against_sklearn() -> None:
    emb, same = _noisy_pairs(30000, 8, 1.5, seed=6)
    r = evaluate(emb, same, nfolds=10)
    scores = -pair_distances(emb)
    fpr, tpr, _ = roc_curve(same, scores)
    for key, far in (("1e-01", 1e-1), ("1e-02", 1e-2), ("1e-03", 1e-3)):
        expected = tpr[fpr <= far].max()
        assert r["tar_at_far"][key] == pytest.approx(expected, abs=1e-12)
    assert "1e-04" in r["tar_at_far_skipped"]  # ~15,000 negatives < 100,000 needed
    assert r["auc"] == pytest.approx(roc_auc_score(same, scores), abs=1e-12)
    fnr = 1 - tpr
    i = np.argmin(np.abs(fnr - fpr))
    assert abs(r["eer"] - (fpr[i] + fnr[i]) / 2) < 2e-3
    # best single-threshold accuracy is an upper bound on the cross-validated accuracy
    assert r["best_accuracy_single_threshold"] >= r["accuracy"] - 1e-3


def test_roc_points_handle_ties() -> None:
    dist = np.array([0.0, 0.5, 0.5, 0.5, 1.0, 2.0])
    same = np.array([True, True, False, True, False, False])
    roc = roc_points(dist, same)
    np.testing.assert_allclose(roc.tpr, [0, 1 / 3, 1, 1, 1])
    np.testing.assert_allclose(roc.fpr, [0, 0, 1 / 3, 2 / 3, 1])
    assert tar_at_far(roc, 0.0) == pytest.approx(1 / 3)


@pytest.mark.parametrize("emb,same,match", [
    (np.zeros((5, 4)), np.ones(2, bool), "even"),
    (np.zeros((4, 4)), np.ones(3, bool), "one flag per pair"),
    (np.full((4, 4), np.nan), np.ones(2, bool), "NaN"),
    (np.zeros(8), np.ones(4, bool), "2-D"),
    (np.zeros((4, 4), dtype=np.int64), np.ones(2, bool), "floating"),
])
def test_bad_inputs_raise_clear_errors(emb, same, match) -> None:
    with pytest.raises(VerificationInputError, match=match):
        evaluate(emb, same)


def test_too_many_folds_rejected() -> None:
    emb, same = _noisy_pairs(5, 4, 1.0, seed=7)
    with pytest.raises(VerificationInputError, match="nfolds"):
        evaluate(emb, same, nfolds=10)
