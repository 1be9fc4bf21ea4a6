"""Pieces the training pipelines share, so that no pipeline imports another.

- face verification during training (``train``, ``distill``): ``ValidationSet``, ``synthetic_validation``,
  ``load_validation_bins``, ``evaluate_verification`` and the ``FaceVerificationEval`` task mixin;
- the margin head of face tasks (``train``, ``distill``): ``init_class_centres``, ``attach_margin_head``;
- distillation commands (``distill``, ``classify``): ``parse_student_options``, ``distill_errors``.

What every command shares beyond these (user errors, ``run_command``) is in ``launch``; the cheap
input checks in ``preflight``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from facekd.config import ConfigError
from facekd.engine.distributed import DistInfo
from facekd.engine.task import TrainTask
from facekd.pipelines.launch import setup_errors

__all__ = ["ValidationSet", "FaceVerificationEval", "synthetic_validation", "load_validation_bins",
           "evaluate_verification", "warn_fold_layout", "init_class_centres", "attach_margin_head", "parse_student_options",
           "distill_errors", "HEAD_INIT_STD", "EVAL_BATCH"]

HEAD_INIT_STD = 0.01
"""Class centres start as N(0, 0.01), as in arcface_torch."""
_INIT_BLOCK = 4096
EVAL_BATCH = 256


# ----------------------------------------------------------------------------------------------
# face verification during training (train, distill)

@dataclass
class ValidationSet:
    """A verification set in memory: 2N uint8 RGB images (pair i = rows 2i, 2i+1) and N same flags."""

    name: str
    images: np.ndarray
    issame: np.ndarray


def synthetic_validation(data_spec: str, num_pairs: int) -> ValidationSet | None:
    """Held-out verification pairs drawn like the synthetic training data (same seed, size and
    difficulty) from identities of the verification namespace, never trained on."""
    from facekd.data.datasets import parse_synthetic_spec
    from facekd.data.synthetic import VERIFICATION_BASE, SyntheticFaces, make_pairs

    if num_pairs <= 0 or not data_spec.startswith("synthetic"):
        return None
    spec = parse_synthetic_spec(data_spec)
    knobs = {k: v for k, v in spec.items() if k not in ("num_identities", "images_per_identity", "size", "seed",
                                                        "first_identity", "first_sample")}
    faces = SyntheticFaces(seed=spec["seed"], size=spec["size"], **knobs)
    num_ids = max(20, num_pairs // 20)
    images, issame, _ = make_pairs(faces, range(VERIFICATION_BASE, VERIFICATION_BASE + num_ids), num_pairs,
                                   seed=spec["seed"])
    return ValidationSet("synthetic", images, issame)


def load_validation_bins(paths: Sequence[str]) -> list[ValidationSet]:
    """Read insightface verification .bin files (named by their file stem)."""
    from facekd.data.verification_bin import load_bin

    sets = []
    for p in paths:
        images, issame = load_bin(p)
        sets.append(ValidationSet(Path(p).stem, np.asarray(images), np.asarray(issame, dtype=bool)))
    return sets


def evaluate_verification(backbone: nn.Module, sets: Sequence[ValidationSet], device: torch.device) -> dict[str, float]:
    """``{"<set>/accuracy": ..., "<set>/accuracy_std": ..., ...}`` by the insightface protocol
    (flip-summed L2-normalised embeddings, 10-fold accuracy), plus ``<set>/mean_cos``, the mean
    cosine between the set's embeddings (near 1: a collapsed embedding)."""
    from facekd.eval.embed import embed_images
    from facekd.eval.verification import evaluate, mean_pairwise_cosine

    out: dict[str, float] = {}
    for vs in sets:
        emb = embed_images(backbone, vs.images, batch_size=EVAL_BATCH, flip=True, device=device,
                           desc=f"eval {vs.name}", show_progress=False)
        res = evaluate(emb, vs.issame)
        res["mean_cos"] = mean_pairwise_cosine(emb)
        for key in ("accuracy", "accuracy_std", "val_at_far", "auc", "eer", "mean_cos"):
            value = res.get(key)
            if isinstance(value, (int, float)) and value is not None:
                out[f"{vs.name}/{key}"] = float(value)
        for far, tar in res.get("tar_at_far", {}).items():
            out[f"{vs.name}/tar@far={far}"] = float(tar)
    return out


def warn_fold_layout(sets: Sequence[ValidationSet], nfolds: int = 10) -> None:
    """Say once, before training, what a set's pair layout does to its figures (folds too small,
    VAL@FAR nan): ``facekd.eval.verify.fold_notes``."""
    from facekd.eval.verify import fold_notes
    from facekd.log import get_logger

    for vs in sets:
        for note in fold_notes(vs.issame, nfolds, folds_flag=f"training evaluates with {nfolds} folds; "
                                                           f"python -m facekd.eval.verify --nfolds K"):
            get_logger(__name__).warning("validation set %s: %s", vs.name, note)


class FaceVerificationEval:
    """``evaluate`` for face tasks: held-out synthetic pairs (synthetic data) and ``--val-bins``, on rank 0."""

    validation: list[ValidationSet] = []

    def load_validation(self, data: str, val_pairs: int, val_bins: Sequence[str], is_main: bool) -> None:
        """Read the verification sets once (rank 0 only: the others never evaluate)."""
        self.validation = []
        if is_main:
            synth = synthetic_validation(data, val_pairs)
            self.validation = ([synth] if synth is not None else []) + load_validation_bins(val_bins)
            warn_fold_layout(self.validation)

    def evaluate(self, modules: Mapping[str, nn.Module]) -> dict[str, float]:
        """Verification metrics of the backbone on every loaded set (empty when none)."""
        if not self.validation:
            return {}
        device = self.info.device  # type: ignore[attr-defined]
        return evaluate_verification(modules["backbone"], self.validation, device)


# ----------------------------------------------------------------------------------------------
# the margin head of face tasks (train, distill)

@torch.no_grad()
def init_class_centres(head: nn.Module, seed: int, std: float = HEAD_INIT_STD) -> None:
    """Initialise the class centres so that row c is the same whatever the sharding: rows come in
    blocks of 4096 drawn from generators seeded by (seed, block). A Partial FC shard therefore holds
    exactly the rows of the one-process head, and DDP and single-process runs start identically."""
    weight: Tensor = head.weight
    start = int(getattr(head, "class_start", 0))
    rows, dim = weight.shape
    first, last = start // _INIT_BLOCK, (start + rows - 1) // _INIT_BLOCK
    for block in range(first, last + 1):
        g = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, 31, block]).generate_state(1)[0]))
        values = torch.randn(_INIT_BLOCK, dim, generator=g) * std
        lo, hi = max(start, block * _INIT_BLOCK), min(start + rows, (block + 1) * _INIT_BLOCK)
        weight[lo - start:hi - start].copy_(values[lo - block * _INIT_BLOCK:hi - block * _INIT_BLOCK])


def attach_margin_head(task: TrainTask, cfg: Any, num_classes: int, info: DistInfo) -> nn.Module:
    """Build the task's ArcFace/CosFace head from ``cfg`` (head, scale, margin, partial_fc, embedding_size,
    seed), with reproducible centres; under torchrun it is a Partial FC sharded over the ranks, and
    the task is told so (``sharded``, ``global_terms``)."""
    from facekd.models.heads import build_head
    from facekd.models.partial_fc import PartialFC

    options: dict[str, Any] = {"s": cfg.scale, "sample_rate": cfg.partial_fc, "partial_fc": info.world_size > 1}
    if cfg.margin is not None:
        options["margin"] = cfg.margin
    head = build_head(cfg.head, cfg.embedding_size, num_classes, **options)
    init_class_centres(head, cfg.seed)
    task.head_name = cfg.head
    if isinstance(head, PartialFC):
        task.sharded = frozenset({"head"})
        task.global_terms = frozenset({cfg.head})
    return head


# ----------------------------------------------------------------------------------------------
# distillation commands (distill, classify)

def parse_student_options(items: Sequence[str]) -> dict[str, Any]:
    """``["stage=1", "width=0.5"]`` -> ``{"stage": 1, "width": 0.5}`` (ints, floats, booleans parsed)."""
    from facekd.distill.losses.registry import parse_option_value

    out: dict[str, Any] = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"student option '{item}' is not of the form key=value (e.g. stage=1)")
        out[key.strip()] = parse_option_value(value)
    return out


def distill_errors() -> tuple[type[BaseException], ...]:
    """The user errors of distillation commands (distill, classify): setup errors plus teacher, cache,
    loss, input and connector errors."""
    from facekd.distill.cache import CacheError
    from facekd.distill.connectors import ConnectorError
    from facekd.distill.losses.registry import LossError
    from facekd.distill.outputs import DistillInputError
    from facekd.distill.teacher import TeacherError

    return setup_errors() + (TeacherError, CacheError, LossError, DistillInputError, ConnectorError)
