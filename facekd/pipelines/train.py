"""``python -m facekd.pipelines.train``: train a face backbone with a margin head (ArcFace, CosFace).

This trains the teachers and the vanilla (non-distilled) students that every distillation result
is compared with. Data comes from ``facekd.data.datasets.open_dataset`` (``synthetic`` by default;
RecordIO or an image-folder tree for real use); the engine does the rest. Launched with
``torchrun --nproc_per_node N`` the same command trains with DDP, the head's class centres
sharded over the ranks (Partial FC).

Validation during training: ``--val-bins lfw.bin,cfp_fp.bin`` (insightface .bin files), and, for
synthetic data, ``--val-pairs`` held-out synthetic pairs of identities never seen in training.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from facekd.config import field
from facekd.engine.config import TrainConfig, parse_training_config
from facekd.engine.distributed import DistInfo
from facekd.engine.task import TrainTask
from facekd.engine.trainer import Trainer, TrainResult, setup_run
from facekd.log import get_logger
from facekd.pipelines.launch import run_command, setup_errors

log = get_logger(__name__)

__all__ = ["FaceTrainConfig", "ValidationSet", "FaceVerificationEval", "FaceTrainTask", "init_class_centres",
           "attach_margin_head", "synthetic_validation", "load_validation_bins", "evaluate_verification", "run", "main"]

HEAD_INIT_STD = 0.01
"""Class centres start as N(0, 0.01), as in arcface_torch."""
_INIT_BLOCK = 4096
EVAL_BATCH = 256


@dataclass
class FaceTrainConfig(TrainConfig):
    """Settings of ``python -m facekd.pipelines.train`` (the common training flags plus these)."""

    backbone: str = field("mbf", help="backbone name from facekd.models (r18, r34, r50, r100, r200, mbf, mbf_large)")
    head: str = field("arcface", help="margin head", choices=("arcface", "cosface"))
    scale: float = field(64.0, help="logit scale s of the margin head "
                               "(64 is arcface_torch's, for MS1M-sized data at 112 px; on small sets (thousands "
                               "of identities, or 32 px) 32 with --margin 0.4, --warmup-steps and --clip-grad-norm 5 "
                               "converges where 64/0.5 may not)")
    margin: float | None = field(None, help="margin (default: 0.5 for ArcFace, 0.4 for CosFace)")
    partial_fc: float = field(1.0, help="Partial FC sample rate of negative class centres (1.0 = all); "
                                        "centres are sharded over the ranks whenever there is more than one")
    data: str = field("synthetic", help="training data: 'synthetic[:ids=..,per_id=..,size=..,seed=..]', a "
                                        "RecordIO folder or .rec file, or an image folder tree (one folder per identity)")
    on_corrupt: str = field("skip", help="a corrupt training image: 'skip' it or 'fail'", choices=("skip", "fail"))
    flip: float = field(0.5, help="probability of a horizontal flip augmentation")
    dropout: float = field(0.0, help="dropout before the embedding layer")
    val_bins: list[str] = field(default_factory=list, help="comma-separated verification .bin files evaluated "
                                                           "every --eval-every steps and at the end")
    val_pairs: int = field(600, help="with synthetic data: held-out synthetic verification pairs to evaluate "
                                     "(multiple of 20; 0 = none)")


# ----------------------------------------------------------------------------------------------
# validation

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


# ----------------------------------------------------------------------------------------------
# the task

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


class FaceVerificationEval:
    """``evaluate`` for face tasks: held-out synthetic pairs (synthetic data) and ``--val-bins``, on rank 0."""

    validation: list[ValidationSet] = []

    def load_validation(self, data: str, val_pairs: int, val_bins: Sequence[str], is_main: bool) -> None:
        """Read the verification sets once (rank 0 only: the others never evaluate)."""
        self.validation = []
        if is_main:
            synth = synthetic_validation(data, val_pairs)
            self.validation = ([synth] if synth is not None else []) + load_validation_bins(val_bins)

    def evaluate(self, modules: Mapping[str, nn.Module]) -> dict[str, float]:
        if not self.validation:
            return {}
        device = self.info.device  # type: ignore[attr-defined]
        return evaluate_verification(modules["backbone"], self.validation, device)


class FaceTrainTask(FaceVerificationEval, TrainTask):
    """Backbone + margin head on a labeled face dataset; validation on verification pairs."""

    def __init__(self, cfg: FaceTrainConfig, info: DistInfo) -> None:
        from facekd.data.datasets import open_dataset
        from facekd.data.loaders import build_loader
        from facekd.data.transforms import build_transform
        from facekd.models.registry import build_backbone

        self.cfg, self.info = cfg, info
        transform = build_transform("face", size=cfg.input_size, flip=cfg.flip, seed=cfg.seed)
        self.dataset = open_dataset(cfg.data, transform=transform, on_corrupt=cfg.on_corrupt)
        self.loader = build_loader(self.dataset, cfg.batch_size, shuffle=True, workers=cfg.workers, seed=cfg.seed,
                                   drop_last=True)
        num_classes = int(self.dataset.num_classes)
        self.arch = cfg.backbone
        self.arch_options = {"embedding_size": cfg.embedding_size, "input_size": cfg.input_size,
                             "width": cfg.width, "dropout": cfg.dropout}
        self.backbone = build_backbone(cfg.backbone, **self.arch_options)
        self.head = attach_margin_head(self, cfg, num_classes, info)
        self.load_validation(cfg.data, cfg.val_pairs, cfg.val_bins, info.is_main)
        log.info("%s: %d images of %d identities; %s backbone, %s head (%s)", cfg.data, len(self.dataset),
                 num_classes, cfg.backbone, cfg.head, type(self.head).__name__)

    def modules(self) -> dict[str, nn.Module]:
        return {"backbone": self.backbone, "head": self.head}

    def compute_losses(self, batch: Any, modules: Mapping[str, nn.Module]) -> dict[str, Tensor]:
        embeddings = modules["backbone"](batch.images)
        return {self.cfg.head: modules["head"](embeddings, batch.labels)}


# ----------------------------------------------------------------------------------------------
# entry point

def run(cfg: FaceTrainConfig, callbacks: Sequence[Any] = ()) -> TrainResult:
    """Train as configured (joining torchrun's job when launched by it) and return what was written."""
    info = setup_run(cfg)
    task = FaceTrainTask(cfg, info)
    return Trainer(cfg, task, info, callbacks=callbacks).fit()


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: train a face backbone; exit 1 on a non-finite loss, 2 on a setup error."""
    cfg, _ = parse_training_config(
        FaceTrainConfig, argv, prog="python -m facekd.pipelines.train",
        description="Train a face recognition backbone with an ArcFace/CosFace margin head (teachers and "
                    "vanilla students). Writes config.yaml, metrics.jsonl, TensorBoard events, checkpoints, "
                    "backbone.pth, head.pth and, with --export-onnx, model.onnx into --out.")
    return run_command(run, cfg, setup_errors())


if __name__ == "__main__":
    raise SystemExit(main())
