"""Connectors: the small trainable maps from the student's representation into the teacher's.

They belong to the loss that uses them (trained with the student, saved in its checkpoints, used
only at training time). Two shapes, as SRD uses them:

* ``EmbeddingConnector``: Linear(D_s -> D_t, no bias) + BatchNorm1d(D_t), for face embeddings
  (no ReLU: embeddings take both signs);
* ``MapConnector``: Conv1x1(C_s -> C_t, no bias) + BatchNorm2d(C_t) + ReLU on a spatial feature
  map, the published SRD/SRRL connector for classification (teacher maps are post-ReLU).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from facekd.models.interface import Backbone
from facekd.registry import Registry

__all__ = ["EmbeddingConnector", "AngleConnector", "MapConnector", "ConnectorError", "feature_dim",
           "build_embedding_connector", "EMBEDDING_CONNECTORS"]


class ConnectorError(ValueError):
    """A connector asked for impossible sizes or fed a tensor of the wrong shape."""


def _check_dims(what: str, in_dim: int, out_dim: int) -> None:
    for name, value in (("input size", in_dim), ("output size", out_dim)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConnectorError(f"{what}: {name} must be a positive integer, got {value!r}")


class EmbeddingConnector(nn.Module):
    """phi(e) = BN1d(Linear(e)): maps a student embedding [N, D_s] to the teacher's space [N, D_t]."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        _check_dims(type(self).__name__, in_dim, out_dim)
        self.in_dim, self.out_dim = in_dim, out_dim
        self.linear = nn.Linear(in_dim, out_dim, bias=False)  # the BN's shift makes a bias redundant
        self.bn = nn.BatchNorm1d(out_dim)

    def forward(self, x: Tensor) -> Tensor:
        """[N, D_s] -> [N, D_t]."""
        if x.dim() != 2 or x.shape[1] != self.in_dim:
            raise ConnectorError(f"{type(self).__name__} expects [N, {self.in_dim}], got {list(x.shape)}")
        return self.bn(self.linear(x))


class AngleConnector(nn.Module):
    """phi(e) = Q e/|e| with Q [D_t, D_s] semi-orthogonal (orthonormal columns when D_t >= D_s).

    Q preserves inner products, so cos(phi(a), phi(b)) = cos(a, b): whatever the critic teaches about
    angles in the teacher's space holds for the student's own embedding, which is what verification
    compares. A Linear + BatchNorm connector does not: BN removes the batch mean and rescales each
    dimension, so the student's embedding can carry a large common offset or badly scaled
    directions that the critic never sees (seen as a collapsed student at chance level).
    """

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        _check_dims(type(self).__name__, in_dim, out_dim)
        self.in_dim, self.out_dim = in_dim, out_dim
        # Q is the orthonormal factor of a free matrix A (QR), so Q does not change with the scale of A
        # and weight decay cannot break it (torch's orthogonal parametrisation keeps signs on A's
        # diagonal that weight decay shrinks to zero, which zeroes its columns).
        self.weight = nn.Parameter(torch.empty(max(in_dim, out_dim), min(in_dim, out_dim)))
        nn.init.orthogonal_(self.weight)

    def matrix(self) -> Tensor:
        """Q [D_t, D_s]: orthonormal columns (D_t >= D_s) or rows (D_t < D_s)."""
        q, r = torch.linalg.qr(self.weight.float())
        q = q * torch.sign(torch.diagonal(r)).masked_fill(torch.diagonal(r) == 0, 1.0)  # unique: diag(R) > 0
        return q if self.out_dim >= self.in_dim else q.t()

    def forward(self, x: Tensor) -> Tensor:
        """[N, D_s] -> [N, D_t], unit rows."""
        if x.dim() != 2 or x.shape[1] != self.in_dim:
            raise ConnectorError(f"{type(self).__name__} expects [N, {self.in_dim}], got {list(x.shape)}")
        with torch.autocast(device_type=x.device.type, enabled=False):
            return nn.functional.normalize(x.float(), dim=1) @ self.matrix().t()


EMBEDDING_CONNECTORS: Registry[type[nn.Module]] = Registry("connector", error=ConnectorError)
"""Connectors for face embeddings by option name (``connector=`` of the face losses)."""
EMBEDDING_CONNECTORS.add("bn", EmbeddingConnector)
EMBEDDING_CONNECTORS.add("angle", AngleConnector)


def build_embedding_connector(name: str, in_dim: int, out_dim: int) -> nn.Module:
    """An embedding connector by name ('bn': Linear + BN1d; 'angle': semi-orthogonal on unit vectors)."""
    return EMBEDDING_CONNECTORS.get(name)(in_dim, out_dim)


class MapConnector(nn.Module):
    """phi(F) = ReLU(BN2d(Conv1x1(F))): maps a student feature map [N, C_s, h, w] to [N, C_t, h, w]."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        _check_dims(type(self).__name__, in_channels, out_channels)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU()
        # He initialisation with fan-out (k*k*C_out), BN at identity: as the SRD/SRRL authors' code
        nn.init.normal_(self.conv.weight, 0.0, math.sqrt(2.0 / out_channels))
        nn.init.ones_(self.bn.weight)
        nn.init.zeros_(self.bn.bias)

    def forward(self, x: Tensor) -> Tensor:
        """[N, C_s, h, w] -> [N, C_t, h, w]."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ConnectorError(f"{type(self).__name__} expects [N, {self.in_channels}, h, w], got {list(x.shape)}")
        return self.relu(self.bn(self.conv(x)))


def feature_dim(model: Backbone, kind: str) -> int:
    """Size of the representation a connector reads: ``embedding_size`` for face models,
    ``feature_channels`` (last map / pooled feature) for classifiers."""
    attr = "embedding_size" if kind == "face" else "feature_channels"
    value = getattr(model, attr, None)
    if not isinstance(value, int):
        raise ConnectorError(f"{type(model).__name__} has no integer '{attr}' attribute; cannot size a connector")
    return value
