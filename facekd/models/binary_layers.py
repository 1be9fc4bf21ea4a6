"""1-bit building blocks: sign with straight-through gradients, binary convolutions, RSign/RPReLU.

Ideas taken from the published binary networks (our own implementation):

- XNOR-Net (Rastegari et al., ECCV 2016): binary weights ``alpha_o * sign(W_o)`` with one real
  scale per output channel, ``alpha_o = mean |W_o|`` (the least-squares optimum); the first conv
  and the last layer stay real-valued.
- BinaryConnect / BNN (Courbariaux, Hubara et al., 2015-2016): the straight-through estimator,
  sign forward and the clipped identity ``1_{|x| <= 1}`` backward.
- Bi-Real Net (Liu et al., ECCV 2018): a real-valued shortcut around *every* binary convolution
  and the ApproxSign gradient (piecewise-linear derivative ``2 - 2|x|`` on [-1, 1]); its
  operation count ``OPs = FLOPs + BOPs / 64``.
- ReActNet (Liu et al., ECCV 2020): RSign (sign with a learnable per-channel threshold), RPReLU
  (PReLU with learnable per-channel input and output shifts), parameter-free downsampling
  shortcuts (average pooling plus channel duplication), the two-stage recipe (binary
  activations with real weights first, then both binary) and the clipped-identity weight STE
  with a detached scale.

Every sign here maps 0 to +1, so each value is a true bit (XNOR hardware has no zero).
``set_binary_stage(model, stage)`` switches a built model between stage 0 (all real, for
reference), 1 (binary activations, real weights) and 2 (both binary) without changing its
state-dict keys, so stage 2 starts from stage-1 weights.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from facekd.registry import Registry

__all__ = ["BINARY_STAGES", "DEFAULT_ESTIMATOR", "BinaryStageError", "check_stage", "check_estimator", "hard_sign",
           "register_estimator", "list_estimators", "sign_ste", "weight_scale", "binarize_weight", "RSign", "RPReLU",
           "BinaryConv2d", "set_binary_stage", "binary_stage_of", "binary_convs"]

BINARY_STAGES = (0, 1, 2)
"""0: real activations and weights; 1: binary activations, real weights; 2: both binary."""
DEFAULT_ESTIMATOR = "clip"


class BinaryStageError(ValueError):
    """A binary stage or estimator name that does not exist; the message lists the valid ones."""


def check_stage(stage: int) -> int:
    """Validate a binary stage (0, 1 or 2) and return it."""
    if isinstance(stage, bool) or not isinstance(stage, int) or stage not in BINARY_STAGES:
        raise BinaryStageError(f"binary stage must be one of {BINARY_STAGES} (0 = all real, 1 = binary "
                               f"activations with real weights, 2 = both binary), got {stage!r}")
    return stage


def hard_sign(x: Tensor) -> Tensor:
    """+1 where x >= 0 and -1 elsewhere, in x's dtype (exportable to ONNX: Cast/Mul/Sub)."""
    return (x >= 0).to(x.dtype) * 2 - 1


# ----------------------------------------------------------------------------------------------
# straight-through estimators: the derivative used for sign in the backward pass

GradientFn = Callable[[Tensor], Tensor]
ESTIMATORS: Registry[GradientFn] = Registry("sign estimator", error=BinaryStageError)
"""Surrogate derivatives of sign by name."""


def register_estimator(name: str) -> Callable[[GradientFn], GradientFn]:
    """Decorator registering ``d(x) -> Tensor``, the surrogate derivative of sign at x."""
    return ESTIMATORS.register(name)


def list_estimators() -> list[str]:
    """Registered straight-through estimator names."""
    return ESTIMATORS.names()


def check_estimator(name: str) -> str:
    """Validate an estimator name and return it."""
    ESTIMATORS.get(name)  # an unknown name raises BinaryStageError listing the known ones
    return name


@register_estimator("clip")
def _clipped_identity(x: Tensor) -> Tensor:
    """BNN's straight-through estimator: the derivative of hardtanh, 1 on [-1, 1] and 0 outside."""
    return (x.abs() <= 1).to(x.dtype)


@register_estimator("approx")
def _approx_sign(x: Tensor) -> Tensor:
    """Bi-Real Net's ApproxSign: derivative 2 - 2|x| on [-1, 1] and 0 outside (tighter to sign)."""
    return (2 - 2 * x.abs()).clamp_min(0)


class _SignSTE(torch.autograd.Function):
    """sign forward (0 -> +1); incoming gradient times the estimator's derivative backward."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, derivative: GradientFn) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        ctx.derivative = derivative
        return hard_sign(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return grad * ctx.derivative(x), None


def sign_ste(x: Tensor, estimator: str = DEFAULT_ESTIMATOR) -> Tensor:
    """Binarise x to +-1 with a straight-through gradient ("clip": clipped identity, "approx": ApproxSign)."""
    return _SignSTE.apply(x, ESTIMATORS.get(estimator))


def weight_scale(weight: Tensor) -> Tensor:
    """XNOR-Net's per-output-channel scale mean |W_o|, shaped [C_out, 1, 1, 1] for broadcasting."""
    return weight.abs().mean(dim=tuple(range(1, weight.dim())), keepdim=True)


def binarize_weight(weight: Tensor) -> Tensor:
    """``alpha * sign(W)`` with the scale alpha detached and the clipped-identity STE on W (ReActNet)."""
    return weight_scale(weight).detach() * sign_ste(weight, "clip")


# ----------------------------------------------------------------------------------------------
# modules

class RSign(nn.Module):
    """ReActNet's RSign: ``sign(x - beta_c)`` with a learnable threshold per channel.

    In stage 0 the shift is applied but nothing is binarised (the real-valued reference).
    """

    def __init__(self, channels: int, estimator: str = DEFAULT_ESTIMATOR) -> None:
        super().__init__()
        self.estimator = check_estimator(estimator)
        self.shift = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.binary = True

    def forward(self, x: Tensor) -> Tensor:
        x = x - self.shift
        return sign_ste(x, self.estimator) if self.binary else x

    def extra_repr(self) -> str:
        return f"channels={self.shift.shape[1]}, estimator={self.estimator}, binary={self.binary}"


class RPReLU(nn.Module):
    """ReActNet's RPReLU: ``PReLU_c(x - gamma_c) + zeta_c``, shifting the distribution per channel."""

    def __init__(self, channels: int, init_slope: float = 0.25) -> None:
        super().__init__()
        self.shift_in = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.prelu = nn.PReLU(channels, init=init_slope)
        self.shift_out = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.prelu(x - self.shift_in) + self.shift_out


class BinaryConv2d(nn.Conv2d):
    """Conv2d whose weights are ``alpha_o * sign(W_o)`` in stage 2 (XNOR-Net scaling, no bias).

    The latent real weights ``weight`` are what is trained and saved; in stages 0 and 1 they are
    used as they are. Its input is binarised by the ``RSign`` before it, so in stage 2 the
    convolution is an XNOR/popcount product times one real scale per output channel. Zero
    padding is kept as in Bi-Real/ReActNet (an XNOR kernel corrects the border separately).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0, groups: int = 1) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=False)
        self.binary_weights = True

    def effective_weight(self) -> Tensor:
        """The weight the convolution uses now: binarised and scaled in stage 2, else the real one."""
        return binarize_weight(self.weight) if self.binary_weights else self.weight

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.effective_weight(), None, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", binary_weights={self.binary_weights}"


def binary_convs(model: nn.Module) -> list[tuple[str, BinaryConv2d]]:
    """(qualified name, module) of every binary convolution in ``model``."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, BinaryConv2d)]


def set_binary_stage(model: nn.Module, stage: int) -> nn.Module:
    """Switch every RSign/BinaryConv2d in ``model`` to ``stage`` (0, 1 or 2) in place; returns model.

    Only Python flags change: parameters, buffers and state-dict keys stay the same, so a
    stage-2 model loads a stage-1 checkpoint strictly.
    """
    check_stage(stage)
    for module in model.modules():
        if isinstance(module, RSign):
            module.binary = stage >= 1
        elif isinstance(module, BinaryConv2d):
            module.binary_weights = stage >= 2
        if hasattr(module, "binary_stage"):
            module.binary_stage = stage
    return model


def binary_stage_of(model: nn.Module) -> int | None:
    """The stage a model's binary layers are in (None without binary layers); raises when mixed."""
    signs = {m.binary for m in model.modules() if isinstance(m, RSign)}
    weights = {m.binary_weights for m in model.modules() if isinstance(m, BinaryConv2d)}
    if not signs and not weights:
        return None
    if len(signs) > 1 or len(weights) > 1:
        raise BinaryStageError("the model's binary layers are in different stages; call set_binary_stage")
    act, wgt = (signs or {True}).pop(), (weights or {True}).pop()
    if wgt and not act:
        raise BinaryStageError("binary weights with real activations is not one of the stages")
    return 2 if wgt else 1 if act else 0
