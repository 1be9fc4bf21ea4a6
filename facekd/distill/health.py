"""Is distillation hurting? Checks on the held-out verification metrics of a distilled student.

A student whose distillation terms fall while its embedding stops telling people apart is the
worst outcome of a run: the losses look fine and nothing fails. Two symptoms are cheap to read off
the evaluation the pipeline already runs, and each gets a warning that names the likely cause and
the flags to try:

* verification accuracy near chance (below ``CHANCE_ACCURACY``);
* collapsed embeddings: the mean cosine between held-out embeddings (``mean_cos``; about 0 for
  embeddings spread over the sphere, 1 when every face maps to one direction) above
  ``COLLAPSED_MEAN_COS``.
"""
from __future__ import annotations

from typing import Mapping

from facekd.log import get_logger

log = get_logger(__name__)

__all__ = ["CHANCE_ACCURACY", "COLLAPSED_MEAN_COS", "distillation_warnings", "warn_if_hurting"]

CHANCE_ACCURACY = 0.6
"""Verification accuracy at or below this is treated as near chance (0.5)."""
COLLAPSED_MEAN_COS = 0.75
"""Mean cosine between different held-out faces above this: the embedding has collapsed into a cone."""

_FLAGS = ("the distillation weight (--loss-option srd.beta=..., or kd.weight / cosine.weight), a learning-rate "
          "warm-up (--warmup-steps 200) with gradient clipping (--clip-grad-norm 5), and for small data sets a "
          "milder margin head (--scale 32 --margin 0.4)")


def distillation_warnings(metrics: Mapping[str, float], loss: str) -> list[str]:
    """One message per held-out set whose metrics say the distilled student is broken."""
    messages = []
    sets = sorted({key.split("/")[0] for key in metrics if "/" in key})
    for name in sets:
        acc = metrics.get(f"{name}/accuracy")
        spread = metrics.get(f"{name}/mean_cos")
        problems = []
        if acc is not None and acc <= CHANCE_ACCURACY:
            problems.append(f"verification accuracy {acc:.3f} is near chance (0.5)")
        if spread is not None and spread > COLLAPSED_MEAN_COS:
            problems.append(f"its embeddings have collapsed (mean cosine between different faces {spread:.2f}, "
                            f"spread embeddings sit near 0)")
        if problems:
            messages.append(
                f"distillation may be hurting the student on '{name}': {' and '.join(problems)}. The distillation "
                f"terms ({loss}) can fall while the embedding the student is verified with stops separating people; "
                f"likely causes: distillation terms that overwhelm the student's own margin loss, or a margin head "
                f"that has not converged (large --scale/--margin without warm-up on a small data set). Compare with "
                f"the student trained alone (python -m facekd.pipelines.train, same data and steps) and try {_FLAGS}.")
    return messages


def warn_if_hurting(metrics: Mapping[str, float], loss: str) -> list[str]:
    """Log (and return) the warnings of ``distillation_warnings``."""
    messages = distillation_warnings(metrics, loss)
    for message in messages:
        log.warning("%s", message)
    return messages
