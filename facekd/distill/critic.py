"""The teacher's classifier as a *semantic critic*: frozen (never trained, ``requires_grad`` off)
but not detached, so logits computed from a student's features pass gradients back to them.

* ``CosineCritic``: face classifiers, logits ``s * cos(W, e)`` without margin (unlabeled images
  have no label to put a margin on), optionally over a subset of class centres;
  ``matching_mse`` gives the MSE of two sets of such logits over *all* C classes without forming
  them: ``s^2/C * d^T (W^T W) d`` per row with d the difference of the unit vectors, D^2 work per
  row instead of C*D (at MS1M's 93k classes and D=512 that is 180x less), exact up to rounding;
* ``LinearCritic``: classification heads, logits ``W x + b`` (shares the teacher's nn.Linear).
"""
from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["CosineCritic", "LinearCritic", "CriticError", "DEFAULT_SCALE"]

DEFAULT_SCALE = 64.0
"""Scale s of face logits, as arcface_torch trains with; small CPU benchmarks may prefer 32."""


class CriticError(ValueError):
    """Features or centre indices a critic cannot use."""


def _frozen(t: Tensor) -> nn.Parameter:
    return nn.Parameter(t.detach().float().clone(), requires_grad=False)


def _check(features: Tensor, dim: int, what: str) -> None:
    if features.dim() != 2 or features.shape[1] != dim:
        raise CriticError(f"{what} expects features [N, {dim}], got {list(features.shape)}")


def _check_centres(centres: Tensor, num_classes: int) -> None:
    """A 1-D integer tensor; its range is checked only on the CPU (on a GPU that check would wait
    for the device every step; an out-of-range id there fails in ``index_select`` instead)."""
    bad = centres.dim() != 1 or centres.is_floating_point()
    if not bad and centres.device.type == "cpu" and centres.numel():
        bad = int(centres.min()) < 0 or int(centres.max()) >= num_classes
    if bad:
        raise CriticError(f"centres must be a 1-D tensor of class ids in [0, {num_classes}), got "
                          f"shape {list(centres.shape)}")


class CosineCritic(nn.Module):
    """``s * cos(W, e)`` for class centres W [C, D] (float32, autocast off); rows of W are normalised once."""

    def __init__(self, weight: Tensor, scale: float = DEFAULT_SCALE) -> None:
        super().__init__()
        if weight.dim() != 2 or weight.shape[0] < 1:
            raise CriticError(f"class centres must be a [C, D] matrix, got {list(weight.shape)}")
        if not scale > 0:
            raise CriticError(f"scale s must be positive, got {scale!r}")
        self.weight = _frozen(F.normalize(weight.float(), dim=1))
        self.scale = float(scale)
        self._selected: tuple[weakref.ref, int, int, Tensor] | None = None  # (centres, versions, rows)
        self._gram: tuple[int, torch.device, Tensor] | None = None  # (weight version, device, W^T W)

    @property
    def num_classes(self) -> int:
        """C."""
        return int(self.weight.shape[0])

    @property
    def in_features(self) -> int:
        """D."""
        return int(self.weight.shape[1])

    def forward(self, features: Tensor, centres: Tensor | None = None) -> Tensor:
        """Logits [N, C] (or [N, len(centres)] over the centres with those class ids)."""
        _check(features, self.in_features, type(self).__name__)
        weight = self.weight
        if centres is not None:
            _check_centres(centres, self.num_classes)
            weight = self._rows(centres)
        with torch.autocast(device_type=features.device.type, enabled=False):
            return F.linear(F.normalize(features.float(), dim=1), weight) * self.scale

    def gram(self) -> Tensor:
        """``W^T W`` [D, D] in float32 (the critic is frozen: computed once, again only if W changes)."""
        memo = self._gram
        if memo is not None and memo[0] == self.weight._version and memo[1] == self.weight.device:
            return memo[2]
        with torch.no_grad(), torch.autocast(device_type=self.weight.device.type, enabled=False):
            gram = self.weight.t() @ self.weight
        self._gram = (self.weight._version, self.weight.device, gram)
        return gram

    def matching_mse(self, features: Tensor, targets: Tensor) -> Tensor:
        """``mean over rows x all C classes of (s cos(w_c, f) - s cos(w_c, t))^2`` for student
        ``features`` (gradients kept) and teacher ``targets`` [N, D], computed as
        ``s^2 / C * mean_i d_i^T (W^T W) d_i`` with ``d = f/|f| - t/|t|`` (no [N, C] logits)."""
        _check(features, self.in_features, type(self).__name__)
        _check(targets, self.in_features, type(self).__name__)
        with torch.autocast(device_type=features.device.type, enabled=False):
            diff = F.normalize(features.float(), dim=1) - F.normalize(targets.detach().float(), dim=1)
            quad = ((diff @ self.gram()) * diff).sum(dim=1)
            return quad.mean() * (self.scale * self.scale / self.num_classes)

    def _rows(self, centres: Tensor) -> Tensor:
        """``weight[centres]``, selected once per centres tensor (a step scores teacher and student
        embeddings over the same Partial FC sample: one [k, D] copy instead of two)."""
        memo = self._selected
        if memo is not None and memo[0]() is centres and memo[1] == centres._version \
                and memo[2] == self.weight._version:
            return memo[3]
        rows = self.weight.index_select(0, centres.to(self.weight.device))
        self._selected = (weakref.ref(centres), centres._version, self.weight._version, rows)
        return rows

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, in_features={self.in_features}, scale={self.scale}"


class LinearCritic(nn.Module):
    """A classification teacher's final ``nn.Linear`` as a critic (the teacher's own layer, frozen)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        if not isinstance(linear, nn.Linear):
            raise CriticError(f"a classification critic needs the teacher's nn.Linear, got {type(linear).__name__}")
        linear.requires_grad_(False)
        self.linear = linear

    @property
    def num_classes(self) -> int:
        """K."""
        return int(self.linear.out_features)

    @property
    def in_features(self) -> int:
        """C_t."""
        return int(self.linear.in_features)

    def forward(self, features: Tensor, centres: Tensor | None = None) -> Tensor:
        """Logits [N, K] (columns ``centres`` only, when given)."""
        _check(features, self.in_features, type(self).__name__)
        logits = self.linear(features)
        return logits if centres is None else logits.index_select(1, centres.to(logits.device))
