"""The teacher as a *critic*: a frozen backbone (torch or ONNX) plus its classifier.

SRD needs the teacher's classifier, but released face models (``backbone.pth``, insightface ONNX
packs) ship without it. ``load_teacher`` takes it from the checkpoint when there is one
(arcface_torch training checkpoints, facekd checkpoints, ``--teacher-head PATH``); otherwise the
pipeline *fits* it with ``Teacher.fit_classifier``: class centres = the normalised mean of each
identity's normalised teacher embeddings, optionally refined by a few epochs of ArcFace training
of the classifier alone on those (in-memory or cached) embeddings; the fit reports how well it
classifies the teacher's own training embeddings.

The teacher is never trained: every parameter has ``requires_grad=False``, it stays in eval mode
whatever ``train()`` is called with, and it must never be given to an optimizer. Its embeddings
come from the teacher-feature cache when one is attached (``attach_cache``) and from a forward
pass under ``no_grad`` otherwise (``online=True``, or augmentation beyond flips).
"""
from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from facekd.distill.cache import (DeterministicRows, TeacherCache, TeacherCacheSet, collate_rows,
                                  deterministic_transform)
from facekd.distill.critic import DEFAULT_SCALE, CosineCritic, LinearCritic
from facekd.distill.outputs import TeacherOutput
from facekd.log import get_logger, progress
from facekd.models.interface import Backbone

if TYPE_CHECKING:
    from facekd.models.onnx_backbone import OnnxBackbone

log = get_logger(__name__)

__all__ = [
    "TEACHER_WEIGHTS_HELP", "TeacherError", "TeacherWeightsMissingError", "TeacherMismatchError", "Teacher",
    "require_teacher_weights", "load_teacher", "classifier_fingerprint", "check_classifier_fingerprint",
    "class_centres", "refine_centres", "classifier_top1",
]

TEACHER_WEIGHTS_HELP = (
    "Teacher weights are not downloaded by facekd. Use a released arcface_torch backbone.pth (links in the "
    "insightface repository, recognition/arcface_torch README, model zoo: e.g. ms1mv3_arcface_r100_fp16), an "
    "arcface_torch training checkpoint checkpoint_gpu_<rank>.pt (which also holds the classifier), a facekd "
    "checkpoint, a plain state dict of a facekd model, or an insightface ONNX recognition model (e.g. "
    "glintr100.onnx or w600k_r50.onnx from the antelopev2 / buffalo_l packs). A classifier can come from "
    "--teacher-head (arcface_torch softmax_fc / checkpoint shards, a facekd head.pth); without one it is "
    "fitted on the labeled training set.")
FIT_BLOCK = 65536
"""Rows of embeddings processed at once when fitting or scoring a classifier."""
SCORE_MACS = 2 * 10**11
"""Multiply-adds a fitted classifier's report may spend scoring rows (rows x classes x D; at least
4,096 rows, evenly spaced, are scored; every row of small sets)."""
SCORE_ELEMENTS = 1 << 25
"""Most cosine scores ([rows x classes]) held at once when scoring a classifier (128 MiB of float32)."""


class TeacherError(ValueError):
    """A teacher that cannot be built or used as asked; the message says what to do."""


class TeacherWeightsMissingError(TeacherError):
    """No (or a missing) teacher weights file; the message says where users get one."""


class TeacherMismatchError(TeacherError):
    """A saved teacher classifier (``teacher_head.pth``) fitted for other teacher weights than these."""


FINGERPRINT_KEY = "teacher_sha256"
"""Key of the teacher-weights SHA-256 (32 uint8) in a fitted classifier file."""


def classifier_fingerprint(path: str | os.PathLike[str]) -> str | None:
    """The teacher-weights SHA-256 a fitted classifier file was saved with (None: the file has none)."""
    from facekd.models.weights import load_weights_file

    value = load_weights_file(path).get(FINGERPRINT_KEY)
    if not isinstance(value, Tensor) or value.dtype != torch.uint8 or value.numel() != 32:
        return None
    return bytes(value.tolist()).hex()


def check_classifier_fingerprint(path: str | os.PathLike[str], teacher: "Teacher") -> None:
    """Raise TeacherMismatchError unless the classifier in ``path`` was fitted for ``teacher``'s weights."""
    saved = classifier_fingerprint(path)
    if saved is None:
        log.warning("%s carries no teacher-weights hash (written by an older facekd): cannot check that it "
                    "belongs to %s", path, teacher.name)
        return
    if saved != teacher.fingerprint():
        raise TeacherMismatchError(
            f"{path}: this teacher classifier was fitted for teacher weights with SHA-256 {saved[:16]}..., but "
            f"{teacher.name} has {teacher.fingerprint()[:16]}...; resume with the run's original --teacher-weights, "
            "or start a new run (another --out) to fit a classifier for these weights")


def _hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _hash_state(module: nn.Module) -> str:
    digest = hashlib.sha256()
    for key, value in sorted(module.state_dict().items()):
        if key.endswith("num_batches_tracked"):  # a step counter: does not change outputs
            continue
        t = value.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{key}:{t.dtype}:{list(value.shape)}".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


# ----------------------------------------------------------------------------------------------
# fitting a classifier from embeddings

def _block(embeddings: Any, labels: Any, start: int, stop: int) -> tuple[Tensor, Tensor]:
    """(float32 embeddings, long labels) of rows start..stop of an array/memmap/tensor [M, D]."""
    emb = embeddings[start:stop]
    emb = emb.float() if isinstance(emb, Tensor) else torch.from_numpy(np.asarray(emb, dtype=np.float32))
    lab = labels[start:stop]
    lab = lab.long() if isinstance(lab, Tensor) else torch.from_numpy(np.asarray(lab, dtype=np.int64))
    return emb, lab


def _blocks(embeddings: Any, labels: Any, block: int = FIT_BLOCK) -> Iterator[tuple[Tensor, Tensor]]:
    """Row blocks of ``_block``."""
    for start in range(0, len(labels), block):
        yield _block(embeddings, labels, start, start + block)


def class_centres(embeddings: Any, labels: Any, num_classes: int,
                  device: torch.device | str | None = None) -> tuple[Tensor, int]:
    """(centres [C, D] on the CPU: normalised mean of each class's normalised embeddings, number of
    empty classes), summed on ``device`` (use the GPU for large sets).

    Empty classes get a random unit centre (they can only be told apart after refinement, if ever).
    """
    device = torch.device(device or "cpu")
    sums: Tensor | None = None
    counts = torch.zeros(num_classes, device=device)
    for emb, lab in _blocks(embeddings, labels):
        if lab.numel() and (int(lab.min()) < 0 or int(lab.max()) >= num_classes):
            raise TeacherError(f"labels must be in [0, {num_classes}) to fit a classifier, found "
                               f"{int(lab.min())}..{int(lab.max())}")
        emb, lab = emb.to(device, non_blocking=True), lab.to(device, non_blocking=True)
        if sums is None:
            sums = torch.zeros(num_classes, emb.shape[1], device=device)
        sums.index_add_(0, lab, F.normalize(emb, dim=1))
        counts += torch.bincount(lab, minlength=num_classes).float()
    if sums is None:
        raise TeacherError("no embeddings to fit a classifier on (empty labeled set)")
    sums, empty = sums.cpu(), (counts == 0).cpu()
    if bool(empty.any()):
        sums[empty] = torch.randn(int(empty.sum()), sums.shape[1], generator=torch.Generator().manual_seed(0))
    return F.normalize(sums, dim=1), int(empty.sum())


def classifier_top1(centres: Tensor, embeddings: Any, labels: Any, device: torch.device | str | None = None,
                    max_rows: int | None = None) -> float:
    """Top-1 accuracy of nearest-centre (max cosine) classification of ``embeddings`` (on ``device``),
    over every row or, with ``max_rows``, over evenly spaced rows (every ceil(M / max_rows)-th)."""
    weight = F.normalize(centres.float(), dim=1).to(device or "cpu")
    correct = total = 0
    stride = max(1, -(-len(labels) // max_rows)) if max_rows else 1
    block = max(1, min(FIT_BLOCK, SCORE_ELEMENTS // max(1, weight.shape[0]))) * stride  # [rows x C] at a time
    for emb, lab in _blocks(embeddings, labels, block):
        emb, lab = emb[::stride].to(weight.device), lab[::stride].to(weight.device)
        pred = (F.normalize(emb, dim=1) @ weight.t()).argmax(dim=1)
        correct += int((pred == lab).sum())
        total += int(lab.numel())
    return correct / max(total, 1)


def refine_centres(centres: Tensor, embeddings: Any, labels: Any, epochs: int, *, scale: float = DEFAULT_SCALE,
                   margin: float = 0.5, lr: float = 0.1, batch_size: int = 1024, seed: int = 0,
                   device: torch.device | str | None = None) -> Tensor:
    """Train the centres alone with an ArcFace loss on fixed embeddings for ``epochs`` passes (on
    ``device``: use the GPU for large sets); returns them normalised, on the CPU."""
    from facekd.models.heads import MarginHead

    head = MarginHead(centres.shape[1], centres.shape[0], s=scale, m1=1.0, m2=margin, m3=0.0)
    head.load_full_weight(centres)
    head.to(device or "cpu")
    opt = torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9)
    gen = torch.Generator().manual_seed(seed)
    n = len(labels)
    starts = list(range(0, n, FIT_BLOCK))
    for _ in range(epochs):
        for b in torch.randperm(len(starts), generator=gen).tolist():
            emb, lab = _block(embeddings, labels, starts[b], starts[b] + FIT_BLOCK)
            emb, lab = emb.to(head.weight.device), lab.to(head.weight.device)
            order = torch.randperm(lab.numel(), generator=gen).to(head.weight.device)
            for i in range(0, lab.numel(), batch_size):
                rows = order[i:i + batch_size]
                opt.zero_grad(set_to_none=True)
                head(emb[rows], lab[rows]).backward()
                opt.step()
    return F.normalize(head.weight.detach().cpu().clone(), dim=1)


# ----------------------------------------------------------------------------------------------
# the teacher

class Teacher(nn.Module):
    """Frozen backbone + critic. Faces: ``embed`` (cache or forward) and ``logits`` = s*cos(W, e)
    without margin; classifiers: ``features`` (map, pooled, logits) and the teacher's own fc as critic.

    ``backbone``: a torch module meeting ``facekd.models.interface`` (``model(x, return_features=True)``) or an
    ``OnnxBackbone``; ``kind``: "face" or "classifier"; ``classifier``: class centres [C, D] (faces;
    None until fitted); ``scale``: s of the face logits (64 as arcface_torch; e.g. 32 on small CPU
    benchmarks); ``online``: never use a cache.
    """

    def __init__(self, backbone: Backbone | OnnxBackbone, kind: str = "face", classifier: Tensor | None = None,
                 scale: float = DEFAULT_SCALE, online: bool = False, name: str = "teacher",
                 fingerprint: str | None = None) -> None:
        super().__init__()
        if kind not in ("face", "classifier"):
            raise TeacherError(f"teacher kind must be 'face' or 'classifier', got {kind!r}")
        self.kind, self.scale, self.online, self.name = kind, float(scale), bool(online), name
        self.amp_dtype: torch.dtype | str | None = "auto"
        """Autocast dtype of forward passes ("auto": float16 on CUDA, off elsewhere; None: off); see ``place``."""
        self.memory_format: torch.memory_format | None = None
        self.backbone = backbone
        self.is_torch = isinstance(backbone, nn.Module)
        if self.is_torch:
            backbone.requires_grad_(False)
            backbone.eval()
        self._fingerprint = fingerprint
        self.cache: TeacherCacheSet | None = None
        self.critic: nn.Module | None = None
        self._centres: Tensor | None = None  # the face centres as given, before the critic normalises them
        if kind == "classifier":
            linear = getattr(backbone, "classifier", None)
            if not isinstance(linear, nn.Linear):
                raise TeacherError(f"{name}: a classification teacher needs a 'classifier' nn.Linear attribute")
            self.critic = LinearCritic(linear)
        elif classifier is not None:
            self.set_classifier(classifier)
        self.train(False)

    # -- state ---------------------------------------------------------------------------------
    def train(self, mode: bool = True) -> "Teacher":
        """Always eval mode: the teacher is frozen (BatchNorm statistics included)."""
        return super().train(False)

    @property
    def embedding_size(self) -> int:
        """D of the face embedding (faces)."""
        return int(self.backbone.embedding_size)

    @property
    def feature_dim(self) -> int:
        """What a student connector maps to: D (faces) or the last map's channels (classifiers)."""
        return self.embedding_size if self.kind == "face" else int(self.backbone.feature_channels)

    @property
    def input_size(self) -> int | None:
        """Side of the square input images the backbone takes."""
        return getattr(self.backbone, "input_size", None)

    @property
    def has_classifier(self) -> bool:
        """Whether a critic is available (faces: loaded or fitted centres)."""
        return self.critic is not None

    @property
    def num_classes(self) -> int:
        """Classes of the critic."""
        if self.critic is None:
            raise TeacherError(f"{self.name} has no classifier yet: load one (--teacher-head) or fit_classifier()")
        return int(self.critic.num_classes)

    @property
    def device(self) -> torch.device:
        """Where the torch parameters live (CPU for ONNX teachers; their outputs follow the input)."""
        for p in self.parameters():
            return p.device
        return torch.device("cpu")

    def place(self, device: torch.device | str, amp_dtype: torch.dtype | str | None = "auto",
              channels_last: bool = False) -> "Teacher":
        """Move the teacher to the run's ``device`` and run its forward passes as training does:
        autocast to ``amp_dtype`` ("auto": float16 on CUDA, off elsewhere; None: off) and channels_last
        when asked."""
        device = torch.device(device)
        self.fingerprint()  # hash the weights as loaded, before any move
        self.to(device)
        self.amp_dtype = amp_dtype
        if channels_last and self.is_torch:
            self.memory_format = torch.channels_last
            self.backbone.to(memory_format=torch.channels_last)
        return self

    def fingerprint(self) -> str:
        """SHA-256 of the backbone weights (state dict, or the ONNX file); ties caches to the weights."""
        if self._fingerprint is None:
            if self.is_torch:
                self._fingerprint = _hash_state(self.backbone)
            else:
                self._fingerprint = _hash_file(Path(self.backbone.path))
        return self._fingerprint

    def set_classifier(self, weight: Tensor) -> None:
        """Use class centres [C, D] as the (face) critic."""
        if self.kind != "face":
            raise TeacherError("a classification teacher uses its own fc layer as the critic")
        if weight.dim() != 2 or weight.shape[1] != self.embedding_size:
            raise TeacherError(f"{self.name}: classifier of shape {list(weight.shape)} does not fit embeddings of "
                               f"size {self.embedding_size}")
        self.critic = CosineCritic(weight, self.scale).to(self.device)
        self._centres = weight.detach().float().cpu().clone()

    def classifier_centres(self) -> Tensor:
        """The face centres as given to ``set_classifier`` (CPU copy): a critic rebuilt from them (a saved
        head on resume, another rank) is bit for bit this one; normalising twice can move the last bit."""
        if self._centres is None:
            raise TeacherError(f"{self.name} has no face classifier to return")
        return self._centres.clone()

    def classifier_weight(self) -> Tensor:
        """The critic's matrix (face centres, normalised, [C, D]) as a detached CPU copy."""
        if self.critic is None:
            raise TeacherError(f"{self.name} has no classifier to return")
        weight = self.critic.weight if isinstance(self.critic, CosineCritic) else self.critic.linear.weight
        return weight.detach().cpu().clone()

    def save_classifier(self, path: str | os.PathLike[str]) -> Path:
        """Write ``{"weight": [C, D], "teacher_sha256": uint8[32]}`` (loadable with ``load_classifier`` /
        ``--teacher-head``; the hash of these teacher weights lets a resume check it)."""
        from facekd.models.weights import save_weights_file

        digest = torch.tensor(list(bytes.fromhex(self.fingerprint())), dtype=torch.uint8)
        return save_weights_file({"weight": self.classifier_centres(), FINGERPRINT_KEY: digest}, path)

    # -- forward passes ------------------------------------------------------------------------
    def _autocast(self, device: torch.device) -> Any:
        dtype = self.amp_dtype
        if dtype == "auto":
            dtype = torch.float16 if device.type == "cuda" else None
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=dtype)

    def _input(self, images: Tensor) -> Tensor:
        x = images.to(self.device if self.is_torch else images.device, non_blocking=True)
        if self.memory_format is not None and x.dim() == 4:
            x = x.contiguous(memory_format=self.memory_format)
        return x

    def embed_images(self, images: Tensor) -> Tensor:
        """float32 embeddings [N, D] of normalised images by a forward pass on the teacher's device
        (no_grad; autocast as set by ``place``: fp16 on CUDA by default)."""
        if self.kind != "face":
            raise TeacherError("embed_images is for face teachers; use features() for classifiers")
        x = self._input(images)
        device = x.device
        with torch.no_grad(), self._autocast(device):
            out = self.backbone(x)
        if isinstance(out, (tuple, list)):
            out = out[0]
        return out.float().to(images.device)

    def attach_cache(self, caches: TeacherCacheSet | None, transform: Any = None) -> bool:
        """Look embeddings up in ``caches`` from now on; returns whether it is used. Not when the
        teacher is ``online`` or ``transform`` has randomness beyond flips (then it runs in the loop)."""
        from facekd.data.transforms import only_flips

        if caches is None or self.online:
            self.cache = None
            if caches is not None:
                log.info("%s: online teacher requested; the feature cache is not used", self.name)
            return False
        if transform is not None and not only_flips(transform):
            log.warning("%s: the training augmentation goes beyond flips; the teacher runs in the loop "
                        "instead of using its feature cache", self.name)
            self.cache = None
            return False
        self.cache = caches
        return True

    def embed(self, images: Tensor, batch: Any = None) -> Tensor:
        """float32 teacher embeddings [N, D] of a batch (no grad): cached rows by (source, index,
        flipped) when a cache is attached and ``batch`` is given, a forward pass for the rest."""
        if self.cache is None or batch is None:
            return self.embed_images(images)
        emb, found = self.cache.lookup(batch)
        if not bool(found.all()):
            missing = torch.nonzero(~found).squeeze(1)
            emb[missing] = self.embed_images(images.index_select(0, missing))
        return emb

    def features(self, images: Tensor) -> Any:
        """The backbone's ``return_features=True`` output (FaceOutput / ClassifierOutput), no grad."""
        if not self.is_torch:
            raise TeacherError(f"{self.name} is an ONNX model: it gives embeddings only, no feature maps")
        with torch.no_grad():
            return self.backbone(self._input(images), return_features=True)

    def logits(self, embeddings: Tensor, centres: Tensor | None = None) -> Tensor:
        """The critic's logits: faces s*cos(W, e) without margin (over ``centres`` when given), float32.

        Gradients flow to ``embeddings`` (cross-network logits), never into W.
        """
        if self.critic is None:
            raise TeacherError(f"{self.name} has no classifier: load one (--teacher-head) or fit_classifier()")
        return self.critic(embeddings, centres)

    def outputs(self, batch: Any, centres: Tensor | None = None) -> TeacherOutput:
        """Everything the distillation losses need of the teacher for one ``Batch`` (the per-step call)."""
        if self.kind == "face":
            return TeacherOutput(embedding=self.embed(batch.images, batch), critic=self.critic, centres=centres)
        out = self.features(batch.images)
        return TeacherOutput(feature_map=out.feature_map, pooled=out.pooled, logits=out.logits,
                             critic=self.critic, centres=centres)

    # -- fitting the classifier ----------------------------------------------------------------
    def embed_dataset(self, dataset: Any, transform: Any = None, *, batch_size: int = 128,
                      workers: int = 0) -> Tensor:
        """float32 embeddings [N, D] of every (unflipped, deterministically transformed) image of a
        dataset, in memory: for small sets without a cache (large sets: fit from the cache)."""
        loader = torch.utils.data.DataLoader(DeterministicRows(dataset, deterministic_transform(transform)),
                                             batch_size=batch_size, num_workers=workers, collate_fn=collate_rows)
        parts = []
        for images, ok in progress(loader, total=len(loader), desc="teacher pass", unit="batch"):
            if not all(ok):
                raise TeacherError(f"{self.name}: corrupt images in the labeled set; build the teacher cache to "
                                   "fit the classifier over the readable ones")
            parts.append(self.embed_images(torch.stack(images)).cpu())
        return torch.cat(parts) if parts else torch.zeros(0, self.embedding_size)

    def fit_classifier(self, embeddings: Any, labels: Any, num_classes: int | None = None, *,
                       refine_epochs: int = 0, margin: float = 0.5, lr: float = 0.1, batch_size: int = 1024,
                       seed: int = 0, device: torch.device | str | None = None) -> dict[str, float]:
        """Fit the face critic from teacher embeddings [M, D] (tensor, array or a cache's memmap) and
        labels [M]; returns (and logs) how well it classifies those embeddings (top-1). Scoring and
        refinement run on ``device`` (default: the teacher's); deterministic on the CPU."""
        device = device if device is not None else self.device
        if self.kind != "face":
            raise TeacherError("only face teachers need a fitted classifier")
        labels = labels if isinstance(labels, Tensor) else np.asarray(labels, dtype=np.int64)
        if len(labels) != len(embeddings):
            raise TeacherError(f"{len(embeddings)} embeddings but {len(labels)} labels")
        if num_classes is None:
            num_classes = int(labels.max()) + 1 if len(labels) else 0
        centres, empty = class_centres(embeddings, labels, num_classes, device)
        report: dict[str, float] = {"num_classes": float(num_classes), "num_samples": float(len(labels)),
                                    "empty_classes": float(empty), "refine_epochs": float(refine_epochs)}
        max_rows = max(4096, SCORE_MACS // max(1, centres.shape[0] * centres.shape[1]))
        stride = max(1, -(-len(labels) // max_rows))
        report["scored_rows"] = float(-(-len(labels) // stride))
        report["top1_centres"] = classifier_top1(centres, embeddings, labels, device, max_rows)
        if refine_epochs > 0:
            centres = refine_centres(centres, embeddings, labels, refine_epochs, scale=self.scale, margin=margin,
                                     lr=lr, batch_size=batch_size, seed=seed, device=device)
        report["top1"] = (classifier_top1(centres, embeddings, labels, device, max_rows) if refine_epochs > 0
                          else report["top1_centres"])
        self.set_classifier(centres)
        log.info("%s: fitted classifier over %d classes from %d embeddings: top-1 on %d of them %.4f (centres "
                 "only %.4f, %d refinement epochs%s)", self.name, num_classes, len(labels), report["scored_rows"],
                 report["top1"], report["top1_centres"], refine_epochs,
                 f", {empty} classes without samples" if empty else "")
        return report

    def fit_classifier_from_cache(self, cache: TeacherCache, labels: Any, num_classes: int | None = None,
                                  **options: Any) -> dict[str, float]:
        """``fit_classifier`` on a labeled-set cache: both the image and the flip of every sample."""
        labels = np.asarray(labels, dtype=np.int64)
        if len(labels) != len(cache):
            raise TeacherError(f"{cache.root}: cache has {len(cache)} rows but {len(labels)} labels were given")
        return self.fit_classifier(cache.flat_rows(), np.repeat(labels, 2), num_classes, **options)

    def extra_repr(self) -> str:
        what = "torch" if self.is_torch else "onnx"
        return (f"kind={self.kind}, backbone={what}, scale={self.scale}, online={self.online}, "
                f"cache={'on' if self.cache is not None else 'off'}")


def require_teacher_weights(weights: str | os.PathLike[str] | None, arch: str | None = None) -> Path:
    """The teacher weights path, or TeacherWeightsMissingError (no file given, or no such file) saying
    where users get one; cheap, so commands call it before anything expensive."""
    if weights is None:
        raise TeacherWeightsMissingError(f"teacher '{arch or '?'}' needs weights (--teacher-weights PATH). "
                                         + TEACHER_WEIGHTS_HELP)
    path = Path(weights)
    if not path.is_file():
        raise TeacherWeightsMissingError(f"{path}: teacher weights file not found (--teacher-weights). "
                                         + TEACHER_WEIGHTS_HELP)
    return path


def load_teacher(weights: str | os.PathLike[str] | None, arch: str | None = None, *,
                 head: str | os.PathLike[str] | None = None, scale: float = DEFAULT_SCALE, online: bool = False,
                 **arch_options: Any) -> Teacher:
    """A ``Teacher`` from users' files: ``weights`` (torch file of any layout ``load_backbone`` reads,
    or ``.onnx``), ``arch`` (registered name; facekd checkpoints and ONNX files name themselves),
    ``head`` (a classifier file; faces only). The classifier comes from ``head``, else from
    ``weights`` when it holds one (arcface_torch checkpoints, facekd checkpoints); else the
    teacher has none and must be fitted (``Teacher.fit_classifier``)."""
    from facekd.models.onnx_backbone import OnnxBackbone
    from facekd.models.registry import backbone_kind
    from facekd.models.weights import load_backbone, load_classifier

    path = require_teacher_weights(weights, arch)
    backbone = load_backbone(arch, path, arch_flag="--teacher", **arch_options)
    kind = "face" if isinstance(backbone, OnnxBackbone) else backbone_kind(backbone.arch)
    if kind == "classifier" and head is not None:
        raise TeacherError(f"{head}: a classification teacher uses the fc layer in its own weights; "
                           "drop --teacher-head")
    classifier = None
    if head is not None:
        classifier = load_classifier(head)
        if classifier is None:
            raise TeacherError(f"{head}: holds no classifier (class centres); expected an arcface_torch "
                               "checkpoint or softmax_fc shard, a facekd checkpoint with a head, or a head file")
    elif kind == "face" and not isinstance(backbone, OnnxBackbone):
        classifier = load_classifier(path)
    name = f"teacher {getattr(backbone, 'arch', 'onnx')} ({path.name})"
    teacher = Teacher(backbone, kind, None, scale=scale, online=online, name=name)
    if classifier is not None:
        if classifier.shape[1] != teacher.embedding_size:
            raise TeacherError(f"{head or path}: classifier of shape {list(classifier.shape)} does not fit the "
                               f"teacher's {teacher.embedding_size}-d embeddings")
        teacher.set_classifier(classifier)
        log.info("%s: classifier over %d classes from %s", name, classifier.shape[0], head or path)
    elif kind == "face":
        log.info("%s: no classifier in the weights; fit one on the labeled set (Teacher.fit_classifier)", name)
    return teacher
