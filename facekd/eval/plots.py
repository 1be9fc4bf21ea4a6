"""Verification figures: ROC curves of several sets on one log-FAR plot, and score distributions.

Rendered with matplotlib's non-interactive Agg backend, so they work on headless machines.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from facekd.eval.verification import RocPoints  # noqa: E402


def plot_roc(curves: Mapping[str, RocPoints], path: str | Path, title: str = "Verification ROC") -> Path:
    """All ROC curves on one figure (TAR against FAR on a log axis); returns the PNG path."""
    fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=120)
    floor = 1.0
    for name, roc in curves.items():
        keep = roc.fpr > 0  # log axis: drop the FAR = 0 points
        if not keep.any():
            continue
        floor = min(floor, 1.0 / roc.n_negative)
        auc = float(np.trapezoid(roc.tpr, roc.fpr))
        ax.step(roc.fpr[keep], roc.tpr[keep], where="post", label=f"{name} (AUC {auc:.4f})")
    ax.set_xscale("log")
    ax.set_xlim(max(floor, 1e-6), 1.0)
    ax.set_ylim(0.0, 1.01)
    ax.set_xlabel("False accept rate (log scale)")
    ax.set_ylabel("True accept rate")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out)
    plt.close(fig)
    return out


def plot_score_distributions(scores: Mapping[str, tuple[np.ndarray, np.ndarray]], path: str | Path,
                             bins: int = 60) -> Path:
    """Genuine vs impostor cosine-similarity histograms, one panel per set; ``scores[name] = (sim, issame)``."""
    names = list(scores)
    cols = min(len(names), 3) or 1
    rows = (len(names) + cols - 1) // cols or 1
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), dpi=120, squeeze=False)
    edges = np.linspace(-1.0, 1.0, bins + 1)
    for ax, name in zip(axes.flat, names):
        sim, same = scores[name]
        ax.hist(sim[same], bins=edges, alpha=0.6, density=True, label=f"genuine ({int(same.sum())})")
        ax.hist(sim[~same], bins=edges, alpha=0.6, density=True, label=f"impostor ({int((~same).sum())})")
        ax.set_title(name)
        ax.set_xlabel("cosine similarity")
        ax.legend(fontsize="small")
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out)
    plt.close(fig)
    return out
