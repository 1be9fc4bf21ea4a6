"""The settings every training pipeline shares (train, distill, classify).

Pipeline configs inherit ``TrainConfig`` and add their own fields, so ``--batch-size``, ``--lr``,
``--resume`` and the rest mean the same thing everywhere. Every field is also reachable with
``--set key=value`` and from a YAML preset (see ``facekd.config``).
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Sequence, TypeVar

from facekd.config import ConfigError, add_config_arguments, config_from_args, field, load_yaml

T = TypeVar("T")

AMP_MODES = ("auto", "off", "bf16", "fp16")
BN_MODES = ("batch", "sync", "frozen")


@dataclass
class TrainConfig:
    """Common training settings: data size, optimisation, schedule, precision, logging, checkpoints."""

    # what and where
    out: str = field("runs/train", help="output directory (config.yaml, metrics.jsonl, checkpoints, backbone.pth)")
    resume: str | None = field(None, help="continue the run whose output directory (or checkpoint file) is given")
    device: str = field("auto", help="'auto' (CUDA when available, else CPU), 'cpu', 'cuda' or 'cuda:N'")
    dist_timeout: float = field(1800.0, help="torchrun runs: seconds a rank may wait in one collective (process-group "
                                             "timeout); also how long a rank waits for a stalled teacher-cache build")
    seed: int = field(0, help="seed for weights, data order and augmentation")
    workers: int = field(2, help="data-loading worker processes per rank (0 = load in the main process)")
    # model size
    input_size: int = field(112, help="square input side in px")
    width: float = field(1.0, help="channel-width multiplier of the backbone")
    embedding_size: int = field(512, help="embedding dimension")
    # length
    batch_size: int = field(128, help="images per step per process (the global batch is this x the world size)")
    epochs: int = field(20, help="training epochs (ignored when --max-steps is set)")
    max_steps: int = field(0, help="stop after this many optimizer steps (0 = run --epochs epochs)")
    # optimiser and schedule
    optimizer: str = field("sgd", help="optimizer", choices=("sgd", "adamw"))
    lr: float = field(0.1, help="peak learning rate (after warm-up)")
    momentum: float = field(0.9, help="SGD momentum")
    nesterov: bool = field(False, help="Nesterov momentum for SGD")
    betas: tuple[float, float] = field((0.9, 0.999), help="AdamW betas")
    weight_decay: float = field(5e-4, help="weight decay (decoupled for AdamW)")
    schedule: str = field("poly", help="learning-rate decay after warm-up",
                          choices=("poly", "cosine", "step", "constant"))
    warmup_epochs: float = field(0.0, help="linear warm-up length in epochs (fractions allowed)")
    warmup_steps: int = field(0, help="linear warm-up length in steps (added to --warmup-epochs)")
    lr_power: float = field(2.0, help="exponent of the polynomial decay")
    min_lr: float = field(0.0, help="learning rate reached at the end of poly/cosine decay")
    lr_milestones: list[int] = field(default_factory=list, help="epochs at which step decay multiplies the lr by --lr-gamma")
    lr_gamma: float = field(0.1, help="factor of each step decay")
    # numerics
    amp: str = field("auto", help="mixed precision: auto (fp16 on CUDA, off on CPU), off, bf16, fp16",
                     choices=AMP_MODES)
    clip_grad_norm: float = field(0.0, help="clip the global gradient norm to this value (0 = no clipping)")
    accum_steps: int = field(1, help="micro-batches accumulated per optimizer step")
    channels_last: bool = field(False, help="use channels_last memory format for images and conv weights")
    compile: bool = field(False, help="torch.compile the trainable modules")
    bn_mode: str = field("batch", help="BatchNorm: batch statistics per process, 'sync' (SyncBatchNorm "
                                       "across ranks, CUDA only) or 'frozen' (running statistics, affine still trains)",
                         choices=BN_MODES)
    deterministic: bool = field(False, help="deterministic algorithms (reproducible, sometimes slower)")
    # logging, evaluation, checkpoints
    log_every: int = field(50, help="log loss, lr and throughput every N steps")
    eval_every: int = field(0, help="evaluate every N steps (0 = only at the end)")
    ckpt_every: int = field(1000, help="write a checkpoint every N steps (and always at the end)")
    keep_ckpts: int = field(3, help="keep the newest K checkpoints")
    export_onnx: bool = field(False, help="also write model.onnx (checked against torch with onnxruntime)")
    tensorboard: bool = field(True, help="write TensorBoard event files into the output directory")


def parse_training_config(cls: type[T], argv: Sequence[str] | None = None, *, prog: str | None = None,
                          description: str = "") -> tuple[T, argparse.Namespace]:
    """``facekd.config.parse_config`` for training pipelines, aware of ``--resume``.

    With ``--resume RUN`` the run's saved ``config.yaml`` is the base (its output directory
    included), and only what the command line says explicitly (flags, ``--config``, ``--set``)
    changes it; e.g. ``--resume RUN --max-steps 2000`` extends a run.
    """
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_config_arguments(parser, cls)
    args = parser.parse_args(argv)
    base: dict[str, Any] = {}
    try:
        resume = getattr(args, "resume", None)
        if resume:
            from facekd.engine.checkpoint import resolve_resume

            run_dir, _ = resolve_resume(resume)
            saved = run_dir / "config.yaml"
            if saved.is_file():
                base = load_yaml(saved)
            base["out"] = str(run_dir)
        return config_from_args(cls, args, base), args
    except (ConfigError, ValueError) as err:
        parser.error(str(err))
        raise  # unreachable; parser.error exits
