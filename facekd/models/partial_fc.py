"""Partial FC: margin softmax with class centres sharded over ranks and negatives sampled each step.

arcface_torch's PartialFC v2 in one module: rank r holds a contiguous block of class centres
(``shard_range``), the global batch is all-gathered (``_GatherEmbeddings`` sums the embedding
gradients back), and a sharded softmax cross-entropy all-reduces max, normaliser and target logit
so every rank returns the same global loss. In one process it is the same code with world size 1.
The margin math is ``facekd.models.margin``'s; built through the ``arcface``/``cosface``/``combined``
heads of ``facekd.models.heads`` with ``sample_rate < 1`` or ``partial_fc=True``.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from facekd.engine.distributed import gather_rows
from facekd.models.margin import (
    HeadError, InvalidHeadOptionError, check_embeddings, check_labels, check_margins, check_sizes, copy_weight,
    init_centres, margin_logits, no_autocast, normalised_cosine,
)

__all__ = ["PartialFC", "shard_range"]


def shard_range(num_classes: int, world_size: int, rank: int) -> tuple[int, int]:
    """(class_start, num_local) of ``rank``'s contiguous shard of ``num_classes`` class centres."""
    base, extra = divmod(num_classes, world_size)
    return base * rank + min(rank, extra), base + int(rank < extra)


def _group_rank_world(group: Any) -> tuple[int, int]:
    """(rank, world size) in ``group``; (0, 1) without torch.distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(group), dist.get_world_size(group)
    if group is not None:
        raise HeadError("a process_group was given but torch.distributed is not initialised")
    return 0, 1


def _gather_sizes(n: int, device: torch.device, group: Any, world: int) -> list[int]:
    """Every rank's ``n`` in rank order (collective)."""
    size = torch.tensor([n], dtype=torch.long, device=device)
    sizes = [torch.empty_like(size) for _ in range(world)]
    dist.all_gather(sizes, size, group=group)
    return [int(s) for s in sizes]


class _GatherEmbeddings(torch.autograd.Function):
    """All-gather of row blocks whose backward sums every rank's gradient and returns this rank's rows.

    Each rank's loss is the same global scalar, but each rank only differentiates through its own
    shard of class centres; the sum over ranks is the full gradient of each embedding.
    """

    @staticmethod
    def forward(ctx: Any, local: Tensor, sizes: list[int], rank: int, group: Any) -> Tensor:
        ctx.sizes, ctx.rank, ctx.group = sizes, rank, group
        return gather_rows(local, sizes, group)

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
        check_sizes(embedding_size, num_classes)
        check_margins(s, m1)
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
        self.weight = init_centres(self.num_local, embedding_size)
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
        check_embeddings(emb, self.embedding_size, type(self).__name__)
        with no_autocast(emb):
            return normalised_cosine(emb, self.weight)

    def logits(self, emb: Tensor, labels: Tensor | None = None) -> Tensor:
        """Scaled logits [N, num_local] over this rank's shard (all classes in one process)."""
        cos = self.cosine(emb)
        column = None
        if labels is not None:
            check_labels(labels, emb, self.num_classes, type(self).__name__)
            local = labels - self.class_start
            column = torch.where((labels >= 0) & (local >= 0) & (local < self.num_local), local,
                                 torch.full_like(labels, -1))
        with no_autocast(emb):
            return margin_logits(cos, column, self.s, self.m1, self.m2, self.m3)

    def forward(self, local_emb: Tensor, local_labels: Tensor) -> Tensor:
        """Global mean margin cross-entropy over labeled rows of the whole (all-rank) batch."""
        check_embeddings(local_emb, self.embedding_size, type(self).__name__)
        check_labels(local_labels, local_emb, self.num_classes, type(self).__name__)
        if self.distributed:
            sizes = _gather_sizes(local_emb.shape[0], local_emb.device, self.process_group, self.world_size)
            emb = _GatherEmbeddings.apply(local_emb, sizes, self.rank, self.process_group)
            labels = gather_rows(local_labels, sizes, self.process_group)
        else:
            emb, labels = local_emb, local_labels
        index, column = self.sample(labels)
        self.last_sample = index + self.class_start
        with no_autocast(emb):
            cos = normalised_cosine(emb, self.weight[index])
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
        return gather_rows(self.last_sample, sizes, self.process_group)

    @torch.no_grad()
    def full_weight(self) -> Tensor:
        """The whole [C, D] centre matrix on every rank, no grad (collective when distributed)."""
        local = self.weight.detach()
        if not self.distributed:
            return local.clone()
        sizes = [shard_range(self.num_classes, self.world_size, r)[1] for r in range(self.world_size)]
        return gather_rows(local.contiguous(), sizes, self.process_group)

    @torch.no_grad()
    def load_full_weight(self, weight: Tensor) -> None:
        """Copy this rank's rows of a full [C, D] classifier into the local shard."""
        copy_weight(self.weight, weight, self.class_start)

    def full_state_dict(self) -> dict[str, Tensor]:
        """``{"weight": [C, D]}``, loadable into a MarginHead (collective when distributed)."""
        return {"weight": self.full_weight()}

    def extra_repr(self) -> str:
        return (f"embedding_size={self.embedding_size}, num_classes={self.num_classes}, s={self.s}, "
                f"m=({self.m1}, {self.m2}, {self.m3}), sample_rate={self.sample_rate}, "
                f"rank={self.rank}/{self.world_size}, classes=[{self.class_start}, "
                f"{self.class_start + self.num_local})")
