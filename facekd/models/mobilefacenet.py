"""MobileFaceNet face backbones (mbf, mbf_large), weight-compatible with arcface_torch.

At the defaults (112 px, width 1.0, 512-d embedding) the state-dict keys and shapes equal
arcface_torch's ``get_mbf`` / ``get_mbf_large`` models, so their ``backbone.pth`` loads strictly.
``width`` scales every channel count, the fixed group widths 64/128/256/512 included, and the
GDC kernel follows the final feature-map size, so small inputs (e.g. 32 px) work.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

from torch import Tensor, nn

from facekd.models.interface import check_face_options
from facekd.models.outputs import FaceOutput
from facekd.models.registry import register_backbone
from facekd.models.scaling import (
    body_autocast,
    check_image_batch,
    conv_output_size,
    scale_channels,
)

MIN_INPUT_SIZE = 16
NUM_DOWNSAMPLINGS = 4  # the stem and three DepthWise blocks have stride 2


class ConvBlock(nn.Module):
    """Conv (no bias) -> BatchNorm -> PReLU, held in ``layers`` (key names as in arcface_torch)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int = 1, stride: int = 1,
                 padding: int = 0, groups: int = 1) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, kernel, stride, padding, groups=groups, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.PReLU(out_channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class LinearBlock(nn.Module):
    """Conv (no bias) -> BatchNorm without activation."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int = 1, stride: int = 1,
                 padding: int = 0, groups: int = 1) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, kernel, stride, padding, groups=groups, bias=False),
            nn.BatchNorm2d(out_channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class DepthWise(nn.Module):
    """Inverted bottleneck: 1x1 expand to ``groups`` -> depthwise 3x3 (stride) -> 1x1 linear project."""

    def __init__(self, in_channels: int, out_channels: int, groups: int, stride: int,
                 residual: bool = False) -> None:
        super().__init__()
        self.residual = residual
        self.layers = nn.Sequential(
            ConvBlock(in_channels, groups, kernel=1),
            ConvBlock(groups, groups, kernel=3, stride=stride, padding=1, groups=groups),
            LinearBlock(groups, out_channels, kernel=1),
        )

    def forward(self, x: Tensor) -> Tensor:
        out = self.layers(x)
        return x + out if self.residual else out


class Residual(nn.Module):
    """A stack of ``num_blocks`` stride-1 DepthWise blocks, each with an identity shortcut."""

    def __init__(self, channels: int, num_blocks: int, groups: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            *(DepthWise(channels, channels, groups, stride=1, residual=True) for _ in range(num_blocks))
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class GDC(nn.Module):
    """Global depthwise conv head: depthwise kxk over the whole map -> flatten -> Linear -> BN1d.

    Index 1 of ``layers`` (flatten + dropout) has no parameters, keeping arcface_torch's keys.
    """

    def __init__(self, channels: int, embedding_size: int, kernel: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            LinearBlock(channels, channels, kernel=kernel, groups=channels),
            nn.Sequential(nn.Flatten(1), nn.Dropout(p=dropout)),
            nn.Linear(channels, embedding_size, bias=False),
            nn.BatchNorm1d(embedding_size),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class MobileFaceNet(nn.Module):
    """arcface_torch's MobileFaceNet: eight ``layers`` entries, ``conv_sep`` (1x1 to 512), GDC head.

    ``model(x)`` returns the (not normalised) embedding; ``model(x, return_features=True)``
    returns ``FaceOutput(embedding, feature_map)`` with the output of ``conv_sep``. With ``fp16``
    the ``layers`` run under CUDA autocast and ``conv_sep`` + head in float32, as in arcface_torch.
    """

    def __init__(self, arch: str, stage_blocks: Sequence[int], scale: int, *,
                 embedding_size: int = 512, input_size: int = 112, width: float = 1.0,
                 dropout: float = 0.0, fp16: bool = False) -> None:
        super().__init__()
        if len(stage_blocks) != 4:
            raise ValueError(f"{arch}: need 4 stage depths, got {stage_blocks}")
        self.arch = arch
        opts = check_face_options(arch, embedding_size=embedding_size, input_size=input_size, width=width,
                                  dropout=dropout, min_input_size=MIN_INPUT_SIZE)
        self.embedding_size, self.input_size, self.width = opts.embedding_size, opts.input_size, opts.width
        self.fp16 = bool(fp16)
        dropout = opts.dropout

        def ch(channels: int) -> int:
            return scale_channels(channels, self.width)

        narrow, wide = ch(64 * scale), ch(128 * scale)
        group64, group128, group256, group512 = ch(64), ch(128), ch(256), ch(512)
        if stage_blocks[0] == 1:
            # grouped (not depthwise) conv: 64 groups at width 1; gcd keeps it valid at any width
            first_stage: nn.Module = ConvBlock(narrow, narrow, kernel=3, padding=1,
                                               groups=math.gcd(narrow, group64))
        else:
            first_stage = Residual(narrow, stage_blocks[0], group128)
        self.layers = nn.ModuleList([
            ConvBlock(3, narrow, kernel=3, stride=2, padding=1),
            first_stage,
            DepthWise(narrow, narrow, group128, stride=2),
            Residual(narrow, stage_blocks[1], group128),
            DepthWise(narrow, wide, group256, stride=2),
            Residual(wide, stage_blocks[2], group256),
            DepthWise(wide, wide, group512, stride=2),
            Residual(wide, stage_blocks[3], group256),
        ])
        head_channels = ch(512)
        self.conv_sep = ConvBlock(wide, head_channels, kernel=1)

        size = self.input_size
        for _ in range(NUM_DOWNSAMPLINGS):
            size = conv_output_size(size, kernel=3, stride=2, padding=1)
        self.feature_channels = head_channels
        self.feature_size = size
        self.features = GDC(head_channels, self.embedding_size, kernel=size, dropout=dropout)
        self._init_weights()

    def _init_weights(self) -> None:
        """arcface_torch's initialisation: Kaiming (fan_out) convs and linears, unit BN."""
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor, return_features: bool = False) -> Tensor | FaceOutput:
        """Embedding [N, D], or ``FaceOutput`` with the conv_sep map when ``return_features``."""
        check_image_batch(self.arch, x, self.input_size)
        with body_autocast(self.fp16, x):
            for layer in self.layers:
                x = layer(x)
        if self.fp16:
            x = x.float()
        feature_map = self.conv_sep(x)
        embedding = self.features(feature_map)
        if return_features:
            return FaceOutput(embedding, feature_map)
        return embedding


@register_backbone("mbf", kind="face")
def mobilefacenet(**options: Any) -> MobileFaceNet:
    """MobileFaceNet (scale 2, blocks 1/4/6/2); options: embedding_size, input_size, width, dropout, fp16."""
    return MobileFaceNet("mbf", (1, 4, 6, 2), scale=2, **options)


@register_backbone("mbf_large", kind="face")
def mobilefacenet_large(**options: Any) -> MobileFaceNet:
    """Large MobileFaceNet (scale 4, blocks 2/8/12/4); same options as mbf."""
    return MobileFaceNet("mbf_large", (2, 8, 12, 4), scale=4, **options)
