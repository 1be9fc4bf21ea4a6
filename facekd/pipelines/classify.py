"""``python -m facekd.pipelines.classify``: image classification teachers, students and SRD distillation.

The same SRD core as the face pipelines, for ordinary classifiers (CIFAR ResNets and WRNs,
torchvision models): the teacher's own linear classifier is the critic. Three modes:

* ``teacher`` / ``student``: cross-entropy training of ``--model`` (a teacher, or the vanilla
  student every distillation result is compared with);
* ``distill``: ``--model`` is the student, ``--teacher`` + ``--teacher-weights`` a frozen teacher
  (facekd's backbone.pth or checkpoint, or a RepDistiller checkpoint: state dict under ``model``);
  loss = ``--label-weight`` x CE on labeled rows + the distillation terms (``--loss srd``; baselines
  ``kd``, ``feat``, ``srrl``, combinable with weights).

The open-set semi-supervised protocol of the SRD paper: ``--unlabeled SPEC`` (e.g. Tiny-ImageNet
or a Places365 folder) adds ``--unlabeled-ratio`` x batch unlabeled images (resized to the input
size, flipped) to every step; they go through the same forward pass, get the distillation terms
only, and never the cross-entropy. Top-1/top-5 on the test split are logged every
``--eval-epochs`` epochs; the last and the best epoch are reported (the literature reports the
last epoch). Data specs: ``facekd.data.classification``. Everything else (DDP with torchrun,
AMP, checkpoints and ``--resume``, logs, ONNX export) is the engine's.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from facekd.config import ConfigError, field
from facekd.data.sources import source_examples
from facekd.distill.losses.registry import list_losses
from facekd.engine.config import TrainConfig, parse_training_config
from facekd.engine.distributed import DistInfo
from facekd.engine.task import TrainTask
from facekd.engine.trainer import Trainer, TrainResult, setup_run
from facekd.log import get_logger
from facekd.models.registry import list_backbones
from facekd.pipelines.common import distill_errors, parse_student_options
from facekd.pipelines.launch import run_command
from facekd.pipelines.preflight import (WeightFlags, check_files, check_labeled_size, check_pool_size, open_model,
                                        reword_mismatch)

log = get_logger(__name__)

__all__ = ["MODES", "ClassifyConfig", "ClassifyTask", "topk_correct", "evaluate_topk", "summarise_run", "run",
           "main", "RESULTS_FILE"]

MODES = ("teacher", "student", "distill")
RESULTS_FILE = "results.json"
"""Last and best test accuracy of a finished run (and the teacher's, when distilling)."""
TOPK = (1, 5)
TEST_SET = "test"
TEACHER_FLAGS = WeightFlags("teacher (--teacher-weights)", arch="--teacher", num_classes="--teacher-num-classes",
                            input_size="--input-size", shared_input=True)
"""How classify spells the teacher's builder options, for hints on weights that do not fit."""
MODEL_FLAGS = WeightFlags("model (--init-model)", arch="--model", num_classes=None, input_size="--input-size")


@dataclass
class ClassifyConfig(TrainConfig):
    """Settings of ``python -m facekd.pipelines.classify``; the defaults are the CIFAR-100 recipe of
    RepDistiller/SRD (batch 64, 240 epochs, SGD lr 0.05, x0.1 at epochs 150/180/210, wd 5e-4)."""

    out: str = field("runs/classify", help="output directory (config.yaml, metrics.jsonl, checkpoints, "
                                           "backbone.pth, results.json)")
    mode: str = field("student", help="'teacher' or 'student': cross-entropy training of --model; 'distill': "
                                      "--model learns from --teacher", choices=MODES)
    model: str = field("resnet8x4", help=lambda: f"the model trained ({', '.join(list_backbones('classifier'))})")
    model_option: list[str] = field(default_factory=list, help="extra builder options of --model key=value, "
                                                               "comma-separated (e.g. dropout=0.3 for WRNs)")
    # teacher
    init_model: str | None = field(None, help="start --model from these weights (e.g. the stage-1 backbone.pth "
                                              "of a binary student trained with --model-option stage=1)")
    teacher: str | None = field(None, help="teacher architecture (distill mode; facekd checkpoints name themselves)")
    teacher_weights: str | None = field(None, help="teacher weights: facekd backbone.pth or checkpoint, or a "
                                                   "RepDistiller checkpoint ({'model': state_dict, ...})")
    teacher_num_classes: int | None = field(None, help="classes of the teacher's classifier (default: the data's)")
    eval_teacher: bool = field(True, help="distill mode: score the teacher on the test data once before training")
    # data
    data: str | None = field(None, help=lambda: "labeled data: " + source_examples("classify") + " (CIFAR in "
                                        "torchvision's layout, never downloaded; a folder's ROOT/train + ROOT/test "
                                        "when present)")
    test_data: str | None = field(None, help="evaluation data (default: the test split of --data); a folder "
                                             "without train/ is read whole, classes matched by name")
    labeled_per_class: int = field(0, help="keep only this many labeled training images per class, chosen by "
                                           "--seed (0 = all): a semi-supervised setting with few labels")
    unlabeled: str | None = field(None, help="unlabeled pool for distill mode (open-set: any images), e.g. "
                                             "tinyimagenet:ROOT or folder:PLACES365_ROOT; labels never used")
    unlabeled_ratio: float = field(1.0, help="unlabeled rows per labeled row in each step (1.0: 64 + 64)")
    flip: float = field(0.5, help="probability of a horizontal flip (labeled and unlabeled images)")
    crop_padding: int = field(4, help="zero padding before the random crop of labeled images (0 = no crop)")
    on_corrupt: str = field("skip", help="a corrupt image file: 'skip' it or 'fail'", choices=("skip", "fail"))
    # losses
    loss: str = field("srd", help=lambda: "distillation loss(es) with weights, e.g. 'srd', 'kd:0.9', 'srd:1.0,kd:0.5' "
                                         f"({', '.join(list_losses('classifier'))})")
    loss_option: list[str] = field(default_factory=list, help="loss options loss.option=value, comma-separated "
                                                              "(e.g. kd.T=4, srd.lambda_f=10)")
    label_weight: float = field(1.0, help="weight of the cross-entropy on labeled rows (RepDistiller's KD recipe: "
                                          "0.1 with --loss kd:0.9)")
    # evaluation
    eval_epochs: int = field(1, help="evaluate top-1/top-5 every N epochs (0 = only at the end; replaces "
                                     "--eval-every)")
    eval_batch_size: int = field(256, help="images per batch when evaluating")
    # the CIFAR-100 recipe as defaults
    input_size: int = field(32, help="square input side in px (images are resized to it)")
    width: float = field(1.0, help="unused: classification models have no width multiplier (leave at 1.0)")
    embedding_size: int = field(512, help="unused by classification models")
    batch_size: int = field(64, help="labeled images per step per process")
    epochs: int = field(240, help="training epochs (ignored when --max-steps is set)")
    lr: float = field(0.05, help="learning rate (0.01 for MobileNetV2/ShuffleNet students in the recipe)")
    schedule: str = field("step", help="learning-rate schedule", choices=("poly", "cosine", "step", "constant"))
    lr_milestones: list[int] = field(default_factory=lambda: [150, 180, 210],
                                     help="epochs at which step decay multiplies the lr by --lr-gamma")


# ----------------------------------------------------------------------------------------------
# evaluation

def topk_correct(logits: Tensor, labels: Tensor, ks: Sequence[int] = TOPK) -> dict[int, int]:
    """How many rows have their label among the top-k logits, for each k (k capped at the classes)."""
    kmax = min(max(ks), logits.shape[1])
    top = logits.topk(kmax, dim=1).indices
    hits = top == labels.view(-1, 1)
    return {k: int(hits[:, :min(k, kmax)].any(dim=1).sum()) for k in ks}


@torch.no_grad()
def evaluate_topk(model: Callable[[Tensor], Tensor], loader: Iterable[Any], device: torch.device,
                  ks: Sequence[int] = TOPK) -> dict[str, float]:
    """``{"top1": %, "top5": %}`` of ``model`` (images -> logits) over ``loader``'s batches, in percent
    as the classification literature reports them."""
    correct = dict.fromkeys(ks, 0)
    total = 0
    for batch in loader:
        logits = model(batch.images.to(device, non_blocking=True)).float()
        for k, n in topk_correct(logits, batch.labels.to(logits.device), ks).items():
            correct[k] += n
        total += int(batch.labels.numel())
    if total == 0:
        raise ConfigError("the evaluation data is empty")
    return {f"top{k}": 100.0 * correct[k] / total for k in ks}


# ----------------------------------------------------------------------------------------------
# the task

def _check(cfg: ClassifyConfig) -> None:
    from facekd.models.registry import backbone_kind

    if not cfg.data:
        raise ConfigError("give the labeled data with --data: cifar100:ROOT, cifar10:ROOT, folder:ROOT, "
                          "tinyimagenet:ROOT, digits (a quick CPU try) or synthetic")
    if backbone_kind(cfg.model) != "classifier":
        raise ConfigError(f"--model {cfg.model} is a face backbone; classification needs a classifier "
                          "(facekd.pipelines.train / distill train face models)")
    if cfg.teacher and backbone_kind(cfg.teacher) != "classifier":
        raise ConfigError(f"--teacher {cfg.teacher} is a face backbone; a classifier needs a classification teacher "
                          "(facekd.pipelines.distill distils face models)")
    if cfg.mode == "distill":
        if not cfg.teacher_weights:
            raise ConfigError("distill mode needs --teacher-weights (and --teacher unless the file is a facekd "
                              "checkpoint); train one with --mode teacher")
    else:
        stray = [flag for flag, value in (("--teacher-weights", cfg.teacher_weights), ("--unlabeled", cfg.unlabeled))
                 if value]
        if stray:
            raise ConfigError(f"{' and '.join(stray)} only apply to --mode distill (this run is --mode {cfg.mode})")
    if cfg.width != 1.0:
        raise ConfigError(f"--width {cfg.width}: classification models have no width multiplier; pick a wider or "
                          "narrower architecture instead (e.g. resnet8x4 vs resnet20)")
    if cfg.labeled_per_class < 0 or cfg.unlabeled_ratio <= 0 or cfg.eval_epochs < 0 or cfg.crop_padding < 0:
        raise ConfigError("--labeled-per-class, --eval-epochs and --crop-padding must be >= 0 and "
                          "--unlabeled-ratio > 0")
    if cfg.mode == "distill":
        _check_losses(cfg)
        from facekd.distill.teacher import require_teacher_weights

        require_teacher_weights(cfg.teacher_weights, cfg.teacher)
    check_files([("--init-model", cfg.init_model)])


def _check_losses(cfg: ClassifyConfig) -> None:
    """Build the loss set once with stand-in sizes: a wrong name, option, value or weight fails in one
    line before any data or teacher is read (the real set is built once the teacher is loaded)."""
    from facekd.distill.losses.registry import build_losses, parse_loss_options

    with torch.random.fork_rng(devices=[]):
        build_losses(cfg.loss, "classifier", student_dim=8, teacher_dim=8, options=parse_loss_options(cfg.loss_option))


class ClassifyTask(TrainTask):
    """A classifier trained with cross-entropy on labeled rows, plus (distill mode) the distillation
    losses against a frozen teacher on every row, labeled or from the unlabeled pool."""

    head_key = None  # the classifier's fc is part of the model (backbone.pth holds all of it)

    def __init__(self, cfg: ClassifyConfig, info: DistInfo) -> None:
        from facekd.data.classification import (class_names, classification_transform, open_classification,
                                                open_classification_pool, open_evaluation_data)
        from facekd.data.loaders import build_loader, build_mixed_loader
        from facekd.models.registry import build_backbone

        _check(cfg)
        self.cfg, self.info = cfg, info
        log.info("classify --mode %s: data %s%s", cfg.mode, cfg.data, f"; unlabeled pool {cfg.unlabeled} "
                 f"(--unlabeled-ratio {cfg.unlabeled_ratio:g})" if cfg.unlabeled else "")
        train_tf = classification_transform("train", size=cfg.input_size, seed=cfg.seed, flip=cfg.flip,
                                            padding=cfg.crop_padding)
        self.dataset = open_classification(cfg.data, "train", train_tf, on_corrupt=cfg.on_corrupt,
                                           per_class=cfg.labeled_per_class or None, subset_seed=cfg.seed)
        self.num_classes = int(self.dataset.num_classes)
        check_labeled_size(len(self.dataset), cfg.batch_size, info.world_size)
        self.pool = None
        if cfg.unlabeled:
            pool_tf = classification_transform("unlabeled", size=cfg.input_size, seed=cfg.seed + 1, flip=cfg.flip)
            self.pool = open_classification_pool(cfg.unlabeled, pool_tf, on_corrupt=cfg.on_corrupt)
            check_pool_size(len(self.pool), cfg.batch_size, cfg.unlabeled_ratio, info.world_size)
            self.loader: Any = build_mixed_loader(self.dataset, self.pool, cfg.batch_size, ratio=cfg.unlabeled_ratio,
                                                  workers=cfg.workers, seed=cfg.seed)
        else:
            self.loader = build_loader(self.dataset, cfg.batch_size, shuffle=True, workers=cfg.workers,
                                       seed=cfg.seed, drop_last=True)
        self.test_loader = None
        if info.is_main:
            eval_tf = classification_transform("eval", size=cfg.input_size)
            if cfg.test_data:
                test = open_evaluation_data(cfg.test_data, eval_tf, classes=class_names(self.dataset.source),
                                            on_corrupt=cfg.on_corrupt)
            else:
                test = open_classification(cfg.data, "test", eval_tf, on_corrupt=cfg.on_corrupt)
            self.test_loader = build_loader(test, cfg.eval_batch_size, shuffle=False, workers=0, drop_last=False,
                                            distributed=False, pin_memory=False)

        self.arch = cfg.model
        self.arch_options = {"num_classes": self.num_classes, "input_size": cfg.input_size,
                             **parse_student_options(cfg.model_option)}
        self.backbone = build_backbone(cfg.model, **self.arch_options)
        if cfg.init_model:
            from facekd.models.weights import load_backbone

            start = open_model(lambda path, arch, **o: load_backbone(arch, path, arch_flag="--model", **o),
                               cfg.init_model, cfg.model, flags=MODEL_FLAGS, **self.arch_options)
            self.backbone.load_state_dict(start.state_dict())
            log.info("%s starts from %s", cfg.model, cfg.init_model)
        self.teacher: nn.Module | None = None
        self.losses: nn.Module | None = None
        self.teacher_metrics: dict[str, float] = {}
        if cfg.mode == "distill":
            self._setup_teacher()
        log.info("%s %s on %s: %d labeled images of %d classes%s%s", cfg.mode, cfg.model, cfg.data, len(self.dataset),
                 self.num_classes, f", unlabeled pool of {len(self.pool)}" if self.pool is not None else "",
                 f"; teacher {self.teacher.name}, loss {cfg.loss}" if self.teacher is not None else "")

    def _setup_teacher(self) -> None:
        from facekd.distill.losses.registry import build_losses, parse_loss_options
        from facekd.distill.setup import prepare_teacher
        from facekd.distill.teacher import TeacherError
        from facekd.models.weights import StateDictMismatchError

        cfg = self.cfg
        options = {"num_classes": cfg.teacher_num_classes or self.num_classes, "input_size": cfg.input_size}
        try:
            setup = prepare_teacher(cfg.teacher_weights, cfg.teacher, labeled=self.dataset, online=True,
                                    seed=cfg.seed, device=self.info.device, channels_last=cfg.channels_last, **options)
        except StateDictMismatchError as err:
            raise reword_mismatch(err, TEACHER_FLAGS) from None
        teacher = setup.teacher
        if teacher.kind != "classifier":
            raise TeacherError(f"{cfg.teacher_weights}: a face model cannot teach a classifier here; use "
                               "facekd.pipelines.distill for faces")
        self.teacher = teacher
        self.losses = build_losses(cfg.loss, "classifier", student_dim=int(self.backbone.feature_channels),
                                   teacher_dim=teacher.feature_dim, options=parse_loss_options(cfg.loss_option))
        if self.info.is_main and cfg.eval_teacher and self.test_loader is not None:
            device = self.info.device
            teacher.to(device)
            self.teacher_metrics = evaluate_topk(teacher.backbone, self.test_loader, device)
            log.info("teacher on the test data: top-1 %.2f %%, top-5 %.2f %%", self.teacher_metrics["top1"],
                     self.teacher_metrics["top5"])

    def modules(self) -> dict[str, nn.Module]:
        mods: dict[str, nn.Module] = {"backbone": self.backbone}
        if self.teacher is not None and self.losses is not None:
            mods.update(distill=self.losses, teacher=self.teacher)
        return mods

    def compute_losses(self, batch: Any, modules: Mapping[str, nn.Module]) -> dict[str, Tensor]:
        """``ce`` (labeled rows only, times --label-weight) plus every distillation term."""
        from facekd.distill.outputs import StudentOutput

        out = modules["backbone"](batch.images, return_features=True)
        terms: dict[str, Tensor] = {}
        if self.cfg.label_weight > 0:
            rows = torch.nonzero(batch.labeled).squeeze(1)
            if rows.numel():
                ce = F.cross_entropy(out.logits.index_select(0, rows).float(), batch.labels.index_select(0, rows))
            else:  # a zero that still reaches every parameter (DDP expects gradients for all)
                ce = out.logits.sum() * 0.0
            terms["ce"] = self.cfg.label_weight * ce
        if self.teacher is not None:
            teacher_out = self.teacher.outputs(batch)
            terms.update(modules["distill"](StudentOutput.from_model(out), teacher_out, batch))
        return terms

    def evaluate(self, modules: Mapping[str, nn.Module]) -> dict[str, float]:
        if self.test_loader is None:
            return {}
        metrics = evaluate_topk(modules["backbone"], self.test_loader, self.info.device)
        return {f"{TEST_SET}/{k}": v for k, v in metrics.items()}


# ----------------------------------------------------------------------------------------------
# entry point

def summarise_run(out_dir: str | Path, steps_per_epoch: int, teacher: Mapping[str, float] | None = None
                  ) -> dict[str, Any]:
    """Last and best test top-1/top-5 of a run from its metrics.jsonl (best = highest top-1), the
    teacher's when given; ``reported`` says which the literature uses (the last epoch)."""
    from facekd.engine.metrics_log import read_metrics

    key1, key5 = f"eval/{TEST_SET}/top1", f"eval/{TEST_SET}/top5"
    evals = [r for r in read_metrics(out_dir) if key1 in r]
    summary: dict[str, Any] = {"reported": "last", "note": "the CIFAR distillation literature reports the last "
                                                           "epoch's accuracy; best is for reference only"}
    if evals:
        def entry(r: Mapping[str, Any]) -> dict[str, float]:
            return {"top1": float(r[key1]), "top5": float(r.get(key5, float("nan"))), "step": int(r["step"]),
                    "epoch": float(r["step"]) / max(1, steps_per_epoch)}

        summary["last"] = entry(evals[-1])
        summary["best"] = entry(max(evals, key=lambda r: (float(r[key1]), -int(r["step"]))))
    if teacher:
        summary["teacher"] = dict(teacher)
    return summary


def run(cfg: ClassifyConfig, callbacks: Sequence[Any] = ()) -> TrainResult:
    """Train as configured (joining torchrun's job when launched by it) and return what was written;
    ``metrics`` holds the last evaluation plus ``best/...`` and ``teacher/...`` entries."""
    info = setup_run(cfg)
    task = ClassifyTask(cfg, info)
    steps_per_epoch = max(1, task.batches_per_epoch() // cfg.accum_steps)
    if cfg.eval_epochs > 0:
        cfg.eval_every = cfg.eval_epochs * steps_per_epoch
    result = Trainer(cfg, task, info, callbacks=callbacks).fit()
    if info.is_main:
        summary = summarise_run(result.out_dir, steps_per_epoch, task.teacher_metrics)
        (Path(result.out_dir) / RESULTS_FILE).write_text(json.dumps(summary, indent=2) + "\n")
        for part in ("best", "teacher"):
            for key in ("top1", "top5"):
                if key in summary.get(part, {}):
                    result.metrics[f"{part}/{TEST_SET}/{key}"] = summary[part][key]
        if "best" in summary:
            result.metrics["best/epoch"] = summary["best"]["epoch"]
    return result


def _classify_errors() -> tuple[type[BaseException], ...]:
    from facekd.data.classification import DataSpecError

    return distill_errors() + (DataSpecError,)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: train or distil a classifier; exit 1 on a non-finite loss, 2 on a setup error."""
    cfg, _ = parse_training_config(
        ClassifyConfig, argv, prog="python -m facekd.pipelines.classify",
        description="Train an image classifier (--mode teacher|student) or distil a frozen classification teacher "
                    "into it (--mode distill) with SRD (the teacher's linear classifier as the critic) or a baseline, "
                    "optionally with an open-set unlabeled pool (--unlabeled). Defaults follow the CIFAR-100 recipe; "
                    "presets: cifar100_teacher, cifar100_resnet32x4_resnet8x4, cifar100_wrn_40_2_wrn_40_1, "
                    "cifar100_wrn_40_2_wrn_16_2, cifar100_openset. Writes config.yaml, metrics.jsonl (top-1/top-5 "
                    "each epoch), TensorBoard events, checkpoints, backbone.pth, results.json (last and best "
                    "epoch; the literature reports the last) and, with --export-onnx, model.onnx into --out.")
    return run_command(run, cfg, _classify_errors(), footer='  (report eval/test/top1, the last epoch, as the literature does; best/ is for reference)')


if __name__ == "__main__":
    raise SystemExit(main())
