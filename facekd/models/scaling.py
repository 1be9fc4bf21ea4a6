"""Shared size arithmetic for the face backbones: channel widths and feature-map sizes.

The builders take ``width`` and ``input_size`` options; these helpers turn them into concrete
layer sizes so that width 1.0 at 112 px reproduces the published shapes exactly.
"""
from __future__ import annotations

import contextlib
import math

import torch
from torch import Tensor

MIN_CHANNELS = 8
CHANNEL_STEP = 8


class InvalidModelOptionError(ValueError):
    """Raised when a model builder gets an option value it cannot build (width, input size...)."""


def scale_channels(channels: int, width: float) -> int:
    """Channel count ``channels * width`` rounded to a multiple of 8 (at least 8); exact at width 1."""
    if width == 1.0:
        return channels
    return max(MIN_CHANNELS, int(round(channels * width / CHANNEL_STEP)) * CHANNEL_STEP)


def check_width(arch: str, width: float) -> float:
    """Validate a channel multiplier; returns it as float."""
    if not isinstance(width, (int, float)) or not math.isfinite(width) or width <= 0:
        raise InvalidModelOptionError(f"{arch}: width must be a positive number, got {width!r}")
    return float(width)


def check_positive_int(arch: str, option: str, value: int, minimum: int = 1) -> int:
    """Validate an integer option such as ``embedding_size`` or ``input_size``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidModelOptionError(f"{arch}: {option} must be an integer >= {minimum}, got {value!r}")
    return value


def check_dropout(arch: str, dropout: float) -> float:
    """Validate a dropout probability in [0, 1)."""
    if not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise InvalidModelOptionError(f"{arch}: dropout must be in [0, 1), got {dropout!r}")
    return float(dropout)


def conv_output_size(size: int, kernel: int, stride: int, padding: int) -> int:
    """Spatial output size of a convolution (no dilation) on a ``size`` input."""
    return (size + 2 * padding - kernel) // stride + 1


def check_image_batch(arch: str, x: Tensor, input_size: int) -> None:
    """Raise a clear error unless ``x`` is an [N, 3, input_size, input_size] image batch.

    Skipped while tracing (legacy ONNX export), where shapes are traced values, not ints.
    """
    if torch.jit.is_tracing():
        return
    if x.dim() != 4 or x.shape[1] != 3 or x.shape[2] != input_size or x.shape[3] != input_size:
        raise InvalidModelOptionError(
            f"{arch} was built for [N, 3, {input_size}, {input_size}] images, got a tensor of shape "
            f"{list(x.shape)}; rebuild the model with input_size={x.shape[-1]} or resize the images"
        )


def body_autocast(enabled: bool, x: Tensor) -> contextlib.AbstractContextManager:
    """Autocast context for a backbone body: float16 on CUDA inputs when ``enabled``, else a no-op."""
    if enabled and x.device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.float16)
    return contextlib.nullcontext()
