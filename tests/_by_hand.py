"""Reference computations written out in the tests, independent of facekd's evaluation code: the
insightface verification protocol and rank-k identification, as /work/shared/reference.md states them."""
from __future__ import annotations

import numpy as np
import torch


def embed_by_hand(model: torch.nn.Module, images: np.ndarray) -> np.ndarray:
    """uint8 RGB [N, H, W, 3] -> (x/255 - 0.5)/0.5, image + flip embeddings summed, unit length (float64)."""
    x = (torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.5
    with torch.no_grad():
        emb = (model.eval()(x) + model(torch.flip(x, dims=[3]))).numpy().astype(np.float64)
    return emb / np.linalg.norm(emb, axis=1, keepdims=True)


def accuracy_by_hand(model: torch.nn.Module, pair_images: np.ndarray, issame: np.ndarray, nfolds: int = 10) -> float:
    """10 contiguous folds, thresholds arange(0, 4, 0.01), best (first) threshold on the other folds,
    'same' <=> squared distance < threshold; mean held-out accuracy."""
    emb = embed_by_hand(model, pair_images)
    dist = ((emb[0::2] - emb[1::2]) ** 2).sum(1)
    same = np.asarray(issame, dtype=bool)
    thresholds = np.arange(0, 4, 0.01)
    accs = []
    for test in np.array_split(np.arange(len(dist)), nfolds):
        train = np.setdiff1d(np.arange(len(dist)), test)
        best = thresholds[int(np.argmax([((dist[train] < t) == same[train]).mean() for t in thresholds]))]
        accs.append(((dist[test] < best) == same[test]).mean())
    return float(np.mean(accs))


def identity_ranks_by_hand(probes: np.ndarray, probe_labels: np.ndarray, gallery: np.ndarray,
                           gallery_labels: np.ndarray) -> np.ndarray:
    """For each mated probe, the 1-based rank of its identity among gallery identities ordered by best cosine."""
    known = set(np.asarray(gallery_labels).tolist())
    ranks = []
    for row, label in zip(probes @ gallery.T, np.asarray(probe_labels).tolist()):
        if label not in known:
            continue
        order: dict[int, int] = {}
        for _, g in sorted(zip(row.tolist(), np.asarray(gallery_labels).tolist()), reverse=True):
            order.setdefault(g, len(order) + 1)
        ranks.append(order[label])
    return np.array(ranks)
