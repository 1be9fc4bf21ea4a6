"""Classifier shards of a Partial FC run (arcface_torch's per-rank files): find every rank's file and
merge them into one [C, D] classifier, checking that they are one run's split.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor

from facekd.log import get_logger
from facekd.models.weights.checkpoint import strip_wrapper_prefixes
from facekd.models.weights.files import WeightsFileError, load_torch_object

log = get_logger(__name__)

__all__ = [
    "RANK_FILE_PATTERNS", "shard_weight", "rank_sibling_files", "merge_classifier_shards", "merged_or_single_shard",
]


RANK_FILE_PATTERNS = (
    re.compile(r"^(?P<head>.*_gpu_)(?P<rank>\d+)(?P<tail>\.\w+)$"),
    re.compile(r"^(?P<head>rank_)(?P<rank>\d+)(?P<tail>_softmax_weight\.pt)$"),
)
"""Per-rank file names: checkpoint_gpu_{r}.pt, softmax_fc_gpu_{r}.pt, rank_{r}_softmax_weight.pt."""


def shard_weight(obj: Any) -> Tensor | None:
    """The class-centre matrix of a classifier state dict (or a bare tensor), else None."""
    if isinstance(obj, Tensor):
        return obj if obj.dim() == 2 and obj.numel() else None
    if not isinstance(obj, Mapping):
        return None
    sd = strip_wrapper_prefixes(obj)
    for key in ("weight", "weight_activated", "kernel"):
        t = sd.get(key)
        if isinstance(t, Tensor) and t.dim() == 2 and t.numel():
            return t
    matrices = [v for v in sd.values() if isinstance(v, Tensor) and v.dim() == 2 and v.numel()]
    return matrices[0] if len(matrices) == 1 else None


def _rank_name(name: str) -> re.Match[str] | None:
    return next((m for m in (p.match(name) for p in RANK_FILE_PATTERNS) if m), None)


def rank_sibling_files(path: str | os.PathLike[str]) -> list[Path] | None:
    """All rank files of the run ``path`` belongs to, in rank order; None for a name without a rank.

    Raises WeightsFileError when ranks are missing (e.g. rank 1 of 0..3).
    """
    p = Path(path)
    m = _rank_name(p.name)
    if m is None:
        return None
    found: dict[int, Path] = {}
    for sibling in p.parent.iterdir():
        sm = _rank_name(sibling.name)
        if sm and sm.group("head") == m.group("head") and sm.group("tail") == m.group("tail") and sibling.is_file():
            found[int(sm.group("rank"))] = sibling
    expected = range(max(found) + 1)
    missing = [r for r in expected if r not in found]
    if missing:
        raise WeightsFileError(p, f"classifier shards of rank(s) {missing} are missing beside it "
                                  f"(found ranks {sorted(found)}); all ranks' files are needed to rebuild the classifier")
    return [found[r] for r in expected]


def merge_classifier_shards(paths: list[str | os.PathLike[str]]) -> Tensor:
    """Concatenate per-rank class-centre shards (given in rank order) into one [C, D] classifier.

    Accepts arcface_torch checkpoints (``state_dict_softmax_fc``), ``softmax_fc_gpu_{r}.pt`` head state
    dicts and bare tensors; checks that the shard sizes are those of one run split over len(paths) ranks.
    """
    if not paths:
        raise ValueError("merge_classifier_shards needs at least one file")
    shards: list[Tensor] = []
    for path in paths:
        obj = load_torch_object(path)
        if isinstance(obj, Mapping) and "state_dict_softmax_fc" in obj:
            obj = obj["state_dict_softmax_fc"]
        weight = shard_weight(obj)
        if weight is None:
            raise WeightsFileError(path, "holds no classifier shard (expected a 2-D 'weight' tensor)")
        shards.append(weight.float())
    dims = {s.shape[1] for s in shards}
    if len(dims) > 1:
        raise WeightsFileError(paths[0], f"classifier shards disagree on the embedding size: "
                                         f"{[list(s.shape) for s in shards]}")
    sizes = [s.shape[0] for s in shards]
    total, world = sum(sizes), len(sizes)
    expected = [total // world + int(r < total % world) for r in range(world)]
    if sizes != expected:
        raise WeightsFileError(paths[0], f"classifier shard sizes {sizes} are not one run's split of {total} classes "
                                         f"over {world} ranks (expected {expected}); are files of different runs mixed?")
    return torch.cat(shards)


def merged_or_single_shard(shard_obj: Any, path: Path) -> Tensor | None:
    siblings = rank_sibling_files(path)
    if siblings is not None and len(siblings) > 1:
        return merge_classifier_shards(list(siblings))
    weight = shard_weight(shard_obj)
    if weight is not None and siblings is None:
        log.info("%s: no rank number in the file name; using its classifier as the whole classifier", path)
    return weight
