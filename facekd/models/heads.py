"""Classification heads for face training: margin softmax (ArcFace, CosFace, combined), Partial FC
and a plain linear classifier, built by name through a decorator registry.

Every head maps embeddings [N, D] and labels [N] (-1 marks an unlabeled sample) to a scalar loss,
and exposes ``logits(emb, labels=None)`` and ``full_weight()`` so that distillation losses can
use a (teacher's) classifier as a critic without reaching into its parameters.

Margin convention (arcface_torch's CombinedMarginLoss): on the target class the logit is
``s * (cos(m1 * theta + m2) - m3)``; elsewhere ``s * cos(theta)``. All margin math runs in float32
with autocast disabled and cosines clamped to [-1 + COS_EPS, 1 - COS_EPS], so fp16/bf16 inputs
and angles near 0 or pi give finite losses and gradients. Beyond ``theta_max = (pi - m2) / m1``
(where ``m1 * theta + m2`` would pass pi and the margin curve would turn back up) the target
logit continues as ``cos(theta) - (1 + cos(theta_max)) - m3``: continuous at ``theta_max`` and
monotonically decreasing in theta, so a harder sample never gets an easier target.
"""
from __future__ import annotations

import inspect
import math
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "COS_EPS", "HeadError", "UnknownHeadError", "InvalidHeadOptionError", "register_head", "build_head",
    "list_heads", "head_options", "margin_target", "margin_logits", "MarginHead", "PartialFC", "LinearHead",
    "shard_range", "save_full_classifier",
]

COS_EPS = 1e-6
"""Cosines are clamped to [-1 + COS_EPS, 1 - COS_EPS] so that acos and its gradient stay finite."""
INIT_STD = 0.01
"""Class centres start as N(0, INIT_STD) like arcface_torch's."""


class HeadError(ValueError):
    """Inputs a head cannot use (wrong shapes, labels out of range); the message says what is wrong."""


class UnknownHeadError(HeadError):
    """A head name that no builder registered."""


class InvalidHeadOptionError(HeadError):
    """A head option that the named head does not take, or a value it cannot use."""


HeadBuilder = Callable[..., nn.Module]
_HEADS: dict[str, HeadBuilder] = {}


def register_head(name: str) -> Callable[[HeadBuilder], HeadBuilder]:
    """Decorator registering a head builder ``builder(embedding_size, num_classes, **options)``."""
    def wrap(builder: HeadBuilder) -> HeadBuilder:
        if name in _HEADS and _HEADS[name] is not builder:
            raise ValueError(f"head name '{name}' registered twice")
        _HEADS[name] = builder
        return builder
    return wrap


def list_heads() -> list[str]:
    """Registered head names."""
    return sorted(_HEADS)


def head_options(name: str) -> dict[str, Any]:
    """The options a registered head takes, with their defaults."""
    builder = _lookup(name)
    params = list(inspect.signature(builder).parameters.values())[2:]
    return {p.name: p.default for p in params}


def _lookup(name: str) -> HeadBuilder:
    if name not in _HEADS:
        raise UnknownHeadError(f"unknown head '{name}'; known: {', '.join(list_heads())}")
    return _HEADS[name]


def build_head(name: str, embedding_size: int, num_classes: int, **options: Any) -> nn.Module:
    """Build a registered head; unknown options raise an error listing the ones it takes."""
    builder = _lookup(name)
    accepted = head_options(name)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise InvalidHeadOptionError(
            f"head '{name}' takes no option(s) {', '.join(unknown)}; it takes: "
            + ", ".join(f"{k}={v!r}" for k, v in accepted.items()))
    return builder(embedding_size, num_classes, **options)


# ----------------------------------------------------------------------------------------------
# margin math

def margin_target(cos_target: Tensor, m1: float, m2: float, m3: float) -> Tensor:
    """Target-class value ``cos(m1*theta + m2) - m3`` (continued monotonically past theta_max)."""
    if m1 == 1.0 and m2 == 0.0:
        return cos_target - m3
    theta = torch.acos(cos_target)
    theta_max = (math.pi - m2) / m1
    margin_curve = torch.cos(m1 * theta + m2)
    if theta_max >= math.pi:
        return margin_curve - m3
    continued = cos_target - (1.0 + math.cos(theta_max))
    return torch.where(theta <= theta_max, margin_curve, continued) - m3


def margin_logits(cos: Tensor, labels: Tensor | None, s: float, m1: float, m2: float, m3: float) -> Tensor:
    """``s * cos`` with the margin applied at (i, labels[i]) for rows with labels[i] >= 0."""
    logits = cos
    if labels is not None:
        rows = torch.nonzero(labels >= 0).squeeze(1)
        if rows.numel():
            cols = labels[rows]
            logits = cos.index_put((rows, cols), margin_target(cos[rows, cols], m1, m2, m3))
    return logits * s


def _normalised_cosine(emb: Tensor, weight: Tensor) -> Tensor:
    """Clamped cosine between rows of ``emb`` and rows of ``weight``, in float32."""
    cos = F.linear(F.normalize(emb.float(), dim=1), F.normalize(weight.float(), dim=1))
    return cos.clamp(-1.0 + COS_EPS, 1.0 - COS_EPS)


def _no_autocast(t: Tensor) -> torch.autocast:
    return torch.autocast(device_type=t.device.type, enabled=False)


def _check_embeddings(emb: Tensor, embedding_size: int, what: str) -> None:
    if emb.dim() != 2 or emb.shape[1] != embedding_size:
        raise HeadError(f"{what} expects embeddings [N, {embedding_size}], got shape {list(emb.shape)}")


def _check_labels(labels: Tensor, emb: Tensor, num_classes: int, what: str) -> None:
    if labels.dim() != 1 or labels.shape[0] != emb.shape[0]:
        raise HeadError(f"{what} expects labels [{emb.shape[0]}], got shape {list(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise HeadError(f"{what} expects integer class labels, got dtype {labels.dtype}")
    if labels.numel() and int(labels.max()) >= num_classes:
        raise HeadError(f"{what}: label {int(labels.max())} out of range for {num_classes} classes "
                        "(labels are 0..num_classes-1, or -1 for unlabeled samples)")


def _labeled_cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean cross-entropy over rows with a label >= 0; a zero that still has a graph when there are none."""
    labeled = labels >= 0
    if not bool(labeled.any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits[labeled], labels[labeled])


def _init_centres(num_classes: int, embedding_size: int) -> nn.Parameter:
    return nn.Parameter(torch.normal(0.0, INIT_STD, (num_classes, embedding_size)))


def _check_sizes(embedding_size: int, num_classes: int) -> None:
    for option, value in (("embedding_size", embedding_size), ("num_classes", num_classes)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidHeadOptionError(f"{option} must be a positive integer, got {value!r}")


def _check_margins(s: float, m1: float) -> None:
    if not s > 0:
        raise InvalidHeadOptionError(f"scale s must be positive, got {s!r}")
    if not m1 > 0:
        raise InvalidHeadOptionError(f"multiplicative margin m1 must be positive, got {m1!r}")


# ----------------------------------------------------------------------------------------------
# heads

class MarginHead(nn.Module):
    """Margin softmax over all classes (ArcFace, CosFace or any combined margin); one process."""

    def __init__(self, embedding_size: int, num_classes: int, s: float = 64.0,
                 m1: float = 1.0, m2: float = 0.5, m3: float = 0.0) -> None:
        super().__init__()
        _check_sizes(embedding_size, num_classes)
        _check_margins(s, m1)
        self.embedding_size, self.num_classes = embedding_size, num_classes
        self.s, self.m1, self.m2, self.m3 = float(s), float(m1), float(m2), float(m3)
        self.weight = _init_centres(num_classes, embedding_size)
        self.last_sample: Tensor | None = None  # every class is used each step

    def cosine(self, emb: Tensor) -> Tensor:
        """Cosine [N, C] between the embeddings and every class centre (float32)."""
        _check_embeddings(emb, self.embedding_size, type(self).__name__)
        with _no_autocast(emb):
            return _normalised_cosine(emb, self.weight)

    def logits(self, emb: Tensor, labels: Tensor | None = None) -> Tensor:
        """Scaled logits [N, C]; the margin goes on the target class of rows with a label >= 0."""
        cos = self.cosine(emb)
        if labels is not None:
            _check_labels(labels, emb, self.num_classes, type(self).__name__)
        with _no_autocast(emb):
            return margin_logits(cos, labels, self.s, self.m1, self.m2, self.m3)

    def forward(self, emb: Tensor, labels: Tensor) -> Tensor:
        """Mean margin cross-entropy over the labeled rows (0 with a graph when none is labeled)."""
        return _labeled_cross_entropy(self.logits(emb, labels), labels)

    def full_weight(self) -> Tensor:
        """The class centres [C, D] (a detached copy)."""
        return self.weight.detach().clone()

    def load_full_weight(self, weight: Tensor) -> None:
        """Copy a full [C, D] classifier into this head."""
        _copy_weight(self.weight, weight, 0)

    def extra_repr(self) -> str:
        return (f"embedding_size={self.embedding_size}, num_classes={self.num_classes}, s={self.s}, "
                f"m=({self.m1}, {self.m2}, {self.m3})")


class LinearHead(nn.Module):
    """A plain linear classifier (``weight`` [C, D], optional ``bias``) trained with cross-entropy."""

    def __init__(self, embedding_size: int, num_classes: int, bias: bool = True) -> None:
        super().__init__()
        _check_sizes(embedding_size, num_classes)
        self.embedding_size, self.num_classes = embedding_size, num_classes
        init = nn.Linear(embedding_size, num_classes, bias=bias)  # nn.Linear's default initialisation
        self.weight = init.weight
        self.bias = init.bias
        self.last_sample: Tensor | None = None

    def logits(self, emb: Tensor, labels: Tensor | None = None) -> Tensor:
        """Logits [N, C] in float32; ``labels`` is accepted for interface parity and ignored."""
        _check_embeddings(emb, self.embedding_size, type(self).__name__)
        with _no_autocast(emb):
            return F.linear(emb.float(), self.weight.float(), None if self.bias is None else self.bias.float())

    def forward(self, emb: Tensor, labels: Tensor) -> Tensor:
        """Mean cross-entropy over the labeled rows."""
        _check_labels(labels, emb, self.num_classes, type(self).__name__)
        return _labeled_cross_entropy(self.logits(emb), labels)

    def full_weight(self) -> Tensor:
        """The classifier matrix [C, D] (a detached copy)."""
        return self.weight.detach().clone()

    def load_full_weight(self, weight: Tensor) -> None:
        """Copy a full [C, D] classifier matrix into this head (the bias is left unchanged)."""
        _copy_weight(self.weight, weight, 0)


# ----------------------------------------------------------------------------------------------
# Partial FC

def shard_range(num_classes: int, world_size: int, rank: int) -> tuple[int, int]:
    """(class_start, num_local) of ``rank``'s contiguous shard of ``num_classes`` class centres."""
    base, extra = divmod(num_classes, world_size)
    return base * rank + min(rank, extra), base + int(rank < extra)


def _group_rank_world(group: Any) -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(group), dist.get_world_size(group)
    if group is not None:
        raise HeadError("a process_group was given but torch.distributed is not initialised")
    return 0, 1


def _gather_sizes(n: int, device: torch.device, group: Any, world: int) -> list[int]:
    size = torch.tensor([n], dtype=torch.long, device=device)
    sizes = [torch.empty_like(size) for _ in range(world)]
    dist.all_gather(sizes, size, group=group)
    return [int(s) for s in sizes]


def _gather_rows(t: Tensor, sizes: list[int], group: Any) -> Tensor:
    """Concatenate every rank's ``t`` (rows may differ in number) in rank order; no autograd."""
    pad = max(sizes) - t.shape[0]
    padded = torch.cat([t, t.new_zeros((pad, *t.shape[1:]))]) if pad else t.contiguous()
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded, group=group)
    return torch.cat([p[:n] for p, n in zip(parts, sizes)])


class _GatherEmbeddings(torch.autograd.Function):
    """All-gather of row blocks whose backward sums every rank's gradient and returns this rank's rows.

    Each rank's loss is the same global scalar, but each rank only differentiates through its own
    shard of class centres; the sum over ranks is the full gradient of each embedding.
    """

    @staticmethod
    def forward(ctx: Any, local: Tensor, sizes: list[int], rank: int, group: Any) -> Tensor:
        ctx.sizes, ctx.rank, ctx.group = sizes, rank, group
        return _gather_rows(local, sizes, group)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None, None]:
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        start = sum(ctx.sizes[:ctx.rank])
        return grad[start:start + ctx.sizes[ctx.rank]], None, None, None


class _ShardedSoftmaxCrossEntropy(torch.autograd.Function):
    """Softmax cross-entropy whose classes are split over ranks (logits: this rank's columns).

    ``target`` holds each row's column in this shard (-1 when its class lives elsewhere);
    ``labeled`` marks the rows that count. Max, normaliser and target logit are all-reduced, so
    the mean loss is identical on every rank; the backward returns this shard's exact gradient.
    """

    @staticmethod
    def forward(ctx: Any, logits: Tensor, target: Tensor, labeled: Tensor, group: Any, world: int) -> Tensor:
        logits = logits.float()
        row_max = logits.max(dim=1, keepdim=True).values
        if world > 1:
            dist.all_reduce(row_max, op=dist.ReduceOp.MAX, group=group)
        exp = torch.exp(logits - row_max)
        norm = exp.sum(dim=1, keepdim=True)
        here = torch.nonzero(target >= 0).squeeze(1)
        target_logit = torch.zeros(logits.shape[0], dtype=logits.dtype, device=logits.device)
        target_logit[here] = logits[here, target[here]]
        if world > 1:
            dist.all_reduce(norm, op=dist.ReduceOp.SUM, group=group)
            dist.all_reduce(target_logit, op=dist.ReduceOp.SUM, group=group)
        per_row = torch.log(norm.squeeze(1)) + row_max.squeeze(1) - target_logit
        count = int(labeled.sum())
        ctx.count = count
        ctx.save_for_backward(exp / norm, target, labeled)
        if count == 0:
            return per_row.new_zeros(())
        return per_row[labeled].sum() / count

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None, None, None]:
        prob, target, labeled = ctx.saved_tensors
        if ctx.count == 0:
            return torch.zeros_like(prob), None, None, None, None
        g = prob.clone()
        here = torch.nonzero(target >= 0).squeeze(1)
        g[here, target[here]] -= 1.0
        g = g * labeled.unsqueeze(1).to(g.dtype) * (grad / ctx.count)
        return g, None, None, None, None


class PartialFC(nn.Module):
    """Margin softmax with class centres sharded over ranks and negatives sampled each step.

    With torch.distributed initialised, rank r holds classes [class_start, class_start + num_local);
    ``forward(local_emb, local_labels)`` gathers the global batch, keeps every positive centre of
    that batch in this shard plus random negatives up to ``sample_rate * num_local``, and returns
    the global mean loss (the same on every rank). In one process it is the same code, world size 1.
    ``state_dict()`` holds only this rank's shard; ``full_weight()`` gathers the whole matrix.
    Do not wrap it in DistributedDataParallel: its parameters differ per rank by design.
    """

    def __init__(self, embedding_size: int, num_classes: int, s: float = 64.0, m1: float = 1.0,
                 m2: float = 0.5, m3: float = 0.0, sample_rate: float = 1.0, process_group: Any = None) -> None:
        super().__init__()
        _check_sizes(embedding_size, num_classes)
        _check_margins(s, m1)
        if not 0.0 < sample_rate <= 1.0:
            raise InvalidHeadOptionError(f"sample_rate must be in (0, 1], got {sample_rate!r}")
        self.rank, self.world_size = _group_rank_world(process_group)
        if num_classes < self.world_size:
            raise InvalidHeadOptionError(
                f"Partial FC needs at least one class per rank: {num_classes} classes over {self.world_size} ranks")
        self.process_group = process_group
        self.embedding_size, self.num_classes = embedding_size, num_classes
        self.s, self.m1, self.m2, self.m3 = float(s), float(m1), float(m2), float(m3)
        self.sample_rate = float(sample_rate)
        self.class_start, self.num_local = shard_range(num_classes, self.world_size, self.rank)
        self.num_sample = max(1, int(self.sample_rate * self.num_local))
        self.weight = _init_centres(self.num_local, embedding_size)
        self.last_sample: Tensor | None = None
        """Global class ids of this rank's centres used in the last forward (sorted)."""

    @property
    def distributed(self) -> bool:
        """True when the centres are split over more than one rank."""
        return self.world_size > 1

    def sample(self, labels: Tensor) -> tuple[Tensor, Tensor]:
        """(local indices of the centres to use, each row's column among them or -1) for global labels."""
        local = labels - self.class_start
        mine = (labels >= 0) & (local >= 0) & (local < self.num_local)
        positives = torch.unique(local[mine])
        if self.num_sample >= self.num_local:
            index = torch.arange(self.num_local, device=labels.device)
        elif positives.numel() >= self.num_sample:
            index = positives
        else:
            scores = torch.rand(self.num_local, device=labels.device)
            scores[positives] = 2.0  # above any uniform draw: every positive is kept
            index = torch.topk(scores, self.num_sample).indices.sort().values
        column = torch.full_like(labels, -1)
        column[mine] = torch.searchsorted(index, local[mine])
        return index, column

    def cosine(self, emb: Tensor) -> Tensor:
        """Cosine [N, num_local] between embeddings and this rank's centres (no gathering, float32)."""
        _check_embeddings(emb, self.embedding_size, type(self).__name__)
        with _no_autocast(emb):
            return _normalised_cosine(emb, self.weight)

    def logits(self, emb: Tensor, labels: Tensor | None = None) -> Tensor:
        """Scaled logits [N, num_local] over this rank's shard (all classes in one process)."""
        cos = self.cosine(emb)
        column = None
        if labels is not None:
            _check_labels(labels, emb, self.num_classes, type(self).__name__)
            local = labels - self.class_start
            column = torch.where((labels >= 0) & (local >= 0) & (local < self.num_local), local,
                                 torch.full_like(labels, -1))
        with _no_autocast(emb):
            return margin_logits(cos, column, self.s, self.m1, self.m2, self.m3)

    def forward(self, local_emb: Tensor, local_labels: Tensor) -> Tensor:
        """Global mean margin cross-entropy over labeled rows of the whole (all-rank) batch."""
        _check_embeddings(local_emb, self.embedding_size, type(self).__name__)
        _check_labels(local_labels, local_emb, self.num_classes, type(self).__name__)
        if self.distributed:
            sizes = _gather_sizes(local_emb.shape[0], local_emb.device, self.process_group, self.world_size)
            emb = _GatherEmbeddings.apply(local_emb, sizes, self.rank, self.process_group)
            labels = _gather_rows(local_labels, sizes, self.process_group)
        else:
            emb, labels = local_emb, local_labels
        index, column = self.sample(labels)
        self.last_sample = index + self.class_start
        with _no_autocast(emb):
            cos = _normalised_cosine(emb, self.weight[index])
            logits = margin_logits(cos, column, self.s, self.m1, self.m2, self.m3)
            return _ShardedSoftmaxCrossEntropy.apply(logits, column, labels >= 0, self.process_group,
                                                     self.world_size)

    @torch.no_grad()
    def all_last_samples(self) -> Tensor:
        """Global class ids used in the last forward on all ranks (collective: call on every rank)."""
        if self.last_sample is None:
            raise HeadError("PartialFC.all_last_samples() called before any forward")
        if not self.distributed:
            return self.last_sample.clone()
        sizes = _gather_sizes(self.last_sample.shape[0], self.last_sample.device, self.process_group,
                              self.world_size)
        return _gather_rows(self.last_sample, sizes, self.process_group)

    @torch.no_grad()
    def full_weight(self) -> Tensor:
        """The whole [C, D] centre matrix on every rank, no grad (collective when distributed)."""
        local = self.weight.detach()
        if not self.distributed:
            return local.clone()
        sizes = [shard_range(self.num_classes, self.world_size, r)[1] for r in range(self.world_size)]
        return _gather_rows(local.contiguous(), sizes, self.process_group)

    @torch.no_grad()
    def load_full_weight(self, weight: Tensor) -> None:
        """Copy this rank's rows of a full [C, D] classifier into the local shard."""
        _copy_weight(self.weight, weight, self.class_start)

    def full_state_dict(self) -> dict[str, Tensor]:
        """``{"weight": [C, D]}``, loadable into a MarginHead (collective when distributed)."""
        return {"weight": self.full_weight()}

    def extra_repr(self) -> str:
        return (f"embedding_size={self.embedding_size}, num_classes={self.num_classes}, s={self.s}, "
                f"m=({self.m1}, {self.m2}, {self.m3}), sample_rate={self.sample_rate}, "
                f"rank={self.rank}/{self.world_size}, classes=[{self.class_start}, "
                f"{self.class_start + self.num_local})")


@torch.no_grad()
def _copy_weight(param: Tensor, full: Tensor, start: int) -> None:
    rows = param.shape[0]
    if full.dim() != 2 or full.shape[1] != param.shape[1] or full.shape[0] < start + rows:
        raise HeadError(f"classifier of shape {list(full.shape)} does not fit this head "
                        f"(needs [>= {start + rows}, {param.shape[1]}])")
    param.copy_(full[start:start + rows].to(param.dtype))


def save_full_classifier(head: nn.Module, path: str | Path) -> Path | None:
    """Gather the whole classifier and write ``{"weight": [C, D]}`` from rank 0 (collective).

    Returns the path on rank 0 and None on the other ranks.
    """
    from facekd.models.weights import save_weights_file

    weight = head.full_weight()
    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    if rank != 0:
        return None
    return save_weights_file({"weight": weight.cpu()}, path)


# ----------------------------------------------------------------------------------------------
# registered heads

def _margin_head(embedding_size: int, num_classes: int, s: float, m1: float, m2: float, m3: float,
                 sample_rate: float, partial_fc: bool, process_group: Any) -> nn.Module:
    if sample_rate < 1.0 or partial_fc:
        return PartialFC(embedding_size, num_classes, s, m1, m2, m3, sample_rate, process_group)
    if process_group is not None:
        raise InvalidHeadOptionError("process_group is only used by Partial FC (partial_fc=True or sample_rate < 1)")
    return MarginHead(embedding_size, num_classes, s, m1, m2, m3)


@register_head("arcface")
def build_arcface(embedding_size: int, num_classes: int, s: float = 64.0, margin: float = 0.5,
                  sample_rate: float = 1.0, partial_fc: bool = False, process_group: Any = None) -> nn.Module:
    """ArcFace, additive angular margin: m = (1, margin, 0); Partial FC when sample_rate < 1 or partial_fc."""
    return _margin_head(embedding_size, num_classes, s, 1.0, margin, 0.0, sample_rate, partial_fc, process_group)


@register_head("cosface")
def build_cosface(embedding_size: int, num_classes: int, s: float = 64.0, margin: float = 0.4,
                  sample_rate: float = 1.0, partial_fc: bool = False, process_group: Any = None) -> nn.Module:
    """CosFace, additive cosine margin: m = (1, 0, margin); Partial FC when sample_rate < 1 or partial_fc."""
    return _margin_head(embedding_size, num_classes, s, 1.0, 0.0, margin, sample_rate, partial_fc, process_group)


@register_head("combined")
def build_combined(embedding_size: int, num_classes: int, s: float = 64.0, m1: float = 1.0, m2: float = 0.5,
                   m3: float = 0.0, sample_rate: float = 1.0, partial_fc: bool = False,
                   process_group: Any = None) -> nn.Module:
    """Any combined margin s*(cos(m1*theta + m2) - m3); Partial FC when sample_rate < 1 or partial_fc."""
    return _margin_head(embedding_size, num_classes, s, m1, m2, m3, sample_rate, partial_fc, process_group)


@register_head("linear")
def build_linear(embedding_size: int, num_classes: int, bias: bool = True) -> nn.Module:
    """A plain nn.Linear classifier with cross-entropy (classification students, baselines)."""
    return LinearHead(embedding_size, num_classes, bias=bias)
