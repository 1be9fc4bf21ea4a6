"""``python -m facekd.pipelines.distill``: distil a frozen face teacher into a student with SRD.

The teacher (``--teacher r100 --teacher-weights backbone.pth``, an arcface_torch checkpoint, a
facekd checkpoint or an insightface ONNX file) is frozen; its classifier is the *critic*. It comes
from the weights when they carry one, from ``--teacher-head``, or is fitted on the labeled set
(normalised class means, optionally refined). Each step the student's embedding, mapped by a small
connector, goes through the critic and these cross-network logits must match the teacher's own
(``--loss srd``; baselines ``kd``, ``cosine``, ``feat``, ``srrl``, combinable with weights). Labeled
rows also get the student's own margin loss (``--label-weight``); rows of an unlabeled pool
(``--unlabeled``, any faces, even of unseen identities) get the distillation terms only.

The teacher's embeddings of every training image and of its flip are computed once and cached on
disk when augmentation is flips only (``--cache-dir``, default OUT/teacher_cache), so a step costs
about what a plain student step costs; ``--online-teacher`` runs the teacher in the loop instead.
Everything else (DDP with torchrun, AMP, checkpoints and ``--resume``, logs, ONNX export) is the
engine's, exactly as in ``facekd.pipelines.train``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn

from facekd.config import ConfigError, field
from facekd.data.sources import source_examples
from facekd.distill.losses.registry import list_losses
from facekd.engine import distributed as fdist
from facekd.engine.config import TrainConfig, parse_training_config
from facekd.engine.distributed import DistInfo
from facekd.engine.task import TrainTask
from facekd.engine.trainer import Trainer, TrainResult, setup_run
from facekd.log import get_logger
from facekd.models.registry import list_backbones
from facekd.pipelines.common import (FaceVerificationEval, attach_margin_head, distill_errors,
                                     parse_student_options)
from facekd.pipelines.launch import run_command
from facekd.pipelines.preflight import (WeightFlags, check_files, check_input_size, check_labeled_size,
                                        check_pool_size, open_data, require_data, reword_mismatch,
                                        warn_ignored_for_onnx)

log = get_logger(__name__)

__all__ = ["DistillConfig", "DistillTask", "sample_critic_centres", "run", "main"]

TEACHER_HEAD_FILE = "teacher_head.pth"
"""The fitted teacher classifier, written beside the run's outputs and reused on --resume."""
FIT_REPORT_FILE = "teacher_fit.json"
TEACHER_FLAGS = WeightFlags("teacher (--teacher-weights)", arch="--teacher", width="--teacher-width",
                            embedding_size="--teacher-embedding-size", input_size="--input-size", shared_input=True)
"""How distill spells the teacher's builder options, for hints on weights that do not fit."""
STUDENT_FLAGS = WeightFlags("student (--init-student)", arch="--student", width="--width",
                            embedding_size="--embedding-size", input_size="--input-size", shared_input=True)


@dataclass
class DistillConfig(TrainConfig):
    """Settings of ``python -m facekd.pipelines.distill`` (the common training flags plus these)."""

    out: str = field("runs/distill", help="output directory (config.yaml, metrics.jsonl, checkpoints, "
                                          "backbone.pth, teacher_head.pth, teacher_cache/)")
    # teacher
    teacher: str | None = field(None, help="teacher backbone name (r100, r50, ...; facekd checkpoints and ONNX "
                                           "files name themselves)")
    teacher_weights: str | None = field(None, help="teacher weights: arcface_torch backbone.pth or training "
                                                   "checkpoint, facekd checkpoint, or an insightface .onnx")
    teacher_head: str | None = field(None, help="teacher classifier file (arcface_torch softmax_fc shard or "
                                                "checkpoint, facekd head.pth); default: from the weights, "
                                                "else fitted on the labeled set")
    teacher_width: float | None = field(None, help="channel-width multiplier of the teacher backbone (default: "
                                                   "the checkpoint's, else 1.0; ignored for an ONNX file)")
    teacher_embedding_size: int | None = field(None, help="embedding size of the teacher backbone (default: the "
                                                          "checkpoint's, else 512)")
    teacher_scale: float = field(64.0, help="logit scale s of the critic's s*cos logits (srd's default logit term "
                                            "is normalised by it, so it does not weigh srd; kd's softmax sees it)")
    refine_epochs: int = field(0, help="epochs of margin-loss refinement of a fitted teacher classifier "
                                       "(0 = normalised class means only)")
    online_teacher: bool = field(False, help="run the teacher in the loop instead of caching its embeddings")
    cache_dir: str | None = field(None, help="teacher-feature cache directory (default OUT/teacher_cache; share "
                                             "it between runs with the same teacher and data)")
    rebuild_cache: bool = field(False, help="rebuild the teacher-feature cache even when a valid one exists")
    input_size: int = field(112, help="square input side in px of the student and the teacher alike: both see the "
                                      "same images, so a torch teacher is built at this size and an ONNX teacher "
                                      "must take it")
    # student
    student: str = field("mbf", help=lambda: f"student backbone name ({', '.join(list_backbones('face'))})")
    student_option: list[str] = field(default_factory=list, help="extra student builder options key=value, "
                                                                 "comma-separated (e.g. stage=1 for binary students)")
    init_student: str | None = field(None, help="start the student from these weights (e.g. a previous stage's "
                                                "backbone.pth)")
    head: str = field("arcface", help="the student's own margin head on labeled rows", choices=("arcface", "cosface"))
    scale: float = field(64.0, help="logit scale s of the student's margin head "
                               "(64 is arcface_torch's, for MS1M-sized data at 112 px; on small sets (thousands "
                               "of identities, or 32 px) 32 with --margin 0.4, --warmup-steps and --clip-grad-norm 5 "
                               "converges where 64/0.5 may not)")
    margin: float | None = field(None, help="margin of the student's head (default: 0.5 ArcFace, 0.4 CosFace)")
    partial_fc: float = field(1.0, help="Partial FC sample rate (student head; also the share of teacher "
                                        "centres the cross-network logits use); 1.0 = all")
    label_weight: float = field(1.0, help="weight of the student's margin loss on labeled rows (0 = distillation "
                                          "terms only, no student head)")
    # distillation
    loss: str = field("srd", help=lambda: "distillation loss(es) with weights, e.g. 'srd' or 'srd:1.0,kd:0.5' "
                                         f"({', '.join(list_losses('face'))})")
    loss_option: list[str] = field(default_factory=list, help="loss options loss.option=value, comma-separated "
                                                              "(e.g. srd.mode=kl,srd.T=4)")
    # data
    data: str | None = field(None, help=lambda: "labeled training data (required): " + source_examples("face")
                                        + ", or a bare path (a RecordIO folder or .rec, an image folder tree: one "
                                        "folder per identity)")
    unlabeled: str | None = field(None, help=lambda: "unlabeled pool (any face images, any identities; labels "
                                             "ignored): " + source_examples("face") + ", or a bare path")
    unlabeled_ratio: float = field(1.0, help="unlabeled rows per labeled row in each batch")
    on_corrupt: str = field("skip", help="a corrupt training image: 'skip' it or 'fail'", choices=("skip", "fail"))
    flip: float = field(0.5, help="probability of a horizontal flip augmentation")
    dropout: float = field(0.0, help="dropout before the student's embedding layer")
    val_bins: list[str] = field(default_factory=list, help="comma-separated verification .bin files evaluated "
                                                           "every --eval-every steps and at the end")
    val_pairs: int = field(600, help="with synthetic data: held-out synthetic verification pairs (multiple of 20; "
                                     "0 = none)")


def sample_critic_centres(labels: Tensor, num_classes: int, rate: float,
                          generator: torch.Generator | None = None) -> Tensor:
    """Class ids [k] the critic's logits are computed over when Partial FC is on: every positive
    class of the batch (labels >= 0, those within ``num_classes``) plus random others, k =
    max(#positives, ceil(rate * C)), sorted. Unlabeled rows compare logits over the same subset.
    ``generator`` None: the global torch generator (checkpointed with the run's RNG state)."""
    k = max(1, int(-(-rate * num_classes // 1)))
    positives = torch.unique(labels[(labels >= 0) & (labels < num_classes)].cpu())
    if positives.numel() >= k:
        return positives.sort().values
    mask = torch.ones(num_classes, dtype=torch.bool)
    mask[positives] = False
    others = torch.nonzero(mask).squeeze(1)
    pick = others[torch.randperm(others.numel(), generator=generator)[:k - positives.numel()]]
    return torch.cat([positives, pick]).sort().values


def _teacher_options(cfg: DistillConfig) -> dict[str, Any]:
    """Builder options for a torch teacher: the input size plus what the user set explicitly (ONNX
    files and facekd checkpoints carry their own)."""
    if cfg.teacher_weights and Path(cfg.teacher_weights).suffix.lower() == ".onnx":
        return {}
    options: dict[str, Any] = {"input_size": cfg.input_size}
    if cfg.teacher_width is not None:
        options["width"] = cfg.teacher_width
    if cfg.teacher_embedding_size is not None:
        options["embedding_size"] = cfg.teacher_embedding_size
    return options


def _needs_own_logits(losses: nn.Module) -> bool:
    return any(getattr(loss, "student_logits", None) == "own" for loss in losses.losses.values())


class DistillTask(FaceVerificationEval, TrainTask):
    """Student (+ its margin head) trained against a frozen teacher through the loss set."""

    def __init__(self, cfg: DistillConfig, info: DistInfo) -> None:
        from facekd.data.datasets import open_dataset
        from facekd.data.loaders import build_loader, build_mixed_loader
        from facekd.data.pools import open_unlabeled
        from facekd.data.transforms import build_transform
        from facekd.distill.losses.registry import parse_loss_options
        from facekd.distill.setup import prepare_teacher
        from facekd.distill.teacher import require_teacher_weights
        from facekd.models.registry import build_backbone
        from facekd.models.weights import StateDictMismatchError, load_backbone

        self.cfg, self.info = cfg, info
        out = Path(cfg.out)
        # everything cheap first, each mistake in one line, before the teacher embeds anything
        data = require_data(cfg.data, "distill")
        log.info("distill: labeled data %s%s", data, f"; unlabeled pool {cfg.unlabeled} (--unlabeled-ratio "
                 f"{cfg.unlabeled_ratio:g})" if cfg.unlabeled else "; no unlabeled pool")
        loss_options = parse_loss_options(cfg.loss_option)
        self._build_losses(loss_options, cfg.teacher_embedding_size or cfg.embedding_size)  # rebuilt below with
        # the teacher's real size
        require_teacher_weights(cfg.teacher_weights, cfg.teacher)
        check_files([("--data", data), ("--unlabeled", cfg.unlabeled), ("--teacher-head", cfg.teacher_head),
                     ("--init-student", cfg.init_student), *(("--val-bins", b) for b in cfg.val_bins)])
        warn_ignored_for_onnx(cfg.teacher_weights, {"--teacher": cfg.teacher, "--teacher-width": cfg.teacher_width,
                                                    "--teacher-embedding-size": cfg.teacher_embedding_size})
        transform = build_transform("face", size=cfg.input_size, flip=cfg.flip, seed=cfg.seed)
        pool_transform = transform  # the loaders reseed it per sample: sharing it is safe
        self.dataset = open_data("--data", data, lambda s: open_dataset(s, transform=transform,
                                                                        on_corrupt=cfg.on_corrupt))
        self.pool = open_data("--unlabeled", cfg.unlabeled, lambda s: open_unlabeled(
            s, transform=pool_transform, on_corrupt=cfg.on_corrupt)) if cfg.unlabeled else None
        check_labeled_size(len(self.dataset), cfg.batch_size, info.world_size)
        if self.pool is not None:
            check_pool_size(len(self.pool), cfg.batch_size, cfg.unlabeled_ratio, info.world_size)
            self.loader: Any = build_mixed_loader(self.dataset, self.pool, cfg.batch_size, ratio=cfg.unlabeled_ratio,
                                                  workers=cfg.workers, seed=cfg.seed)
        else:
            self.loader = build_loader(self.dataset, cfg.batch_size, shuffle=True, workers=cfg.workers,
                                       seed=cfg.seed, drop_last=True)

        # teacher: on the run's device; reuse the classifier fitted by the run being resumed (checked
        # against the teacher weights' hash); every rank builds its share of the caches
        head_file, fitted_head = cfg.teacher_head, False
        if head_file is None and cfg.resume and (out / TEACHER_HEAD_FILE).is_file():
            head_file, fitted_head = str(out / TEACHER_HEAD_FILE), True
        teacher_options = _teacher_options(cfg)
        from facekd.distill.cache import Collective
        from facekd.engine.trainer import AMP_AUTO, AMP_DTYPES

        amp_mode = AMP_AUTO.get(info.device.type, "off") if cfg.amp == "auto" else cfg.amp
        collective = Collective(info.rank, info.world_size, share=fdist.broadcast_object, barrier=fdist.barrier)
        try:
            setup = prepare_teacher(
                cfg.teacher_weights, cfg.teacher, labeled=self.dataset, transform=transform, unlabeled=self.pool,
                unlabeled_transform=pool_transform, head=head_file, scale=cfg.teacher_scale, online=cfg.online_teacher,
                cache_dir=cfg.cache_dir or out / "teacher_cache", rebuild_cache=cfg.rebuild_cache,
                refine_epochs=cfg.refine_epochs, batch_size=min(256, max(32, cfg.batch_size)), workers=cfg.workers,
                seed=cfg.seed, device=info.device, amp_dtype=AMP_DTYPES[amp_mode], channels_last=cfg.channels_last,
                collective=collective, stall_timeout=cfg.dist_timeout, check_head=fitted_head,
                check=lambda teacher: check_input_size(teacher.input_size, cfg.input_size, teacher.name),
                **teacher_options)
        except StateDictMismatchError as err:
            raise reword_mismatch(err, TEACHER_FLAGS) from None
        self.teacher = setup.teacher
        cfg.rebuild_cache = False  # done: a resume of this run (which reads config.yaml) must not rebuild again
        self.fit_report = setup.fit_report
        if info.is_main and setup.fit_report:
            import json

            out.mkdir(parents=True, exist_ok=True)
            self.teacher.save_classifier(out / TEACHER_HEAD_FILE)
            (out / FIT_REPORT_FILE).write_text(json.dumps(setup.fit_report, indent=2) + "\n")

        # student
        self.arch = cfg.student
        self.arch_options = {"embedding_size": cfg.embedding_size, "input_size": cfg.input_size,
                             "width": cfg.width, "dropout": cfg.dropout, **parse_student_options(cfg.student_option)}
        self.backbone = build_backbone(cfg.student, **self.arch_options)
        if cfg.init_student:
            try:
                start = load_backbone(cfg.student, cfg.init_student, arch_flag="--student", **self.arch_options)
            except StateDictMismatchError as err:
                raise reword_mismatch(err, STUDENT_FLAGS) from None
            self.backbone.load_state_dict(start.state_dict())
            log.info("student starts from %s", cfg.init_student)
        self.head: nn.Module | None = None
        num_classes = int(self.dataset.num_classes)
        if cfg.label_weight > 0:
            self.head = attach_margin_head(self, cfg, num_classes, info)
        else:
            self.head_key = None
        self.losses = self._build_losses(loss_options, self.teacher.feature_dim)
        self.own_logits = _needs_own_logits(self.losses)
        if self.own_logits:
            if self.head is None or info.world_size > 1 or cfg.partial_fc < 1.0:
                raise ConfigError("kd with the student's own logits needs the student's full head in one process "
                                  "(--label-weight > 0, --partial-fc 1, no torchrun); or use "
                                  "--loss-option kd.student_logits=critic")
            if self.teacher.num_classes != num_classes:
                raise ConfigError(f"kd with the student's own logits needs the teacher's classifier over the "
                                  f"student's {num_classes} classes, but it has {self.teacher.num_classes}; use "
                                  "--loss-option kd.student_logits=critic")
        self.load_validation(data, cfg.val_pairs, cfg.val_bins, info.is_main)
        log.info("distilling %s into %s with %s: %d labeled images of %d identities%s; teacher %s", self.teacher.name,
                 cfg.student, cfg.loss, len(self.dataset), num_classes,
                 f", unlabeled pool of {len(self.pool)}" if self.pool is not None else "",
                 "cached" if setup.cached else "in the loop")

    def _build_losses(self, options: dict[str, dict[str, Any]], teacher_dim: int) -> nn.Module:
        """The loss set; connector initialisation is seeded on its own, so it does not depend on how
        (or whether) the head was built before it, nor consume the run's random stream."""
        from facekd.distill.losses.registry import build_losses

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.cfg.seed + 1)
            return build_losses(self.cfg.loss, "face", student_dim=self.cfg.embedding_size, teacher_dim=teacher_dim,
                                options=options)

    def evaluate(self, modules: Mapping[str, nn.Module]) -> dict[str, float]:
        """Held-out verification, with a warning when the metrics say distillation is hurting."""
        from facekd.distill.health import warn_if_hurting

        metrics = super().evaluate(modules)
        warn_if_hurting(metrics, self.cfg.loss)
        return metrics

    def modules(self) -> dict[str, nn.Module]:
        mods: dict[str, nn.Module] = {"backbone": self.backbone, "distill": self.losses, "teacher": self.teacher}
        if self.head is not None:
            mods["head"] = self.head
        return mods

    def _critic_centres(self, batch: Any, modules: Mapping[str, nn.Module]) -> Tensor:
        """Class ids the critic scores this step with Partial FC: the student head's sample (all ranks'
        shards) when head and critic share the classes, else a draw from the global torch generator
        (whose state every checkpoint holds, so a resumed run replays the same draws)."""
        from facekd.models.partial_fc import PartialFC

        head = modules.get("head")
        if isinstance(head, PartialFC) and head.num_classes == self.teacher.num_classes and head.sample_rate < 1.0:
            return head.all_last_samples().to(batch.images.device)
        return sample_critic_centres(batch.labels, self.teacher.num_classes, self.cfg.partial_fc).to(
            batch.images.device)

    def compute_losses(self, batch: Any, modules: Mapping[str, nn.Module]) -> dict[str, Tensor]:
        from facekd.distill.outputs import StudentOutput

        out = modules["backbone"](batch.images, return_features=True)
        terms: dict[str, Tensor] = {}
        if self.head is not None:
            terms[self.cfg.head] = self.cfg.label_weight * modules["head"](out.embedding, batch.labels)
        logits = None
        if self.own_logits:
            head = modules["head"]
            logits = head.s * head.cosine(out.embedding)
        centres = None
        if self.cfg.partial_fc < 1.0 and modules["distill"].scores_centres:
            centres = self._critic_centres(batch, modules)
        teacher_out = self.teacher.outputs(batch, centres)
        terms.update(modules["distill"](StudentOutput.from_model(out, logits), teacher_out, batch))
        return terms


def run(cfg: DistillConfig, callbacks: Sequence[Any] = ()) -> TrainResult:
    """Distil as configured (joining torchrun's job when launched by it) and return what was written."""
    info = setup_run(cfg)
    task = DistillTask(cfg, info)
    return Trainer(cfg, task, info, callbacks=callbacks).fit()


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: distil a face teacher; exit 1 on a non-finite loss, 2 on a setup error."""
    cfg, _ = parse_training_config(
        DistillConfig, argv, prog="python -m facekd.pipelines.distill",
        description="Distil a frozen face-recognition teacher into a student with SRD (the teacher's classifier "
                    "as a semantic critic) or a baseline loss, on labeled data plus an optional unlabeled pool. "
                    "Writes config.yaml, metrics.jsonl, TensorBoard events, checkpoints, backbone.pth (a plain "
                    "arcface_torch-style state dict of the student), head.pth, teacher_head.pth (a fitted teacher "
                    "classifier) and, with --export-onnx, model.onnx into --out.")
    return run_command(run, cfg, distill_errors())


if __name__ == "__main__":
    raise SystemExit(main())
