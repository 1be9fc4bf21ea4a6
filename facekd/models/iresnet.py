"""IResNet face backbones (r18 ... r200), weight-compatible with insightface's arcface_torch.

At the defaults (112 px input, width 1.0, 512-d embedding) every model has exactly the state-dict
keys and tensor shapes of arcface_torch's model of the same name and computes the same function,
so a released ``backbone.pth`` loads with ``strict=True``. ``input_size`` and ``width`` build
smaller variants (e.g. 32 px, width 0.25) for CPU experiments.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
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

# Stage widths of the published models before the ``width`` multiplier.
STEM_CHANNELS = 64
STAGE_CHANNELS = (64, 128, 256, 512)
MIN_INPUT_SIZE = 16


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)


class IBasicBlock(nn.Module):
    """Improved residual block: BN -> conv3x3 -> BN -> PReLU -> conv3x3(stride) -> BN, plus shortcut."""

    def __init__(self, in_channels: int, channels: int, stride: int = 1,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels, eps=1e-5)
        self.conv1 = _conv3x3(in_channels, channels)
        self.bn2 = nn.BatchNorm2d(channels, eps=1e-5)
        self.prelu = nn.PReLU(channels)
        self.conv2 = _conv3x3(channels, channels, stride)
        self.bn3 = nn.BatchNorm2d(channels, eps=1e-5)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return out + shortcut


def _make_stage(in_channels: int, channels: int, num_blocks: int, stride: int) -> nn.Sequential:
    """A stage: the first block changes resolution/width (with a conv1x1 + BN shortcut)."""
    downsample = None
    if stride != 1 or in_channels != channels:
        downsample = nn.Sequential(
            nn.Conv2d(in_channels, channels, kernel_size=1, stride=stride, bias=False),
            nn.BatchNorm2d(channels, eps=1e-5),
        )
    blocks = [IBasicBlock(in_channels, channels, stride, downsample)]
    blocks += [IBasicBlock(channels, channels) for _ in range(1, num_blocks)]
    return nn.Sequential(*blocks)


class IResNet(nn.Module):
    """ArcFace IResNet: stem, four stride-2 stages, then BN -> dropout -> flatten -> fc -> BN1d.

    ``model(x)`` returns the (not normalised) embedding; ``model(x, return_features=True)``
    returns ``FaceOutput(embedding, feature_map)`` with the output of ``layer4``. With ``fp16``
    the body runs under CUDA autocast and the fc/features head in float32, as in arcface_torch.
    """

    def __init__(self, arch: str, stage_blocks: Sequence[int], *, embedding_size: int = 512,
                 input_size: int = 112, width: float = 1.0, dropout: float = 0.0,
                 fp16: bool = False) -> None:
        super().__init__()
        if len(stage_blocks) != len(STAGE_CHANNELS):
            raise ValueError(f"{arch}: need {len(STAGE_CHANNELS)} stage depths, got {stage_blocks}")
        self.arch = arch
        opts = check_face_options(arch, embedding_size=embedding_size, input_size=input_size, width=width,
                                  dropout=dropout, min_input_size=MIN_INPUT_SIZE)
        self.embedding_size, self.input_size, self.width = opts.embedding_size, opts.input_size, opts.width
        self.fp16 = bool(fp16)
        dropout = opts.dropout

        stem = scale_channels(STEM_CHANNELS, self.width)
        self.conv1 = _conv3x3(3, stem)
        self.bn1 = nn.BatchNorm2d(stem, eps=1e-5)
        self.prelu = nn.PReLU(stem)

        in_channels, size = stem, self.input_size
        stages = []
        for channels, num_blocks in zip(STAGE_CHANNELS, stage_blocks):
            channels = scale_channels(channels, self.width)
            stages.append(_make_stage(in_channels, channels, num_blocks, stride=2))
            in_channels, size = channels, conv_output_size(size, kernel=3, stride=2, padding=1)
        self.layer1, self.layer2, self.layer3, self.layer4 = stages

        self.feature_channels = in_channels
        self.feature_size = size
        self.bn2 = nn.BatchNorm2d(in_channels, eps=1e-5)
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(in_channels * size * size, self.embedding_size)
        self.features = nn.BatchNorm1d(self.embedding_size, eps=1e-5)
        self._init_weights()

    def _init_weights(self) -> None:
        """arcface_torch's initialisation; the output BN scale is fixed to 1 and never trained."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, 0.1)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.ones_(self.features.weight)
        self.features.weight.requires_grad = False

    def forward(self, x: Tensor, return_features: bool = False) -> Tensor | FaceOutput:
        """Embedding [N, D], or ``FaceOutput`` with the layer4 map when ``return_features``."""
        check_image_batch(self.arch, x, self.input_size)
        with body_autocast(self.fp16, x):
            x = self.prelu(self.bn1(self.conv1(x)))
            feature_map = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            x = self.dropout(torch.flatten(self.bn2(feature_map), 1))
        if self.fp16:
            x = x.float()
        embedding = self.features(self.fc(x))
        if return_features:
            return FaceOutput(embedding, feature_map.to(embedding.dtype))
        return embedding


@register_backbone("r18", kind="face")
def iresnet18(**options: Any) -> IResNet:
    """IResNet-18 (stages 2/2/2/2); options: embedding_size, input_size, width, dropout, fp16."""
    return IResNet("r18", (2, 2, 2, 2), **options)


@register_backbone("r34", kind="face")
def iresnet34(**options: Any) -> IResNet:
    """IResNet-34 (stages 3/4/6/3); options: embedding_size, input_size, width, dropout, fp16."""
    return IResNet("r34", (3, 4, 6, 3), **options)


@register_backbone("r50", kind="face")
def iresnet50(**options: Any) -> IResNet:
    """IResNet-50 (stages 3/4/14/3); options: embedding_size, input_size, width, dropout, fp16."""
    return IResNet("r50", (3, 4, 14, 3), **options)


@register_backbone("r100", kind="face")
def iresnet100(**options: Any) -> IResNet:
    """IResNet-100 (stages 3/13/30/3), the usual teacher; same options as r18."""
    return IResNet("r100", (3, 13, 30, 3), **options)


@register_backbone("r200", kind="face")
def iresnet200(**options: Any) -> IResNet:
    """IResNet-200 (stages 6/26/60/6); same options as r18."""
    return IResNet("r200", (6, 26, 60, 6), **options)
