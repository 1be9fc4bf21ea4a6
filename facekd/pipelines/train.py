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
from typing import Any, Mapping, Sequence

from torch import Tensor, nn

from facekd.config import field
from facekd.data.sources import source_examples
from facekd.engine.config import TrainConfig, parse_training_config
from facekd.engine.distributed import DistInfo
from facekd.engine.task import TrainTask
from facekd.engine.trainer import Trainer, TrainResult, setup_run
from facekd.log import get_logger
from facekd.models.registry import list_backbones
from facekd.pipelines.common import FaceVerificationEval, attach_margin_head
from facekd.pipelines.launch import run_command, setup_errors
from facekd.pipelines.preflight import check_files, open_data, require_data

log = get_logger(__name__)

__all__ = ["FaceTrainConfig", "FaceTrainTask", "run", "main"]


@dataclass
class FaceTrainConfig(TrainConfig):
    """Settings of ``python -m facekd.pipelines.train`` (the common training flags plus these)."""

    backbone: str = field("mbf", help=lambda: f"face backbone name ({', '.join(list_backbones('face'))})")
    head: str = field("arcface", help="margin head", choices=("arcface", "cosface"))
    scale: float = field(64.0, help="logit scale s of the margin head "
                               "(64 is arcface_torch's, for MS1M-sized data at 112 px; on small sets (thousands "
                               "of identities, or 32 px) 32 with --margin 0.4, --warmup-steps and --clip-grad-norm 5 "
                               "converges where 64/0.5 may not)")
    margin: float | None = field(None, help="margin (default: 0.5 for ArcFace, 0.4 for CosFace)")
    partial_fc: float = field(1.0, help="Partial FC sample rate of negative class centres (1.0 = all); "
                                        "centres are sharded over the ranks whenever there is more than one")
    data: str | None = field(None, help=lambda: "training data (required): " + source_examples("face") + ", or a "
                                        "bare path (a RecordIO folder or .rec file, an image folder tree: one folder "
                                        "per identity)")
    on_corrupt: str = field("skip", help="a corrupt training image: 'skip' it or 'fail'", choices=("skip", "fail"))
    flip: float = field(0.5, help="probability of a horizontal flip augmentation")
    dropout: float = field(0.0, help="dropout before the embedding layer")
    val_bins: list[str] = field(default_factory=list, help="comma-separated verification .bin files evaluated "
                                                           "every --eval-every steps and at the end")
    val_pairs: int = field(600, help="with synthetic data: held-out synthetic verification pairs to evaluate "
                                     "(multiple of 20; 0 = none)")


# ----------------------------------------------------------------------------------------------
# the task

class FaceTrainTask(FaceVerificationEval, TrainTask):
    """Backbone + margin head on a labeled face dataset; validation on verification pairs."""

    def __init__(self, cfg: FaceTrainConfig, info: DistInfo) -> None:
        from facekd.data.datasets import open_dataset
        from facekd.data.loaders import build_loader
        from facekd.data.transforms import build_transform
        from facekd.models.registry import build_backbone

        self.cfg, self.info = cfg, info
        data = require_data(cfg.data, "train")
        log.info("train: data %s", data)
        check_files([("--data", data), *(("--val-bins", b) for b in cfg.val_bins)])
        transform = build_transform("face", size=cfg.input_size, flip=cfg.flip, seed=cfg.seed)
        self.dataset = open_data("--data", data, lambda s: open_dataset(s, transform=transform,
                                                                        on_corrupt=cfg.on_corrupt))
        self.loader = build_loader(self.dataset, cfg.batch_size, shuffle=True, workers=cfg.workers, seed=cfg.seed,
                                   drop_last=True)
        num_classes = int(self.dataset.num_classes)
        self.arch = cfg.backbone
        self.arch_options = {"embedding_size": cfg.embedding_size, "input_size": cfg.input_size,
                             "width": cfg.width, "dropout": cfg.dropout}
        self.backbone = build_backbone(cfg.backbone, **self.arch_options)
        self.head = attach_margin_head(self, cfg, num_classes, info)
        self.load_validation(data, cfg.val_pairs, cfg.val_bins, info.is_main)
        log.info("%s: %d images of %d identities; %s backbone, %s head (%s)", data, len(self.dataset),
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
